"""The font benchmark over seeds: data, the CNN floor, a pipeline, pseudo-label accuracy.

  python benchmarks/run_font_benchmark.py --flagfile=flags/presets/small_images.flags \
      --classes=digits --seeds=0,1,2 --data_root=data/fonts --out=runs/font_bench \
      [--num_labeled=600 --num_unlabeled=15960 --num_test=6500] [-- --extra_flag=...]
  python benchmarks/run_font_benchmark.py --generator=pool ...   (the realistic pool)

For each seed s (sequentially; one training job at a time):
  1. benchmarks/make_font_images.py --seed=s  -> <data_root>/<classes>_<counts>_s<s>
     (skipped when that folder's manifest exists); with --generator=pool,
     benchmarks/make_pool_images.py -> <data_root>/pool_<counts>_s<s> (64 px; the CNN
     still trains at --cnn_image_size, 32, the size the preset's models see);
  2. benchmarks/supervised_cnn.py on its labeled folder -> <out>/seed_<s>/cnn.json;
  3. noisy-student --flagfile=... --seed=s with the three data flags
     -> <out>/seed_<s>/pipeline (resumable: run the same command again after a stop);
     with --teacher_from=OTHER_OUT, a new pipeline starts from OTHER_OUT's finished
     teacher of the same seed (its marker is adopted; the teacher stays there), so
     variants of the filter or the students are compared on one teacher per seed;
  4. benchmarks/pseudo_label_accuracy.py on that run -> <out>/seed_<s>/pseudo_labels.json.
Then <out>/summary.json and summary.md: per seed and mean +- sample sd over the seeds of
the CNN, teacher, each student, the final/teacher error ratio, pseudo-label top-1 (all and
as the student saw them; in-class images only), for a pool with out-of-class images the
share of them the filter kept and their share of what the student saw (copies counted),
wall and CPU times, and summary.png (test error per model and seed).
Flags after `--` go to noisy-student unchanged.

  python benchmarks/run_font_benchmark.py --plot=out.png A/summary.json B/summary.json
draws the summaries of earlier runs side by side (one panel each) and runs nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _flag_lines(flagfile: Optional[str], extra: Sequence[str]) -> List[str]:
  """The flagfile's flags (comments dropped) followed by `extra`."""
  lines = []
  if flagfile:
    with open(flagfile) as f:
      lines = [ln.strip() for ln in f if ln.strip().startswith("--")]
  return lines + list(extra)


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _run(cmd: List[str], log: str) -> tuple:
  """Runs `cmd` with output to `log`; returns (wall, CPU) seconds; raises on failure."""
  start, cpu = time.time(), _cpu_seconds()
  with open(log, "a") as f:
    f.write(f"\n$ {' '.join(cmd)}\n")
    f.flush()
    rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                        env=dict(os.environ, PYTHONPATH=ROOT)).returncode
  if rc:
    raise SystemExit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
  return time.time() - start, _cpu_seconds() - cpu


# The phases of a finished teacher that a variant's pipeline starts from (--teacher_from).
# Only the training: the phases after it (eval, check, predict) have the teacher's path in
# their fingerprints, which here is the source run's, so the variant redoes them (seconds).
TEACHER_PHASES = ("teacher",)


def make_data(args: argparse.Namespace, seed: int, log: str) -> str:
  """Step 1: the seed's data folder (made once)."""
  counts = f"{args.num_labeled}_{args.num_unlabeled}_{args.num_test}"
  pool = args.generator == "pool"
  data = os.path.join(args.data_root, f"{'pool' if pool else args.classes}_{counts}_s{seed}")
  if not os.path.exists(os.path.join(data, "manifest.json")):
    script = "make_pool_images.py" if pool else "make_font_images.py"
    _run([sys.executable, os.path.join(HERE, script), f"--out={data}", f"--seed={seed}",
          *([] if pool else [f"--classes={args.classes}"]),
          f"--num_labeled={args.num_labeled}", f"--num_unlabeled={args.num_unlabeled}",
          f"--num_test={args.num_test}", f"--image_size={args.image_size}"], log)
  return data


def start_from_teacher(model_dir: str, source_dir: str) -> None:
  """A new pipeline dir whose teacher phases are `source_dir`'s finished ones (their
  results point at `source_dir`'s teacher, which is read, never written)."""
  from noisy_student import phases  # pylint: disable=g-import-not-at-top
  ours, theirs = phases.Markers(model_dir), phases.Markers(source_dir)
  for name in TEACHER_PHASES:  # Each marker atomic: a killed copy resumes where it was.
    if ours.get(name) is None:
      try:
        ours.adopt(name, theirs)
      except FileNotFoundError as e:
        raise SystemExit(f"--teacher_from: {e}") from e


