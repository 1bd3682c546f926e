"""Applying a balance plan when the student reads pseudo-labels (no second copy of images).

A balance plan is a small JSON (written by `noisy_student.balance`) that says, per class,
which records to keep and how many copies of each; the reader applies it per record with
a keyed hash of the record id, so the choice is deterministic, flat in memory and needs no
rewrite of the shards. Per record of predicted class c, confidence x, id hash u in [0, 1):

  x < min_threshold                                    -> 0 copies
  "histogram" plans: bin(x) < lo_bin[c]                -> 0 copies
                     bin(x) == lo_bin[c], u >= keep[c] -> 0 copies (boundary bin subsample)
  "exact" plans:     (x, h) < (threshold[c], tie_hash[c]) lexicographically -> 0 copies
  otherwise: floor(copies[c]) + (1 if u < frac(copies[c]) else 0)  (the original's
             stochastic rounding; copies[c] = num_image / kept count for short classes).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tfrecords import format as fmt
from tfrecords import reader

PLAN_VERSION = 1
PLAN_NAME = "balance_plan.json"  # The plan's file name inside a pseudo-label directory.
_HASH_BUCKETS = 1 << 30
_REPEAT_BLOCK = 256  # Records per vectorised copy step of the reader.


def id_hash(ids: tf.Tensor, seed: int) -> tf.Tensor:
  """Keyed (SipHash) hash of record ids in [0, 2^30): stable across runs and machines."""
  return tf.strings.to_hash_bucket_strong(ids, _HASH_BUCKETS, key=[int(seed), 0x5EED])


def id_uniform(ids: tf.Tensor, seed: int) -> tf.Tensor:
  """A uniform [0, 1) float64 per record id, a function of (id, seed) only."""
  return tf.cast(id_hash(ids, seed), tf.float64) / float(_HASH_BUCKETS)


def load_plan(plan: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
  """A plan dict from a dict or a JSON path (local or gs://); checks the version."""
  if isinstance(plan, str):
    with tf.io.gfile.GFile(plan) as f:
      try:
        plan = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"balance plan {plan} is not valid JSON: {e}") from e
  if plan.get("version") != PLAN_VERSION or plan.get("mode") not in ("histogram", "exact"):
    raise ValueError(f"not a version-{PLAN_VERSION} balance plan (mode histogram/exact): "
                     f"version={plan.get('version')}, mode={plan.get('mode')}")
  return dict(plan)


def make_copies_fn(plan: Mapping[str, Any]):
  """Returns f(classes, confidence, ids) -> int64 copies (works on scalars or batches)."""
  from_hash, seed = make_copies_from_hash_fn(plan), int(plan["seed"])
  return lambda classes, confidence, ids: from_hash(classes, confidence,
                                                    id_hash(ids, seed))


def make_copies_from_hash_fn(plan: Mapping[str, Any]):
  """Returns f(classes, confidence, id hashes) -> int64 copies, the hashes being
  `id_hash(ids, plan["seed"])` (for callers that keep 8 bytes per record, not its id)."""
  num_bins = int(plan["num_bins"])
  min_threshold = float(plan["min_threshold"])
  per_class = plan["classes"]
  copies_t = tf.constant([c["copies"] for c in per_class], tf.float64)
  exact = plan["mode"] == "exact"
  if exact:
    thr_t = tf.constant([c["threshold"] for c in per_class], tf.float32)
    tie_t = tf.constant([c["tie_hash"] for c in per_class], tf.int64)
  else:
    lo_t = tf.constant([c["lo_bin"] for c in per_class], tf.int64)
    keep_t = tf.constant([c["keep"] for c in per_class], tf.float64)

  def copies_fn(classes, confidence, h):
    u = tf.cast(h, tf.float64) / float(_HASH_BUCKETS)
    if exact:
      t = tf.gather(thr_t, classes)
      selected = (confidence > t) | ((confidence == t) & (h >= tf.gather(tie_t, classes)))
    else:
      b, lo = fmt.confidence_bins_tf(confidence, num_bins), tf.gather(lo_t, classes)
      selected = (b > lo) | ((b == lo) & (u < tf.gather(keep_t, classes)))
    selected &= confidence >= min_threshold
    f = tf.gather(copies_t, classes)
    n = tf.floor(f) + tf.cast(u < f - tf.floor(f), tf.float64)
    return tf.where(selected, tf.cast(n, tf.int64), tf.zeros_like(classes))
  return copies_fn


def shard_digests(directory: str) -> List[Tuple[str, str]]:
  """(where, fingerprint digest) of a directory's shards: per manifest for ours, one
  for the original's manifest-less shards (their names and sizes)."""
  if reader.is_original_output(directory):
    paths = reader.resolve_shards(directory)
    return [(directory, reader.original_digest(paths))]
  return [(m["path"], m["fingerprint_digest"]) for m in fmt.list_manifests(directory)]


def _check_plan_matches(plan: Mapping[str, Any], path_or_pattern: str) -> None:
  """Refuses a plan computed from other shards (other teacher, workers, shard count)."""
  want = plan.get("fingerprint_digest")
  if want is None or not tf.io.gfile.isdir(path_or_pattern):
    return
  for where, digest in shard_digests(path_or_pattern):
    if digest != want:
      raise ValueError(f"balance plan was computed for other shards (fingerprint {want}) "
                       f"than {where} ({digest}); rerun balance")


