"""noisy_student/predict.py on the real digits source and efficientnet-test."""
import logging
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
from noisy_student import predict
from noisy_student.config import PredictConfig
from noisy_student.data import sources
from tfrecords import format as fmt
from tfrecords import reader

DIGITS_SPLIT = {"digits_num_labeled": 800, "digits_num_test": 800}
HELPER = os.path.join(os.path.dirname(__file__), "predict_kill_helper.py")


@pytest.fixture(scope="module")
def model():
  keras.utils.set_random_seed(1)
  return efficientnet.build_model("efficientnet-test", 10, image_size=32)


@pytest.fixture(scope="module")
def source():
  # The real digits source, with its unlabeled split cut to 197 images to stay fast.
  return sources.open_source("digits:unlabeled", **DIGITS_SPLIT)


def _run(model, source, out, **kwargs):
  cfg_keys = ("num_shards", "worker_index", "num_workers")
  cfg = PredictConfig(output_dir=str(out), **{k: kwargs.pop(k) for k in cfg_keys if k in kwargs})
  kwargs.setdefault("teacher_id", "t")
  return predict.predict(model, source, cfg, image_size=32,
                         batch_size=kwargs.pop("eval_batch_size", 256), **kwargs)


def _by_id(directory):
  records = reader.read_records(str(directory)).as_numpy_iterator()
  return {r[fmt.ID_KEY]: r for r in records}


def _expected_logits(model, source):
  pre = predict.default_preprocess(32)
  ds = source.dataset().map(lambda r: (r["id"], pre(r["image/encoded"]))).batch(1000)
  ids, images = next(iter(ds))
  return list(ids.numpy()), model(images, training=False).numpy()


def test_soft_labels_match_the_teacher(model, source, tmp_path):
  summary = _run(model, source, tmp_path, num_shards=3, eval_batch_size=64,
                 class_names=source.class_names)
  assert summary.records_written == source.size and summary.shards_written == 3
  got = _by_id(tmp_path)
  ids, logits = _expected_logits(model, source)
  assert sorted(got) == sorted(ids)
  probs = np.stack([got[i][fmt.PROBS_KEY] for i in ids])
  np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-5)
  np.testing.assert_array_equal([got[i][fmt.CLASS_KEY] for i in ids], logits.argmax(1))
  np.testing.assert_allclose([got[i][fmt.CONFIDENCE_KEY] for i in ids], probs.max(1))
  encoded = {r["id"]: r["image/encoded"] for r in source.dataset().as_numpy_iterator()}
  assert all(got[i][fmt.IMAGE_KEY] == encoded[i] for i in ids)  # Bytes not re-encoded.
  manifests = fmt.list_manifests(str(tmp_path))
  assert [m["source_range"] for m in manifests] == [[0, 65], [65, 131], [131, 197]]


def test_records_parse_with_the_originals_unlabeled_parser(model, source, tmp_path):
  """The original's trainer reads pseudo-labels with unl_dst_parser (noisystudent
  data_input.py:131-141): these keys, dtypes and shapes, `prob` required. Ours hold them:
  `label` the teacher's class, `prob` its T = 1 probability (filter_unlabel.py:240-242)."""
  _run(model, source, tmp_path, num_shards=2, eval_batch_size=64)
  spec = {"probabilities": tf.io.FixedLenFeature([10], tf.float32),
          "label": tf.io.FixedLenFeature([], tf.int64, -1),
          "prob": tf.io.FixedLenFeature([], tf.float32),
          "image/encoded": tf.io.FixedLenFeature((), tf.string, "")}
  shards = sorted(str(p) for p in tmp_path.glob("train*"))  # The original's glob.
  assert len(shards) == 2  # Manifests and counts start with "_": not train* files.
  ds = tf.data.TFRecordDataset(shards)
  parsed = ds.map(lambda s: tf.io.parse_single_example(s, spec))
  assert len(list(parsed)) == source.size
  # The same parse plus our id, to match records with the teacher's outputs.
  with_id = dict(spec, **{fmt.ID_KEY: tf.io.FixedLenFeature([], tf.string)})
  got = {r[fmt.ID_KEY]: r for r in ds.map(
      lambda s: tf.io.parse_single_example(s, with_id)).as_numpy_iterator()}
  ids, logits = _expected_logits(model, source)
  probs = tf.nn.softmax(logits).numpy()
  rows = [got[i] for i in ids]
  np.testing.assert_array_equal([r["label"] for r in rows], logits.argmax(1))
  np.testing.assert_allclose([r["prob"] for r in rows], probs.max(1), atol=1e-6)
  np.testing.assert_allclose(np.stack([r["probabilities"] for r in rows]), probs, atol=1e-5)


