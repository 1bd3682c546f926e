"""Sources: digits, ImageFolder, image trees, TFRecords, tfds; worker splits and errors."""
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from noisy_student.data import preprocess
from noisy_student.data import sources


def _png(value, size=6):
  buf = io.BytesIO()
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()


def _records(source, n=1, i=0):
  return list(source.dataset(n, i).as_numpy_iterator())


def _check_worker_splits(source, counts=(1, 2, 3, 5)):
  """Disjoint parts whose union is everything, in a deterministic order."""
  everything = [r["id"] for r in _records(source)]
  assert everything == [r["id"] for r in _records(source)]
  assert len(set(everything)) == len(everything)
  for n in counts:
    parts = [[r["id"] for r in _records(source, n, i)] for i in range(n)]
    union = [x for p in parts for x in p]
    assert len(union) == len(set(union)) == len(everything), n
    assert set(union) == set(everything), n


def test_digits_splits():
  lab, unl, test = (sources.open_source(f"digits:{s}") for s in ("labeled", "unlabeled",
                                                                  "test"))
  assert (lab.size, test.size, unl.size) == (500, 400, 897)
  assert lab.labeled and test.labeled and not unl.labeled
  assert lab.num_classes == 10 and sum(lab.class_counts.values()) == 500
  ids = [set(r["id"] for r in _records(s)) for s in (lab, unl, test)]
  assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
  assert len(ids[0] | ids[1] | ids[2]) == 1797
  recs = _records(unl)
  assert all(r["label"] == -1 for r in recs)
  assert set(unl.true_labels) == {r["id"].decode() for r in recs}
  assert set(unl.true_labels.values()) == set(range(10))
  image = preprocess.decode_image(recs[0]["image/encoded"]).numpy()
  assert image.shape == (8, 8, 3) and image.max() <= 255 and image.max() > 200
  again = sources.open_source("digits:labeled", seed=0)
  other = sources.open_source("digits:labeled", seed=1)
  assert [r["id"] for r in _records(again)] == [r["id"] for r in _records(lab)]
  assert [r["id"] for r in _records(other)] != [r["id"] for r in _records(lab)]
  _check_worker_splits(lab, counts=(1, 3, 7))
  with pytest.raises(ValueError, match="digits:train"):
    sources.open_source("digits:train")


def _image_folder(root):
  for cls, n in (("dog", 3), ("cat", 2)):
    for i in range(n):
      sub = root / cls / ("nested" if i == 0 else "")
      sub.mkdir(parents=True, exist_ok=True)
      (sub / f"{i}.png").write_bytes(_png(10 * i))
  (root / "cat" / "notes.txt").write_text("not an image")
  return root


def test_image_folder(tmp_path):
  root = _image_folder(tmp_path / "train")
  src = sources.open_source(str(root))
  assert src.labeled and src.class_names == ["cat", "dog"] and src.size == 5
  assert src.class_counts == {0: 2, 1: 3}
  recs = _records(src)
  for r in recs:
    path = r["id"].decode()
    assert os.path.isfile(path) and open(path, "rb").read() == r["image/encoded"]
    assert r["label"] == (0 if "/cat/" in path else 1)
  _check_worker_splits(src)
  same = sources.open_source(f"imagefolder:{root}")
  assert [r["id"] for r in _records(same)] == [r["id"] for r in recs]


def test_image_tree_unlabeled(tmp_path):
  root = tmp_path / "unlabeled"
  (root / "a" / "b").mkdir(parents=True)
  (root / "top.jpg").write_bytes(_png(1))
  (root / "a" / "b" / "deep.GIF").write_bytes(_png(2))
  (root / "a" / "mid.bmp").write_bytes(_png(3))
  src = sources.open_source(str(root))
  assert not src.labeled and src.size == 3
  assert all(r["label"] == -1 for r in _records(src))
  forced = sources.open_source(str(_image_folder(tmp_path / "f")), labeled=False)
  assert not forced.labeled and forced.size == 5
  _check_worker_splits(src)


