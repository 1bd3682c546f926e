"""Filter pseudo-labels by confidence and balance them per class, as a small JSON plan.

Choice: we do not write balanced shards. `balance()` writes a *balance plan* (per class:
which confidences to keep and a copy factor, plus a seed) that `read_pseudo_labels`
applies per record at read time with a keyed hash of the record id. Why: the images are
stored once (the original wrote a second, duplicated copy of 130M images), balancing
costs one pass over manifests (kilobytes) instead of a rewrite of the data, and a new
`num_image` or `min_threshold` is a new plan in seconds.

Thresholds come from the per-shard confidence histograms (fine bins, e.g. 1000) merged,
so memory is O(classes x bins), flat in the number of records. A surplus class keeps
every record above its boundary bin and a hashed fraction of the boundary bin (so the
kept set differs from the exact top-K only inside one bin of width 1/num_bins);
`exact_topk` instead reads (class, confidence, id hash) of every record (16 bytes each)
and keeps exactly the top K, ties broken by the hash. A class with fewer than `num_image`
records above `min_threshold` is duplicated: copies = num_image / count, stochastically
rounded per record (integer part + Bernoulli(remainder), seeded), as the original.

Two settings are resolved from the merged histograms before the plan is made
(`resolve`), so the plan stays a pure function of per-class statistics that any runner
can merge (sums of counts per class and bin): `adaptive_threshold="mean"` raises
`min_threshold` to the pool's mean confidence, and `num_image=-1` becomes the mean
per-class count of what passes the threshold. The plan records the resolved values.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student import plots
from noisy_student import settings
from noisy_student.config import FilterConfig
from tfrecords import format as fmt
from tfrecords import integrity
from tfrecords import plan as plan_lib
from tfrecords import reader


@dataclasses.dataclass(frozen=True)
class BalanceResult:
  plan_path: str
  report_path: str
  plot_path: str
  report: Dict[str, Any]


def merge_histograms(manifests: Sequence[Dict[str, Any]]) -> np.ndarray:
  """The manifests' sparse per-class histograms summed into int64 [C, num_bins]."""
  num_classes, num_bins = manifests[0]["num_classes"], manifests[0]["num_bins"]
  hist = np.zeros([num_classes, num_bins], np.int64)
  for m in manifests:
    for c, pairs in m["histogram"].items():
      if pairs:
        bins, counts = np.asarray(pairs, np.int64).T
        np.add.at(hist[int(c)], bins, counts)
  return hist


def mean_confidence(hist: np.ndarray) -> float:
  """The pool's mean confidence from merged histograms (bin centres; within half a bin)."""
  num_bins = hist.shape[1]
  total = hist.sum()
  centres = (np.arange(num_bins) + 0.5) / num_bins
  return float((hist.sum(axis=0) * centres).sum() / total) if total else 0.0


def resolve(hist: np.ndarray, cfg: FilterConfig) -> FilterConfig:
  """`cfg` with the threshold and target the histograms decide: the adaptive threshold
  applied to min_threshold, num_image=-1 replaced by the mean per-class count above it."""
  threshold = cfg.min_threshold
  if cfg.adaptive_threshold == "mean":
    # float32 like the records' confidences, so the plan's test matches the reader's.
    threshold = float(np.float32(max(threshold, mean_confidence(hist))))
  num_image = cfg.num_image
  if num_image < 0:
    above = _above_threshold(hist, threshold).sum()
    num_image = max(1, int(np.ceil(above / hist.shape[0])))
  return dataclasses.replace(cfg, min_threshold=threshold, num_image=num_image)


def _above_threshold(hist: np.ndarray, min_threshold: float) -> np.ndarray:
  """[C, B] counts of records >= min_threshold; the bin holding it is prorated linearly."""
  num_bins = hist.shape[1]
  first = int(fmt.confidence_bins(np.float32(min_threshold), num_bins))
  out = hist.astype(np.float64)
  out[:, :first] = 0
  out[:, first] *= min(1.0, max(0.0, first + 1 - min_threshold * num_bins))
  return out


