"""Damaged pseudo-labels are named (tfrecords/integrity.py): manifests record each shard's
size and CRC32C, readers verify them before use, and predict re-makes only the bad ones."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.config import PredictConfig
from noisy_student import predict as predict_lib
from tfrecords import checksum
from tfrecords import format as fmt
from tfrecords import integrity
from tfrecords import reader

FP = {"teacher": "../teacher", "source": "images:/data/u; unlabeled; 6 records",
      "num_workers": 1, "num_shards": 2, "num_classes": 3, "image_size": 8, "num_bins": 100}


def _shards(directory, n=40):
  paths = [str(directory / fmt.shard_name("train", k, 2)) for k in range(2)]
  for k, path in enumerate(paths):
    w = fmt.ShardWriter(path, 3, FP, [k * n, (k + 1) * n], num_bins=100)
    probs = np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (n, 1))
    w.write_batch([b"img%d" % i * 20 for i in range(n)],
                  [b"id%d" % (k * n + i) for i in range(n)], np.full([n], -1), probs,
                  np.ones([n], np.int64), probs.max(1))
    w.close()
  return paths


def _flip(path, count=40):
  data = bytearray(open(path, "rb").read())
  middle = len(data) // 2
  for i in range(middle, middle + count):
    data[i] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def test_manifest_records_size_and_crc32c_of_the_written_file(tmp_path):
  paths = _shards(tmp_path)
  manifest = fmt.read_manifest(paths[0])
  data = open(paths[0], "rb").read()
  import google_crc32c  # pylint: disable=import-outside-toplevel
  assert manifest["size_bytes"] == len(data)
  assert manifest["crc32c"] == f"{google_crc32c.value(data):08x}"
  assert checksum.of_file(paths[0]) == (len(data), manifest["crc32c"])
  assert manifest["version"] == 3 and integrity.problems(str(tmp_path)) == []


def test_a_truncated_shard_is_named_with_the_command_that_remakes_it(tmp_path):
  paths = _shards(tmp_path)
  size = os.path.getsize(paths[1])
  with open(paths[1], "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(integrity.DamagedShards) as e:
    reader.read_records(str(tmp_path))
  message = str(e.value)
  assert (f"1 of 2 shards missing or damaged (train-00001-of-00002: {size // 2} bytes, "
          f"its manifest says {size} (cut or grown))") in message
  assert (f"noisy-student --mode=predict --model_dir={tmp_path.parent}/teacher "
          f"--output_dir={tmp_path} --unlabel_data_dir=images:/data/u --num_shards=2 "
          "--num_workers=1 --worker_index=0") in message
  assert len(message.splitlines()) == 1


def test_a_bit_flipped_shard_of_the_same_size_is_named_before_any_record_is_read(tmp_path):
  paths = _shards(tmp_path)
  _flip(paths[0])
  with pytest.raises(integrity.DamagedShards, match=r"train-00000-of-00002: crc32c [0-9a-f]"
                     r"{8}, its manifest says [0-9a-f]{8} \(damaged\)"):
    reader.read_records(str(tmp_path))
  # Without the check, TensorFlow finds it only while reading, without a file name.
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(paths[0]))


def test_missing_shard_and_missing_manifest_are_named(tmp_path):
  paths = _shards(tmp_path)
  os.remove(paths[0])
  os.remove(fmt.manifest_path(paths[1]))
  found = dict(integrity.problems(str(tmp_path)))
  assert found == {paths[0]: "missing (its manifest is there)",
                   paths[1]: "incomplete (no manifest)"}


def test_old_manifests_without_checksums_are_read_with_sizes_verified(tmp_path, caplog):
  paths = _shards(tmp_path)
  for path in paths:  # As version 2 wrote them.
    manifest = json.load(open(fmt.manifest_path(path)))
    manifest.pop("crc32c")
    manifest["version"] = 2
    json.dump(manifest, open(fmt.manifest_path(path), "w"))
  assert len(list(reader.read_records(str(tmp_path)))) == 80
  assert "predate checksums: only their sizes are verified" in caplog.text
  with open(paths[0], "r+b") as f:
    f.truncate(100)
  with pytest.raises(integrity.DamagedShards, match="train-00000-of-00002: 100 bytes"):
    reader.read_records(str(tmp_path))


class _Teacher:
  """A stand-in Keras model for predict: constant logits."""
  name, output_shape = "teacher", (None, 3)

  def __call__(self, images, training=False):
    return tf.tile(tf.constant([[0.0, 2.0, 1.0]]), [tf.shape(images)[0], 1])


def test_predict_remakes_only_the_damaged_shards(tmp_path):
  from noisy_student.data import sources  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "u"
  folder.mkdir()
  for i in range(6):
    tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(tf.fill([8, 8, 3], i * 30)
                                                                .numpy().astype(np.uint8)))
  source = sources.open_source(f"images:{folder}")
  out = tmp_path / "pseudo"
  cfg = PredictConfig(output_dir=str(out), num_shards=3)
  kwargs = dict(image_size=8, batch_size=4, teacher_id="t")
  first = predict_lib.predict(_Teacher(), source, cfg, **kwargs)
  assert first.shards_written == 3
  shards = sorted(str(p) for p in out.glob("train-*"))
  kept = os.stat(shards[0]).st_mtime_ns
  _flip(shards[1], count=8)
  again = predict_lib.predict(_Teacher(), source, cfg, **kwargs)
  assert again.shards_written == 1 and again.shards_reused == 2
  assert os.stat(shards[0]).st_mtime_ns == kept and integrity.problems(str(out)) == []


def test_a_folder_of_undecodable_files_is_an_error_naming_it_and_the_count(tmp_path):
  from noisy_student.data import sources  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "bad"
  folder.mkdir()
  for i in range(5):
    (folder / f"{i}.jpg").write_bytes(b"not an image %d" % i)
  source = sources.open_source(f"images:{folder}")
  cfg = PredictConfig(output_dir=str(tmp_path / "pseudo"), num_shards=2)
  with pytest.raises(ValueError, match=f"--unlabel_data_dir=images:{folder}: none of its "
                     "images decodes \\(5 skipped as corrupt\\)"):
    predict_lib.predict(_Teacher(), source, cfg, image_size=8, batch_size=4, teacher_id="t")
  assert fmt.list_manifests(str(tmp_path / "pseudo")) == []  # Redone after a fix.


def test_a_shard_remade_at_the_same_size_and_mtime_is_checked_again(tmp_path):
  """A checksum is remembered per file version: a shard re-made by rename within one tick
  of the clock (same size, same mtime) is read again, not taken from the memory."""
  path, staged = str(tmp_path / "train-00000-of-00001"), str(tmp_path / "staged")
  versions = []
  for fill in (b"a", b"b"):
    with open(staged, "wb") as f:
      f.write(fill * 64)
    if versions:  # The first version's mtime, as a rewrite within one tick gets.
      os.utime(staged, ns=(versions[0].st_atime_ns, versions[0].st_mtime_ns))
    manifest = {"size_bytes": 64, "crc32c": checksum.compute(staged)[1]}
    os.replace(staged, path)
    versions.append(os.stat(path))
    assert integrity.shard_problem(path, manifest) is None
  assert versions[0].st_mtime_ns == versions[1].st_mtime_ns
