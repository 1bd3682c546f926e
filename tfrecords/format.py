"""THE on-disk format of pseudo-labeled records: keys, shard names, writer, manifest, reader.

Every pseudo-labeled record is a `tf.train.Example` with these features (ImageNet / JFT
style, so a plain ImageNet reader that parses `image/encoded` and `image/class/label` reads
our shards unchanged):

| key | type | meaning |
|---|---|---|
| `image/encoded` | bytes | the source's own encoded image bytes, never re-encoded |
| `image/id` | bytes | stable id of the source image (file path or `<tfrecord>:<index>`) |
| `image/class/label` | int64 | ground-truth label where known, else -1 |
| `probabilities` | float list [C] | the teacher's soft label (softmax(logits/T)) or one-hot |
| `classes` | int64 | argmax of the teacher's output |
| `confidence` | float | max softmax probability of the teacher |

Shard names (`shard_name`):
  one worker:       `PREFIX-%05d-of-%05d` (shard, num_shards), e.g. `train-00003-of-00128`
  several workers:  `PREFIX-w%05d-of-%05d-%05d-of-%05d` (worker, num_workers, shard,
                    num_shards), e.g. `train-w00001-of-00003-00003-of-00128`
Each shard `S` has a manifest `S.manifest.json` (see `ShardWriter`). A shard is complete
exactly when its manifest exists and matches it; the manifest is written last.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

IMAGE_KEY = "image/encoded"
ID_KEY = "image/id"
LABEL_KEY = "image/class/label"
PROBS_KEY = "probabilities"
CLASS_KEY = "classes"
CONFIDENCE_KEY = "confidence"
FEATURE_KEYS = (IMAGE_KEY, ID_KEY, LABEL_KEY, PROBS_KEY, CLASS_KEY, CONFIDENCE_KEY)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 1
# Confidence histogram resolution. 1000 bins keep a class's balancing threshold within
# 0.001 of the exact top-K one; manifests store the histogram sparsely, so a shard with n
# records stores at most n (bin, count) pairs whatever the bin count.
DEFAULT_NUM_BINS = 1000


def shard_name(prefix: str, shard_index: int, num_shards: int, worker_index: int = 0,
               num_workers: int = 1) -> str:
  """Returns the file name (no directory) of one shard; see the module docstring."""
  if not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} is outside [0, num_shards={num_shards})")
  if not 0 <= worker_index < num_workers:
    raise ValueError(f"worker_index {worker_index} is outside [0, num_workers={num_workers})")
  if num_workers == 1:
    return f"{prefix}-{shard_index:05d}-of-{num_shards:05d}"
  return (f"{prefix}-w{worker_index:05d}-of-{num_workers:05d}-"
          f"{shard_index:05d}-of-{num_shards:05d}")


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
  """A short stable hash of the flags that produced a set of shards."""
  text = json.dumps(dict(fingerprint), sort_keys=True, default=str)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def confidence_bins(confidence: np.ndarray, num_bins: int) -> np.ndarray:
  """Bin index of each confidence; float32 arithmetic, identical to `confidence_bins_tf`."""
  conf = np.asarray(confidence, np.float32)
  bins = np.floor(conf * np.float32(num_bins)).astype(np.int64)
  return np.clip(bins, 0, num_bins - 1)


def confidence_bins_tf(confidence: tf.Tensor, num_bins: int) -> tf.Tensor:
  """Bin index of each confidence inside a tf.data pipeline (same rule as the numpy one)."""
  bins = tf.cast(tf.floor(tf.cast(confidence, tf.float32) * float(num_bins)), tf.int64)
  return tf.clip_by_value(bins, 0, num_bins - 1)


# Wire-format message names of `tf.train.Example` and its parts, for `tf.io.encode_proto`
# (their descriptors are linked into TensorFlow).
_LIST_TYPES = {tf.string: ("bytes_list", "tensorflow.BytesList"),
               tf.float32: ("float_list", "tensorflow.FloatList"),
               tf.int64: ("int64_list", "tensorflow.Int64List")}
_KINDS = ("bytes_list", "float_list", "int64_list")  # Feature's oneof, in field order.


def _encode(message: str, fields: Dict[str, tf.Tensor]) -> tf.Tensor:
  """[B] serialized `message`s; each field a [B, n] tensor (n values per record)."""
  values = list(fields.values())
  sizes = tf.stack([tf.fill([tf.shape(v)[0]], tf.shape(v)[1]) for v in values], axis=1)
  return tf.io.encode_proto(sizes, values, list(fields), message)


def _feature_entry(key: str, values: tf.Tensor) -> tf.Tensor:
  """[B] serialized `Features.FeatureEntry` (key, Feature holding [B, n] `values`)."""
  kind, list_message = _LIST_TYPES[values.dtype]
  value_list = _encode(list_message, {"value": values})
  # Feature is a oneof: the two unset kinds are given zero values.
  empty = tf.zeros([tf.shape(values)[0], 0], tf.string)
  feature = _encode("tensorflow.Feature", {k: value_list[:, None] if k == kind else empty
                                           for k in _KINDS})
  key_t = tf.fill([tf.shape(values)[0], 1], key)
  return _encode("tensorflow.Features.FeatureEntry", {"key": key_t, "value": feature[:, None]})


def serialize_batch(encoded: tf.Tensor, ids: tf.Tensor, labels: tf.Tensor,
                    probabilities: tf.Tensor, classes: tf.Tensor,
                    confidence: tf.Tensor) -> tf.Tensor:
  """[B] serialized `tf.train.Example`s with the keys of the table above, in TF ops.

  Inputs are [B] (probabilities [B, C]); usable inside a `tf.function`, so the
  teacher's step emits finished records and the host only writes bytes. Entries are in
  key order: the bytes equal `Example.SerializeToString(deterministic=True)`.
  """
  def column(t, dtype):
    t = tf.cast(t, dtype)
    return t if t.shape.rank == 2 else t[:, None]
  features = {
      IMAGE_KEY: column(encoded, tf.string),
      ID_KEY: column(ids, tf.string),
      LABEL_KEY: column(labels, tf.int64),
      PROBS_KEY: column(probabilities, tf.float32),
      CLASS_KEY: column(classes, tf.int64),
      CONFIDENCE_KEY: column(confidence, tf.float32),
  }
  entries = tf.stack([_feature_entry(k, features[k]) for k in sorted(features)], axis=1)
  return _encode("tensorflow.Example",
                 {"features": _encode("tensorflow.Features", {"feature": entries})[:, None]})


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
  tmp = f"{path}.tmp-{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    # Compact: a manifest's histogram may hold thousands of pairs.
    f.write(json.dumps(payload, sort_keys=True, separators=(",", ":")))
  tf.io.gfile.rename(tmp, path, overwrite=True)


class ShardWriter:
  """Writes one shard atomically, then its JSON manifest.

  Records go to `PATH.tmp-<random>`; `close()` renames it to PATH and then writes
  `PATH.manifest.json` holding: record_count, class_counts [C], a sparse confidence
  histogram per class ({class: [[bin, count], ...]}, `num_bins` bins over [0, 1]),
  skipped (corrupt images: count and ids), source_range ([first, end) of the worker's
  records this shard covers), the shard's byte size, and the producing `fingerprint`
  (+ its digest). A shard without a valid manifest is incomplete and gets rewritten.
  """

  _COMPACT_EVERY = 1 << 16  # Pending histogram keys before a fold; bounds their memory.

  def __init__(self, path: str, num_classes: int, fingerprint: Mapping[str, Any],
               source_range: Sequence[int], num_bins: int = DEFAULT_NUM_BINS):
    self.path = path
    self._tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    self._num_classes = num_classes
    self._num_bins = num_bins
    self._fingerprint = dict(fingerprint)
    self._source_range = [int(v) for v in source_range]
    self._class_counts = np.zeros([num_classes], np.int64)
    # The histogram as sorted unique keys class * num_bins + bin with their counts;
    # batches' keys wait in `_pending` and are folded in now and then (vectorised).
    self._hist_keys = np.zeros([0], np.int64)
    self._hist_counts = np.zeros([0], np.int64)
    self._pending: List[np.ndarray] = []
    self._pending_count = 0
    self._skipped: List[str] = []
    self._count = 0
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    self._writer = tf.io.TFRecordWriter(self._tmp)

  def write_batch(self, encoded: Sequence[bytes], ids: Sequence[bytes], labels: np.ndarray,
                  probabilities: np.ndarray, classes: np.ndarray,
                  confidence: np.ndarray) -> None:
    """Appends a batch of records (numpy arrays / lists of equal length)."""
    if not len(ids):
      return
    records = serialize_batch(tf.constant(list(encoded), tf.string),
                              tf.constant(list(ids), tf.string), tf.constant(labels),
                              tf.constant(probabilities), tf.constant(classes),
                              tf.constant(confidence))
    self.write_serialized(records.numpy(), classes, confidence)

  def write_serialized(self, records: Sequence[bytes], classes: np.ndarray,
                       confidence: np.ndarray) -> None:
    """Appends records from `serialize_batch` with their classes and confidences."""
    for record in records:
      self._writer.write(record)
    classes = np.asarray(classes, np.int64)
    self._class_counts += np.bincount(classes, minlength=self._num_classes)
    self._pending.append(classes * self._num_bins +
                         confidence_bins(confidence, self._num_bins))
    self._pending_count += len(classes)
    if self._pending_count >= self._COMPACT_EVERY:
      self._compact()
    self._count += len(classes)

  def _compact(self) -> None:
    """Folds the pending (class, bin) keys into the sorted unique keys and counts."""
    if not self._pending:
      return
    keys = np.concatenate([self._hist_keys] + self._pending)
    counts = np.concatenate([self._hist_counts] + [np.ones(len(p), np.int64)
                                                   for p in self._pending])
    self._hist_keys, inverse = np.unique(keys, return_inverse=True)
    self._hist_counts = np.bincount(inverse, weights=counts).astype(np.int64)
    self._pending, self._pending_count = [], 0

  def _histogram(self) -> Dict[str, List[List[int]]]:
    """The manifest's sparse histogram: {class: [[bin, count], ...]}, sorted."""
    self._compact()
    hist: Dict[str, List[List[int]]] = {}
    for key, n in zip(self._hist_keys.tolist(), self._hist_counts.tolist()):
      hist.setdefault(str(key // self._num_bins), []).append([key % self._num_bins, n])
    return hist

  def skip(self, record_id: str) -> None:
    """Counts a record that could not be used (corrupt image)."""
    self._skipped.append(record_id)

  def close(self) -> Dict[str, Any]:
    """Renames the shard into place, writes and returns its manifest."""
    self._writer.close()
    tf.io.gfile.rename(self._tmp, self.path, overwrite=True)
    manifest = {
        "version": MANIFEST_VERSION,
        "shard": os.path.basename(self.path),
        "record_count": self._count,
        "num_classes": self._num_classes,
        "class_counts": self._class_counts.tolist(),
        "num_bins": self._num_bins,
        "histogram": self._histogram(),
        "skipped_count": len(self._skipped),
        "skipped_ids": self._skipped[:1000],  # Bounded: counts stay exact, ids are a sample.
        "source_range": self._source_range,
        "size_bytes": tf.io.gfile.stat(self.path).length,
        "fingerprint": self._fingerprint,
        "fingerprint_digest": fingerprint_digest(self._fingerprint),
    }
    write_json_atomic(self.path + MANIFEST_SUFFIX, manifest)
    return manifest

  def abort(self) -> None:
    """Drops the temporary file (used when the writer fails part-way)."""
    self._writer.close()
    if tf.io.gfile.exists(self._tmp):
      tf.io.gfile.remove(self._tmp)


def read_manifest(shard_path: str) -> Optional[Dict[str, Any]]:
  """The manifest of a complete shard, or None when the shard is missing or incomplete."""
  mpath = shard_path + MANIFEST_SUFFIX
  if not tf.io.gfile.exists(mpath) or not tf.io.gfile.exists(shard_path):
    return None
  try:
    with tf.io.gfile.GFile(mpath) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None  # A torn manifest (cannot happen with rename, but a hand copy can).
  if tf.io.gfile.stat(shard_path).length != manifest.get("size_bytes"):
    return None
  return manifest


def list_manifests(directory: str) -> List[Dict[str, Any]]:
  """All complete shards' manifests in `directory` (each with a "path" entry), sorted."""
  manifests = []
  for mpath in sorted(tf.io.gfile.glob(f"{directory.rstrip('/')}/*{MANIFEST_SUFFIX}")):
    shard_path = mpath[:-len(MANIFEST_SUFFIX)]
    manifest = read_manifest(shard_path)
    if manifest is not None:
      manifest["path"] = shard_path
      manifests.append(manifest)
  return manifests


def check_one_fingerprint(manifests: Iterable[Mapping[str, Any]], where: str) -> None:
  """Raises ValueError when shards in `where` come from different flags."""
  seen: Dict[str, Mapping[str, Any]] = {}
  for m in manifests:
    seen.setdefault(m["fingerprint_digest"], {**m["fingerprint"], "example": m["shard"]})
  if len(seen) > 1:
    raise ValueError(f"{where} mixes shards written with different flags; use a fresh "
                     f"directory. Fingerprints: {json.dumps(list(seen.values()), default=str)}")


def check_complete(manifests: Sequence[Mapping[str, Any]], where: str) -> None:
  """Raises ValueError unless every worker's every shard is present (no lost records)."""
  if not manifests:
    raise ValueError(f"no complete pseudo-label shards (*{MANIFEST_SUFFIX}) in {where}")
  check_one_fingerprint(manifests, where)
  fp = manifests[0]["fingerprint"]
  expected = fp["num_workers"] * fp["num_shards"]
  if len(manifests) != expected:
    raise ValueError(
        f"{where} holds {len(manifests)} complete shards of the {expected} that "
        f"num_workers={fp['num_workers']} x num_shards={fp['num_shards']} produce; "
        "run predict (every worker) to completion first")


def resolve_shards(path_or_pattern: str, require_complete: bool = True) -> List[str]:
  """Shard paths of a directory (its complete shards) or a glob pattern (data files only)."""
  if tf.io.gfile.isdir(path_or_pattern):
    manifests = list_manifests(path_or_pattern)
    if require_complete:
      check_complete(manifests, path_or_pattern)
    return [m["path"] for m in manifests]
  paths = [p for p in sorted(tf.io.gfile.glob(path_or_pattern))
           if not p.endswith(".json") and ".tmp-" not in os.path.basename(p)]
  if not paths:
    raise ValueError(f"no pseudo-label shards match {path_or_pattern!r}")
  return paths


def parse_record(serialized: tf.Tensor, num_classes: int) -> Dict[str, tf.Tensor]:
  """Parses one serialized record into a dict keyed as the table above."""
  spec = {
      IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
      ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
      LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      PROBS_KEY: tf.io.FixedLenFeature([num_classes], tf.float32),
      CLASS_KEY: tf.io.FixedLenFeature([], tf.int64),
      CONFIDENCE_KEY: tf.io.FixedLenFeature([], tf.float32),
  }
  return tf.io.parse_single_example(serialized, spec)


def num_classes_of(shard_paths: Sequence[str]) -> int:
  """The class count stored in the first shard's manifest (or its first record)."""
  manifest = read_manifest(shard_paths[0])
  if manifest is not None:
    return int(manifest["num_classes"])
  for raw in tf.data.TFRecordDataset(shard_paths[:1]).take(1):
    example = tf.train.Example.FromString(raw.numpy())
    return len(example.features.feature[PROBS_KEY].float_list.value)
  raise ValueError(f"cannot tell the class count: {shard_paths[0]} has no manifest and no "
                   "records; pass num_classes")


def read_records(path_or_pattern: str, num_classes: Optional[int] = None,
                 require_complete: bool = True,
                 num_parallel_reads: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Parsed records (dicts keyed as the table above) from a directory or glob pattern.

  A directory yields its complete shards only and, with `require_complete`, refuses a
  directory missing some worker's shard. Order is deterministic (shards interleaved).
  """
  paths = resolve_shards(path_or_pattern, require_complete)
  num_classes = num_classes or num_classes_of(paths)
  ds = tf.data.TFRecordDataset(paths, num_parallel_reads=num_parallel_reads)
  parse = tf.autograph.experimental.do_not_convert(lambda s: parse_record(s, num_classes))
  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
