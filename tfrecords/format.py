"""THE on-disk format of pseudo-labeled records: keys, shard names, writer, manifests.

Every pseudo-labeled record is a `tf.train.Example` with these features (ImageNet / JFT
style, so a plain ImageNet reader that parses `image/encoded` and `image/class/label` reads
our shards unchanged, and the original noisystudent's trainer reads them too):

| key | type | meaning |
|---|---|---|
| `image/encoded` | bytes | the source's own encoded image bytes, never re-encoded |
| `image/id` | bytes | stable id of the source image (file path or `<tfrecord>:<index>`) |
| `image/class/label` | int64 | ground-truth label where known, else -1 |
| `probabilities` | float list [C] | the teacher's softmax(logits) at T = 1 (STORED_TEMPERATURE) |
| `classes` | int64 | argmax of the teacher's output |
| `confidence` | float | max softmax probability of the teacher |
| `label` | int64 | = `classes`, under the original's name (its filter_unlabel.py:242) |
| `prob` | float | = `confidence`, under the original's name (its filter_unlabel.py:240) |

The teacher's temperature is applied once, when a student trains (as the original:
main.py:535-537); the stored probabilities and the confidence the filter uses are T = 1
(predict_label.py:136-141, main.py:462, filter_unlabel.py:167).

The reader (tfrecords/reader.py) also takes the original's filter output
(`image/encoded`, `probabilities`, `label`, `prob`; no id, no manifest): its `label` /
`prob` stand for `classes` / `confidence`, and a record's id is
`<shard file name>:<index in file>`.

Shard names (`shard_name`):
  one worker:       `PREFIX-%05d-of-%05d` (shard, num_shards), e.g. `train-00003-of-00128`
  several workers:  `PREFIX-w%05d-of-%05d-%05d-of-%05d` (worker, num_workers, shard,
                    num_shards), e.g. `train-w00001-of-00003-00003-of-00128`
Each shard `S` has a manifest `_S.manifest.json` (see `ShardWriter`); the leading `_`
keeps it out of the original's `train*` glob (data_input.py:395). A shard is complete
exactly when its manifest exists and matches it; the manifest is written last.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from noisy_student import atomic
from tfrecords import checksum

IMAGE_KEY = "image/encoded"
ID_KEY = "image/id"
LABEL_KEY = "image/class/label"
PROBS_KEY = "probabilities"
CLASS_KEY = "classes"
CONFIDENCE_KEY = "confidence"
FEATURE_KEYS = (IMAGE_KEY, ID_KEY, LABEL_KEY, PROBS_KEY, CLASS_KEY, CONFIDENCE_KEY)
# The original's names of `classes` and `confidence` (filter_unlabel.py:240-242, read by
# its data_input.py:131-141); written beside ours so either trainer reads our shards.
ORIGINAL_CLASS_KEY = "label"
ORIGINAL_CONFIDENCE_KEY = "prob"

# Stored probabilities are softmax(logits / STORED_TEMPERATURE); training applies the
# flag's temperature once. Manifests record it (version 1 ones stored softmax(logits/T)).
STORED_TEMPERATURE = 1.0
MANIFEST_PREFIX = "_"
MANIFEST_SUFFIX = ".manifest.json"
# 3: `crc32c` (tfrecords/checksum.py) beside `size_bytes`; older manifests are read, and
# only their sizes verified.
MANIFEST_VERSION = 3
# Predict's other files in an output directory; the `_` keeps them out of `train*` too.
COUNT_SUFFIX = ".count.json"  # `_PREFIX-worker-%05d-of-%05d.count.json`: a worker's count.
CLASS_NAMES_FILE = "class_names.json"
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


def manifest_name(shard: str) -> str:
  """The file name of shard file name `shard`'s manifest."""
  return f"{MANIFEST_PREFIX}{shard}{MANIFEST_SUFFIX}"