def test_layout_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing"):
    sources.open_source(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty"):
    sources.open_source(str(tmp_path / "empty"))
  root = _image_folder(tmp_path / "bad")
  (root / "bird").mkdir()
  with pytest.raises(ValueError, match="bird"):
    sources.open_source(str(root))
  (root / "stray.png").write_bytes(_png(0))
  with pytest.raises(ValueError, match="stray.png"):
    sources.open_source(f"imagefolder:{root}")
  (tmp_path / "txt").mkdir()
  (tmp_path / "txt" / "x").mkdir()
  (tmp_path / "txt" / "x" / "a.txt").write_text("x")
  with pytest.raises(ValueError, match="no image files"):
    sources.open_source(f"images:{tmp_path / 'txt'}")
  with pytest.raises(FileNotFoundError, match="nothing-"):
    sources.open_source(str(tmp_path / "nothing-*.tfrecord"))
  with pytest.raises(ValueError, match="worker_index"):
    sources.open_source("digits:test").dataset(2, 2)


def _write_records(path, labels, with_label=True):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i, y in enumerate(labels):
      feature = {"image/encoded": tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[_png(i)]))}
      if with_label:
        feature["image/class/label"] = tf.train.Feature(
            int64_list=tf.train.Int64List(value=[y]))
      writer.write(tf.train.Example(features=tf.train.Features(
          feature=feature)).SerializeToString())


def test_tfrecords(tmp_path):
  d = tmp_path / "records"
  d.mkdir()
  _write_records(d / "train-00000-of-00002", [1, 2, 3])
  _write_records(d / "train-00001-of-00002", [3, 1])
  (d / "manifest.json").write_text("{}")
  src = sources.open_source(str(d), label_offset=1)
  assert src.labeled and src.size == 5 and src.class_counts == {0: 2, 1: 1, 2: 2}
  recs = _records(src)
  assert sorted(r["label"] for r in recs) == [0, 0, 1, 2, 2]
  by_id = {r["id"].decode(): r for r in recs}
  first = f"{d}/train-00000-of-00002:1"
  assert by_id[first]["label"] == 1 and by_id[first]["image/encoded"] == _png(1)
  pattern = sources.open_source(f"tfrecord:{d}/train-*", label_offset=1)
  assert [r["id"] for r in _records(pattern)] == [r["id"] for r in recs]
  _check_worker_splits(src, counts=(1, 2, 3, 4))  # 3, 4 workers > 2 files: by record.
  _write_records(tmp_path / "unl.tfrecord", [0, 0], with_label=False)
  unl = sources.open_source(str(tmp_path / "unl.tfrecord"), label_offset=1)
  assert not unl.labeled and [r["label"] for r in _records(unl)] == [-1, -1]
  (tmp_path / "bad.tfrecord").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="bad.tfrecord"):
    sources.open_source(str(tmp_path / "bad.tfrecord"))


def test_tfrecord_directory_is_read_by_split(tmp_path, caplog):
  """ImageNet's layout keeps train-* and validation-* side by side; the original reads
  <dir>/train* to train, <dir>/validation* to evaluate, and adds <dir>/extra* for the
  unlabeled data (noisystudent data_input.py:386-402)."""
  d = tmp_path / "imagenet"
  d.mkdir()
  _write_records(d / "train-00000-of-00002", [1, 2, 3])
  _write_records(d / "train-00001-of-00002", [3, 1])
  _write_records(d / "validation-00000-of-00001", [2, 2, 2, 2])
  with caplog.at_level("INFO"):
    train = sources.open_source(str(d), label_offset=1)
  assert train.size == 5 and train.class_counts == {0: 2, 1: 1, 2: 2}
  assert all(b"/train-" in r["id"] for r in _records(train))
  assert "2 train* files" in caplog.text and "left out: 1 validation*" in caplog.text
  val = sources.open_source(str(d), label_offset=1, split="eval")
  assert val.size == 4 and val.class_counts == {1: 4}
  assert sources.open_source(f"tfrecord:{d}", split="eval").size == 4
  # A pattern takes exactly what it matches.
  assert sources.open_source(f"{d}/*", label_offset=1).size == 9