def histogram_plan(hist: np.ndarray, cfg: FilterConfig) -> List[Dict[str, Any]]:
  """Per-class plan entries (lo_bin, keep, copies, estimated count) from merged histograms."""
  num_bins = hist.shape[1]
  above = _above_threshold(hist, cfg.min_threshold)
  entries = []
  for c in range(hist.shape[0]):
    total = float(above[c].sum())
    entry = {"lo_bin": -1, "keep": 1.0, "copies": 1.0, "available": total}
    if cfg.num_image > 0 and total > cfg.num_image:
      # Walk down from the top bin (as the original, but at 1/num_bins resolution) to the
      # bin where the running count reaches num_image; keep a fraction of that bin.
      cum_above = np.cumsum(above[c][::-1])[::-1]  # cum_above[b] = count in bins >= b.
      lo = int(np.flatnonzero(cum_above >= cfg.num_image)[-1])
      higher = cum_above[lo + 1] if lo + 1 < num_bins else 0.0
      entry.update(lo_bin=lo, keep=float((cfg.num_image - higher) / above[c][lo]),
                   threshold=lo / num_bins)
    elif cfg.num_image > 0 and cfg.upsample and total > 0:
      entry["copies"] = cfg.num_image / total
    entries.append(entry)
  return entries


def _read_small_fields(paths: Sequence[str], seed: int) -> Dict[str, np.ndarray]:
  """Class, confidence and id hash of every record (16 bytes each), for exact top-K."""
  parts = {"c": [], "x": [], "h": []}
  for f in reader.read_small_fields(paths).prefetch(2):
    parts["c"].append(f[fmt.CLASS_KEY].numpy())
    parts["x"].append(f[fmt.CONFIDENCE_KEY].numpy())
    parts["h"].append(plan_lib.id_hash(f[fmt.ID_KEY], seed).numpy())
  return {k: np.concatenate(v) if v else np.zeros([0]) for k, v in parts.items()}


def exact_entry(x: np.ndarray, h: np.ndarray, available: int,
                cfg: FilterConfig) -> Dict[str, Any]:
  """One class's exact top-K entry (threshold, tie_hash, copies, count) from the
  confidences `x` (float32) and id hashes `h` of its records above min_threshold (all
  of them, or at least its num_image largest (x, h) pairs), `available` in all."""
  entry = {"threshold": float(np.float32(cfg.min_threshold)), "tie_hash": 0,
           "copies": 1.0, "available": float(available)}
  if cfg.num_image > 0 and available > cfg.num_image:
    order = np.lexsort((-h, -x))  # Descending confidence, then descending hash.
    kth = order[cfg.num_image - 1]
    entry.update(threshold=float(x[kth]), tie_hash=int(h[kth]))
  elif cfg.num_image > 0 and cfg.upsample and available:
    entry["copies"] = cfg.num_image / available
  return entry


def exact_plan(paths: Sequence[str], num_classes: int, cfg: FilterConfig,
               seed: int = 0) -> List[Dict[str, Any]]:
  """Per-class exact top-K entries (`exact_entry`); `seed` breaks ties between equal
  confidences."""
  f = _read_small_fields(paths, seed)
  entries = []
  for c in range(num_classes):
    mask = (f["c"] == c) & (f["x"] >= np.float32(cfg.min_threshold))
    entries.append(exact_entry(f["x"][mask], f["h"][mask], int(mask.sum()), cfg))
  return entries


def make_plan(mode: str, entries: Sequence[Dict[str, Any]], cfg: FilterConfig, seed: int,
              num_bins: int, fingerprint_digest: str, *, asked: FilterConfig,
              pool_mean: Optional[float]) -> Dict[str, Any]:
  """The balance plan (tfrecords/plan.py reads it) of per-class `entries`; `cfg` is the
  resolved filter (`resolve`), `asked` the one given, `pool_mean` the pool's mean
  confidence (kept with the plan: what the adaptive settings were resolved from)."""
  return {"version": plan_lib.PLAN_VERSION, "mode": mode, "seed": seed,
          "min_threshold": cfg.min_threshold, "num_image": cfg.num_image,
          "num_bins": int(num_bins), "classes": list(entries),
          "fingerprint_digest": fingerprint_digest,
          "asked": {"min_threshold": asked.min_threshold, "num_image": asked.num_image,
                    "adaptive_threshold": asked.adaptive_threshold},
          "pool_mean_confidence": None if pool_mean is None else round(float(pool_mean), 6)}


