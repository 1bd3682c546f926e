"""Source specs -> streams of raw records (Contract 2 of docs/DESIGN.md).

Every source, labeled or not, yields dicts
`{"image/encoded": tf.string, "id": tf.string, "label": tf.int64}` with the file's own
encoded bytes (never re-encoded; digits, which are arrays, are encoded once as PNG) and
`label == -1` where unknown. Order is deterministic; worker `i` of `n` gets a disjoint
part and the union over workers is everything, for any `n`.

Spec forms (see docs/data.md):
  digits:labeled | digits:unlabeled | digits:test   embedded scikit-learn digits
  tfds:NAME:SPLIT                                  prepared tensorflow-datasets data_dir
  imagefolder:DIR   (or a DIR whose top level holds only class sub-folders)  labeled
  images:DIR        (or a DIR with image files at its top level)  unlabeled, any nesting
  tfrecord:PATTERN  (or a file pattern, a TFRecord file, or a DIR of record files)

A DIR of record files means one split's files, as the original reads a data directory
(tfrecords/splits.py): train* for training sources, train* and extra* for unlabeled
ones, validation* (else test*) for evaluation; a pattern takes exactly what it matches.
"""
from __future__ import annotations

import collections
import functools
from typing import List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.data import tfds_source
from noisy_student.data.record_order import INTERLEAVE_CYCLE
from noisy_student.data.source import DatasetFn, Files, Source
from tfrecords import splits

IMAGE_EXTENSIONS = splits.IMAGE_EXTENSIONS
# Counting classes needs a full read; skip it above this many bytes (ImageNet is 140 GB).
_MAX_BYTES_TO_COUNT = 256 << 20

def open_source(spec: str, *, tfds_data_dir: Optional[str] = None,
                label_offset: int = 0, seed: int = 0, digits_num_labeled: int = 500,
                digits_num_test: int = 400, labeled: Optional[bool] = None,
                split: str = "train") -> Source:
  """Opens a source spec (see the module docstring) and logs what it holds.

  Args:
    spec: the source spec.
    tfds_data_dir: the prepared data_dir for "tfds:" specs.
    label_offset: subtracted from TFRecord labels (1 for ImageNet's 1-based labels).
    seed: seed of the digits split.
    digits_num_labeled, digits_num_test: digits split sizes; the rest is unlabeled.
    labeled: for a plain directory, force ImageFolder (True) or an unlabeled image tree
      (False) instead of guessing from its top level; for TFRecords, False drops labels.
    split: what the source is for, which picks a TFRecord directory's files (a key of
      tfrecords.splits.SPLITS): "train", "unlabeled" or "eval".
  Returns:
    A `Source`.
  Raises:
    ValueError / FileNotFoundError naming the spec or path at fault.
  """
  if not spec:
    raise ValueError("Empty source spec.")
  if spec.startswith("digits:"):
    source = _open_digits(spec, seed, digits_num_labeled, digits_num_test)
  elif spec.startswith("tfds:"):
    source = tfds_source.open_tfds(spec, tfds_data_dir)
  elif spec.startswith("imagefolder:"):
    source = _open_image_folder(spec, spec[len("imagefolder:"):])
  elif spec.startswith("images:"):
    source = _open_image_tree(spec, spec[len("images:"):])
  elif spec.startswith("tfrecord:"):
    source = _open_tfrecords(spec, spec[len("tfrecord:"):], label_offset, labeled, split)
  elif tf.io.gfile.isdir(spec):
    source = _open_directory(spec, label_offset, labeled, split)
  else:
    source = _open_tfrecords(spec, spec, label_offset, labeled, split)
  logging.info("Source %s", source.describe())
  return source


def _open_directory(path: str, label_offset: int, labeled: Optional[bool],
                    split: str) -> Source:
  """Guesses a plain directory's layout from its top level: record files named by a
  split (train*, validation*, ... as the original's data directories, which may hold
  sub-folders too) or no images nor sub-folders -> TFRecords; else image folders."""
  entries = tf.io.gfile.listdir(path)
  if not entries:
    raise ValueError(f"Source directory {path} is empty.")
  subdirs = [e for e in entries if tf.io.gfile.isdir(_join(path, e))]
  images = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
  split_files = [e for e in entries if e not in subdirs and splits.names_a_split(e)]
  if labeled is not True and not images and (not subdirs or split_files):
    return _open_tfrecords(path, path, label_offset, labeled, split)
  if labeled is True or (labeled is None and subdirs and not images):
    return _open_image_folder(path, path)
  return _open_image_tree(path, path)


def _join(directory: str, name: str) -> str:
  return directory.rstrip("/") + "/" + name.rstrip("/")


