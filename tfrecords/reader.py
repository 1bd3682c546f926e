"""Reading pseudo-label shards: ours (with manifests) and the original's filter output.

`read_records(dir_or_pattern)` yields dicts keyed as `format.FEATURE_KEYS` whatever wrote
the shards (see the key table in tfrecords/format.py): a directory of this project's
predict output gives its complete shards (checked against their manifests); a directory
without manifests is read as the original noisystudent's filter output, taking its
train* / extra* files as the original's trainer does (data_input.py:391-399); a glob
pattern gives exactly the files it matches.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from noisy_student import atomic
from tfrecords import format as fmt
from tfrecords import integrity
from tfrecords import splits


def is_original_output(directory: str) -> bool:
  """Whether `directory` holds no file of this project's predict (no manifest, count or
  class_names.json): then its shards are the original's filter output."""
  return not any(n.endswith((fmt.MANIFEST_SUFFIX, fmt.COUNT_SUFFIX)) or
                 n == fmt.CLASS_NAMES_FILE for n in tf.io.gfile.listdir(directory))


def original_digest(paths: Sequence[str]) -> str:
  """The fingerprint digest of manifest-less shards: their names and sizes."""
  return fmt.fingerprint_digest({os.path.basename(p): tf.io.gfile.stat(p).length
                                 for p in paths})


def resolve_shards(path_or_pattern: str, require_complete: bool = True) -> List[str]:
  """Shard paths of a directory (this project's complete shards, or the original's
  filter output: its train* / extra* files) or of a glob pattern (data files only)."""
  if tf.io.gfile.isdir(path_or_pattern):
    if is_original_output(path_or_pattern):
      try:
        return splits.split_files(path_or_pattern, "unlabeled")
      except ValueError as e:
        raise ValueError(f"no pseudo-label shards in {path_or_pattern}: no manifest "
                         f"(*{fmt.MANIFEST_SUFFIX}) of this project's predict, and {e}"
                         ) from None
    manifests = fmt.list_manifests(path_or_pattern)
    if require_complete:
      integrity.check_complete(manifests, path_or_pattern)
    return [m["path"] for m in manifests]
  paths = [p for p in sorted(tf.io.gfile.glob(path_or_pattern))
           if not p.endswith(".json") and atomic.TEMPORARY not in os.path.basename(p)]
  if not paths:
    raise ValueError(f"no pseudo-label shards match {path_or_pattern!r}")
  return paths


def parse_record(serialized: tf.Tensor, num_classes: int,
                 file_name: Optional[tf.Tensor] = None,
                 index: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
  """Parses one serialized record (ours, or the original's) into a dict keyed as
  FEATURE_KEYS. The original's `label` / `prob` fill `classes` / `confidence`; a record
  without an id gets `<file_name>:<index>` when those are given."""
  spec = {
      fmt.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
      fmt.PROBS_KEY: tf.io.FixedLenFeature([num_classes], tf.float32),
      fmt.LABEL_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  }
  parsed = tf.io.parse_single_example(serialized, {**spec, **_SMALL_SPEC})
  return {**{k: parsed[k] for k in spec}, **_small_fields(parsed, file_name, index)}


# The fields balancing reads, in either format; -1 / "" mark "absent".
_SMALL_SPEC = {
    fmt.ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    fmt.CLASS_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    fmt.CONFIDENCE_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    fmt.ORIGINAL_CLASS_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    fmt.ORIGINAL_CONFIDENCE_KEY: tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
}


def _small_fields(parsed: Dict[str, tf.Tensor], file_name, index) -> Dict[str, tf.Tensor]:
  """id, class and confidence from parsed `_SMALL_SPEC` fields (scalars or batches)."""
  ids = parsed[fmt.ID_KEY]
  if file_name is not None:
    ids = tf.where(ids == "", file_name + ":" + tf.strings.as_string(index), ids)
  classes, conf = parsed[fmt.CLASS_KEY], parsed[fmt.CONFIDENCE_KEY]
  return {fmt.ID_KEY: ids,
          fmt.CLASS_KEY: tf.where(classes >= 0, classes, parsed[fmt.ORIGINAL_CLASS_KEY]),
          fmt.CONFIDENCE_KEY: tf.where(conf >= 0, conf, parsed[fmt.ORIGINAL_CONFIDENCE_KEY])}


def num_classes_of(shard_paths: Sequence[str]) -> int:
  """The class count stored in the first shard's manifest (or its first record)."""
  manifest = fmt.read_manifest(shard_paths[0])
  if manifest is not None:
    return int(manifest["num_classes"])
  for raw in tf.data.TFRecordDataset(shard_paths[:1]).take(1):
    example = tf.train.Example.FromString(raw.numpy())
    return len(example.features.feature[fmt.PROBS_KEY].float_list.value)
  raise ValueError(f"cannot tell the class count: {shard_paths[0]} has no manifest and no "
                   "records; pass num_classes")


def _numbered(paths: Sequence[str]) -> tf.data.Dataset:
  """(file name, index in file, serialized record) of the shards, interleaved record by
  record in a fixed order (a fixed cycle, so it does not depend on the machine)."""
  def one(path):
    name = tf.strings.split(path, "/")[-1]
    return tf.data.TFRecordDataset(path).enumerate().map(lambda i, r: (name, i, r))
  return tf.data.Dataset.from_tensor_slices(list(paths)).interleave(
      one, cycle_length=max(1, min(16, len(paths))), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def read_records(path_or_pattern: str, num_classes: Optional[int] = None,
                 require_complete: bool = True) -> tf.data.Dataset:
  """Parsed records (dicts keyed as FEATURE_KEYS) from a directory or glob pattern.

  A directory yields its complete shards only and, with `require_complete`, refuses a
  directory missing some worker's shard; a directory of the original's filter output
  (no manifests) yields its train* / extra* files. Order is deterministic.
  """
  paths = resolve_shards(path_or_pattern, require_complete)
  num_classes = num_classes or num_classes_of(paths)
  parse = tf.autograph.experimental.do_not_convert(
      lambda name, i, s: parse_record(s, num_classes, name, i))
  return _numbered(paths).map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def read_small_fields(paths: Sequence[str], batch_size: int = 8192) -> tf.data.Dataset:
  """Batches {ID_KEY, CLASS_KEY, CONFIDENCE_KEY} of every record (either format), in
  the order of `read_records`; for balancing passes that never touch the images."""
  ds = _numbered(paths).batch(batch_size)

  @tf.autograph.experimental.do_not_convert
  def parse(names, index, serialized):
    return _small_fields(tf.io.parse_example(serialized, _SMALL_SPEC), names, index)
  return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def scan_manifest(paths: Sequence[str], num_bins: int = fmt.DEFAULT_NUM_BINS
                  ) -> Dict[str, Any]:
  """One pass over manifest-less shards (the original's) -> the fields of a manifest that
  balancing needs, for all of them together ("path": their directory)."""
  hist = fmt.ConfidenceHistogram(num_classes_of(paths), num_bins)
  count = 0
  for batch in read_small_fields(paths).prefetch(2):
    hist.add(batch[fmt.CLASS_KEY].numpy(), batch[fmt.CONFIDENCE_KEY].numpy())
    count += int(batch[fmt.CLASS_KEY].shape[0])
  digest = original_digest(paths)
  return {"version": fmt.MANIFEST_VERSION, "shard": os.path.basename(paths[0]),
          "record_count": count, **hist.fields(), "skipped_count": 0,
          "fingerprint": {"format": "original noisystudent shards", "files": len(paths)},
          "fingerprint_digest": digest, "path": os.path.dirname(paths[0])}
