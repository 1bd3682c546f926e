"""noisy_student/data/record_order.py against tf.data's own order (sources.py)."""
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.data import record_order
from noisy_student.data import sources


def _tf_interleave(counts, cycle):
  """(file, record) in the order of tf.data's deterministic interleave, as sources.py."""
  counts_t = tf.constant(counts, tf.int64)
  ds = tf.data.Dataset.range(len(counts)).interleave(
      lambda f: tf.data.Dataset.range(tf.gather(counts_t, f)).map(lambda j: (f, j)),
      cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  return [(int(f), int(j)) for f, j in ds.as_numpy_iterator()]


def _by_position(counts, cycle):
  runs = record_order.interleave_runs(counts, cycle)
  found = {}
  for f, n in enumerate(counts):
    for j, p in enumerate(record_order._locate(runs[f], np.arange(n)) if n else []):
      found[int(p)] = (f, j)
  return [found[p] for p in range(len(found))]


def test_interleave_positions_match_tf_data():
  rng = np.random.default_rng(0)
  for _ in range(25):  # Files that end at every phase of the cycle, empty ones included.
    counts = rng.choice([0, 1, 2, 3, 5, 8, 21], size=rng.integers(1, 19)).tolist()
    cycle = min(record_order.INTERLEAVE_CYCLE, len(counts))
    assert _by_position(counts, cycle) == _tf_interleave(counts, cycle), counts


def test_large_sources_cost_files_not_records():
  counts = [100 + f % 13 for f in range(3_000)]  # Files ending out of step.
  runs = record_order.interleave_runs(counts, record_order.INTERLEAVE_CYCLE)
  assert sum(len(r[0]) for r in runs) < 20 * len(counts)
  positions = np.concatenate([record_order._locate(r, np.arange(n))
                              for r, n in zip(runs, counts)])
  assert np.array_equal(np.sort(positions), np.arange(sum(counts)))


@pytest.mark.parametrize("num_workers", [1, 3, 7])  # 5 files: by file, and not.
def test_tfrecord_sources_records_land_where_each_worker_reads_them(tmp_path, num_workers):
  for f, n in enumerate([4, 0, 11, 2, 6]):
    with tf.io.TFRecordWriter(str(tmp_path / f"train-{f}")) as writer:
      for _ in range(n):
        writer.write(tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[b"x"]))})).SerializeToString())
  source = sources.open_source(str(tmp_path), split="unlabeled")
  files = list(source.files.paths)
  counts = [4, 0, 11, 2, 6]
  order = record_order.RecordOrder.of_tfrecords(counts, num_workers)
  for w in range(num_workers):
    ids = [r["id"].decode() for r in
           source.dataset(num_workers, w).as_numpy_iterator()]
    assert len(ids) == order.worker_sizes[w]
    for i, record_id in enumerate(ids):
      path, j = record_id.rsplit(":", 1)
      worker, index = order.locate(files.index(path), np.array([int(j)]))
      assert (int(worker[0]), int(index[0])) == (w, i)


def test_image_files_are_dealt_in_turn():
  order = record_order.RecordOrder.of_images(10, 3)
  worker, index = order.locate_images(np.arange(10))
  assert order.worker_sizes.tolist() == [4, 3, 3]
  assert worker.tolist() == [0, 1, 2] * 3 + [0]
  assert index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
