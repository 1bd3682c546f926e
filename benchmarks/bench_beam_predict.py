"""The Beam job on the multi-process DirectRunner vs the in-process predict: a ratio.

    python benchmarks/bench_beam_predict.py [--model efficientnet-b0] [--image_size 128]
        [--num_images 512,1536] [--num_files 8] [--batch_size 64] [--repeats 1]
        [--beam_options "--prism_location=/nonexistent/prism --direct_num_workers=2
                         --direct_running_mode=multi_processing"]

Writes generated JPEGs into --num_files TFRecord files (one set per --num_images size)
and a teacher model_dir (random weights, EMA included), then, alternately and each in a
fresh process (so neither inherits the other's warm caches): (A) the in-process predict
(`noisy_student.predict`) followed by the filter step (`noisy_student.balance`), and (B)
the same teacher, source and output as one Beam job (`noisy_student.beam`, predict +
filter) on the DirectRunner with --beam_options (default: 2 worker processes), on the
same cores. Each side is timed from before its teacher loads to the files on disk (model
loading, tracing, Beam's worker start-up included: what a user waits for); the
interpreter's imports are not. Prints each run's images/s, per size the medians and the
ratio B/A (predict alone and predict + filter on side A), and with two sizes the
marginal ratio: (extra images / extra seconds) of B over that of A, i.e. the throughput
once start-up is paid, which is what a long job sees. Then the outputs' agreement and
the Beam job's stages. Absolute numbers depend on the machine's load; the ratios of one
run are the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _setup(args, root: str, sizes) -> None:
  """The TFRecord files of each size and the teacher's model_dir."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from bench_predict import write_images  # pylint: disable=g-import-not-at-top
  from noisy_student.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from noisy_student.train import checkpoints, ema  # pylint: disable=g-import-not-at-top
  for n in sizes:
    os.makedirs(f"{root}/data_{n}")
    for f in range(args.num_files):
      write_images(f"{root}/data_{n}/train-{f:05d}-of-{args.num_files:05d}",
                   n // args.num_files, args.image_size, seed=f)
  keras.utils.set_random_seed(0)
  model_cfg = ModelConfig(args.model, 10, args.image_size)
  model = checkpoints.build_model(model_cfg)
  checkpoint = checkpoints.make_checkpoint(model, ema=ema.WeightEMA(model, 0.5))
  tf.train.CheckpointManager(checkpoint, f"{root}/teacher", 1).save()
  checkpoints.write_build_config(f"{root}/teacher", model_cfg,
                                 [str(c) for c in range(10)], True)


def _side(args, root: str, side: str, out: str) -> None:
  """One timed run; prints a JSON line {side, seconds, predict_seconds, records}."""
  from noisy_student import balance  # pylint: disable=g-import-not-at-top
  from noisy_student.config import FilterConfig, PredictConfig  # pylint: disable=g-import-not-at-top
  from noisy_student.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.open_source(f"{root}/data_{args.num_images}", split="unlabeled")
  names = [str(c) for c in range(10)]
  filter_cfg = FilterConfig()
  common = dict(image_size=args.image_size, batch_size=args.batch_size, class_names=names,
                teacher_id=f"{root}/teacher")
  if side == "in_process":
    from noisy_student import predict  # pylint: disable=g-import-not-at-top
    from noisy_student.train import checkpoints  # pylint: disable=g-import-not-at-top
    start = time.time()
    model = checkpoints.load_for_inference(f"{root}/teacher")
    summary = predict.predict(model, source, PredictConfig(output_dir=out,
                                                           num_shards=args.num_shards),
                              **common)
    predict_seconds = time.time() - start
    balance.balance(out, filter_cfg)
    records = summary.records_written
  else:
    from noisy_student import beam  # pylint: disable=g-import-not-at-top
    start = time.time()
    cfg = PredictConfig(output_dir=out, num_shards=args.num_shards, runner="DirectRunner",
                        beam_options=args.beam_options)
    summary = beam.predict(f"{root}/teacher", source, cfg, filter_cfg=filter_cfg, **common)
    predict_seconds, records = None, summary.records_written
    print("STAGES " + " -> ".join(summary.stages))
    print("DISTRIBUTIONS " + json.dumps(summary.distributions))
  seconds = time.time() - start
  print("RESULT " + json.dumps({"side": side, "seconds": seconds,
                                "predict_seconds": predict_seconds, "records": records}))


def _agree(first: str, second: str) -> bool:
  """Same shard files, manifests (but size) and plan in both outputs."""
  names = sorted(n for n in os.listdir(first) if n.startswith(("train", "_train")) or
                 n == "balance_plan.json")
  for name in names:
    with open(f"{first}/{name}", "rb") as a, open(f"{second}/{name}", "rb") as b:
      if a.read() != b.read():
        return False
  return True


def _spawn(args, root: str, side: str, out: str, size: int) -> dict:
  argv = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--root={root}",
          f"--out={out}", f"--num_images={size}"] + [
              f"--{k}={v}" for k, v in vars(args).items()
              if k not in ("side", "root", "out", "repeats", "num_images")]
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = subprocess.run(argv, capture_output=True, text=True, check=False)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if proc.returncode:
    raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")
  lines = proc.stdout.splitlines()
  result = json.loads(next(l for l in lines if l.startswith("RESULT "))[7:])
  result["stages"] = next((l[7:] for l in lines if l.startswith("STAGES ")), None)
  result["distributions"] = json.loads(next(
      (l[14:] for l in lines if l.startswith("DISTRIBUTIONS ")), "{}"))
  # CPU of the whole side (its worker processes too, imports included): less disturbed
  # by other programs' load than wall time.
  result["cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime +
                                                                before.ru_stime)
  return result