def plan_in(directory: str) -> Optional[str]:
  """The balance plan written into a pseudo-label `directory` by the filter phase, or None."""
  path = f"{directory.rstrip('/')}/{PLAN_NAME}"
  return path if tf.io.gfile.exists(path) else None


# The fields a relabelling teacher replaces; the plan still selects by the first ones.
_RELABELED = (fmt.PROBS_KEY, fmt.CLASS_KEY, fmt.CONFIDENCE_KEY)
_SELECT_CLASS, _SELECT_CONFIDENCE = "select/class", "select/confidence"


def _relabeled(ds: tf.data.Dataset, relabel_dir: str, num_classes: Optional[int],
               require_complete: bool) -> tf.data.Dataset:
  """`ds`'s records with another teacher's labels from `relabel_dir`, whose shards hold
  the same images in the same order (predict over the same source, workers and shard
  count); the first labels stay as the select/* fields the plan reads. A record whose id
  differs from its partner's stops the read: the two predictions are not aligned."""
  other = reader.read_records(relabel_dir, num_classes, require_complete)

  @tf.autograph.experimental.do_not_convert
  def merge(first, second):
    check = tf.debugging.assert_equal(
        first[fmt.ID_KEY], second[fmt.ID_KEY],
        message=f"pseudo-labels in {relabel_dir} do not hold the same images in the same "
                "order as the filtered set; predict them over the same unlabeled source "
                "with the same --num_workers and --num_shards")
    with tf.control_dependencies([check]):
      out = {k: tf.identity(second[k]) if k in _RELABELED else v for k, v in first.items()}
    return {**out, _SELECT_CLASS: first[fmt.CLASS_KEY],
            _SELECT_CONFIDENCE: first[fmt.CONFIDENCE_KEY]}
  return tf.data.Dataset.zip(ds, other).map(merge, num_parallel_calls=tf.data.AUTOTUNE)


def _without_select(record: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  return {k: v for k, v in record.items() if not k.startswith("select/")}


def read_pseudo_labels(path_or_pattern: str, plan: Union[None, str, Mapping[str, Any]] = None,
                       *, balance_plan: Union[None, str, Mapping[str, Any]] = None,
                       num_classes: Optional[int] = None, require_complete: bool = True,
                       relabel_dir: Optional[str] = None) -> tf.data.Dataset:
  """Pseudo-labeled records with a balance plan's copies applied.

  Args:
    path_or_pattern: a predict output directory (its complete shards; all of them must
      be there when `require_complete`), the original's filter output directory, or a
      glob pattern of shards.
    plan / balance_plan (alias): a plan dict or JSON path; None reads every record once.
    num_classes: the probabilities' length (default: from the manifests).
    require_complete: refuse a directory missing some worker's shard.
    relabel_dir: another teacher's predict output over the same images: the plan selects
      and copies records by `path_or_pattern`'s labels, and the records carry this
      directory's (the original's filter-once, reassign-each-iteration flow,
      predict_label.py --reassign_label).
  Returns:
    A tf.data.Dataset of dicts keyed as `tfrecords.format.FEATURE_KEYS` (a record with k
    copies appears k times, adjacently: shuffle downstream). Deterministic.
  """
  plan = plan if plan is not None else balance_plan
  ds = reader.read_records(path_or_pattern, num_classes, require_complete)
  select = (fmt.CLASS_KEY, fmt.CONFIDENCE_KEY)
  if relabel_dir:
    ds = _relabeled(ds, relabel_dir, num_classes, require_complete)
    select = (_SELECT_CLASS, _SELECT_CONFIDENCE)
  if plan is None:
    return ds.map(_without_select) if relabel_dir else ds
  plan = load_plan(plan)
  _check_plan_matches(plan, path_or_pattern)
  copies_fn = make_copies_fn(plan)

  @tf.autograph.experimental.do_not_convert  # Plain ops: autograph only adds tracing time.
  def repeat_rows(batch):
    n = copies_fn(batch[select[0]], batch[select[1]], batch[fmt.ID_KEY])
    return {k: tf.repeat(v, n, axis=0) for k, v in _without_select(batch).items()}
  # Vectorised over blocks of records: a per-record flat_map measured 3x slower here.
  ds = ds.batch(_REPEAT_BLOCK).map(repeat_rows, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.unbatch()


def count_copies(path_or_pattern: str, plan: Mapping[str, Any], num_classes: int,
                 batch_size: int = 4096) -> Dict[str, np.ndarray]:
  """One pass over the small fields: per class 'records', 'kept' (unique), 'copies'."""
  paths = reader.resolve_shards(path_or_pattern, require_complete=False)
  copies_fn = make_copies_fn(plan)
  out = {k: np.zeros([num_classes], np.int64) for k in ("records", "kept", "copies")}
  for f in reader.read_small_fields(paths, batch_size).prefetch(2):
    c = f[fmt.CLASS_KEY]
    n = copies_fn(c, f[fmt.CONFIDENCE_KEY], f[fmt.ID_KEY]).numpy()
    c = c.numpy()
    np.add.at(out["records"], c, 1)
    np.add.at(out["kept"], c, (n > 0).astype(np.int64))
    np.add.at(out["copies"], c, n)
  return out