def manifest_path(shard_path: str) -> str:
  directory, shard = os.path.split(shard_path)
  return os.path.join(directory, manifest_name(shard))


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
  """[B] serialized `tf.train.Example`s with every key of the table above, in TF ops.

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
      ORIGINAL_CLASS_KEY: column(classes, tf.int64),
      ORIGINAL_CONFIDENCE_KEY: column(confidence, tf.float32),
  }
  entries = tf.stack([_feature_entry(k, features[k]) for k in sorted(features)], axis=1)
  return _encode("tensorflow.Example",
                 {"features": _encode("tensorflow.Features", {"feature": entries})[:, None]})


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
  """Compact JSON (a manifest's histogram may hold thousands of pairs), atomically."""
  atomic.write_text(path, json.dumps(payload, sort_keys=True, separators=(",", ":")))


class ConfidenceHistogram:
  """Per-class record counts and a sparse (class, confidence bin) histogram, fed in
  batches: what a manifest holds for the balance step."""

  _COMPACT_EVERY = 1 << 16  # Pending histogram keys before a fold; bounds their memory.

  def __init__(self, num_classes: int, num_bins: int):
    self.num_classes, self.num_bins = num_classes, num_bins
    self.class_counts = np.zeros([num_classes], np.int64)
    # Sorted unique keys class * num_bins + bin with their counts; batches' keys wait
    # in `_pending` and are folded in now and then (vectorised).
    self._keys = np.zeros([0], np.int64)
    self._counts = np.zeros([0], np.int64)
    self._pending: List[np.ndarray] = []
    self._pending_count = 0

  def add(self, classes: np.ndarray, confidence: np.ndarray) -> None:
    classes = np.asarray(classes, np.int64)
    self.class_counts += np.bincount(classes, minlength=self.num_classes)
    self._pending.append(classes * self.num_bins + confidence_bins(confidence,
                                                                   self.num_bins))
    self._pending_count += len(classes)
    if self._pending_count >= self._COMPACT_EVERY:
      self._compact()

  def _compact(self) -> None:
    """Folds the pending (class, bin) keys into the sorted unique keys and counts."""
    if not self._pending:
      return
    keys = np.concatenate([self._keys] + self._pending)
    counts = np.concatenate([self._counts] + [np.ones(len(p), np.int64)
                                              for p in self._pending])
    self._keys, inverse = np.unique(keys, return_inverse=True)
    self._counts = np.bincount(inverse, weights=counts).astype(np.int64)
    self._pending, self._pending_count = [], 0

  def sparse(self) -> Dict[str, List[List[int]]]:
    """The manifest's sparse histogram: {class: [[bin, count], ...]}, sorted."""
    self._compact()
    hist: Dict[str, List[List[int]]] = {}
    for key, n in zip(self._keys.tolist(), self._counts.tolist()):
      hist.setdefault(str(key // self.num_bins), []).append([key % self.num_bins, n])
    return hist

  def fields(self) -> Dict[str, Any]:
    """The manifest fields it fills."""
    return {"num_classes": self.num_classes, "class_counts": self.class_counts.tolist(),
            "num_bins": self.num_bins, "histogram": self.sparse(),
            "probabilities_temperature": STORED_TEMPERATURE}


class ShardWriter:
  """Writes one shard atomically, then its JSON manifest.

  Records go to `PATH.tmp-<random>`; `close()` renames it to PATH and then writes
  `manifest_path(PATH)` holding: record_count, class_counts [C], a sparse confidence
  histogram per class ({class: [[bin, count], ...]}, `num_bins` bins over [0, 1]),
  probabilities_temperature (STORED_TEMPERATURE), skipped (corrupt images: count and
  ids), source_range ([first, end) of the worker's records this shard covers), the
  shard's byte size and CRC32C, and the producing `fingerprint` (+ its digest); see
  `shard_manifest`. A shard without a valid manifest is incomplete and gets rewritten.
  """

  def __init__(self, path: str, num_classes: int, fingerprint: Mapping[str, Any],
               source_range: Sequence[int], num_bins: int = DEFAULT_NUM_BINS):
    self.path = path
    self._tmp = atomic.temporary_name(path)
    self._hist = ConfidenceHistogram(num_classes, num_bins)
    self._fingerprint = dict(fingerprint)
    self._source_range = [int(v) for v in source_range]
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
    self._hist.add(classes, confidence)
    self._count += len(classes)

  def skip(self, record_id: str) -> None:
    """Counts a record that could not be used (corrupt image)."""
    self._skipped.append(record_id)

  def close(self) -> Dict[str, Any]:
    """Renames the shard into place, writes and returns its manifest."""
    self._writer.close()
    tf.io.gfile.rename(self._tmp, self.path, overwrite=True)
    return shard_manifest(self.path, record_count=self._count, fields=self._hist.fields(),
                          skipped_ids=self._skipped, source_range=self._source_range,
                          fingerprint=self._fingerprint)

  def abort(self) -> None:
    """Drops the temporary file (used when the writer fails part-way)."""
    self._writer.close()
    if tf.io.gfile.exists(self._tmp):
      tf.io.gfile.remove(self._tmp)


def shard_manifest(path: str, *, record_count: int, fields: Mapping[str, Any],
                   skipped_ids: Sequence[str], source_range: Sequence[int],
                   fingerprint: Mapping[str, Any],
                   skipped_count: Optional[int] = None) -> Dict[str, Any]:
  """Writes (atomically) and returns the manifest of the finished shard file `path`.

  The one writer of manifests, for any producer of shards (ShardWriter, a Beam sink):
  `size_bytes` and `crc32c` are taken from the file as written (tfrecords/checksum.py),
  `fields` are `ConfidenceHistogram.fields()` of its records; the manifest is written
  last, so a shard is complete exactly when its manifest exists and matches it.
  """
  size, crc = checksum.of_file(path)
  manifest = {
      "version": MANIFEST_VERSION,
      "shard": os.path.basename(path),
      "record_count": int(record_count),
      **fields,
      "skipped_count": len(skipped_ids) if skipped_count is None else int(skipped_count),
      "skipped_ids": list(skipped_ids)[:1000],  # Bounded: counts exact, ids a sample.
      "source_range": [int(v) for v in source_range],
      "size_bytes": size,
      "crc32c": crc,
      "fingerprint": dict(fingerprint),
      "fingerprint_digest": fingerprint_digest(fingerprint),
  }
  write_json_atomic(manifest_path(path), manifest)
  return manifest


def _check_temperature(manifest: Mapping[str, Any], mpath: str) -> None:
  """Refuses shards whose probabilities are not softmax(logits) at STORED_TEMPERATURE.

  Version-1 manifests (this project before the temperature fix) stored
  softmax(logits / T) with T = the fingerprint's teacher_softmax_temp (one-hot for -1),
  which training then sharpened a second time; at T = 1 they equal today's.
  """
  if manifest.get("version", 1) >= 2:
    found = manifest.get("probabilities_temperature")
  else:
    found = manifest.get("fingerprint", {}).get("teacher_softmax_temp", STORED_TEMPERATURE)
  if found != STORED_TEMPERATURE:
    raise ValueError(
        f"{mpath}: its shard stores softmax(logits / T) with T = {found} (written by an "
        "older version of this project, which applied the temperature twice); "
        f"pseudo-labels are now stored at T = {STORED_TEMPERATURE:g} and "
        "--teacher_softmax_temp is applied once, in training. Run predict again into a "
        "fresh directory.")


def _load_manifest(mpath: str, shard_path: str) -> Optional[Dict[str, Any]]:
  if not tf.io.gfile.exists(mpath) or not tf.io.gfile.exists(shard_path):
    return None
  try:
    with tf.io.gfile.GFile(mpath) as f:
      manifest = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None  # A torn manifest (cannot happen with rename, but a hand copy can).
  if tf.io.gfile.stat(shard_path).length != manifest.get("size_bytes"):
    return None
  _check_temperature(manifest, mpath)
  return manifest


def read_manifest(shard_path: str) -> Optional[Dict[str, Any]]:
  """The manifest of a complete shard, or None when the shard is missing or incomplete.

  Also finds version-1 manifests (`S.manifest.json`, beside the shard). Raises
  ValueError for shards whose probabilities were stored at another temperature.
  """
  manifest = _load_manifest(manifest_path(shard_path), shard_path)
  if manifest is None:
    manifest = _load_manifest(shard_path + MANIFEST_SUFFIX, shard_path)
  return manifest


def _shard_of(mpath: str) -> str:
  directory, name = os.path.split(mpath)
  name = name[:-len(MANIFEST_SUFFIX)]
  return os.path.join(directory, name[len(MANIFEST_PREFIX):]
                      if name.startswith(MANIFEST_PREFIX) else name)


def list_manifests(directory: str) -> List[Dict[str, Any]]:
  """All complete shards' manifests in `directory` (each with a "path" entry), sorted."""
  manifests = {}
  for mpath in sorted(tf.io.gfile.glob(f"{directory.rstrip('/')}/*{MANIFEST_SUFFIX}")):
    shard_path = _shard_of(mpath)
    if shard_path not in manifests:
      manifest = read_manifest(shard_path)
      if manifest is not None:
        manifests[shard_path] = dict(manifest, path=shard_path)
  return [manifests[p] for p in sorted(manifests)]


def check_one_fingerprint(manifests: Iterable[Mapping[str, Any]], where: str) -> None:
  """Raises ValueError when shards in `where` come from different flags."""
  seen: Dict[str, Mapping[str, Any]] = {}
  for m in manifests:
    seen.setdefault(m["fingerprint_digest"], {**m["fingerprint"], "example": m["shard"]})
  if len(seen) > 1:
    raise ValueError(f"{where} mixes shards written with different flags; use a fresh "
                     f"directory. Fingerprints: {json.dumps(list(seen.values()), default=str)}")