def _median(values):
  values = sorted(values)
  return values[len(values) // 2]


def _run_all(args, root: str, sizes):
  """Every (size, repeat, side) run, sides alternated; {(size, side): [results]}."""
  runs = {}
  for n in sizes:
    for r in range(args.repeats):
      for side in ("in_process", "beam"):  # Alternated: both see the same load drift.
        result = _spawn(args, root, side, f"{root}/{side}_{n}_{r}", n)
        runs.setdefault((n, side), []).append(result)
        print(f"{n} images, repeat {r}, {side}: {result['seconds']:.1f} s, "
              f"{result['records'] / result['seconds']:.1f} images/s, "
              f"{1000 * result['cpu_seconds'] / result['records']:.0f} CPU ms per image "
              "(the side's processes, imports included)" + _where(result), flush=True)
  return runs


def _where(result) -> str:
  """Where the Beam job's time went: RunInference's own timings, summed over workers."""
  dist = result.get("distributions") or {}
  batches = next((v for k, v in dist.items() if k.endswith("inference_batch_latency_micro_secs")),
                 None)
  loads = next((v for k, v in dist.items() if k.endswith("load_model_latency_milli_secs")),
               None)
  if not batches:
    return ""
  return (f"; in it: {batches['count']} batches, {batches['sum'] / 1e6:.1f} s in the "
          f"model's batches, {(loads or {}).get('sum', 0) / 1e3:.1f} s loading "
          f"{(loads or {}).get('count', 0)} models (summed over worker processes)")


def _report(runs, sizes) -> None:
  seconds, cpu_seconds = {}, {}
  for n in sizes:
    a = _median([r["seconds"] for r in runs[(n, "in_process")]])
    a_predict = _median([r["predict_seconds"] for r in runs[(n, "in_process")]])
    b = _median([r["seconds"] for r in runs[(n, "beam")]])
    seconds[n] = (a, b)
    print(f"{n} images, median images/s: in-process predict {n / a_predict:.1f}, "
          f"in-process predict + filter {n / a:.1f}, Beam job (predict + filter) "
          f"{n / b:.1f}; ratio Beam / in-process predict + filter {a / b:.2f}, Beam / "
          f"in-process predict alone {a_predict / b:.2f}")
    cpu = {side: _median([1000 * r["cpu_seconds"] / n for r in runs[(n, side)]])
           for side in ("in_process", "beam")}
    cpu_seconds[n] = (cpu["in_process"] * n / 1000, cpu["beam"] * n / 1000)
    print(f"{n} images, median CPU ms per image: in-process {cpu['in_process']:.0f}, "
          f"Beam {cpu['beam']:.0f}")
  if len(sizes) >= 2:
    small, large = sizes[0], sizes[-1]
    (a0, b0), (a1, b1) = seconds[small], seconds[large]
    extra = large - small
    print(f"marginal images/s ({small} -> {large} images): in-process {extra / (a1 - a0):.1f}, "
          f"Beam {extra / (b1 - b0):.1f}; ratio Beam / in-process {(a1 - a0) / (b1 - b0):.2f}")
    print(f"fixed start-up (intercept): in-process {a0 - small * (a1 - a0) / extra:.1f} s, "
          f"Beam {b0 - small * (b1 - b0) / extra:.1f} s")
    # CPU time is less disturbed by other programs than wall time: the steadier figure.
    (c0, d0), (c1, d1) = cpu_seconds[small], cpu_seconds[large]
    print(f"marginal CPU ms per image: in-process {1000 * (c1 - c0) / extra:.1f}, Beam "
          f"{1000 * (d1 - d0) / extra:.1f}; ratio in-process / Beam {(c1 - c0) / (d1 - d0):.2f}"
          f"; fixed CPU s: in-process {c0 - small * (c1 - c0) / extra:.1f}, Beam "
          f"{d0 - small * (d1 - d0) / extra:.1f}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="efficientnet-b0")
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--num_images", default="512,1536",
                      help="comma-separated sizes; two give the marginal ratio")
  parser.add_argument("--num_files", type=int, default=8)
  parser.add_argument("--num_shards", type=int, default=4)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=1)
  # No Prism location: the DirectRunner would download Prism from GitHub first; this
  # measures its own multi-process FnApiRunner (as tests/test_beam.py runs it).
  parser.add_argument("--beam_options",
                      default="--prism_location=/nonexistent/prism --direct_num_workers=2 "
                      "--direct_running_mode=multi_processing")
  parser.add_argument("--side", default="", help=argparse.SUPPRESS)
  parser.add_argument("--root", default="", help=argparse.SUPPRESS)
  parser.add_argument("--out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.side:
    args.num_images = int(args.num_images)
    _side(args, args.root, args.side, args.out)
    return
  sizes = sorted(int(n) for n in args.num_images.split(","))
  root = tempfile.mkdtemp(prefix="bench_beam_")
  _setup(args, root, sizes)
  print(f"load average before: {os.getloadavg()}", flush=True)
  runs = _run_all(args, root, sizes)
  print(f"load average after: {os.getloadavg()}")
  _report(runs, sizes)
  n = sizes[0]
  print(f"outputs identical: {_agree(f'{root}/in_process_{n}_0', f'{root}/beam_{n}_0')}")
  print(f"Beam stages: {runs[(n, 'beam')][0]['stages']}")


if __name__ == "__main__":
  main()
