"""tfrecords/format.py: shard names, atomic writer + manifest, reader, refusal of mixes."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecords import format as fmt
from tfrecords import reader

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
  records = list(reader.read_records(str(tmp_path)).as_numpy_iterator())
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
  assert len(list(reader.read_records(str(tmp_path / "train-*")))) == 5


def test_directory_missing_a_shard_or_mixing_flags_is_refused(tmp_path):
  _write(str(tmp_path / fmt.shard_name("train", 0, 2)), 3).close()
  with pytest.raises(ValueError, match=r"1 of 2 shards missing or damaged \(train-00001-of-"
                     r"00002: missing\)"):
    reader.read_records(str(tmp_path))
  other = dict(FP, teacher="other")
  _write(str(tmp_path / fmt.shard_name("train", 1, 2)), 3, fingerprint=other).close()
  with pytest.raises(ValueError, match="different flags"):
    reader.read_records(str(tmp_path))
  with pytest.raises(ValueError, match="no pseudo-label shards match"):
    reader.read_records(str(tmp_path / "nothing-*"))


def _example_bytes(encoded, record_id, label, probs, cls, conf):
  """The record as the protobuf library serializes it (the oracle for the TF ops)."""
  def feature(values, list_type, kind):
    return tf.train.Feature(**{kind: list_type(value=values)})
  features = {fmt.IMAGE_KEY: feature([encoded], tf.train.BytesList, "bytes_list"),
              fmt.ID_KEY: feature([record_id], tf.train.BytesList, "bytes_list"),
              fmt.LABEL_KEY: feature([label], tf.train.Int64List, "int64_list"),
              fmt.PROBS_KEY: feature(probs, tf.train.FloatList, "float_list"),
              fmt.CLASS_KEY: feature([cls], tf.train.Int64List, "int64_list"),
              fmt.CONFIDENCE_KEY: feature([conf], tf.train.FloatList, "float_list"),
              fmt.ORIGINAL_CLASS_KEY: feature([cls], tf.train.Int64List, "int64_list"),
              fmt.ORIGINAL_CONFIDENCE_KEY: feature([conf], tf.train.FloatList, "float_list")}
  return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(
      deterministic=True)


def test_serialize_batch_in_tf_ops_equals_the_protobuf_library():
  rng = np.random.default_rng(0)
  # Lengths around the varint boundaries (127/128, 16383/16384), an empty image, a
  # non-ASCII id, negative and large labels, NaN and -0.0 probabilities.
  encoded = [bytes(rng.integers(0, 256, n, dtype=np.uint8)) for n in (0, 1, 127, 128, 16384)]
  ids = [b"a", b"", "d\u00e9j\u00e0/x.png".encode(), b"id" * 100, b"z"]
  labels = np.int64([-1, 0, 5, 2**40, -7])
  probs = rng.random((5, 7)).astype(np.float32)
  probs[0, 0], probs[1, 1] = np.nan, -0.0
  classes, conf = np.nanargmax(probs, 1), np.nanmax(probs, 1)
  got = tf.function(fmt.serialize_batch)(  # Inside a graph, as the teacher's step runs it.
      tf.constant(encoded), tf.constant(ids), tf.constant(labels), tf.constant(probs),
      tf.constant(classes), tf.constant(conf)).numpy()
  for i in range(5):
    want = _example_bytes(encoded[i], ids[i], labels[i], probs[i], classes[i], conf[i])
    # Same fields, same encodings; the entries' order is C++ protobuf's (sorted keys:
    # "prob" before "probabilities"), which Python's upb reverses for a shared prefix.
    assert len(got[i]) == len(want)
    assert tf.train.Example.FromString(got[i]).SerializeToString(deterministic=True) == want
    parsed = reader.parse_record(tf.constant(got[i]), 7)
    assert parsed[fmt.IMAGE_KEY].numpy() == encoded[i]
    assert parsed[fmt.LABEL_KEY].numpy() == labels[i]
    np.testing.assert_array_equal(parsed[fmt.PROBS_KEY].numpy(), probs[i])
  empty = fmt.serialize_batch(*(tf.zeros([0], t) for t in (tf.string, tf.string, tf.int64)),
                              tf.zeros([0, 7]), tf.zeros([0], tf.int64), tf.zeros([0]))
  assert empty.shape == [0]


def test_manifest_counts_equal_a_per_record_count(tmp_path, monkeypatch):
  monkeypatch.setattr(fmt.ConfidenceHistogram, "_COMPACT_EVERY", 50)  # Fold many times.
  rng = np.random.default_rng(1)
  path = str(tmp_path / "train-00000-of-00001")
  w = fmt.ShardWriter(path, 4, FP, [0, 700], num_bins=10)
  classes = rng.integers(0, 3, 700)  # Class 3 never occurs.
  conf = rng.choice(np.float32([0.0, 0.05, 0.31, 0.5, 0.999, 1.0]), 700)
  for start in range(0, 700, 64):
    rows = slice(start, start + 64)
    n = len(classes[rows])
    w.write_serialized([b"r"] * n, classes[rows], conf[rows])
  manifest = w.close()
  expected = {}
  for c, x in zip(classes.tolist(), fmt.confidence_bins(conf, 10).tolist()):
    expected.setdefault(str(c), {}).setdefault(x, 0)
    expected[str(c)][x] += 1
  assert manifest["histogram"] == {c: sorted([b, n] for b, n in bins.items())
                                   for c, bins in expected.items()}
  assert manifest["class_counts"] == np.bincount(classes, minlength=4).tolist()
  assert manifest["record_count"] == 700
  assert len(list(tf.data.TFRecordDataset(path))) == 700


def _original_feature(value):
  """The original's utils.py:235-253 feature helpers (one value or a list)."""
  values = value if isinstance(value, list) else [value]
  if isinstance(values[0], bytes):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  if isinstance(values[0], float):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def write_original_shard(path, probabilities, seed=0):
  """Records as the original's filter step writes them (noisystudent
  filter_unlabel.py:233-243): image/encoded, prob (the T = 1 probability of `label`),
  probabilities, label; no id, no manifest."""
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i, probs in enumerate(np.asarray(probabilities, np.float32)):
      label = int(probs.argmax())
      feature = {"image/encoded": _original_feature(b"jpeg-%d-%d" % (seed, i)),
                 "prob": _original_feature(float(probs[label])),
                 "probabilities": _original_feature([float(p) for p in probs]),
                 "label": _original_feature(label)}
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())


