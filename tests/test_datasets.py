"""Batched datasets: shapes, determinism, pass-through keys, skips, worker contexts."""
import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from noisy_student.config import DataConfig
from noisy_student.data import datasets
from noisy_student.data import preprocess
from noisy_student.data import sources

CFG = DataConfig(random_flip=False, randaug_mag=5.0, small_image_cutout=True, shuffle_buffer=64)


@pytest.fixture(scope="module")
def digits():
  return {s: sources.open_source(f"digits:{s}") for s in ("labeled", "unlabeled", "test")}


def test_labeled_train_dataset(digits):
  ds = datasets.labeled_train_dataset(digits["labeled"], image_size=16, batch_size=8,
                                      config=CFG, small_image=True)
  images, labels = ds.element_spec
  assert images.shape.as_list() == [8, 16, 16, 3] and images.dtype == tf.float32
  assert labels.shape.as_list() == [8] and labels.dtype == tf.int64
  first = [(x.numpy(), y.numpy()) for x, y in ds.take(3)]
  again = [(x.numpy(), y.numpy()) for x, y in datasets.labeled_train_dataset(
      digits["labeled"], image_size=16, batch_size=8, config=CFG, small_image=True).take(3)]
  for (x1, y1), (x2, y2) in zip(first, again):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  xs = np.concatenate([x for x, _ in first])
  assert xs.min() >= 0 and xs.max() <= 255 and xs.max() > 100
  assert set(np.concatenate([y for _, y in first])) <= set(range(10))
  other = datasets.labeled_train_dataset(
      digits["labeled"], image_size=16, batch_size=8, small_image=True,
      config=DataConfig(random_flip=False, randaug_mag=5.0, seed=1, shuffle_buffer=64))
  assert not np.array_equal(next(iter(other))[0].numpy(), first[0][0])


def test_large_image_train_path(digits):
  ds = datasets.labeled_train_dataset(digits["test"], image_size=24, batch_size=4,
                                      config=CFG)
  x, _ = next(iter(ds))
  assert x.shape == (4, 24, 24, 3)


def test_one_epoch_without_repeat_sees_every_image_once(digits):
  cfg = DataConfig(random_flip=False, augment_name=None, shuffle_buffer=1000)
  ds = datasets.labeled_train_dataset(digits["test"], image_size=8, batch_size=10,
                                      config=cfg, small_image=True, repeat=False)
  labels = np.concatenate([y.numpy() for _, y in ds])
  expected = [r["label"] for r in digits["test"].dataset().as_numpy_iterator()]
  assert sorted(labels) == sorted(expected)  # 400 images, 40 full batches.


def test_unlabeled_source_rejected_for_labeled_training(digits):
  with pytest.raises(ValueError, match="digits:unlabeled"):
    datasets.labeled_train_dataset(digits["unlabeled"], image_size=8, batch_size=2)


def test_eval_dataset_is_ordered_and_noise_free(digits):
  ds = datasets.eval_dataset(digits["test"], image_size=16, batch_size=64, small_image=True)
  a = [x.numpy() for x, _ in ds]
  b = [x.numpy() for x, _ in ds]
  assert sum(len(x) for x in a) == 400 and len(a[-1]) == 400 % 64
  np.testing.assert_array_equal(np.concatenate(a), np.concatenate(b))
  rec = next(digits["test"].dataset().as_numpy_iterator())
  expected = preprocess.preprocess_eval(preprocess.decode_image(rec["image/encoded"]), 16,
                                        small_image=True)
  np.testing.assert_allclose(a[0][0], expected.numpy(), atol=1e-4)


def _jpeg(seed):
  buf = io.BytesIO()
  pixels = np.random.RandomState(seed).randint(0, 256, (20, 24, 3)).astype(np.uint8)
  Image.fromarray(pixels).save(buf, format="JPEG")
  return buf.getvalue()


def test_predict_dataset_keys_bytes_and_skips(tmp_path):
  root = tmp_path / "unlabeled"
  root.mkdir()
  for i in range(5):
    (root / f"{i}.jpg").write_bytes(_jpeg(i))
  (root / "3.jpg").write_bytes(b"\xff\xd8\xff corrupt")
  src = sources.open_source(str(root))
  counter = preprocess.SkipCounter()
  batches = list(datasets.predict_dataset(src, 16, 3, skip_counter=counter))
  ids = [i.decode() for b in batches for i in b["id"].numpy()]
  assert ids == [str(root / f"{i}.jpg") for i in (0, 1, 2, 4)]
  assert counter.count == 1 and counter.ids == [str(root / "3.jpg")]
  first = batches[0]
  assert first["image"].shape == (3, 16, 16, 3) and first["image"].dtype == tf.float32
  assert first["image/encoded"].numpy()[1] == _jpeg(1)
  assert list(first["label"].numpy()) == [-1, -1, -1]
  assert list(first["true_label"].numpy()) == [-1, -1, -1]


def test_predict_dataset_exposes_hidden_digit_labels(digits):
  src = digits["unlabeled"]
  batch = next(iter(datasets.predict_dataset(src, 8, 50, small_image=True)))
  assert (batch["label"].numpy() == -1).all()
  for rid, y in zip(batch["id"].numpy(), batch["true_label"].numpy()):
    assert src.true_labels[rid.decode()] == y


def test_train_dataset_from_records_passes_keys_through():
  probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
  records = tf.data.Dataset.from_tensor_slices({
      "image/encoded": [_jpeg(i) for i in range(3)] + [b"broken"],
      "image/id": [b"a", b"b", b"c", b"d"], "probabilities": probs})
  counter = preprocess.SkipCounter()
  ds = datasets.train_dataset_from_records(
      records, image_size=16, batch_size=3, config=CFG, repeat=False, shuffle=False,
      skip_counter=counter)
  # The whole dataset: after only the first batch, the parallel decode may not have
  # reached the broken 4th record yet (one run of the suite saw an empty counter).
  batches = list(ds)
  assert len(batches) == 1  # The broken record is skipped, not batched.
  batch = batches[0]
  assert set(batch) == {"image", "image/id", "probabilities"}
  assert batch["image"].shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(batch["probabilities"].numpy(), probs[:3])
  assert counter.ids == ["d"]


def test_input_context_gives_disjoint_worker_streams(digits):
  ids = []
  for i in range(3):
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=i)
    ids.append({r["id"] for r in datasets.shard(digits["test"], ctx).as_numpy_iterator()})
  assert sum(len(s) for s in ids) == 400 and len(set.union(*ids)) == 400


def test_under_mirrored_strategy(digits):
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < 2:
    pytest.skip("needs the two logical CPUs of conftest.py")
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
  def make(ctx):
    return datasets.labeled_train_dataset(
        digits["labeled"], image_size=8, config=CFG, small_image=True,
        batch_size=ctx.get_per_replica_batch_size(8), input_context=ctx)
  dist = strategy.distribute_datasets_from_function(make)
  x, y = next(iter(dist))
  per_replica = strategy.experimental_local_results(x)
  assert len(per_replica) == 2 and per_replica[0].shape == (4, 8, 8, 3)