def run_seed(args: argparse.Namespace, seed: int, extra: Sequence[str]) -> Dict:
  """Steps 1-4 for one seed; returns that seed's record."""
  out = os.path.join(args.out, f"seed_{seed}")
  os.makedirs(out, exist_ok=True)
  log = os.path.join(out, "log.txt")
  py = sys.executable
  data = make_data(args, seed, log)
  cnn_json = os.path.join(out, "cnn.json")
  if args.teacher_from and not os.path.exists(cnn_json):  # One CNN per seed and data.
    theirs = os.path.join(args.teacher_from, f"seed_{seed}", "cnn.json")
    if os.path.exists(theirs):
      shutil.copy(theirs, cnn_json)
  if not args.skip_cnn and not os.path.exists(cnn_json):
    _run([py, os.path.join(HERE, "supervised_cnn.py"), f"--label_data_dir={data}/labeled",
          f"--eval_data_dir={data}/test", f"--seed={seed}", f"--epochs={args.cnn_epochs}",
          f"--image_size={args.cnn_image_size}", f"--output={cnn_json}"], log)
  flags = _flag_lines(args.flagfile, extra)
  model_dir = os.path.join(out, "pipeline")
  if args.teacher_from:
    start_from_teacher(model_dir, os.path.join(args.teacher_from, f"seed_{seed}", "pipeline"))
  cmd = [py, "-m", "noisy_student", *flags, f"--seed={seed}", f"--model_dir={model_dir}",
         f"--label_data_dir={data}/labeled", f"--unlabel_data_dir={data}/unlabeled",
         f"--eval_data_dir={data}/test"]
  seconds = cpu = None
  if not os.path.exists(os.path.join(model_dir, "results.json")):
    seconds, cpu = _run(cmd, log)
  elif os.path.exists(os.path.join(out, "record.json")):  # Finished before: its times.
    with open(os.path.join(out, "record.json")) as f:
      earlier = json.load(f)
    seconds, cpu = earlier.get("pipeline_seconds"), earlier.get("pipeline_cpu_seconds")
  pl_json = os.path.join(out, "pseudo_labels.json")
  _run([py, os.path.join(HERE, "pseudo_label_accuracy.py"), f"--truth={data}/unlabeled_truth.json",
        f"--model_dir={model_dir}", f"--output={pl_json}"], log)
  with open(os.path.join(model_dir, "results.json")) as f:
    models = json.load(f)["models"]
  with open(pl_json) as f:
    pseudo = json.load(f)
  record = {"seed": seed, "data": data, "command": " ".join(cmd),
            "pipeline_seconds": seconds, "pipeline_cpu_seconds": cpu,
            "models": {m["name"]: m["top1"] for m in models},
            "pseudo_all_top1": [p["all"]["top1"] for p in pseudo],
            "pseudo_seen_top1": [p.get("seen", {}).get("top1") for p in pseudo]}
  if any("ooc" in p["all"] for p in pseudo):
    record["ooc_kept_of_all"] = [p.get("selected", {}).get("ooc", {}).get("of_all")
                                 for p in pseudo]
    record["ooc_seen_share"] = [p.get("seen", {}).get("ooc", {}).get("share") for p in pseudo]
  if os.path.exists(cnn_json):
    with open(cnn_json) as f:
      record["cnn_top1"] = json.load(f)["top1"]
  names = list(record["models"])
  record["final_error_ratio"] = ((1 - record["models"][names[-1]]) /
                                 max(1e-9, 1 - record["models"][names[0]]))
  with open(os.path.join(out, "record.json"), "w") as f:
    json.dump(record, f, indent=1)
  return record


def _mean_sd(values: Sequence[float]) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def summarize(records: Sequence[Dict], title: str) -> str:
  """The markdown table: one row per quantity, a column per seed and the mean ± sd."""
  seeds = [r["seed"] for r in records]
  rows = []
  if all("cnn_top1" in r for r in records):
    rows.append(("supervised CNN top-1 %", [100 * r["cnn_top1"] for r in records]))
  for name in records[0]["models"]:
    rows.append((f"{name} top-1 %", [100 * r["models"].get(name, float("nan")) for r in records]))
  rows.append(("final / teacher error", [r["final_error_ratio"] for r in records]))
  for i in range(len(records[0]["pseudo_all_top1"])):
    rows.append((f"pseudo-labels {i + 1} top-1 % (all)",
                 [100 * r["pseudo_all_top1"][i] for r in records]))
    rows.append((f"pseudo-labels {i + 1} top-1 % (as seen)",
                 [100 * (r["pseudo_seen_top1"][i] or 0) for r in records]))
    if all("ooc_seen_share" in r for r in records):
      rows.append((f"pseudo-labels {i + 1}: out-of-class images kept %",
                   [100 * (r["ooc_kept_of_all"][i] or 0) for r in records]))
      rows.append((f"pseudo-labels {i + 1}: out-of-class % of what the student saw",
                   [100 * (r["ooc_seen_share"][i] or 0) for r in records]))
  rows.append(("pipeline minutes (wall)", [r["pipeline_seconds"] / 60 if r["pipeline_seconds"]
                                           else None for r in records]))
  # Both cores busy on a quiet machine: CPU time / 2 is the wall time it would take.
  rows.append(("pipeline CPU minutes / 2", [r["pipeline_cpu_seconds"] / 120
                                            if r.get("pipeline_cpu_seconds") else None
                                            for r in records]))
  head = f"| {title} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
  lines = [head, "|---" * (len(seeds) + 2) + "|"]
  for label, vals in rows:
    cells = ["-" if v is None else f"{v:.2f}" for v in vals]
    lines.append(f"| {label} | " + " | ".join(cells) + f" | {_mean_sd(vals)} |")
  return "\n".join(lines) + "\n"