def test_the_originals_filter_output_reads_as_pseudo_labels(tmp_path):
  data = tmp_path / "filter_data" / "data"  # filter_unlabel.py:285-300's layout.
  data.mkdir(parents=True)
  probs = np.float32([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
  write_original_shard(data / "train-0-00000-of-00002", probs[:2])
  write_original_shard(data / "train-0-00001-of-00002", probs[2:], seed=1)
  records = {r[fmt.ID_KEY]: r for r in reader.read_records(str(data)).as_numpy_iterator()}
  assert sorted(records) == [b"train-0-00000-of-00002:0", b"train-0-00000-of-00002:1",
                             b"train-0-00001-of-00002:0"]
  r = records[b"train-0-00000-of-00002:1"]
  assert r[fmt.IMAGE_KEY] == b"jpeg-0-1" and r[fmt.CLASS_KEY] == 0
  assert r[fmt.CONFIDENCE_KEY] == pytest.approx(0.6) and r[fmt.LABEL_KEY] == -1
  np.testing.assert_allclose(r[fmt.PROBS_KEY], probs[1])
  # The same through a pattern, and ours and theirs read by one parser.
  assert len(list(reader.read_records(str(data / "train-*")))) == 3


def _legacy(path, temperature):
  """Rewrites a shard's manifest as version 1 wrote it: beside the shard, fingerprinted
  with the temperature its probabilities were stored at."""
  current = fmt.manifest_path(path)
  if not os.path.exists(current):
    current = path + fmt.MANIFEST_SUFFIX
  with open(current) as f:
    manifest = json.load(f)
  os.remove(current)
  manifest.pop("probabilities_temperature", None)
  manifest.update(version=1, fingerprint=dict(FP, teacher_softmax_temp=temperature))
  with open(path + fmt.MANIFEST_SUFFIX, "w") as f:
    json.dump(manifest, f)


def test_shards_stored_at_another_temperature_are_refused(tmp_path):
  paths = [str(tmp_path / fmt.shard_name("train", k, 2)) for k in range(2)]
  for k, path in enumerate(paths):
    _write(path, 3, start=3 * k).close()
    _legacy(path, 1.0)  # Version 1 at T = 1 stored what version 2 stores.
  assert len(list(reader.read_records(str(tmp_path)))) == 6
  _legacy(paths[1], 2.0)
  with pytest.raises(ValueError, match=r"softmax\(logits / T\) with T = 2.0 .* Run "
                     "predict again"):
    reader.read_records(str(tmp_path))
  manifest = _write(str(tmp_path / "new-00000-of-00001"), 2).close()
  assert manifest["version"] >= 2 and manifest["probabilities_temperature"] == 1.0