def resolved_plan(hist: np.ndarray, cfg: FilterConfig, seed: int, num_bins: int,
                  fingerprint_digest: str) -> Dict[str, Any]:
  """The histogram-mode plan of merged histograms `hist`, the adaptive settings resolved
  from them (what `balance` does, for callers holding only the histograms: Beam)."""
  resolved = resolve(hist, cfg)
  return make_plan("histogram", histogram_plan(hist, resolved), resolved, seed, num_bins,
                   fingerprint_digest, asked=cfg, pool_mean=mean_confidence(hist))


def _class_names(pseudo_dir: str, num_classes: int,
                 class_names: Optional[Sequence[str]]) -> List[str]:
  """Given names, else predict's class_names.json, else the class indices."""
  if class_names is None:
    path = f"{pseudo_dir}/{fmt.CLASS_NAMES_FILE}"
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        class_names = json.load(f)["class_names"]
  names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes in {pseudo_dir}")
  return names


def write_plot(path: str, names: Sequence[str], before: np.ndarray, after: np.ndarray,
               num_image: int) -> None:
  """PNG of per-class counts before (all pseudo-labels) and after filter + balance."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(6.0, min(24.0, 0.3 * len(names))), 4.0))
  x = np.arange(len(names))
  if len(names) <= 50:
    ax.bar(x - 0.2, before, 0.4, label="before (all records)")
    ax.bar(x + 0.2, after, 0.4, label="after filter + balance")
    ax.set_xticks(x, names, rotation=90 if len(names) > 12 else 0)
  else:  # Too many bars to read: per-class counts as lines.
    ax.plot(x, before, label="before (all records)")
    ax.plot(x, after, label="after filter + balance")
  if num_image > 0:
    ax.axhline(num_image, color="grey", linestyle="--", label=f"num_image={num_image}")
  ax.set_xlabel("class")
  ax.set_ylabel("records")
  ax.legend()
  fig.tight_layout()
  plots.save_figure(fig, path)


def _report(cfg: FilterConfig, plan: Dict[str, Any], names: Sequence[str],
            before: np.ndarray, counted: Dict[str, np.ndarray], corrupt: int
            ) -> Dict[str, Any]:
  entries = plan["classes"]
  per_class = []
  for c, name in enumerate(names):
    kept, after = int(counted["kept"][c]), int(counted["copies"][c])
    per_class.append({
        "class": c, "name": name, "before": int(before[c]),
        "above_min_threshold": round(entries[c]["available"], 1),
        "threshold": round(entries[c].get("threshold", cfg.min_threshold), 6),
        "copy_factor": round(entries[c]["copies"], 6), "kept_unique": kept,
        "after": after, "duplicates": after - kept, "dropped": int(before[c]) - kept})
  totals = {k: int(sum(p[k] for p in per_class))
            for k in ("before", "kept_unique", "after", "duplicates", "dropped")}
  return {"mode": plan["mode"], "min_threshold": cfg.min_threshold,
          "num_image": cfg.num_image, "upsample": cfg.upsample, "seed": plan["seed"],
          "corrupt_skipped": corrupt, "asked": plan["asked"],
          "pool_mean_confidence": plan["pool_mean_confidence"],
          "totals": totals, "per_class": per_class}


def _manifests(pseudo_dir: str) -> List[Dict[str, Any]]:
  """The complete shards' manifests; for the original's filter output (no manifests),
  one built by a pass over its records' small fields."""
  if reader.is_original_output(pseudo_dir):
    paths = reader.resolve_shards(pseudo_dir)
    logging.info("%s holds no manifests: reading the classes and confidences of its %d "
                 "shards (the original's `label` and `prob`) once.", pseudo_dir, len(paths))
    return [reader.scan_manifest(paths)]
  manifests = fmt.list_manifests(pseudo_dir)
  integrity.check_complete(manifests, pseudo_dir)
  return manifests


