"""The Contract-2 type every source opener returns (docs/DESIGN.md): a named stream of raw
records `{"image/encoded", "id", "label"}` split into disjoint worker parts; and the spec
grammar's prefixes, which the command line's checks read without TensorFlow.

Its own module so that the openers (sources.py, tfds_source.py) share it without
importing each other.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

if TYPE_CHECKING:  # Only for annotations: the spec grammar below is read before TF loads.
  import tensorflow as tf

DatasetFn = Callable[[int, int], "tf.data.Dataset"]
BUILTIN_PREFIXES = ("digits:", "tfds:")  # Specs that name no path.
PATH_PREFIXES = ("imagefolder:", "images:", "tfrecord:")  # Spec forms "<prefix><path>".


def path_of(spec: str) -> Optional[str]:
  """The file, directory or pattern a spec reads, or None for the built-in ones."""
  if spec.startswith(BUILTIN_PREFIXES):
    return None
  prefix = next((p for p in PATH_PREFIXES if spec.startswith(p)), "")
  return spec[len(prefix):]


@dataclasses.dataclass(frozen=True)
class Files:
  """The files behind a file-backed source, for readers that split the work themselves
  (noisy_student/beam): `kind` "images" (one record per file, `labels[i]` the label of
  `paths[i]`, -1 unknown) or "tfrecords" (tf.train.Example files, labels parsed with
  `label_offset`, or all -1 unless `keep_label`). `paths` are in the source's order, the
  strings its record ids are made of."""
  kind: str
  paths: Tuple[str, ...]
  labels: Tuple[int, ...] = ()
  label_offset: int = 0
  keep_label: bool = True


@dataclasses.dataclass
class Source:
  """A named stream of raw records; see the module docstring for the record keys.

  Attributes:
    spec: the spec string it was opened from.
    labeled: whether `label` is known (>= 0) for the records.
    class_names: class names indexed by label, or None when unknown.
    size: number of records, or None when unknown without a full read.
    true_labels: for `digits:unlabeled` only, {id: true label} of the hidden labels, so
      pseudo-label accuracy can be measured (the records themselves carry label -1).
    files: the image or TFRecord files it reads (None for in-memory and tfds sources).
  """
  spec: str
  labeled: bool
  class_names: Optional[List[str]]
  size: Optional[int]
  _dataset_fn: DatasetFn = dataclasses.field(repr=False)
  true_labels: Optional[Dict[str, int]] = dataclasses.field(default=None, repr=False)
  class_counts: Optional[Dict[int, int]] = dataclasses.field(default=None, repr=False)
  files: Optional[Files] = dataclasses.field(default=None, repr=False)

  @property
  def num_classes(self) -> Optional[int]:
    """Number of classes, or None when the source does not name them."""
    return len(self.class_names) if self.class_names is not None else None

  def dataset(self, num_workers: int = 1, worker_index: int = 0) -> tf.data.Dataset:
    """Returns worker `worker_index`'s part of the records (all of them for 1 worker)."""
    if num_workers < 1 or not 0 <= worker_index < num_workers:
      raise ValueError(f"{self.spec}: worker_index={worker_index} must be in "
                       f"[0, num_workers={num_workers}).")
    return self._dataset_fn(num_workers, worker_index)

  def describe(self) -> str:
    """One line: spec, labeled or not, size, classes and per-class counts if known."""
    parts = [self.spec, "labeled" if self.labeled else "unlabeled",
             f"{self.size if self.size is not None else 'unknown number of'} records"]
    if self.class_names is not None:
      names = ", ".join(self.class_names[:20])
      more = "" if len(self.class_names) <= 20 else f", ... ({len(self.class_names)})"
      parts.append(f"classes [{names}{more}]")
    if self.class_counts:
      counts = ", ".join(f"{k}:{v}" for k, v in sorted(self.class_counts.items())[:20])
      parts.append(f"counts per label {{{counts}}}")
    return "; ".join(parts)
