"""The paper's ablations at small scale, from one command: `noisy-student --mode=ablate`.

For each seed, `<model_dir>/seed_<s>/` holds an ordinary pipeline run: a teacher, then
`--ablation_iterations` equal-size noised students, each the next one's teacher. Its rows
give "teacher alone" and "iterations 1, 2, 3". Every other variant is one more student
trained from that run's iteration-1 pseudo-labels with exactly one thing changed (its
noise, its labels, its balancing, its size), so it differs from the iteration-1 student
in that alone, and the teacher and predict phases are shared by all. Each training and
evaluation is a phase with a completion marker in the seed's `phases/`, so a killed
ablation started again with the same flags resumes where it stopped.

The summary -- `ablations.json`, `ablations.png` and a printed table -- gives, per
variant, top-1 over the seeds (mean and sample standard deviation) and the mean paired
difference from the teacher and from the iteration-1 student of the same seed: paired
differences cancel most of the split-to-split spread of a small evaluation set.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from noisy_student import atomic
from noisy_student import config as config_lib
from noisy_student import phases
from noisy_student import context
from noisy_student import pipeline
from noisy_student import plots
from noisy_student.ablation_variants import VARIANTS, replace
from noisy_student.results import BalancedPseudoLabels, Evaluation, TrainedModel

Config = config_lib.Config
Row = Dict[str, Any]


def seed_config(cfg: Config, seed: int) -> Config:
  """The main arm of one seed: a pipeline of --ablation_iterations students of the
  teacher's size (whatever --student_model_names and --iterations say: every seed's rows
  are the same iterations), no fine-tune or export."""
  student = cfg.model.model_name
  return dataclasses.replace(
      replace(cfg, data={"seed": seed},
               train={"model_dir": f"{cfg.train.model_dir.rstrip('/')}/seed_{seed}"},
               pipeline={"finetune": False, "export_at_end": False, "iterations": "all",
                         "student_unlabel_ratios": cfg.pipeline.student_unlabel_ratios[:1]}),
      student_model_names=(student,) * cfg.ablation.iterations)


def _variant_row(ctx: context.Context, name: str, balanced: BalancedPseudoLabels) -> Row:
  """Trains and evaluates variant `name` of one seed (both resumable phases)."""
  base = ctx.cfg
  num_classes = len(ctx.class_names)
  vcfg = VARIANTS[name].change(base, balanced.totals, num_classes)
  vctx = ctx.derive(vcfg)
  markers = phases.Markers(ctx.root)
  fp = pipeline.fingerprints(vcfg)
  fingerprint = {**fp["data"], **fp["train"], **fp["filter"], "variant": name,
                 "balanced": balanced}
  directory = f"ablation_{name}"
  if VARIANTS[name].rebalances:
    balanced = phases.run_phase(
        markers, f"balance-{directory}", fingerprint,
        lambda: pipeline.balance_pseudo_labels(vctx, balanced.output_dir,
                                               plan_dir=ctx.path(directory, "plan")),
        BalancedPseudoLabels)
  student = base.student_model_names[0]
  ratio = pipeline.student_ratio(base, 1)
  model = phases.run_phase(
      markers, directory, fingerprint,
      lambda: pipeline.train_student(vctx, 1, student, ratio, balanced, directory),
      TrainedModel)
  result = phases.run_phase(
      markers, f"eval-{directory}", {"model": model, **fp["eval"]},
      lambda: pipeline.evaluate_model(vctx, model, directory), Evaluation,
      redo_if_changed=True)
  return pipeline.result_row(name, model, result)


def run_seed(ctx: context.Context, names: Sequence[str]) -> Dict[str, Row]:
  """The main arm and the variants of one seed -> {row name: result row}."""
  rows = pipeline.run_pipeline(ctx.cfg, ctx)
  out = {"teacher": dict(rows[0], name="teacher")}
  for i, row in enumerate(rows[1:], start=1):
    out[f"iteration_{i}"] = dict(row, name=f"iteration_{i}")
  balanced = BalancedPseudoLabels.from_json(
      phases.Markers(ctx.root).get("balance-1")["result"])
  for name in names:
    out[name] = _variant_row(ctx, name, balanced)
  return out


def _stats(values: Sequence[float]) -> Dict[str, Any]:
  a = np.asarray(values, np.float64)
  return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
          "n": int(a.size), "values": [float(v) for v in a]}


def describe(name: str, cfg: Config) -> str:
  """Row description for the table."""
  if name == "teacher":
    return "teacher alone (supervised on the labeled images)"
  if name.startswith("iteration_"):
    i = int(name.split("_")[1])
    return f"Noisy Student, {i} iteration{'s' if i > 1 else ''}"
  if name == "balance":
    return ("student without balancing" if cfg.filter.num_image
            else "student with balancing (target: mean class count)")
  return VARIANTS[name].description


_METRICS = ("top1", "mce", "mfr")  # Summarised when every seed's row has them.


def summarize(per_seed: Dict[int, Dict[str, Row]], cfg: Config) -> List[Row]:
  """Per row name: mean/std over seeds of each metric and the paired differences."""
  seeds = sorted(per_seed)
  names = list(per_seed[seeds[0]])
  summary = []
  for name in names:
    row = {"name": name, "description": describe(name, cfg),
           "paper": VARIANTS[name].paper if name in VARIANTS else "", "seeds": seeds}
    for metric in _METRICS:
      if all(per_seed[s][name].get(metric) is not None for s in seeds):
        row[metric] = _stats([per_seed[s][name][metric] for s in seeds])
    for ref in ("teacher", "iteration_1"):
      row[f"top1_minus_{ref}"] = _stats(
          [per_seed[s][name]["top1"] - per_seed[s][ref]["top1"] for s in seeds])
    summary.append(row)
  return summary


def _pm(stats: Dict[str, Any], scale: float = 100.0, signed: bool = False) -> str:
  sign = "+" if signed else ""
  return f"{scale * stats['mean']:{sign}.2f} ± {scale * stats['std']:.2f}"


def format_table(summary: Sequence[Row]) -> str:
  """The ablation table: top-1 (%) mean ± std, paired gains, robustness when measured."""
  extra = [m for m in ("mce", "mfr") if all(m in r for r in summary)]
  head = (f"{'variant':<22}{'top-1 %':>16}{'vs teacher':>16}{'vs iteration 1':>17}"
          + "".join(f"{m:>16}" for m in extra) + "  seeds")
  lines = [head]
  for r in summary:
    lines.append(f"{r['name']:<22}{_pm(r['top1']):>16}"
                 f"{_pm(r['top1_minus_teacher'], signed=True):>16}"
                 f"{_pm(r['top1_minus_iteration_1'], signed=True):>17}"
                 + "".join(f"{_pm(r[m], 1.0):>16}" for m in extra)
                 + f"  {r['top1']['n']}")
  return "\n".join(lines)


def markdown_table(summary: Sequence[Row]) -> str:
  """The table as Markdown (for a results page): top-1 and paired gains in points."""
  extra = [m for m in ("mce", "mfr") if all(m in r for r in summary)]
  lines = ["| variant | what | top-1 % | vs teacher | vs iteration 1 |"
           + "".join(f" {m} |" for m in extra),
           "|---|---|---|---|---|" + "---|" * len(extra)]
  for r in summary:
    lines.append(f"| `{r['name']}` | {r['description']} | {_pm(r['top1'])} | "
                 f"{_pm(r['top1_minus_teacher'], signed=True)} | "
                 f"{_pm(r['top1_minus_iteration_1'], signed=True)} |"
                 + "".join(f" {_pm(r[m], 1.0)} |" for m in extra))
  return "\n".join(lines) + "\n"


def plot(summary: Sequence[Row], path: str) -> None:
  """Horizontal bars of mean top-1 with the spread, each seed as a dot, teacher line."""
  plt = plots.pyplot()
  names = [r["name"] for r in summary][::-1]
  rows = {r["name"]: r for r in summary}
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
  y = np.arange(len(names))
  means = [100 * rows[n]["top1"]["mean"] for n in names]
  stds = [100 * rows[n]["top1"]["std"] for n in names]
  colors = ["tab:gray" if n == "teacher" else "tab:blue" if n.startswith("iteration")
            else "tab:orange" for n in names]
  ax.barh(y, means, xerr=stds, color=colors, alpha=0.6, capsize=3)
  for yi, n in zip(y, names):
    values = [100 * v for v in rows[n]["top1"]["values"]]
    ax.plot(values, [yi] * len(values), "k.", markersize=4)
  ax.axvline(100 * rows["teacher"]["top1"]["mean"], color="tab:gray", linestyle="--",
             label="teacher (mean)")
  low = min(min(100 * v for v in rows[n]["top1"]["values"]) for n in names)
  ax.set_xlim(max(0.0, low - 3), min(100.0, max(m + s for m, s in zip(means, stds)) + 1.5))
  ax.set_yticks(y, names)
  ax.set_xlabel(f"top-1 on the eval data (%), mean ± std over {len(summary[0]['seeds'])} "
                "seeds; dots: seeds")
  ax.set_title("Noisy Student ablations")
  ax.grid(axis="x", alpha=0.3)
  ax.legend(loc="lower right")
  fig.tight_layout()
  plots.save_figure(fig, path)


def write_summary(summary: Sequence[Row], per_seed: Dict[int, Dict[str, Row]],
                  root: str) -> str:
  """Prints the table; writes `ablations.json`, `.png` and `.md`; returns the JSON path."""
  table = format_table(summary)
  print(table, flush=True)
  path = f"{root.rstrip('/')}/ablations.json"
  atomic.write_text(path, json.dumps(
      {"summary": list(summary), "table": table.splitlines(),
       "per_seed": {str(s): rows for s, rows in per_seed.items()}}, indent=1))
  plot(summary, f"{root.rstrip('/')}/ablations.png")
  atomic.write_text(f"{root.rstrip('/')}/ablations.md", markdown_table(summary))
  logging.info("Ablations: %s and ablations.png", path)
  return path


def run_ablations(cfg: Config, ctx: Optional[context.Context] = None) -> List[Row]:
  """Every seed's main arm and variants (resumable), then the summary; returns it."""
  ctx = ctx or context.Context(cfg)
  names = list(cfg.ablation.ablations)  # Known names: checks.check(cfg) saw to that.
  per_seed = {}
  for seed in cfg.ablation.seeds:
    logging.info("Ablations: seed %d of %s", seed, list(cfg.ablation.seeds))
    per_seed[seed] = run_seed(ctx.derive(seed_config(cfg, seed)), names)
  summary = summarize(per_seed, cfg)
  write_summary(summary, per_seed, ctx.root)
  return summary
