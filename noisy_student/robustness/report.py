"""Writes a robustness result: `<name>_robustness.json`, three PNGs, TensorBoard scalars."""
from __future__ import annotations

import json
from typing import Any, Dict, List

from absl import logging
import tensorflow as tf

from noisy_student import atomic
from noisy_student import evaluate
from noisy_student import plots
from noisy_student.robustness import runner

_CATEGORY_STYLE = {"noise": "o-", "blur": "s--", "weather": "^-.", "digital": "d:"}


def plot_corruptions(result: Dict[str, Any], path: str) -> None:
  """Top-1 error against severity (0 = clean), one line per corruption."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  severities = [0] + result["settings"]["severities"]
  for name, entry in result["corruptions"].items():
    ce = "" if entry["ce"] is None else f" (CE {entry['ce']:.0f})"
    ax.plot(severities, [100 * e for e in [result["clean_error"]] + entry["errors"]],
            _CATEGORY_STYLE.get(entry["category"], "o-"), label=f"{name}{ce}")
  ax.set_xticks(severities)
  ax.set_xlabel("severity (0 = clean)")
  ax.set_ylabel("top-1 error (%)")
  mce = "" if result["mce"] is None else f"mCE {result['mce']:.1f}, "
  ax.set_title(f"{result['name']}: corruptions ({mce}mean error "
               f"{100 * (result['mean_corruption_error'] or 0):.1f}%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_perturbations(result: Dict[str, Any], path: str) -> None:
  """Flip probability per perturbation (FR against the baseline in the labels)."""
  plt = plots.pyplot()
  names = list(result["perturbations"])
  values = [100 * result["perturbations"][n]["flip_probability"] for n in names]
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names) + 2), 4))
  bars = ax.bar(range(len(names)), values, color="tab:orange")
  for bar, n in zip(bars, names):
    fr = result["perturbations"][n]["fr"]
    ax.annotate("" if fr is None else f"FR {fr:.0f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
  ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
  ax.set_ylabel("flip probability (%)")
  mfr = "" if result["mfr"] is None else f"mFR {result['mfr']:.1f}, "
  ax.set_title(f"{result['name']}: perturbations ({mfr}"
               f"{result['settings']['perturbation_frames']} frames)")
  ax.grid(alpha=0.3, axis="y")
  fig.tight_layout()
  plots.save_figure(fig, path)


def plot_fgsm(result: Dict[str, Any], path: str) -> None:
  """Top-1 accuracy under FGSM against eps."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  eps, acc = result["fgsm"]["epsilons"], result["fgsm"]["accuracy"]
  ax.plot(eps, [100 * a for a in acc], "o-", color="tab:red")
  if eps and min(eps) >= 0 and max(eps) > 0:
    ax.set_xscale("symlog", linthresh=1)
  ax.set_xticks(eps, [f"{e:g}" for e in eps])
  ax.set_xlabel("eps (pixels of 0..255)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_ylim(0, 100)
  ax.set_title(f"{result['name']}: FGSM")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  plots.save_figure(fig, path)


def scalars(result: Dict[str, Any]) -> Dict[str, float]:
  """The TensorBoard scalars of a result (None values left out)."""
  out = {"robustness/clean_error": result["clean_error"],
         "robustness/mce": result["mce"], "robustness/relative_mce": result["relative_mce"],
         "robustness/mean_corruption_error": result["mean_corruption_error"],
         "robustness/mfr": result["mfr"],
         "robustness/mean_flip_probability": result["mean_flip_probability"]}
  for name, entry in result["corruptions"].items():
    out[f"robustness/corruption_error/{name}"] = entry["mean_error"]
  for name, entry in result["perturbations"].items():
    out[f"robustness/flip_probability/{name}"] = entry["flip_probability"]
  for eps, acc in zip(result["fgsm"]["epsilons"], result["fgsm"]["accuracy"]):
    out[f"robustness/fgsm_accuracy/eps_{eps:g}"] = acc
  return {k: v for k, v in out.items() if v is not None}


def write_report(result: Dict[str, Any], output_dir: str, *, name: str,
                 step: int = 0) -> str:
  """Writes `<name>_robustness.json` and `<name>_{corruptions,perturbations,fgsm}.png`
  into `output_dir` (any tf.io.gfile path), TensorBoard scalars into `<output_dir>/<name>`;
  returns the JSON's path."""
  tf.io.gfile.makedirs(output_dir)
  prefix = f"{output_dir.rstrip('/')}/{name}"
  path = f"{prefix}_robustness.json"
  atomic.write_text(path, json.dumps(result, indent=1))
  if result["corruptions"]:
    plot_corruptions(result, f"{prefix}_corruptions.png")
  if result["perturbations"]:
    plot_perturbations(result, f"{prefix}_perturbations.png")
  if result["fgsm"]["accuracy"]:
    plot_fgsm(result, f"{prefix}_fgsm.png")
  evaluate.write_scalars(prefix, scalars(result), step)
  logging.info("%s robustness: %s (%s)", name, runner.summary(result), path)
  return path


def read_report(path: str) -> Dict[str, Any]:
  """A `<name>_robustness.json` -> the result dict; a clear error for anything else."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"robustness report {path}: no such file")
  with tf.io.gfile.GFile(path) as f:
    try:
      result = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"robustness report {path}: not JSON ({e})") from None
  missing = [k for k in ("settings", "clean_error", "corruptions", "perturbations")
             if k not in result]
  if missing:
    raise ValueError(f"robustness report {path}: not a robustness report (no "
                     f"{', '.join(missing)})")
  return result


def summary_fields(result: Dict[str, Any], path: str) -> Dict[str, Any]:
  """The few numbers an evaluation's result row carries (JSON-able)."""
  eps, acc = runner.fgsm_at_largest_epsilon(result)
  return {"mce": result["mce"], "corruption_error": result["mean_corruption_error"],
          "mfr": result["mfr"], "flip_probability": result["mean_flip_probability"],
          "fgsm_epsilon": eps, "fgsm_accuracy": acc, "robustness_report": path}


SUMMARY_KEYS: List[str] = ["mce", "corruption_error", "mfr", "flip_probability",
                           "fgsm_epsilon", "fgsm_accuracy", "robustness_report"]
