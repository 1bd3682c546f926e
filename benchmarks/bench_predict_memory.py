"""Peak memory of predict + filter + balance is flat in the number of unlabeled images.

    python benchmarks/bench_predict_memory.py [--sizes 2000,20000] [--image_size 32]

For each size, generated JPEGs go into a TFRecord file (a `tfrecord:` source); a fresh
child process then runs predict (efficientnet-test, 8 shards), balance (histogram plan,
num_image = size / 20 per class) and reads the balanced records once, and reports its
peak resident memory (ru_maxrss). Prints each peak and the ratio of the largest to the
smallest (target: within 15%, i.e. <= 1.15). Then measures how close the histogram
balance plan gets to the exact per-class top-K on --topk_records synthetic records.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def child(data: str, out: str, image_size: int, num_image: int) -> None:
  """Runs the phase in this process and prints its peak RSS (MB) as JSON."""
  import keras  # pylint: disable=g-import-not-at-top
  import efficientnet  # pylint: disable=g-import-not-at-top
  from noisy_student import balance, predict  # pylint: disable=g-import-not-at-top
  from noisy_student.config import FilterConfig, PredictConfig  # pylint: disable=g-import-not-at-top
  from noisy_student.data import sources  # pylint: disable=g-import-not-at-top
  from tfrecords import plan  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(0)
  model = efficientnet.build_model("efficientnet-test", 10, image_size=image_size)
  source = sources.open_source(f"tfrecord:{data}")
  summary = predict.predict(model, source, PredictConfig(output_dir=out, num_shards=8),
                            image_size=image_size, batch_size=128, teacher_id="bench")
  result = balance.balance(out, FilterConfig(num_image=num_image, min_threshold=0.0))
  read = sum(1 for _ in plan.read_pseudo_labels(out, result.plan_path).batch(1024))
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux.
  print(json.dumps({"records": summary.records_written, "peak_mb": peak_mb,
                    "after": result.report["totals"]["after"], "batches_read": read}))


def topk_agreement(tmp: str, n: int, num_classes: int = 10, num_bins: int = 1000) -> None:
  """Histogram plan vs exact top-K on n synthetic records (Beta(5, 2) confidences)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from noisy_student import balance  # pylint: disable=g-import-not-at-top
  from noisy_student.config import FilterConfig  # pylint: disable=g-import-not-at-top
  from tfrecords import format as fmt  # pylint: disable=g-import-not-at-top
  from tfrecords import plan as plan_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  conf = rng.beta(5, 2, n).astype(np.float32)
  cls = rng.integers(0, num_classes, n)
  ids = np.array([b"r%d" % i for i in range(n)])
  out = os.path.join(tmp, "topk")
  fp = {"teacher": "synthetic", "num_workers": 1, "num_shards": 1, "num_bins": num_bins}
  writer = fmt.ShardWriter(os.path.join(out, fmt.shard_name("train", 0, 1)), num_classes,
                           fp, [0, n], num_bins=num_bins)
  probs = np.zeros([n, num_classes], np.float32)
  probs[np.arange(n), cls] = conf
  writer.write_batch([b""] * n, ids, np.full([n], -1), probs, cls, conf)
  writer.close()
  num_image = n // num_classes // 4  # Keep the top quarter of each class.
  kept = {}
  for exact in (False, True):
    cfg = FilterConfig(num_image=num_image, exact_topk=exact)
    result = balance.balance(out, cfg, output_dir=os.path.join(out, str(exact)))
    copies = plan_lib.make_copies_fn(plan_lib.load_plan(result.plan_path))
    kept[exact] = copies(tf.constant(cls), tf.constant(conf), tf.constant(ids)).numpy() > 0
  recall = (kept[False] & kept[True]).sum() / kept[True].sum()
  per_class = [abs(int(kept[False][cls == c].sum()) - num_image) for c in range(num_classes)]
  print(f"histogram ({num_bins} bins) vs exact top-K, {n} records, num_image={num_image}: "
        f"{recall:.4%} of the exact top-K kept; per-class count off by at most "
        f"{max(per_class)} ({max(per_class) / num_image:.3%})")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="2000,20000")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--topk_records", type=int, default=200_000)
  parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    data, out, size, num_image = args.child
    child(data, out, int(size), int(num_image))
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from bench_predict import write_images  # pylint: disable=g-import-not-at-top
  peaks = {}
  with tempfile.TemporaryDirectory() as tmp:
    for n in [int(s) for s in args.sizes.split(",")]:
      data = os.path.join(tmp, f"images-{n}.tfrecord")
      write_images(data, n, args.image_size + 8, seed=n)
      cmd = [sys.executable, os.path.abspath(__file__), "--child", data,
             os.path.join(tmp, f"out-{n}"), str(args.image_size), str(max(1, n // 20))]
      done = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if done.returncode:
        raise SystemExit(f"child for {n} images failed:\n{done.stderr[-3000:]}")
      stats = json.loads(done.stdout.strip().splitlines()[-1])
      peaks[n] = stats["peak_mb"]
      print(f"{n:8d} images: peak RSS {stats['peak_mb']:8.1f} MB "
            f"({stats['records']} labeled, {stats['after']} after balance)", flush=True)
    small, large = min(peaks), max(peaks)
    print(f"peak RSS ratio {large} / {small} images: {peaks[large] / peaks[small]:.3f} "
          "(target <= 1.15)")
    topk_agreement(tmp, args.topk_records)


if __name__ == "__main__":
  main()
