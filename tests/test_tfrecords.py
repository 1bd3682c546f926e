"""tfrecords/format.py: shard names, atomic writer + manifest, reader, refusal of mixes."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecords import format as fmt

FP = {"teacher": "t", "source": "s", "num_workers": 1, "num_shards": 2,
      "teacher_softmax_temp": 1.0, "num_classes": 3, "image_size": 8, "num_bins": 100}


def _write(path, n, fingerprint=FP, start=0, classes=None):
  w = fmt.ShardWriter(path, 3, fingerprint, [start, start + n], num_bins=100)
  probs = np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (n, 1))
  classes = np.ones([n], np.int64) if classes is None else np.asarray(classes)
  w.write_batch([b"img%d" % i for i in range(n)], [b"id%d" % (start + i) for i in range(n)],
                np.full([n], -1), probs, classes, probs.max(1))
  return w


def test_shard_names():
  assert fmt.shard_name("train", 3, 128) == "train-00003-of-00128"
  assert fmt.shard_name("train", 3, 128, 1, 3) == "train-w00001-of-00003-00003-of-00128"
  with pytest.raises(ValueError, match="shard_index 5"):
    fmt.shard_name("train", 5, 5)
  with pytest.raises(ValueError, match="worker_index 3"):
    fmt.shard_name("train", 0, 5, 3, 3)


def test_bins_numpy_and_tf_agree():
  x = np.concatenate([np.random.default_rng(0).random(5000, dtype=np.float32),
                      np.float32([0.0, 0.3, 0.5, 0.999, 1.0])])
  for nb in (101, 1000, 4096):
    np.testing.assert_array_equal(fmt.confidence_bins(x, nb),
                                  fmt.confidence_bins_tf(tf.constant(x), nb).numpy())


def test_writer_is_atomic_and_writes_manifest(tmp_path):
  path = str(tmp_path / fmt.shard_name("train", 0, 2))
  w = _write(path, 5, classes=[0, 1, 1, 2, 1])
  w.skip("bad.jpg")
  assert not os.path.exists(path)  # Only the temporary name exists until close.
  assert fmt.read_manifest(path) is None
  manifest = w.close()
  assert os.path.exists(path) and fmt.read_manifest(path) == manifest
  assert manifest["record_count"] == 5
  assert manifest["class_counts"] == [1, 3, 1]
  assert manifest["histogram"]["1"] == [[70, 3]]
  assert manifest["skipped_count"] == 1 and manifest["skipped_ids"] == ["bad.jpg"]
  assert manifest["source_range"] == [0, 5]
  assert manifest["fingerprint"] == FP
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_truncated_shard_is_incomplete(tmp_path):
  path = str(tmp_path / "train-00000-of-00001")
  _write(path, 4).close()
  with open(path, "r+b") as f:
    f.truncate(10)
  assert fmt.read_manifest(path) is None


def test_reader_and_plain_imagenet_parse(tmp_path):
  paths = [str(tmp_path / fmt.shard_name("train", k, 2)) for k in range(2)]
  _write(paths[0], 3, start=0).close()
  _write(paths[1], 2, start=3).close()
  records = list(fmt.read_records(str(tmp_path)).as_numpy_iterator())
  assert sorted(r[fmt.ID_KEY] for r in records) == [b"id%d" % i for i in range(5)]
  r = records[0]
  np.testing.assert_allclose(r[fmt.PROBS_KEY], [0.1, 0.7, 0.2])
  assert r[fmt.CLASS_KEY] == 1 and r[fmt.LABEL_KEY] == -1
  assert r[fmt.CONFIDENCE_KEY] == pytest.approx(0.7)
  # An ImageNet reader asks only for these two keys.
  spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string),
          "image/class/label": tf.io.FixedLenFeature([], tf.int64)}
  plain = tf.data.TFRecordDataset(paths[0]).map(lambda s: tf.io.parse_single_example(s, spec))
  assert next(iter(plain))["image/encoded"].numpy() == b"img0"
  # A pattern works too and ignores manifests.
  assert len(list(fmt.read_records(str(tmp_path / "train-*")))) == 5


def test_directory_missing_a_shard_or_mixing_flags_is_refused(tmp_path):
  _write(str(tmp_path / fmt.shard_name("train", 0, 2)), 3).close()
  with pytest.raises(ValueError, match="1 complete shards of the 2"):
    fmt.read_records(str(tmp_path))
  other = dict(FP, teacher="other")
  _write(str(tmp_path / fmt.shard_name("train", 1, 2)), 3, fingerprint=other).close()
  with pytest.raises(ValueError, match="different flags"):
    fmt.read_records(str(tmp_path))
  with pytest.raises(ValueError, match="no pseudo-label shards match"):
    fmt.read_records(str(tmp_path / "nothing-*"))