def test_tfrecord_directory_of_the_original_svhn_layout(tmp_path):
  """proc_svhn.py writes train-*, dev-*, test-* and an unlabeled/ folder of extra-*
  (noisystudent proc_svhn.py:113-125): a directory of records beside a sub-folder."""
  d = tmp_path / "proc"
  (d / "unlabeled").mkdir(parents=True)
  _write_records(d / "train-00000-of-00001", [1, 2])
  _write_records(d / "dev-00000-of-00001", [1])
  _write_records(d / "test-00000-of-00001", [2, 2, 2])
  _write_records(d / "unlabeled" / "extra-00000-of-00001", [1, 1, 1, 1])
  assert sources.open_source(str(d), label_offset=1).size == 2
  assert sources.open_source(str(d), label_offset=1, split="eval").size == 3
  unl = sources.open_source(str(d / "unlabeled"), labeled=False, split="unlabeled")
  assert unl.size == 4 and not unl.labeled


def test_tfrecord_directory_without_a_split_is_refused(tmp_path):
  d = tmp_path / "records"
  d.mkdir()
  _write_records(d / "data-00000-of-00001", [1])
  with pytest.raises(ValueError, match=r"no train\* files for its train split.*"
                     r"data-00000-of-00001.*NAME-\*"):
    sources.open_source(str(d))
  _write_records(d / "train-00000-of-00001", [1])
  with pytest.raises(ValueError, match=r"no validation\* or test\* files"):
    sources.open_source(str(d), split="eval")
  tfds_dir = tmp_path / "tfds_version"
  tfds_dir.mkdir()
  _write_records(tfds_dir / "ns-train.tfrecord-00000-of-00001", [1])
  (tfds_dir / "dataset_info.json").write_text("{}")
  with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
    sources.open_source(str(tfds_dir))


class NsTinyImages(tfds.core.GeneratorBasedBuilder):
  """A 7-image dataset built locally, offline."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(6, 6, 3)),
        "label": tfds.features.ClassLabel(names=["zero", "one", "two"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(7), "test": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((6, 6, 3), 30 * i, np.uint8), "label": i % 3}


def test_tfds_prepared_and_not(tmp_path):
  data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="tfds build ns_tiny_images"):
    sources.open_source("tfds:ns_tiny_images:train", tfds_data_dir=data_dir)
  NsTinyImages(data_dir=data_dir).download_and_prepare()
  src = sources.open_source("tfds:ns_tiny_images:train", tfds_data_dir=data_dir)
  assert src.labeled and src.size == 7 and src.class_names == ["zero", "one", "two"]
  assert src.class_counts == {0: 3, 1: 2, 2: 2}
  recs = _records(src)
  values = sorted(int(preprocess.decode_image(r["image/encoded"]).numpy()[0, 0, 0])
                  for r in recs)
  assert values == [30 * i for i in range(7)]
  assert all(r["id"].startswith(b"ns_tiny_images-train") for r in recs)
  _check_worker_splits(src, counts=(1, 2, 3))
  with pytest.raises(ValueError, match="no split 'validation'"):
    sources.open_source("tfds:ns_tiny_images:validation", tfds_data_dir=data_dir)
  with pytest.raises(ValueError, match="tfds_data_dir"):
    sources.open_source("tfds:ns_tiny_images:train")
  with pytest.raises(ValueError, match="tfds:NAME:SPLIT"):
    sources.open_source("tfds:onlyname", tfds_data_dir=data_dir)