def plot_summaries(panels: Sequence[tuple], path: str) -> str:
  """One panel per (title, records): test error % of the CNN, the teacher and each
  student, a thin line per seed and the mean in bold, on a log axis (errors of 2% and
  10% side by side)."""
  sys.path.insert(0, ROOT)
  from noisy_student import plots  # pylint: disable=g-import-not-at-top
  plt = plots.pyplot()
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
  for ax, (title, records) in zip(axes[0], panels):
    names = (["cnn"] if all("cnn_top1" in r for r in records) else []) + list(
        records[0]["models"])
    def errors(r):
      return [100 * (1 - (r["cnn_top1"] if n == "cnn" else r["models"][n])) for n in names]
    rows = [errors(r) for r in records]
    for r, row in zip(records, rows):
      ax.plot(names, row, marker="o", lw=1, alpha=0.5, label=f"seed {r['seed']}")
    ax.plot(names, [statistics.mean(c) for c in zip(*rows)], "k-o", lw=2.5, label="mean")
    ax.set_yscale("log")
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
      axis_formatter(plt.FormatStrFormatter("%g"))  # 2, 3, 5, 10 rather than 10^0 powers.
    ax.set_title(title)
    ax.set_ylabel("test error % (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return plots.save_figure(fig, path)


def _plot_only(argv: Sequence[str]) -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--plot", required=True)
  p.add_argument("summaries", nargs="+")
  args = p.parse_args(argv)
  panels = []
  for path in args.summaries:
    with open(path) as f:
      summary = json.load(f)
    panels.append((summary.get("title", os.path.basename(os.path.dirname(path))),
                   summary["records"]))
  print(plot_summaries(panels, args.plot))


def main(argv=None) -> Optional[List[Dict]]:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a.startswith("--plot") for a in argv):
    return _plot_only(argv)
  extra = argv[argv.index("--") + 1:] if "--" in argv else []
  argv = argv[:argv.index("--")] if "--" in argv else argv
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--flagfile", default=os.path.join(ROOT, "flags/presets/small_images.flags"))
  p.add_argument("--generator", default="fonts", choices=("fonts", "pool"),
                 help="make_font_images.py (clean classes) or make_pool_images.py")
  p.add_argument("--classes", default="digits", help="the fonts generator's class set")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--data_root", default="data/fonts")
  p.add_argument("--out", required=True)
  p.add_argument("--num_labeled", type=int, default=600)
  p.add_argument("--num_unlabeled", type=int, default=None, help="fonts 15960, pool 13000")
  p.add_argument("--num_test", type=int, default=None, help="fonts 6500, pool 4500")
  p.add_argument("--image_size", type=int, default=None, help="of the images: fonts 32, pool 64")
  p.add_argument("--cnn_image_size", type=int, default=32)
  p.add_argument("--cnn_epochs", type=int, default=100)
  p.add_argument("--skip_cnn", action="store_true")
  p.add_argument("--teacher_from", default=None,
                 help="another benchmark --out whose seeds' finished teachers to start from")
  args = p.parse_args(argv)
  pool = args.generator == "pool"
  for name, fonts, pooled in (("num_unlabeled", 15960, 13000), ("num_test", 6500, 4500),
                              ("image_size", 32, 64)):
    if getattr(args, name) is None:
      setattr(args, name, pooled if pool else fonts)
  if args.teacher_from:
    args.teacher_from = os.path.abspath(args.teacher_from)
  args.data_root, args.out = os.path.abspath(args.data_root), os.path.abspath(args.out)
  records = [run_seed(args, int(s), extra) for s in args.seeds.split(",")]
  title = (f"{'pool' if pool else args.classes} "
           f"{args.num_labeled}/{args.num_unlabeled}/{args.num_test}")
  table = summarize(records, title)
  print(table)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump({"title": title, "flagfile": args.flagfile, "extra_flags": extra,
               "records": records}, f, indent=1)
  with open(os.path.join(args.out, "summary.md"), "w") as f:
    f.write(table)
  plot_summaries([(title, records)], os.path.join(args.out, "summary.png"))
  return records


if __name__ == "__main__":
  main()
