"""Out-of-class defences compared on one teacher's pseudo-labels, before any student.

  python benchmarks/compare_filters.py --model_dir=RUN/seed_0/pipeline \
      --data_dir=DATA [--output=RUN/seed_0/filters.json]

The run's teacher (phases/teacher.json) labels the unlabeled folder as predict does
(un-noised, eval preprocessing) and also a second view of each image (VIEWS: a zoom, a
shift, a flip); the logits are kept. Each candidate filter (CANDIDATES, with and without
the paper's per-class top-K and duplication) is applied to them and compared with the
truth that benchmarks/make_pool_images.py kept aside. Per candidate: records kept
(unique), their in-class top-1, the share of out-of-class images kept, what the student
would see with copies counted (records, out-of-class share, wrong targets: out-of-class
plus wrong in-class), and the per-class counts (smallest, largest). Per score, the AUROC
of in-class against out-of-class images and of right in-class pseudo-labels against all
others (wrong or out of class). Costs one teacher pass per view, no training.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pseudo_label_accuracy  # noqa: E402

# Second views of the eval-preprocessed image (float [S, S, 3] on 0..255).
VIEWS: Dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "zoom": lambda x: tf.image.resize(tf.image.central_crop(x, 0.8), tf.shape(x)[:2]),
    "shift": lambda x: tf.image.resize(
        tf.pad(x, [[4, 0], [4, 0], [0, 0]], mode="SYMMETRIC")[:-4, :-4], tf.shape(x)[:2]),
    "flip": tf.image.flip_left_right,
}


def teacher_of(model_dir: str) -> Dict:
  """The finished teacher phase's result of the run in model_dir, paths resolved."""
  from noisy_student import phases  # pylint: disable=g-import-not-at-top
  marker = phases.Markers(model_dir).get("teacher")
  if marker is None:
    raise SystemExit(f"{model_dir}: no finished teacher (phases/teacher.json)")
  return marker["result"]


def teacher_logits(model_dir: str, unlabeled: str, views: List[str],
                   batch_size: int = 500) -> Tuple[List[str], Dict[str, np.ndarray]]:
  """(image paths, {"plain" and each view: logits [N, C]}) of the run's teacher."""
  from noisy_student import train as train_lib  # pylint: disable=g-import-not-at-top
  from noisy_student.predict import run as predict_run  # pylint: disable=g-import-not-at-top
  teacher = teacher_of(model_dir)
  model = train_lib.load_for_inference(teacher["path"])
  pre = predict_run.default_preprocess(teacher["image_size"], teacher["small_image"])
  paths = sorted(os.path.join(unlabeled, n) for n in os.listdir(unlabeled))
  ds = tf.data.Dataset.from_tensor_slices(paths).map(
      lambda p: pre(tf.io.read_file(p)), num_parallel_calls=tf.data.AUTOTUNE)
  fns = {"plain": lambda x: x, **{v: VIEWS[v] for v in views}}
  out = {}
  for name, fn in fns.items():
    batches = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    step = tf.function(lambda x: tf.cast(model(x, training=False), tf.float32))
    out[name] = np.concatenate([step(b).numpy() for b in batches])
  return paths, out


def softmax(logits: np.ndarray) -> np.ndarray:
  z = np.exp(logits - logits.max(axis=1, keepdims=True))
  return z / z.sum(axis=1, keepdims=True)


