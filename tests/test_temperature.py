"""The teacher's temperature is applied once, in training, as in the original.

The original stores T = 1 probabilities (predict_label.py:136-141 from main.py:462),
filters on them (filter_unlabel.py:167), and applies T when the student trains:
probs^(1/T) renormalised for stored labels (main.py:535-537), softmax(logits / T) for
the on-the-fly teacher (main.py:444-445); T = -1 takes the argmax in training for both
(main.py:448, 518-529). Either way the student's targets are softmax(teacher logits / T).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
import flags
from absl import flags as absl_flags
from noisy_student import context
from noisy_student import pipeline
from noisy_student import predict
from noisy_student import results
from noisy_student.config import ModelConfig
from noisy_student.train import checkpoints
from noisy_student.train import inputs
from noisy_student.train import losses
from noisy_student.train import steps
import tfrecords


@pytest.fixture(scope="module")
def teacher():
  keras.utils.set_random_seed(1)
  model = efficientnet.build_model("efficientnet-test", 10, image_size=32, small_image=True)
  # A fresh model's logits spread over ~0.005; scaled up they spread over several units,
  # so softmax(l / T) and softmax(l / T^2) differ far beyond float32 noise.
  dense = model.get_layer("predictions")
  dense.set_weights([w * 2000.0 for w in dense.get_weights()])
  return model


def _config(tmp_path, temperature):
  """The flags as a user gives them: one --teacher_softmax_temp for predict and training."""
  fv = absl_flags.FlagValues()
  flags.define_all(fv)
  fv(["prog", f"--model_dir={tmp_path}", f"--teacher_softmax_temp={temperature}",
      "--digits_num_labeled=800", "--digits_num_test=800"])  # 197 unlabeled digits.
  return flags.to_config(fv)


def _predict(tmp_path, temperature, teacher):
  """The pipeline's predict phase with this teacher; -> (config, records, logits by id)."""
  cfg = _config(tmp_path, temperature)
  ctx = context.Context(cfg)
  ctx.load = lambda info: teacher
  model_dir = str(tmp_path / "teacher")  # Only its build_config.json (the class names).
  checkpoints.write_build_config(model_dir, ModelConfig("efficientnet-test", 10, 32,
                                                        small_image=True), None, False)
  info = results.TrainedModel(path=model_dir, model_name="efficientnet-test",
                              image_size=32, small_image=True)
  pipeline.predict_pseudo_labels(ctx, info, str(tmp_path / "pseudo"))
  records = list(tfrecords.read_pseudo_labels(str(tmp_path / "pseudo")).as_numpy_iterator())
  pre = predict.default_preprocess(32, small_image=True)
  images = tf.stack([pre(r[tfrecords.IMAGE_KEY]) for r in records])
  return cfg, records, images, teacher(images, training=False).numpy()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_student_targets_are_softmax_of_teacher_logits_over_t(tmp_path, teacher, temperature):
  cfg, records, images, logits = _predict(tmp_path, temperature, teacher)
  assert np.ptp(logits, axis=1).min() > 0.5  # The check below can fail.
  want = tf.nn.softmax(logits / temperature).numpy()
  probs = np.stack([r[tfrecords.PROBS_KEY] for r in records])
  stored = steps._targets({"probabilities": tf.constant(probs)}, cfg.train,
                          inputs.STORED, None)
  np.testing.assert_allclose(stored.numpy(), want, atol=2e-5)
  on_the_fly = steps._targets({"teacher_image": images}, cfg.train, inputs.TEACHER, teacher)
  np.testing.assert_allclose(on_the_fly.numpy(), want, atol=2e-5)
  # Stored: softmax(logits) at T = 1, and the filter's confidence is its max.
  np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-5)
  np.testing.assert_allclose([r[tfrecords.CONFIDENCE_KEY] for r in records],
                             tf.nn.softmax(logits).numpy().max(1), atol=1e-5)


def test_hard_labels_take_the_argmax_in_training_for_both_modes(tmp_path, teacher):
  cfg, records, images, logits = _predict(tmp_path, -1, teacher)
  probs = np.stack([r[tfrecords.PROBS_KEY] for r in records])
  np.testing.assert_allclose(probs, tf.nn.softmax(logits).numpy(), atol=1e-5)  # Still soft.
  want = losses.smooth(tf.one_hot(logits.argmax(1), 10), 0.1).numpy()
  stored = steps._targets({"probabilities": tf.constant(probs)}, cfg.train,
                          inputs.STORED, None)
  on_the_fly = steps._targets({"teacher_image": images}, cfg.train, inputs.TEACHER, teacher)
  np.testing.assert_allclose(stored.numpy(), want, atol=1e-6)
  np.testing.assert_allclose(on_the_fly.numpy(), want, atol=1e-6)