def write_report(out: str, plan: Dict[str, Any], cfg: FilterConfig, names: Sequence[str],
                 before: np.ndarray, counted: Dict[str, np.ndarray], corrupt: int
                 ) -> Tuple[Dict[str, Any], str, str]:
  """balance_report.json and balance_counts.png in `out` for `plan` (made with the
  resolved filter `cfg`); `before`: records per class, `counted`:
  `plan_lib.count_copies`'s per-class sums. Returns (report, report path, plot path)."""
  report = _report(cfg, plan, names, before, counted, corrupt)
  report_path, plot_path = f"{out}/balance_report.json", f"{out}/balance_counts.png"
  fmt.write_json_atomic(report_path, report)
  write_plot(plot_path, names, before, counted["copies"], cfg.num_image)
  logging.info("balance (%s): %d records -> %d kept, %d after duplication; plan %s",
               plan["mode"], report["totals"]["before"], report["totals"]["kept_unique"],
               report["totals"]["after"], f"{out}/{plan_lib.PLAN_NAME}")
  return report, report_path, plot_path


def balance(pseudo_dir: str, filter_cfg: FilterConfig, *, output_dir: Optional[str] = None,
            class_names: Optional[Sequence[str]] = None, seed: int = 0) -> BalanceResult:
  """Computes the balance plan of a predict output directory; writes plan, report, plot.

  Args:
    pseudo_dir: predict's output directory (every worker's shards must be complete),
      or a directory of the original's filter output (read once to build what the plan
      needs).
    filter_cfg: min_threshold, adaptive_threshold, num_image (0: no balancing; -1: the
      mean class count), upsample, exact_topk.
    output_dir: where balance_plan.json, balance_report.json and balance_counts.png go
      (default pseudo_dir).
    class_names: names for the report (default: predict's class_names.json).
    seed: of the stochastic rounding of copies and of ties (the run's --seed).
  Returns:
    BalanceResult with the three paths and the report dict. The report's "after" counts
    are measured by one pass over the records' small fields (not estimated).
  """
  settings.require(filter_cfg)
  pseudo_dir = pseudo_dir.rstrip("/")
  manifests = _manifests(pseudo_dir)
  num_classes = int(manifests[0]["num_classes"])
  names = _class_names(pseudo_dir, num_classes, class_names)
  hist = merge_histograms(manifests)
  asked, filter_cfg = filter_cfg, resolve(hist, filter_cfg)
  if filter_cfg != asked:
    logging.info("balance: the pool's mean confidence is %.4f; threshold %.4f, target %d "
                 "per class", mean_confidence(hist), filter_cfg.min_threshold,
                 filter_cfg.num_image)
  num_bins, digest = manifests[0]["num_bins"], manifests[0]["fingerprint_digest"]
  if filter_cfg.exact_topk:
    entries = exact_plan(reader.resolve_shards(pseudo_dir), num_classes, filter_cfg, seed)
    plan = make_plan("exact", entries, filter_cfg, seed, num_bins, digest, asked=asked,
                     pool_mean=mean_confidence(hist))
  else:  # The plan a Beam job makes from the same histograms (beam/combiners.py).
    plan = resolved_plan(hist, asked, seed, num_bins, digest)
  out = (output_dir or pseudo_dir).rstrip("/")
  tf.io.gfile.makedirs(out)
  plan_path = f"{out}/{plan_lib.PLAN_NAME}"
  fmt.write_json_atomic(plan_path, plan)
  counted = plan_lib.count_copies(pseudo_dir, plan, num_classes)
  before = np.sum([m["class_counts"] for m in manifests], axis=0)
  report, report_path, plot_path = write_report(
      out, plan, filter_cfg, names, before, counted,
      sum(m["skipped_count"] for m in manifests))
  return BalanceResult(plan_path, report_path, plot_path, report)
