"""The Beam job's shard writer: one writer per shard, idempotent, through tfrecords/format.py.

Labelled records are grouped by (worker, shard); one `WriteShard` call writes a whole
shard with `tfrecords.format.ShardWriter` (a temporary name, renamed into place, then the
manifest by `format.shard_manifest`, the one manifest writer: the size and CRC32C of the
file as written), so the files and manifests are the ones the in-process predict writes
and tfrecords/integrity verifies them alike. Why
this holds under retries: a shard is written only from its complete group, in record
order, so every attempt writes the same bytes; a failed attempt's temporary file is
removed (and a killed one's by `remove_temporaries` at the end, as the in-process
predict does at its start); the manifest comes last. A retried or duplicated attempt
therefore rewrites the same shard, and no record is written twice or left half-written.

A group's records arrive in no order; they are spooled (in memory up to 64 MB, then on
local disk) and written back sorted by their position in the worker's stream, which is
what makes the shard equal to the in-process one.
"""
from __future__ import annotations

import tempfile
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
import numpy as np

from noisy_student import atomic
from noisy_student.beam.inputs import NAMESPACE, Layout
from tfrecords import format as fmt

SMALL = "small"  # Tag of the (classes, confidence, id hash) chunks for the balance stages.
_SPOOL_IN_MEMORY = 64 << 20
_CHUNK = 4096  # Records per write and per small-fields chunk.
EMPTY = ("E",)  # Every needed shard's marker: an empty shard is written too.


class _Spool:
  """Records in arrival order on a spooled file, read back by record position."""

  def __init__(self):
    self._file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
    self._rows: List[Tuple[int, int, int, int, float, int]] = []  # i, off, len, c, x, h
    self._offset = 0

  def add(self, index: int, record: bytes, c: int, x: float, h: int) -> None:
    self._file.write(record)
    self._rows.append((index, self._offset, len(record), c, x, h))
    self._offset += len(record)

  def sorted_chunks(self) -> Iterator[Tuple[List[bytes], np.ndarray, np.ndarray,
                                            np.ndarray, np.ndarray]]:
    """(records, positions, classes, confidence float32, id hashes) by position."""
    rows = sorted(self._rows)
    for start in range(0, len(rows), _CHUNK):
      part = rows[start:start + _CHUNK]
      records = []
      for _, offset, length, _, _, _ in part:
        self._file.seek(offset)
        records.append(self._file.read(length))
      cols = list(zip(*part))
      yield (records, np.asarray(cols[0], np.int64), np.asarray(cols[3], np.int64),
             np.asarray(cols[4], np.float32), np.asarray(cols[5], np.int64))

  def close(self) -> None:
    self._file.close()


class WriteShard(beam.DoFn):
  """((worker, shard), values) -> the shard file and its manifest (the main output)
  and its records' small fields (tagged SMALL) for the balance stages."""

  def __init__(self, out: str, prefix: str, num_classes: int,
               fingerprint: Dict[str, Any]):
    self._out, self._prefix = out, prefix
    self._num_classes, self._fingerprint = num_classes, dict(fingerprint)

  def _path(self, w: int, k: int) -> str:
    fp = self._fingerprint
    return (f"{self._out}/"
            f"{fmt.shard_name(self._prefix, k, fp['num_shards'], w, fp['num_workers'])}")

  def process(self, group: Tuple[Tuple[int, int], Iterable[tuple]], layout: Layout):
    (w, k), values = group
    spool, skipped = _Spool(), []
    try:
      for v in values:
        if v[0] == "L":
          spool.add(*v[1:])
        elif v[0] == "S":
          skipped.append((v[1], v[2]))
      lo, hi = (int(b) for b in layout.bounds[w][k:k + 2])
      writer = fmt.ShardWriter(self._path(w, k), self._num_classes, self._fingerprint,
                               [lo, hi], num_bins=self._fingerprint["num_bins"])
      try:
        seen, small = self._write(writer, spool, skipped)
        _check_complete(seen, lo, hi, writer.path)
        manifest = writer.close()
      except BaseException:
        writer.abort()
        raise
    finally:
      spool.close()
    Metrics.counter(NAMESPACE, "shards_written").inc()
    yield manifest
    for chunk in small:
      yield beam.pvalue.TaggedOutput(SMALL, chunk)

  @staticmethod
  def _write(writer: fmt.ShardWriter, spool: _Spool, skipped: List[Tuple[int, bytes]]):
    seen, small = [np.asarray([i for i, _ in skipped], np.int64)], []
    for records, index, classes, confidence, hashes in spool.sorted_chunks():
      writer.write_serialized(records, classes, confidence)
      seen.append(index)
      small.append((classes, confidence, hashes))
    for _, record_id in sorted(skipped):
      writer.skip(record_id.decode("utf-8", "replace"))
    return np.concatenate(seen), small


def _check_complete(seen: np.ndarray, lo: int, hi: int, path: str) -> None:
  """Every position of [lo, hi) exactly once: a lost or doubled record stops the job."""
  if len(seen) != hi - lo or not np.array_equal(np.sort(seen), np.arange(lo, hi)):
    unique = len(np.unique(seen))
    raise RuntimeError(f"{path}: {len(seen)} records ({unique} distinct) arrived for "
                       f"positions [{lo}, {hi}); a read lost or repeated records")


def remove_temporaries(out: str, shard_names: Sequence[str]) -> int:
  """Removes temporary files of these shards (a killed attempt's); returns how many."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  wanted, removed = set(shard_names), 0
  for path in tf.io.gfile.glob(f"{out}/*{atomic.TEMPORARY}*"):
    name = path.rsplit("/", 1)[-1]
    if name.split(atomic.TEMPORARY)[0] in wanted:
      tf.io.gfile.remove(path)
      removed += 1
  return removed


def write(labelled: beam.PCollection, needed: Sequence[Tuple[int, int]], layout: Any,
          out: str, prefix: str, num_classes: int, fingerprint: Dict[str, Any]):
  """Groups labelled records by shard and writes every needed shard (empty ones too).
  Returns (manifests, small-field chunks) PCollections."""
  p = labelled.pipeline
  markers = p | "NeededShards" >> beam.Create([(tuple(key), EMPTY) for key in needed])
  written = ((labelled, markers) | "WithEmptyShards" >> beam.Flatten()
             | "GroupByShard" >> beam.GroupByKey()
             | "WriteShards" >> beam.ParDo(
                 WriteShard(out, prefix, num_classes, fingerprint), layout
             ).with_outputs(SMALL, main="manifests"))
  return written.manifests, written[SMALL]