def _image_files_under(directory: str) -> List[str]:
  """All image files below `directory` (any nesting), sorted; works on gs:// too."""
  files = []
  for root, _, names in tf.io.gfile.walk(directory):
    files.extend(_join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS))
  return sorted(files)


def _files_dataset(paths: Sequence[str], labels: Sequence[int]) -> DatasetFn:
  """Records read from image files; worker i takes every n-th file from i."""
  paths = np.asarray(paths, dtype=object).astype(bytes)
  labels = np.asarray(labels, dtype=np.int64)

  def make(num_workers: int, worker_index: int) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        (paths[worker_index::num_workers], labels[worker_index::num_workers]))
    return ds.map(lambda p, y: {"image/encoded": tf.io.read_file(p), "id": p, "label": y},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return make


def _open_image_folder(spec: str, path: str) -> Source:
  """ImageFolder layout: PATH/<class name>/**/<image>; labels index sorted names."""
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(f"Image folder {path} does not exist or is not a directory.")
  entries = sorted(tf.io.gfile.listdir(path))
  stray = [e for e in entries if not tf.io.gfile.isdir(_join(path, e))
           and e.lower().endswith(IMAGE_EXTENSIONS)]
  if stray:
    raise ValueError(
        f"Image folder {path} must hold only class sub-folders, but has image files at "
        f"its top level (e.g. {_join(path, stray[0])}). For unlabeled images use "
        f"'images:{path}'.")
  class_names = [e.rstrip("/") for e in entries if tf.io.gfile.isdir(_join(path, e))]
  if not class_names:
    raise ValueError(f"Image folder {path} has no class sub-folders.")
  paths, labels = [], []
  for label, name in enumerate(class_names):
    files = _image_files_under(_join(path, name))
    if not files:
      raise ValueError(f"Class folder {_join(path, name)} holds no image files "
                       f"({', '.join(IMAGE_EXTENSIONS)}).")
    paths += files
    labels += [label] * len(files)
  counts = dict(collections.Counter(labels))
  return Source(spec, True, class_names, len(paths), _files_dataset(paths, labels),
                class_counts=counts, files=Files("images", tuple(paths), tuple(labels)))


def _open_image_tree(spec: str, path: str) -> Source:
  """Unlabeled: every image file below PATH, any nesting, sorted by path."""
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(f"Image directory {path} does not exist or is not a directory.")
  paths = _image_files_under(path)
  if not paths:
    raise ValueError(f"Image directory {path} holds no image files "
                     f"({', '.join(IMAGE_EXTENSIONS)}) at any depth.")
  labels = [-1] * len(paths)
  return Source(spec, False, None, len(paths), _files_dataset(paths, labels),
                files=Files("images", tuple(paths), tuple(labels)))


def _record_files(pattern: str, split: str) -> List[str]:
  """Record files of a directory (its `split` files), a file, or a glob pattern, sorted."""
  if tf.io.gfile.isdir(pattern):
    files = splits.split_files(pattern, split)
  else:
    files = tf.io.gfile.glob(pattern)
  if not files:
    raise FileNotFoundError(
        f"No TFRecord files match {pattern} (and it is not a source spec: expected "
        f"digits:..., tfds:NAME:SPLIT, a directory, or a file pattern).")
  return sorted(files)


def _parse_example(serialized: tf.Tensor, label_offset: int, keep_label: bool):
  features = tf.io.parse_single_example(serialized, {
      "image/encoded": tf.io.FixedLenFeature([], tf.string),
      "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
  })
  label = features["image/class/label"]
  label = tf.where(label >= 0, label - label_offset, tf.constant(-1, tf.int64))
  if not keep_label:
    label = tf.constant(-1, tf.int64)
  return features["image/encoded"], label


def read_tfrecord_file(path: tf.Tensor, label_offset: int, keep_label: bool
                       ) -> tf.data.Dataset:
  """Records of one file of tf.Examples, in order; ids are `<file>:<index in file>`."""
  ds = tf.data.TFRecordDataset(path).enumerate()
  def to_record(index, serialized):
    image, label = _parse_example(serialized, label_offset, keep_label)
    return {"image/encoded": image, "id": path + ":" + tf.strings.as_string(index),
            "label": label}
  return ds.map(to_record)


def _tfrecords_dataset(files: List[str], label_offset: int, keep_label: bool) -> DatasetFn:
  """Records of tf.Examples; each worker's order is the one `record_order.RecordOrder`
  computes from the files' record counts (readers that split the work rely on it)."""
  def make(num_workers: int, worker_index: int) -> tf.data.Dataset:
    # Whole files per worker when there are enough (each reads only its own bytes);
    # otherwise every worker reads the stream and keeps every n-th record.
    by_file = len(files) >= num_workers
    mine = files[worker_index::num_workers] if by_file else files
    ds = tf.data.Dataset.from_tensor_slices(mine).interleave(
        lambda path: read_tfrecord_file(path, label_offset, keep_label),
        cycle_length=min(INTERLEAVE_CYCLE, len(mine)), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds if by_file else ds.shard(num_workers, worker_index)
  return make


def _open_tfrecords(spec: str, pattern: str, label_offset: int,
                    labeled: Optional[bool], split: str) -> Source:
  files = _record_files(pattern, split)
  try:
    first = next(iter(tf.data.TFRecordDataset(files[0]).take(1)), None)
  except tf.errors.OpError as e:
    raise ValueError(f"{files[0]} is not a readable TFRecord file: {e.message}") from e
  if first is None:
    raise ValueError(f"TFRecord file {files[0]} is empty.")
  try:
    example = tf.train.Example.FromString(first.numpy())
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{files[0]} does not hold tf.train.Example records: {e}") from e
  feature = example.features.feature
  if "image/encoded" not in feature:
    raise ValueError(f"TFRecord file {files[0]} has no 'image/encoded' feature "
                     f"(has: {sorted(feature.keys())}).")
  has_label = "image/class/label" in feature and labeled is not False
  make = _tfrecords_dataset(files, label_offset, has_label)
  size, counts = None, None
  total_bytes = sum(tf.io.gfile.stat(f).length for f in files)
  if total_bytes <= _MAX_BYTES_TO_COUNT:
    labels = list(make(1, 0).map(lambda r: r["label"]).as_numpy_iterator())
    size = len(labels)
    counts = dict(collections.Counter(int(y) for y in labels)) if has_label else None
  else:
    logging.info("%s: %d files, %.1f GB; not counting records or classes.", spec,
                 len(files), total_bytes / 1e9)
  return Source(spec, has_label, None, size, make, class_counts=counts,
                files=Files("tfrecords", tuple(files), label_offset=label_offset,
                            keep_label=has_label))


@functools.lru_cache(maxsize=1)
def _digits_encoded():
  """(images, targets, PNG bytes per image) of scikit-learn's digits, encoded once."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  # 0..16 grey levels -> 0..255, encoded once as PNG (grey; decoding makes 3 channels).
  pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return pixels, digits.target, tuple(tf.io.encode_png(p).numpy() for p in pixels)


def _open_digits(spec: str, seed: int, num_labeled: int, num_test: int) -> Source:
  """scikit-learn's 8x8 digits, split reproducibly (stratified) by `seed`."""
  split = spec[len("digits:"):]
  if split not in ("labeled", "unlabeled", "test"):
    raise ValueError(f"Unknown digits split in {spec!r}; use digits:labeled, "
                     "digits:unlabeled or digits:test.")
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  _, targets, encoded_all = _digits_encoded()
  index = np.arange(len(targets))
  if num_labeled < 10 or num_test < 10 or num_labeled + num_test >= len(index):
    raise ValueError(f"digits_num_labeled={num_labeled} and digits_num_test={num_test} "
                     f"must each be >= 10 and sum to less than {len(index)}.")
  rest, test = model_selection.train_test_split(
      index, test_size=num_test, random_state=seed, stratify=targets)
  unlabeled, labeled_idx = model_selection.train_test_split(
      rest, test_size=num_labeled, random_state=seed, stratify=targets[rest])
  chosen = np.sort({"labeled": labeled_idx, "unlabeled": unlabeled, "test": test}[split])
  encoded = [encoded_all[i] for i in chosen]
  ids = [f"digits:{i}".encode() for i in chosen]
  true = targets[chosen].astype(np.int64)
  hidden = split == "unlabeled"
  labels = np.full_like(true, -1) if hidden else true

  def make(num_workers: int, worker_index: int) -> tf.data.Dataset:
    sl = slice(worker_index, None, num_workers)
    return tf.data.Dataset.from_tensor_slices({
        "image/encoded": tf.constant(encoded[sl], tf.string, shape=[len(encoded[sl])]),
        "id": tf.constant(ids[sl], tf.string, shape=[len(ids[sl])]),
        "label": tf.constant(labels[sl], tf.int64)})
  names = [str(c) for c in range(10)]
  counts = None if hidden else dict(collections.Counter(int(y) for y in true))
  return Source(spec, not hidden, names, len(chosen), make,
                true_labels={i.decode(): int(y) for i, y in zip(ids, true)} if hidden
                else None, class_counts=counts)
