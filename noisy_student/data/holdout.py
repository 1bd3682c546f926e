"""A stratified validation split held out of a labeled source (`--iterations=auto`).

The pipeline decides whether another iteration pays on labeled images no model trained
on: `split` picks, per class, a seeded share of the labeled source's images and returns
two Contract-2 sources over the same records, the training part (everything else) and
the held-out part. Which images are held out depends only on the records' ids and labels
and the seed, never on the reading order or the number of workers, so a resumed run
rebuilds the same split; `digest` fingerprints it so a resumed run can tell when the
labeled data changed under it.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from typing import Dict, List, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.data.source import Source


@dataclasses.dataclass(frozen=True)
class Split:
  """The two parts of a labeled source, and what identifies the split."""
  train: Source
  held_out: Source
  per_class: Dict[int, int]  # Held-out images per label.
  digest: str  # sha256 of the sorted held-out ids.


def ids_and_labels(source: Source) -> Tuple[List[bytes], np.ndarray]:
  """Every record's id and label, in the source's order (one pass, images not decoded)."""
  ds = source.dataset().map(lambda r: (r["id"], r["label"]))
  ids, labels = [], []
  for batch_ids, batch_labels in ds.batch(4096).as_numpy_iterator():
    ids.extend(batch_ids.tolist())
    labels.append(batch_labels)
  return ids, (np.concatenate(labels) if labels else np.zeros([0], np.int64))


def choose(ids: Sequence[bytes], labels: np.ndarray, fraction: float, seed: int,
           class_names: Sequence[str] = ()) -> List[bytes]:
  """The held-out ids: per class round(fraction x count) images, at least one, and at
  least one left to train on; drawn by `seed` from the class's ids in sorted order."""
  by_class = collections.defaultdict(list)
  for record_id, label in zip(ids, labels.tolist()):
    if label < 0:
      raise ValueError(f"labeled record {record_id!r} has no label; the held-out split "
                       "is drawn per class")
    by_class[label].append(record_id)
  rng = np.random.default_rng(seed)
  held = []
  for label in sorted(by_class):
    members = sorted(by_class[label])
    if len(members) < 2:
      name = class_names[label] if label < len(class_names) else label
      raise ValueError(
          f"class {name} has {len(members)} labeled image: --iterations=auto holds out at "
          "least one image per class and needs another to train on; add labeled images "
          "or use --iterations=all")
    k = min(len(members) - 1, max(1, int(math.floor(fraction * len(members) + 0.5))))
    held += [members[i] for i in sorted(rng.permutation(len(members))[:k])]
  return held


def digest(held_ids: Sequence[bytes]) -> str:
  return hashlib.sha256(b"\n".join(sorted(held_ids))).hexdigest()


def _part(source: Source, held_ids: Sequence[bytes], held: bool, size: int,
          counts: Dict[int, int]) -> Source:
  """The records of `source` whose id is (held=True) or is not in `held_ids`."""
  keys = tf.constant(list(held_ids), tf.string, shape=[len(held_ids)])

  def make(num_workers: int, worker_index: int) -> tf.data.Dataset:
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        keys, tf.ones_like(keys, tf.int64)), default_value=0)
    wanted = tf.constant(1 if held else 0, tf.int64)
    return source.dataset(num_workers, worker_index).filter(
        lambda r: tf.equal(table.lookup(r["id"]), wanted))

  name = "held out" if held else "training part"
  return Source(f"{source.spec} ({name})", True, source.class_names, size, make,
                class_counts=counts)


def split(source: Source, fraction: float, seed: int) -> Split:
  """Splits a labeled source into its training part and a stratified held-out part.

  Args:
    source: a labeled Contract-2 source.
    fraction: share of each class held out (0 < fraction < 1).
    seed: which images; the same seed, ids and labels give the same split.
  Returns:
    A `Split`. Raises ValueError when the source is unlabeled or a class has fewer than
    two images.
  """
  if not source.labeled:
    raise ValueError(f"{source.spec} is not labeled: no validation split can be held out")
  ids, labels = ids_and_labels(source)
  held_ids = choose(ids, labels, fraction, seed, source.class_names or ())
  held_set = set(held_ids)
  held_counts = collections.Counter(int(y) for i, y in zip(ids, labels) if i in held_set)
  all_counts = collections.Counter(int(y) for y in labels)
  train_counts = {c: n - held_counts.get(c, 0) for c, n in all_counts.items()}
  result = Split(
      train=_part(source, held_ids, False, len(ids) - len(held_ids), train_counts),
      held_out=_part(source, held_ids, True, len(held_ids), dict(held_counts)),
      per_class=dict(sorted(held_counts.items())), digest=digest(held_ids))
  logging.info("Validation split of %s: %d of %d labeled images held out (%s per class, "
               "seed %d); the models train on the other %d.", source.spec, len(held_ids),
               len(ids), _range(held_counts.values()), seed, len(ids) - len(held_ids))
  return result


def _range(counts) -> str:
  counts = list(counts)
  low, high = min(counts), max(counts)
  return str(low) if low == high else f"{low} to {high}"
