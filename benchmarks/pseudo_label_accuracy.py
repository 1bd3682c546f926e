"""How right the teacher's pseudo-labels were, before and after filtering and balancing.

  python benchmarks/pseudo_label_accuracy.py --truth=DATA/unlabeled_truth.json \
      --pseudo_dir=RUN/pseudo_1 [--pseudo_dir=RUN/pseudo_2 ...] [--output=pl.json]
  python benchmarks/pseudo_label_accuracy.py --truth=... --model_dir=RUN   (every pseudo_*)

Reads the shards a pipeline wrote with `tfrecords.read_pseudo_labels` (docs/pseudo_labels.md)
and the truth kept aside by benchmarks/make_font_images.py ({file name: class name}). A
record's `image/id` is its image's path; it is matched to the truth by its path relative
to the unlabeled folder, else by its base name. Reports, per pseudo-label directory:

  all:      every record: top-1 of `classes`, mean probability of the true class (the
            soft label's accuracy), mean confidence;
  selected: the records the balance plan keeps (each once): how many, their top-1;
  seen:     as the student reads them (the plan's copies applied): how many, top-1.
Images whose truth starts with OOC_PREFIX (benchmarks/make_pool_images.py) are in no
class: top-1 and the true-class probability are over the in-class records only, and each
part adds "ooc": how many out-of-class records it holds, their share of its records
(copies counted in "seen") and, for "selected", the fraction of all out-of-class images
the plan kept; "all" adds the mean confidence of the in-class and out-of-class records.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from typing import Dict, Mapping

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfrecords  # noqa: E402


def class_names_of(pseudo_dir: str) -> list:
  """The class names predict stored next to its shards."""
  with open(os.path.join(pseudo_dir, "class_names.json")) as f:
    return list(json.load(f)["class_names"])


OOC_PREFIX = "ooc:"  # Truth of an out-of-class image (make_pool_images.OOC_PREFIX).


def truth_index(truth: Mapping[str, str], ids: np.ndarray, names: list) -> np.ndarray:
  """The true class index of each record id (ids are image paths); -1: out of class."""
  index = {n: i for i, n in enumerate(names)}
  out = np.empty(len(ids), np.int64)
  for k, raw in enumerate(ids):
    path = raw.decode()
    rel = path.split("/unlabeled/", 1)[-1] if "/unlabeled/" in path else os.path.basename(path)
    cls = truth.get(rel, truth.get(os.path.basename(path)))
    if cls is None:
      raise KeyError(f"pseudo-label id {path} is not in the truth file")
    out[k] = -1 if cls.startswith(OOC_PREFIX) else index[cls]
  return out


def _ooc(true: np.ndarray, total_ooc: int) -> Dict[str, float]:
  """How many out-of-class records, their share, and the fraction of all of them."""
  n = int((true < 0).sum())
  return {"records": n, "share": n / max(1, true.size), "of_all": n / max(1, total_ooc)}


def _top1(classes: np.ndarray, true: np.ndarray):
  inside = true >= 0
  return float((classes[inside] == true[inside]).mean()) if inside.any() else None


def _columns(ds) -> Dict[str, np.ndarray]:
  """ids, classes, probabilities of a record dataset, as arrays (image bytes dropped)."""
  ids, classes, probs = [], [], []
  for batch in ds.map(lambda r: {k: r[k] for k in (tfrecords.ID_KEY, tfrecords.CLASS_KEY,
                                                   tfrecords.PROBS_KEY)}).batch(4096):
    ids.append(batch[tfrecords.ID_KEY].numpy())
    classes.append(batch[tfrecords.CLASS_KEY].numpy())
    probs.append(batch[tfrecords.PROBS_KEY].numpy())
  if not ids:
    return {"ids": np.array([], object), "classes": np.array([], np.int64),
            "probs": np.zeros((0, 0), np.float32)}
  return {"ids": np.concatenate(ids), "classes": np.concatenate(classes),
          "probs": np.concatenate(probs)}


def measure(pseudo_dir: str, truth: Mapping[str, str]) -> Dict[str, object]:
  """The report of one pseudo-label directory (see the module docstring)."""
  names = class_names_of(pseudo_dir)
  every = _columns(tfrecords.read_pseudo_labels(pseudo_dir))
  true = truth_index(truth, every["ids"], names)
  inside = true >= 0
  conf = every["probs"].max(axis=1) if true.size else np.zeros([0])
  report = {"pseudo_dir": pseudo_dir, "records": int(len(true)),
            "all": {"top1": _top1(every["classes"], true),
                    "true_class_probability": float(every["probs"][inside][
                        np.arange(int(inside.sum())), true[inside]].mean()),
                    "mean_confidence": float(conf.mean()),
                    "per_class_top1": {n: float((every["classes"][true == i] == i).mean())
                                       for i, n in enumerate(names) if (true == i).any()}}}
  total_ooc = int((~inside).sum())
  if total_ooc:
    report["all"]["ooc"] = dict(_ooc(true, total_ooc),
                                mean_confidence=float(conf[~inside].mean()),
                                in_class_mean_confidence=float(conf[inside].mean()))
  plan = tfrecords.plan_in(pseudo_dir)
  if plan is not None:
    seen = _columns(tfrecords.read_pseudo_labels(pseudo_dir, plan))
    seen_true = truth_index(truth, seen["ids"], names)
    _, first = np.unique(seen["ids"], return_index=True)
    report["selected"] = {"records": int(first.size),
                          "top1": _top1(seen["classes"][first], seen_true[first])}
    report["seen"] = {"records": int(seen_true.size),
                      "top1": _top1(seen["classes"], seen_true)}
    if total_ooc:
      report["selected"]["ooc"] = _ooc(seen_true[first], total_ooc)
      report["seen"]["ooc"] = _ooc(seen_true, total_ooc)
  return report


def pseudo_dirs_of(model_dir: str) -> list:
  """A pipeline's pseudo-label directories in iteration order (pseudo_1, pseudo_2, ...)."""
  found = glob.glob(os.path.join(model_dir, "pseudo_*"))
  return sorted((d for d in found if os.path.isdir(d)),
                key=lambda d: int(d.rsplit("_", 1)[-1]) if d.rsplit("_", 1)[-1].isdigit() else 0)