def scores(logits: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Per-record scores (higher: more likely a right in-class label) from the logits."""
  p = softmax(logits["plain"])
  cls = p.argmax(axis=1)
  top2 = np.sort(p, axis=1)[:, -2:]
  c = p.shape[1]
  out = {"confidence": top2[:, 1], "margin": top2[:, 1] - top2[:, 0],
         "neg_entropy": 1 + (p * np.log(np.clip(p, 1e-12, 1))).sum(axis=1) / np.log(c),
         "energy": np.log(np.exp(logits["plain"] - logits["plain"].max(1, keepdims=True))
                          .sum(axis=1)) + logits["plain"].max(axis=1),
         "max_logit": logits["plain"].max(axis=1)}
  for view in (v for v in logits if v != "plain"):
    q = softmax(logits[view])
    # The second view's probability of the first view's class: low when the label
    # does not survive a class-preserving change of the image.
    out[f"{view}_min"] = np.minimum(top2[:, 1], q[np.arange(len(cls)), cls])
    out[f"{view}_mean"] = ((p + q) / 2).max(axis=1) * ((p + q).argmax(axis=1) == cls)
  return out


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
  """Area under the ROC curve of `score` for the boolean `positive` (ties count half)."""
  from scipy.stats import rankdata  # pylint: disable=g-import-not-at-top
  pos, n = positive.sum(), positive.size
  if pos in (0, n):
    return float("nan")
  ranks = rankdata(score)
  return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * (n - pos)))


def per_class_thresholds(name: str, p: np.ndarray, conf: np.ndarray, cls: np.ndarray,
                         tau: float) -> np.ndarray:
  """[C] thresholds of the class-adaptive rules, from pool statistics (offline forms)."""
  c = p.shape[1]
  if name == "freematch":  # SAT (Wang et al. 2023): global mean confidence x MaxNorm(p~).
    mean_p = p.mean(axis=0)
    return conf.mean() * mean_p / mean_p.max()
  if name == "flexmatch":  # Zhang et al. 2021: beta_c = sigma_c / max sigma, convex M.
    sigma = np.bincount(cls[conf > tau], minlength=c).astype(np.float64)
    beta = sigma / max(1.0, sigma.max())
    return tau * beta / (2 - beta)
  raise ValueError(name)


def keep_weights(rule: Dict, p: np.ndarray, s: Dict[str, np.ndarray]) -> np.ndarray:
  """[N] in [0, 1]: how much of each record a rule keeps (soft only for SoftMatch)."""
  conf, cls = s["confidence"], p.argmax(axis=1)
  kind = rule["kind"]
  if kind == "threshold":
    return (s[rule["score"]] >= rule["at"]).astype(np.float64) * (conf >= 0.3)
  if kind == "quantile":  # The threshold that keeps `keep` of the pool.
    at = np.quantile(s[rule["score"]], 1 - rule["keep"])
    return (s[rule["score"]] >= at).astype(np.float64)
  if kind == "pool_mean":  # --adaptive_threshold=mean: the pool's mean confidence.
    return (conf >= max(0.3, conf.mean())).astype(np.float64)
  if kind in ("freematch", "flexmatch"):
    t = per_class_thresholds(kind, p, conf, cls, rule.get("tau", 0.95))
    return (conf >= t[cls]).astype(np.float64)
  if kind == "softmatch":  # Chen et al. 2023: truncated Gaussian of the confidence.
    mu, var = conf.mean(), conf.var(ddof=1)
    return np.exp(-np.minimum(conf - mu, 0) ** 2 / (2 * var / rule.get("n_sigma", 2) ** 2))
  raise ValueError(kind)


def balanced_copies(w: np.ndarray, score: np.ndarray, cls: np.ndarray, c: int,
                    k: int) -> np.ndarray:
  """Expected copies per record after per-class top-K by `score` among the kept ones,
  short classes duplicated to K (the filter phase's rule, in expectation)."""
  copies = w.copy()
  for j in range(c):
    idx = np.flatnonzero((cls == j) & (w > 0))
    total = w[idx].sum()
    if total > k:
      order = idx[np.argsort(-score[idx], kind="stable")]
      cum = np.cumsum(w[order])
      copies[order[cum > k]] = 0
    elif total > 0:
      copies[idx] *= k / total
  return copies


def evaluate(copies: np.ndarray, kept: np.ndarray, cls: np.ndarray, true: np.ndarray,
             c: int) -> Dict[str, float]:
  """The row of one candidate: kept (weights), seen (copies) and their quality."""
  inside, right = true >= 0, cls == true
  seen = copies.sum()
  per_class = np.bincount(cls, weights=copies, minlength=c)
  return {"kept": float(kept.sum()),
          "kept_in_class_top1": float((kept * right).sum() / max(1e-9, (kept * inside).sum())),
          "ooc_kept_of_all": float((kept * ~inside).sum() / max(1, (~inside).sum())),
          "in_class_kept_of_all": float((kept * inside).sum() / max(1, inside.sum())),
          "seen": float(seen), "seen_ooc_share": float((copies * ~inside).sum() / max(1e-9, seen)),
          "seen_wrong_share": float((copies * ~right).sum() / max(1e-9, seen)),
          "seen_right": float((copies * right).sum()),
          "class_min": float(per_class.min()), "class_max": float(per_class.max())}


CANDIDATES: List[Tuple[str, Dict]] = (
    [("confidence >= 0.3 (today)", {"kind": "threshold", "score": "confidence", "at": 0.3})]
    + [(f"confidence >= {t}", {"kind": "threshold", "score": "confidence", "at": t})
       for t in (0.5, 0.7, 0.8, 0.9, 0.95)]
    + [("confidence >= pool mean (--adaptive_threshold=mean)", {"kind": "pool_mean"}),
       ("FreeMatch SAT (per-class, offline)", {"kind": "freematch"}),
       ("FlexMatch (per-class, tau 0.95)", {"kind": "flexmatch", "tau": 0.95}),
       ("SoftMatch (soft weights)", {"kind": "softmatch"})])


def candidates(score_names: List[str]) -> List[Tuple[str, Dict]]:
  """The fixed candidates, then every score at the kept share of confidence >= 0.7 and 0.9
  (filled in by `compare`), so scores are compared at equal quantity."""
  return list(CANDIDATES) + [(f"{n} @ keep={q}", {"kind": "quantile", "score": n, "keep": q})
                             for q in ("c0.7", "c0.9") for n in score_names]


def compare(logits: Dict[str, np.ndarray], true: np.ndarray,
            num_images: Tuple[int, ...] = (0, -1, 500)) -> Dict:
  """Every candidate's rows (per num_image), and the scores' AUROCs."""
  p = softmax(logits["plain"])
  cls, c = p.argmax(axis=1), p.shape[1]
  s = scores(logits)
  inside, right = true >= 0, cls == true
  report = {"records": int(len(true)), "ooc": int((~inside).sum()),
            "in_class_top1": float(right[inside].mean()),
            "auroc": {n: {"in_vs_ooc": auroc(inside, v), "right_vs_rest": auroc(right, v)}
                      for n, v in s.items()}, "rows": []}
  for name, rule in candidates(list(s)):
    rule = dict(rule)
    if rule["kind"] == "quantile" and isinstance(rule["keep"], str):
      rule["keep"] = float((s["confidence"] >= float(rule["keep"][1:])).mean())
    w = keep_weights(rule, p, s)
    for k in num_images:
      if k < 0:  # --num_image=-1: the mean per-class count of what the rule keeps.
        k = max(1, int(np.ceil(w.sum() / c)))
      copies = balanced_copies(w, s.get(rule.get("score"), s["confidence"]), cls, c, k) if k else w
      report["rows"].append({"candidate": name, "num_image": k,
                             **evaluate(copies, w, cls, true, c)})
  return report


def table(report: Dict) -> str:
  """Markdown: one line per (candidate, num_image)."""
  lines = ["| candidate | num_image | kept | in-class top-1 % of kept | OOC kept % | "
           "in-class kept % | seen | OOC % of seen | wrong % of seen | right seen | "
           "class min / max |", "|---" * 11 + "|"]
  for r in report["rows"]:
    lines.append(
        f"| {r['candidate']} | {r['num_image'] or '-'} | {r['kept']:.0f} | "
        f"{100 * r['kept_in_class_top1']:.1f} | {100 * r['ooc_kept_of_all']:.1f} | "
        f"{100 * r['in_class_kept_of_all']:.1f} | {r['seen']:.0f} | "
        f"{100 * r['seen_ooc_share']:.1f} | {100 * r['seen_wrong_share']:.1f} | "
        f"{r['seen_right']:.0f} | {r['class_min']:.0f} / {r['class_max']:.0f} |")
  lines += ["", "| score | AUROC in-class vs OOC | AUROC right vs rest |", "|---|---|---|"]
  lines += [f"| {n} | {a['in_vs_ooc']:.3f} | {a['right_vs_rest']:.3f} |"
            for n, a in report["auroc"].items()]
  return "\n".join(lines) + "\n"


def main(argv=None) -> Dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model_dir", required=True, help="a pipeline run with a finished teacher")
  p.add_argument("--data_dir", required=True, help="make_pool_images.py's output")
  p.add_argument("--views", default="zoom,shift,flip")
  p.add_argument("--num_images", default="0,-1,500",
                 help="per-class K values (0: none; -1: the mean count of what is kept)")
  p.add_argument("--output", default=None, help="JSON report (a .md table beside it)")
  args = p.parse_args(argv)
  cache = os.path.join(args.model_dir, "teacher_logits.npz")
  if os.path.exists(cache):  # The teacher pass is the only slow part: kept for re-runs.
    z = np.load(cache, allow_pickle=False)
    paths, logits = list(z["paths"]), {k: z[k] for k in z.files if k != "paths"}
  else:
    paths, logits = teacher_logits(args.model_dir, os.path.join(args.data_dir, "unlabeled"),
                                   [v for v in args.views.split(",") if v])
    np.savez(cache, paths=np.array(paths), **logits)
  with open(os.path.join(args.data_dir, "unlabeled_truth.json")) as f:
    truth = json.load(f)
  with open(os.path.join(args.data_dir, "manifest.json")) as f:
    names = json.load(f)["classes"]
  true = pseudo_label_accuracy.truth_index(truth, np.array([x.encode() for x in paths]), names)
  report = compare(logits, true, tuple(int(k) for k in args.num_images.split(",")))
  text = table(report)
  print(f"in-class top-1 {100 * report['in_class_top1']:.2f}%, {report['ooc']} of "
        f"{report['records']} out of class\n{text}")
  if args.output:
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)
    with open(os.path.splitext(args.output)[0] + ".md", "w") as f:
      f.write(text)
  return report


if __name__ == "__main__":
  main()