def test_three_workers_split_disjointly(model, source, tmp_path):
  for w in range(3):
    if w == 2:  # Two of three workers done: the directory is refused as incomplete.
      with pytest.raises(ValueError, match="2 of 6 shards missing or damaged"):
        reader.read_records(str(tmp_path))
    _run(model, source, tmp_path, num_shards=2, eval_batch_size=32, worker_index=w,
         num_workers=3)
  ids = [r[fmt.ID_KEY] for r in reader.read_records(str(tmp_path)).as_numpy_iterator()]
  assert len(ids) == len(set(ids)) == source.size
  assert os.path.exists(tmp_path / "train-w00002-of-00003-00001-of-00002")


def test_bad_inputs_fail_clearly(model, source, tmp_path):
  with pytest.raises(ValueError, match="outputs 10 classes but the labeled data has 7"):
    _run(model, source, tmp_path, num_label_classes=7)
  assert not os.listdir(tmp_path)  # Failed before writing anything.
  with pytest.raises(ValueError, match="worker_index=3"):
    _run(model, source, tmp_path, worker_index=3, num_workers=3)
  _run(model, source, tmp_path, num_shards=2, eval_batch_size=128)
  with pytest.raises(ValueError, match="written with other flags"):
    _run(model, source, tmp_path, num_shards=2, eval_batch_size=128, teacher_id="other")
  with pytest.raises(ValueError, match="written with other flags"):
    _run(model, source, tmp_path, num_shards=2, eval_batch_size=128, num_workers=2)


def test_corrupt_image_is_skipped_counted_and_logged(model, tmp_path, caplog):
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(6):
    png = tf.io.encode_png(rng.integers(0, 255, [20, 24, 3], dtype=np.uint8)).numpy()
    (folder / f"{i}.png").write_bytes(png)
  (folder / "3.png").write_bytes(b"not an image")
  src = sources.open_source(f"images:{folder}")
  with caplog.at_level(logging.WARNING):
    summary = _run(model, src, tmp_path / "out", num_shards=2, eval_batch_size=4)
  assert summary.corrupt_skipped == 1 and summary.records_written == 5
  assert "3.png" in caplog.text
  manifests = fmt.list_manifests(str(tmp_path / "out"))
  assert [m["skipped_count"] for m in manifests] == [0, 1]  # 3.png is record 3 of 6.
  assert manifests[1]["skipped_ids"][0].endswith("3.png")


def test_labels_and_ids_of_a_labeled_tfrecord_source_pass_through(model, tmp_path):
  path = str(tmp_path / "labeled.tfrecord")
  rng = np.random.default_rng(2)
  with tf.io.TFRecordWriter(path) as writer:
    for label in range(7):
      png = tf.io.encode_png(rng.integers(0, 255, [20, 20, 3], dtype=np.uint8)).numpy()
      writer.write(tf.train.Example(features=tf.train.Features(feature={
          "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
          "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
              value=[label]))})).SerializeToString())
  summary = _run(model, sources.open_source(f"tfrecord:{path}"), tmp_path / "out",
                 num_shards=2, eval_batch_size=4)
  assert summary.records_written == 7
  got = _by_id(tmp_path / "out")
  assert {i: int(r[fmt.LABEL_KEY]) for i, r in got.items()} == {
      f"{path}:{k}".encode(): k for k in range(7)}


def test_resume_rewrites_only_incomplete_shards(model, source, tmp_path):
  _run(model, source, tmp_path, num_shards=4, eval_batch_size=64)
  before = _by_id(tmp_path)
  os.remove(tmp_path / fmt.manifest_name("train-00002-of-00004"))
  summary = _run(model, source, tmp_path, num_shards=4, eval_batch_size=64)
  assert (summary.shards_written, summary.shards_reused) == (1, 3)
  assert summary.records_written == 49  # Records [98, 147) of 197.
  after = _by_id(tmp_path)
  assert sorted(after) == sorted(before)
  for i, r in before.items():
    np.testing.assert_array_equal(after[i][fmt.PROBS_KEY], r[fmt.PROBS_KEY])


