"""Where each record of a file-backed source falls in each worker's stream, as arithmetic.

`Source.dataset(num_workers, worker_index)` (sources.py) fixes an order: image files are
dealt to the workers in turn (file j -> worker j % W, position j // W); TFRecord files are
read through a deterministic `interleave(cycle_length=min(INTERLEAVE_CYCLE, files),
block_length=1)`, of each worker's own files (file f -> worker f % W when there are at
least W files) or of all of them followed by `shard(W, w)`. A reader that splits the
work itself (noisy_student/beam reads every file on its own worker) must know the
position a record would have had, so that it lands in the same shard at the same place.

`RecordOrder` computes it from the files' record counts alone, never reading a record:
the interleave is simulated event by event (an event is a file opening or running out);
between events every open file emits once per round, so each file's positions are a few
arithmetic runs. Cost O(files x cycle) whatever the record count. tests/test_record_order.py
checks it against tf.data itself. Pure numpy.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

INTERLEAVE_CYCLE = 8  # sources.py's TFRecord interleave width (files read at once).


@dataclasses.dataclass
class _Runs:
  """One file's positions: record j in [first[r], first[r+1]) sits at
  start[r] + (j - first[r]) * stride[r]."""
  first: List[int] = dataclasses.field(default_factory=list)
  start: List[int] = dataclasses.field(default_factory=list)
  stride: List[int] = dataclasses.field(default_factory=list)

  def add(self, first: int, start: int, stride: int) -> None:
    self.first.append(first)
    self.start.append(start)
    self.stride.append(stride)

  def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(self.first, np.int64), np.asarray(self.start, np.int64),
            np.asarray(self.stride, np.int64))


def _steady_rounds(slots, runs, cursor: int, position: int) -> int:
  """Fast-forwards whole rounds while no file opens or ends; returns the new position.

  Runs only when every slot holds a file with records left or stays empty for good;
  then each round emits one record of every open slot, in slot order from `cursor`.
  """
  order = [slots[(cursor + k) % len(slots)] for k in range(len(slots))]
  active = [s for s in order if s is not None]
  rounds = min(s[2] for s in active)
  for rank, s in enumerate(active):
    runs[s[0]].add(s[1], position + rank, len(active))
    s[1] += rounds
    s[2] -= rounds
  return position + rounds * len(active)


def interleave_runs(counts: Sequence[int], cycle: int) -> List[Tuple[np.ndarray, ...]]:
  """Per file, its records' positions in `interleave(cycle_length=cycle, block_length=1)`
  of files with these record counts (tf.data's order, deterministic): (first, start,
  stride) arrays as `_Runs` describes."""
  runs = [_Runs() for _ in counts]
  slots: List[Optional[list]] = [None] * max(1, cycle)  # [file, next record, left]
  cursor, position, next_file, open_files = 0, 0, 0, 0
  while next_file < len(counts) or open_files:
    steady = all((s is not None and s[2] > 0) or (s is None and next_file == len(counts))
                 for s in slots)
    if steady:
      position = _steady_rounds(slots, runs, cursor, position)
      continue
    s = slots[cursor]
    if s is None and next_file < len(counts):  # Opens a file; it emits on this turn.
      slots[cursor] = [next_file, 0, int(counts[next_file])]
      next_file, open_files = next_file + 1, open_files + 1
      continue
    if s is not None and s[2] > 0:  # One record, then the next slot.
      runs[s[0]].add(s[1], position, 1)
      s[1], s[2], position = s[1] + 1, s[2] - 1, position + 1
    elif s is not None:  # The file ran out: that costs its turn.
      slots[cursor], open_files = None, open_files - 1
    cursor = (cursor + 1) % len(slots)
  return [r.arrays() for r in runs]


def _locate(runs: Tuple[np.ndarray, ...], j: np.ndarray) -> np.ndarray:
  first, start, stride = runs
  r = np.searchsorted(first, j, side="right") - 1
  return start[r] + (j - first[r]) * stride[r]


class RecordOrder:
  """Record j of file f -> (worker, position in that worker's stream), as `Source.dataset`
  orders them; and each worker's record count. Build with `of_images` / `of_tfrecords`."""

  def __init__(self, num_workers: int, worker_sizes: np.ndarray, by_file: bool,
               runs: Optional[List[Tuple[np.ndarray, ...]]]):
    self.num_workers = num_workers
    self.worker_sizes = np.asarray(worker_sizes, np.int64)
    self._by_file, self._runs = by_file, runs

  @classmethod
  def of_images(cls, num_files: int, num_workers: int) -> "RecordOrder":
    """Image files: one record each, dealt to the workers in turn."""
    sizes = [len(range(w, num_files, num_workers)) for w in range(num_workers)]
    return cls(num_workers, np.asarray(sizes), True, None)

  @classmethod
  def of_tfrecords(cls, counts: Sequence[int], num_workers: int) -> "RecordOrder":
    """TFRecord files with these record counts (in the source's file order)."""
    counts = [int(c) for c in counts]
    if len(counts) >= num_workers:  # Each worker interleaves its own files.
      runs: List[Tuple[np.ndarray, ...]] = [()] * len(counts)
      for w in range(num_workers):
        mine = counts[w::num_workers]
        for k, r in enumerate(interleave_runs(mine, min(INTERLEAVE_CYCLE, len(mine)))):
          runs[w + k * num_workers] = r
      sizes = [sum(counts[w::num_workers]) for w in range(num_workers)]
      return cls(num_workers, np.asarray(sizes), True, runs)
    total = sum(counts)  # One interleave of all files, then shard(W, w).
    runs = interleave_runs(counts, min(INTERLEAVE_CYCLE, len(counts)))
    sizes = [len(range(w, total, num_workers)) for w in range(num_workers)]
    return cls(num_workers, np.asarray(sizes), False, runs)

  def locate_images(self, files: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(worker [n], position [n]) of image files (one record each) by file index."""
    g = np.asarray(files, np.int64)
    return g % self.num_workers, g // self.num_workers

  def locate(self, file_index: int, j: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(worker [n], position [n]) of records `j` (indices within the file) of a file."""
    j = np.asarray(j, np.int64)
    if self._runs is None:  # Image files: j is always 0.
      return self.locate_images(np.full(j.shape, file_index, np.int64))
    g = _locate(self._runs[file_index], j)
    if self._by_file:
      return np.full(j.shape, file_index % self.num_workers, np.int64), g
    return g % self.num_workers, g // self.num_workers
