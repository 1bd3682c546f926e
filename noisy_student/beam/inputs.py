"""The Beam job's reading of the unlabeled source: work items in, raw records out.

A raw record is the tuple `(worker, shard, index, id, label, encoded)`: the in-process
worker whose part holds it, the shard of that worker it belongs to, its position in that
worker's stream (`Source.dataset(num_workers, worker)`), and the Contract-2 fields.
Positions come from `noisy_student.data.record_order`, so a record lands in the shard
and at the place the in-process predict would put it.

How each source kind is split (each read is a separate, retryable unit of work):
  images     the driver lists the files (as the in-process predict does) into JSON-lines
             work files under `<output_dir>/_beam/`; `ReadFromText` splits them by byte
             range and each line's image is read on its own.
  tfrecords  one element per file; a first pass counts each file's records (reading
             bytes, decoding nothing), which fixes every position; the second reads
             each file whole on one worker.
  memory     small in-memory sources (digits, tfds) are enumerated by the driver.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
import numpy as np

from noisy_student.data.record_order import RecordOrder
from noisy_student.data.source import Source

NAMESPACE = "noisy_student"
MAX_MEMORY_RECORDS = 200_000  # In-memory sources the driver may enumerate.
_LINES_PER_WORK_FILE = 1 << 20
WORK_DIR = "_beam"  # Under the output directory; the "_" keeps it out of train* globs.

RawRecord = Tuple[int, int, int, bytes, int, bytes]


@dataclasses.dataclass
class Layout:
  """Where records go: the source's order and each worker's shard boundaries [W, S+1]
  (`predict.shard_ranges` of the worker's record count)."""
  order: RecordOrder
  bounds: np.ndarray

  @classmethod
  def of(cls, order: RecordOrder, num_shards: int) -> "Layout":
    from noisy_student.predict import run  # pylint: disable=g-import-not-at-top
    return cls(order, np.stack([run.shard_ranges(int(n), num_shards)
                                for n in order.worker_sizes]))

  def shard_of(self, worker: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Shard [n] of records at positions `index` [n] of workers `worker` [n]."""
    worker, index = np.asarray(worker, np.int64), np.asarray(index, np.int64)
    shard = np.zeros(index.shape, np.int64)
    for w in np.unique(worker).tolist():
      rows = worker == w
      shard[rows] = np.searchsorted(self.bounds[w][1:-1], index[rows], side="right")
    return shard


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The driver's view of the source: its kind and what the readers need."""
  kind: str  # "images", "tfrecords" or "memory"
  files: Tuple[str, ...] = ()  # tfrecords: the record files, in the source's order.
  label_offset: int = 0
  keep_label: bool = True
  work_pattern: str = ""  # images: the JSON-lines work files.
  records: Tuple[RawRecord, ...] = ()  # memory: (worker, -1, index, id, label, encoded).
  order: Optional[RecordOrder] = None  # images and memory: known before the job.


def plan_inputs(source: Source, num_workers: int, out: str) -> Inputs:
  """Inputs of `source` as `num_workers` in-process workers would read it.

  Raises ValueError for an in-memory source too large to enumerate here.
  """
  files = source.files
  if files is not None and files.kind == "tfrecords":
    return Inputs("tfrecords", tuple(files.paths), files.label_offset, files.keep_label)
  if files is not None and files.kind == "images":
    return Inputs("images", work_pattern=f"{out}/{WORK_DIR}/inputs-*.jsonl",
                  order=RecordOrder.of_images(len(files.paths), num_workers))
  if source.size is None or source.size > MAX_MEMORY_RECORDS:
    raise ValueError(f"--unlabel_data_dir={source.spec}: a Beam runner reads image "
                     "folders and TFRecords; this source holds "
                     f"{source.size or 'an unknown number of'} records, more than the "
                     f"{MAX_MEMORY_RECORDS} the driver may enumerate. Convert it to TFRecords.")
  records, sizes = [], []
  for w in range(num_workers):
    part = source.dataset(num_workers=num_workers, worker_index=w).as_numpy_iterator()
    for i, r in enumerate(part):
      records.append((w, -1, i, r["id"], int(r["label"]), r["image/encoded"]))
    sizes.append(sum(1 for r in records if r[0] == w))
  return Inputs("memory", records=tuple(records),
                order=RecordOrder(num_workers, np.asarray(sizes), True, None))


def write_work_files(source: Source, layout: Layout, needed: FrozenSet[Tuple[int, int]],
                     pattern: str) -> int:
  """The images' work files: one line [worker, shard, index, label, path] per image of
  a needed shard, _LINES_PER_WORK_FILE images of the source per file (written as they
  are made: the listing is never held whole). Returns the number of lines."""
  from noisy_student import atomic  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  directory = pattern.rsplit("/", 1)[0]
  for old in tf.io.gfile.glob(pattern):  # An earlier run's (other shards may be needed).
    tf.io.gfile.remove(old)
  paths, labels = source.files.paths, source.files.labels
  written = 0
  for part, start in enumerate(range(0, len(paths), _LINES_PER_WORK_FILE)):
    files = np.arange(start, min(start + _LINES_PER_WORK_FILE, len(paths)))
    worker, index = layout.order.locate_images(files)
    shard = layout.shard_of(worker, index)
    lines = [json.dumps([w, k, i, labels[f], paths[f]]) + "\n"
             for f, w, k, i in zip(files.tolist(), worker.tolist(), shard.tolist(),
                                   index.tolist()) if (w, k) in needed]
    if lines:
      atomic.write_text(f"{directory}/inputs-{part:05d}.jsonl", "".join(lines))
      written += len(lines)
  if not written:  # Only empty shards to write: ReadFromText needs a file to match.
    atomic.write_text(f"{directory}/inputs-00000.jsonl", "")
  return written


def read_image(line: str) -> RawRecord:
  """A work-file line -> the raw record of its image (the file's own bytes)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  w, k, i, label, path = json.loads(line)
  with tf.io.gfile.GFile(path, "rb") as f:
    encoded = f.read()
  Metrics.counter(NAMESPACE, "images_read").inc()
  return w, k, i, path.encode("utf-8"), label, encoded


def count_records(item: Tuple[int, str]) -> Tuple[int, int]:
  """(file index, path) -> (file index, its record count): reads bytes, parses nothing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  index, path = item
  n = tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda c, _: c + 1)
  return index, int(n)


def tfrecord_layout(counts: List[Tuple[int, int]], num_workers: int,
                    num_shards: int) -> Layout:
  """The files' record counts -> the Layout of their records."""
  by_file = [n for _, n in sorted(counts)]
  return Layout.of(RecordOrder.of_tfrecords(by_file, num_workers), num_shards)


class ReadRecordFile(beam.DoFn):
  """(file index, path) -> the raw records of that file's needed shards, in file order."""

  def __init__(self, inputs: Inputs, needed: FrozenSet[Tuple[int, int]]):
    self._inputs, self._needed = inputs, needed

  def process(self, item: Tuple[int, str], layout: Layout) -> Iterator[RawRecord]:
    from noisy_student.data import sources  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    f, path = item
    ds = sources.read_tfrecord_file(tf.constant(path), self._inputs.label_offset,
                                    self._inputs.keep_label).batch(1024)
    j = 0
    for batch in ds.as_numpy_iterator():
      n = len(batch["id"])
      worker, index = layout.order.locate(f, np.arange(j, j + n))
      shard = layout.shard_of(worker, index)
      j += n
      Metrics.counter(NAMESPACE, "images_read").inc(n)
      for r in range(n):
        w, k = int(worker[r]), int(shard[r])
        if (w, k) in self._needed:
          yield (w, k, int(index[r]), batch["id"][r], int(batch["label"][r]),
                 batch["image/encoded"][r])


def assign_shards(records: Iterable[RawRecord], layout: Layout,
                  needed: FrozenSet[Tuple[int, int]]) -> List[RawRecord]:
  """In-memory records with their shard; only those of needed shards."""
  out = []
  for w, _, i, record_id, label, encoded in records:
    k = int(layout.shard_of(np.array([w]), np.array([i]))[0])
    if (w, k) in needed:
      out.append((w, k, i, record_id, label, encoded))
  return out


def read(p: beam.Pipeline, inputs: Inputs, layout: Any,
         needed: FrozenSet[Tuple[int, int]]) -> beam.PCollection:
  """The raw records of the needed shards, spread over the workers. `layout`: a Layout
  (images, memory) or, for TFRecords, the AsSingleton side input of one."""
  if inputs.kind == "images":
    return (p | "ReadWorkFiles" >> beam.io.ReadFromText(inputs.work_pattern)
            | "SpreadImages" >> beam.Reshuffle()
            | "ReadImages" >> beam.Map(read_image))
  if inputs.kind == "memory":
    return (p | "Records" >> beam.Create(assign_shards(inputs.records, layout, needed))
            | "SpreadRecords" >> beam.Reshuffle()
            | "CountRead" >> beam.Map(_count_read))
  return (p | "RecordFiles" >> beam.Create(list(enumerate(inputs.files)))
          | "SpreadFiles" >> beam.Reshuffle()
          | "ReadRecordFiles" >> beam.ParDo(ReadRecordFile(inputs, needed), layout))


def _count_read(record: RawRecord) -> RawRecord:
  Metrics.counter(NAMESPACE, "images_read").inc()
  return record


def layout_of_tfrecords(p: beam.Pipeline, inputs: Inputs, num_workers: int,
                        num_shards: int) -> beam.PCollection:
  """The one-element PCollection of the TFRecords' Layout (a counting pass)."""
  return (p | "CountFiles" >> beam.Create(list(enumerate(inputs.files)))
          | "SpreadCounts" >> beam.Reshuffle()
          | "CountRecords" >> beam.Map(count_records)
          | "AllCounts" >> beam.combiners.ToList()
          | "Layout" >> beam.Map(tfrecord_layout, num_workers, num_shards))


def check_counts(layout: Layout, out: str, prefix: str, fingerprint: Dict[str, Any]
                 ) -> Layout:
  """Writes each worker's record count (predict's count files) or checks it against the
  one an earlier run (in-process or Beam) cached; a changed source stops the job."""
  from noisy_student.predict import run  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  num_workers = layout.order.num_workers
  for w, n in enumerate(layout.order.worker_sizes.tolist()):
    path = f"{out}/{run.count_name(prefix, w, num_workers)}"
    if tf.io.gfile.exists(path):
      cached = run.read_count(path)
      if cached != n:
        raise ValueError(f"{path}: worker {w} had {cached} records when its shards were "
                         f"planned, the source has {n} now; use a fresh output_dir")
    else:
      run.write_count(path, n, fingerprint)
  return layout
