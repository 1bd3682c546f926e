"""evaluate: counts checked against a model whose every prediction is known in advance."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student import evaluate

NAMES = ["red", "green", "blue", "grey"]


def _colour_model():
  """Predicts the brightest channel; the 4th logit is fixed in between (2nd-best often)."""
  inputs = keras.Input([8, 8, 3])
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  dense = keras.layers.Dense(4)
  out = dense(x)
  kernel = np.zeros([3, 4], np.float32)
  kernel[:3, :3] = np.eye(3)
  dense.set_weights([kernel, np.array([0, 0, 0, 100], np.float32)])
  return keras.Model(inputs, out)


def _data(predicted, labels, batch=3):
  images = np.zeros([len(predicted), 8, 8, 3], np.float32)
  for i, p in enumerate(predicted):
    images[i, :, :, p] = 255.0
  return tf.data.Dataset.from_tensor_slices((images, np.array(labels, np.int64))).batch(batch)


# Predictions 0,0,1,2,2,2,1 against labels 0,1,1,2,0,2,3 and one unlabeled (-1) image.
PREDICTED = [0, 0, 1, 2, 2, 2, 1, 0]
LABELS = [0, 1, 1, 2, 0, 2, 3, -1]


def _check(result):
  assert result.num_images == 7
  assert result.top1 == pytest.approx(4 / 7)
  # k = 4 of 4 classes: everything is in the top-4.
  assert result.top_k == 4 and result.top5 == pytest.approx(1.0)
  expected = np.zeros([4, 4], int)
  for p, t in zip(PREDICTED, LABELS):
    if t >= 0:
      expected[t, p] += 1
  assert result.confusion == expected.tolist()
  assert result.per_class_accuracy == [0.5, 0.5, 1.0, 0.0]


def test_counts_one_device():
  _check(evaluate.evaluate(_colour_model(), _data(PREDICTED, LABELS), class_names=NAMES))


def test_counts_two_replicas_match():
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < 2:
    pytest.skip("needs the two logical CPUs of conftest.py")
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
  with strategy.scope():
    model = _colour_model()
  # Batch 3 over 2 replicas and a final partial batch: uneven splits must still count.
  _check(evaluate.evaluate(model, _data(PREDICTED, LABELS), class_names=NAMES,
                           strategy=strategy))


def test_top5_counts_second_choices():
  # A 10-class model whose fixed logits rank classes 9, 8, ... 0; the label's rank decides.
  inputs = keras.Input([8, 8, 3])
  x = keras.layers.GlobalAveragePooling2D()(inputs)
  dense = keras.layers.Dense(10)
  model = keras.Model(inputs, dense(x))
  dense.set_weights([np.zeros([3, 10], np.float32), np.arange(10, dtype=np.float32)])
  labels = [9, 5, 4, 0]  # Ranks 1, 5, 6, 10.
  ds = tf.data.Dataset.from_tensor_slices(
      {"image": np.zeros([4, 8, 8, 3], np.float32), "label": np.array(labels)}).batch(2)
  result = evaluate.evaluate(model, ds)
  assert result.top1 == 0.25 and result.top5 == 0.5 and result.top_k == 5


def test_report_files(tmp_path):
  result = evaluate.evaluate(_colour_model(), _data(PREDICTED, LABELS), class_names=NAMES)
  path = evaluate.write_report(result, str(tmp_path), name="teacher", step=7)
  with open(path) as f:
    assert json.load(f)["confusion"] == result.confusion
  with open(tmp_path / "teacher_confusion.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  events = [str(tmp_path / "teacher" / n) for n in os.listdir(tmp_path / "teacher")]
  scalars = {}
  for record in tf.compat.v1.train.summary_iterator(events[0]):
    for value in record.summary.value:
      scalars[value.tag] = (record.step, float(tf.make_ndarray(value.tensor)),
                            value.metadata.plugin_data.plugin_name)
  assert scalars["eval/top1"] == (7, pytest.approx(4 / 7), "scalars")


def test_no_labeled_image_is_an_error():
  with pytest.raises(ValueError, match="no labeled image"):
    evaluate.evaluate(_colour_model(), _data([0, 1], [-1, -1]))


def test_names_must_match_outputs():
  with pytest.raises(ValueError, match="3 class names for 4 model outputs"):
    evaluate.evaluate(_colour_model(), _data([0], [0]), class_names=NAMES[:3])
