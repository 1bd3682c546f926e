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


def _truth_index(truth: Mapping[str, str], ids: np.ndarray, names: list) -> np.ndarray:
  """The true class index of each record id (ids are image paths)."""
  index = {n: i for i, n in enumerate(names)}
  out = np.empty(len(ids), np.int64)
  for k, raw in enumerate(ids):
    path = raw.decode()
    rel = path.split("/unlabeled/", 1)[-1] if "/unlabeled/" in path else os.path.basename(path)
    cls = truth.get(rel, truth.get(os.path.basename(path)))
    if cls is None:
      raise KeyError(f"pseudo-label id {path} is not in the truth file")
    out[k] = index[cls]
  return out


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
  true = _truth_index(truth, every["ids"], names)
  right = every["classes"] == true
  report = {"pseudo_dir": pseudo_dir, "records": int(len(true)),
            "all": {"top1": float(right.mean()),
                    "true_class_probability": float(every["probs"][np.arange(len(true)),
                                                                   true].mean()),
                    "mean_confidence": float(every["probs"].max(axis=1).mean()),
                    "per_class_top1": {n: float(right[true == i].mean())
                                       for i, n in enumerate(names) if (true == i).any()}}}
  plan = tfrecords.plan_in(pseudo_dir)
  if plan is not None:
    seen = _columns(tfrecords.read_pseudo_labels(pseudo_dir, plan))
    seen_right = seen["classes"] == _truth_index(truth, seen["ids"], names)
    uniq, first = np.unique(seen["ids"], return_index=True)
    report["selected"] = {"records": int(uniq.size),
                          "top1": float(seen_right[first].mean()) if uniq.size else None}
    report["seen"] = {"records": int(seen_right.size),
                      "top1": float(seen_right.mean()) if seen_right.size else None}
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
    print(line)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(reports, f, indent=1)
  return reports


if __name__ == "__main__":
  main()
