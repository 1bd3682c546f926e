"""The host side of predict: finished records -> per-shard writers, in a writer thread.

The teacher's step already emits serialized records (`tfrecords.format.serialize_batch`),
so the host only routes bytes to shards, counts classes and confidence bins per batch
(vectorised) and finds corrupt images as gaps in the record index.
"""
from __future__ import annotations

import queue
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from noisy_student import faults
from tfrecords import format as fmt

# One labelled batch: record index [k], serialized records [k], classes [k], confidence [k].
Batch = Sequence[np.ndarray]


class ShardSink:
  """Routes labelled batches into per-shard writers; closes a shard when it is done.

  `id_lookup(indices)` gives the ids of records missing from the stream once they are
  confirmed corrupt (see `stream.corrupt_ids`).
  """

  def __init__(self, paths: Sequence[str], bounds: np.ndarray, needed: np.ndarray,
               num_classes: int, fingerprint: Dict[str, Any],
               id_lookup: Callable[[Sequence[int]], List[str]]):
    self._paths, self._bounds, self._needed = paths, bounds, needed
    self._num_classes, self._fingerprint = num_classes, fingerprint
    self._id_lookup = id_lookup
    self._writer: Optional[fmt.ShardWriter] = None
    self._shard = -1
    self._next = 0  # The next record index the open shard expects.
    self.records = 0
    self.corrupt = 0

  def _skip_missing(self, upto: int, present: Optional[np.ndarray] = None) -> None:
    """Records of the open shard in [next, upto) not in `present` failed to decode."""
    if self._writer is None:
      return
    missing = np.arange(self._next, upto)
    if present is not None:
      missing = np.setdiff1d(missing, present)
    for record_id in (self._id_lookup(missing.tolist()) if missing.size else ()):
      logging.warning("skipping corrupt image %s", record_id)
      self._writer.skip(record_id)
      self.corrupt += 1
    self._next = max(self._next, upto)

  def _advance_to(self, shard: int) -> None:
    """Closes the open shard and any needed (empty) shard before `shard`; opens it."""
    while self._shard < shard:
      if self._writer is not None:
        self._skip_missing(int(self._bounds[self._shard + 1]))
        manifest = self._writer.close()
        logging.info("wrote %s (%d records)", self._paths[self._shard],
                     manifest["record_count"])
        self._writer = None
      self._shard += 1
      if self._shard < len(self._paths) and self._needed[self._shard]:
        b = self._bounds
        self._next = int(b[self._shard])
        self._writer = fmt.ShardWriter(
            self._paths[self._shard], self._num_classes, self._fingerprint,
            [int(b[self._shard]), int(b[self._shard + 1])],
            num_bins=self._fingerprint["num_bins"])

  def add(self, index: np.ndarray, records: np.ndarray, classes: np.ndarray,
          confidence: np.ndarray) -> None:
    """Writes one batch (it may span shards) of the records that decoded, in order."""
    if not np.isfinite(confidence).all():  # A teacher of an older, diverged run.
      raise faults.Diverged(
          f"the teacher's outputs are not finite (record {int(index[0])} of this worker on): "
          "its training diverged; train it again with a lower --base_learning_rate")
    shard = np.searchsorted(self._bounds[1:-1], index, side="right")
    for k in np.unique(shard):
      self._advance_to(int(k))
      rows = np.flatnonzero(shard == k)
      self._skip_missing(int(index[rows].max()) + 1, index[rows])
      self._writer.write_serialized(records[rows], classes[rows], confidence[rows])
      self.records += len(rows)

  def finish(self) -> None:
    self._advance_to(len(self._paths))

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.abort()


ABORT = object()  # End marker of a failed run (None ends a completed one).


def run_writer(sink: ShardSink, work: "queue.Queue", errors: List[BaseException]) -> None:
  """Writer thread: takes the step's output tensors off the teacher's thread.

  Items are tuples of tensors (see `Batch`), converted here so the teacher's thread only
  dispatches steps; None closes the last shard, ABORT leaves it incomplete.
  """
  item = ()
  try:
    while True:
      item = work.get()
      if item is None or item is ABORT:
        break
      sink.add(*(t.numpy() for t in item))
    if item is ABORT:  # The producer failed: keep the open shard incomplete.
      sink.abort()
    else:
      sink.finish()
  except BaseException as e:  # pylint: disable=broad-except  (re-raised by the caller)
    errors.append(e)
    sink.abort()
    while item is not None and item is not ABORT:  # Drain until the end marker.
      item = work.get()