def main(argv=None) -> list:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--truth", required=True, help="unlabeled_truth.json of the data set")
  p.add_argument("--pseudo_dir", action="append", default=[])
  p.add_argument("--model_dir", default=None, help="a pipeline run: all its pseudo_* dirs")
  p.add_argument("--output", default=None)
  args = p.parse_args(argv)
  dirs = list(args.pseudo_dir) + (pseudo_dirs_of(args.model_dir) if args.model_dir else [])
  if not dirs:
    p.error("give --pseudo_dir or --model_dir (with pseudo_* directories)")
  with open(args.truth) as f:
    truth = json.load(f)
  reports = [measure(d, truth) for d in dirs]
  for r in reports:
    line = f"{r['pseudo_dir']}: {r['records']} records, top-1 {100 * r['all']['top1']:.2f}%"
    if "seen" in r:
      line += (f"; kept {r['selected']['records']} (top-1 "
               f"{100 * (r['selected']['top1'] or 0):.2f}%), student saw {r['seen']['records']}"
               f" (top-1 {100 * (r['seen']['top1'] or 0):.2f}%)")
      if "ooc" in r["seen"]:
        line += (f"; out of class: {r['all']['ooc']['records']}, of which "
                 f"{100 * r['selected']['ooc']['of_all']:.1f}% kept, "
                 f"{100 * r['seen']['ooc']['share']:.1f}% of what the student saw")
    print(line)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(reports, f, indent=1)
  return reports


if __name__ == "__main__":
  main()