def test_mirrored_strategy_gives_the_teachers_labels(model, source, tmp_path):
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < 2:
    pytest.skip("needs the two logical CPUs of conftest.py")
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
  _run(model, source, tmp_path, num_shards=1, eval_batch_size=64, strategy=strategy)
  got = _by_id(tmp_path)
  ids, logits = _expected_logits(model, source)
  assert sorted(got) == sorted(ids)
  np.testing.assert_allclose(np.stack([got[i][fmt.PROBS_KEY] for i in ids]),
                             tf.nn.softmax(logits).numpy(), atol=1e-5)


def test_killed_process_resumes_to_the_same_records(model, source, tmp_path):
  weights = str(tmp_path / "teacher.weights.h5")
  model.save_weights(weights)
  out, num_shards = tmp_path / "killed", 8
  args = [sys.executable, HELPER, str(out), weights, str(num_shards), "8"]
  with open(tmp_path / "killed.log", "w") as log:  # A file: a full pipe would block it.
    proc = subprocess.Popen(args + ["0.02"], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 90
  while time.time() < deadline and proc.poll() is None:
    done = len(fmt.list_manifests(str(out))) if out.exists() else 0
    if done >= 2:
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the helper finished before it could be killed"
  done = len(fmt.list_manifests(str(out)))
  assert 2 <= done < num_shards
  # Restarted with the same flags (in this process: same teacher, source and fingerprint).
  flags = dict(num_shards=num_shards, eval_batch_size=8, num_label_classes=10,
               teacher_id="helper")
  resumed = _run(model, source, out, **flags)
  assert (resumed.shards_reused, resumed.shards_written) == (done, num_shards - done)
  _run(model, source, tmp_path / "clean", **flags)
  clean, killed = _by_id(tmp_path / "clean"), _by_id(out)
  assert sorted(killed) == sorted(clean) and len(killed) == source.size
  for i, r in clean.items():
    np.testing.assert_allclose(killed[i][fmt.PROBS_KEY], r[fmt.PROBS_KEY], atol=1e-6)
  # The killed run's partial shard was rewritten and its temporary file removed.
  assert len(list(out.glob("train-?????-of-?????"))) == num_shards
  assert not list(out.glob("*.tmp*"))


class _FailingSource:
  """The digits source, failing (as a broken disk would) at record `fail_at`."""

  def __init__(self, source, fail_at):
    self._source, self._fail_at = source, fail_at

  def describe(self):
    return self._source.describe()

  def dataset(self, num_workers=1, worker_index=0):
    def check(index, record):
      with tf.control_dependencies([tf.debugging.assert_less(index, tf.constant(self._fail_at, tf.int64))]):
        return {k: tf.identity(v) for k, v in record.items()}
    return self._source.dataset(num_workers, worker_index).enumerate().map(check)


def test_failed_run_leaves_the_open_shard_incomplete(model, source, tmp_path):
  flags = dict(num_shards=4, eval_batch_size=16)  # Shards [0,49) [49,98) [98,147) ...
  with pytest.raises(tf.errors.InvalidArgumentError):
    _run(model, _FailingSource(source, 100), tmp_path, **flags)
  # Shards 0 and 1 were whole when the read failed at record 100; shard 2 stays open.
  assert [m["shard"] for m in fmt.list_manifests(str(tmp_path))] == [
      "train-00000-of-00004", "train-00001-of-00004"]
  assert not list(tmp_path.glob("*.tmp-*"))
  summary = _run(model, source, tmp_path, **flags)
  assert (summary.shards_reused, summary.records_written) == (2, 197 - 98)
  assert len(_by_id(tmp_path)) == 197


class _FlakySource(_FailingSource):
  """A transient read error: records from `fail_at` on fail in the first two reads (the
  size query and the labelling pass) and read fine afterwards."""

  def __init__(self, source, fail_at):
    super().__init__(source, fail_at)
    self.reads = 0

  def dataset(self, num_workers=1, worker_index=0):
    self.reads += 1
    if self.reads <= 2:
      return super().dataset(num_workers, worker_index)
    return self._source.dataset(num_workers, worker_index)


def test_records_lost_to_a_read_error_are_not_counted_as_corrupt(model, source, tmp_path):
  flaky = _FlakySource(source, 100)
  with pytest.raises(RuntimeError, match="went missing from the input stream"):
    _run(model, flaky, tmp_path, num_shards=4, eval_batch_size=16)
  assert flaky.reads == 3  # Size, labelling, then the re-read of the missing records.
  assert "train-00002-of-00004" not in [m["shard"] for m in fmt.list_manifests(str(tmp_path))]
