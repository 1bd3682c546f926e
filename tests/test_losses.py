"""The student loss against values computed by hand (numpy, written out)."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student.train import losses


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_labeled_cross_entropy_with_label_smoothing_by_hand():
  logits = np.array([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]], np.float32)
  labels = np.array([0, 2])
  # Smoothed targets with s=0.1, C=3: 0.9 on the label + 0.1/3 everywhere.
  targets = np.full((2, 3), 0.1 / 3)
  targets[0, 0] += 0.9
  targets[1, 2] += 0.9
  expected = np.mean(-(targets * _log_softmax(logits)).sum(-1))
  got = losses.labeled_cross_entropy(tf.constant(labels), tf.constant(logits), 0.1)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  # Matches Keras' own smoothed categorical cross entropy too.
  keras_value = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(
      tf.one_hot(labels, 3), logits)
  np.testing.assert_allclose(float(got), float(keras_value), rtol=1e-5)


def test_soft_targets_from_probs_temperature():
  probs = np.array([[0.6, 0.3, 0.1]], np.float32)
  np.testing.assert_allclose(losses.targets_from_probs(probs, 1.0), probs, rtol=1e-5)
  # T = 0.5: probs^2 renormalised = [.36, .09, .01] / .46.
  np.testing.assert_allclose(losses.targets_from_probs(probs, 0.5),
                             [[0.36 / 0.46, 0.09 / 0.46, 0.01 / 0.46]], rtol=1e-5)


def test_hard_targets_are_smoothed_argmax():
  probs = np.array([[0.2, 0.7, 0.1]], np.float32)
  expected = [[0.1 / 3, 0.9 + 0.1 / 3, 0.1 / 3]]
  np.testing.assert_allclose(losses.targets_from_probs(probs, -1, 0.1), expected, rtol=1e-5)
  np.testing.assert_allclose(
      losses.targets_from_logits(np.log(probs), -1, 0.1), expected, rtol=1e-5)


def test_targets_from_teacher_logits_use_softmax_over_temperature():
  logits = np.array([[1.0, 2.0, 4.0]], np.float32)
  t = 2.0
  e = np.exp(np.array([0.5, 1.0, 2.0]))
  np.testing.assert_allclose(losses.targets_from_logits(logits, t), [e / e.sum()],
                             rtol=1e-5)


@pytest.mark.parametrize("temp", [0.0, -0.5, -2.0])
def test_bad_temperature_is_rejected(temp):
  with pytest.raises(ValueError, match="teacher_softmax_temp"):
    losses.targets_from_probs(tf.ones([1, 2]) / 2, temp)


def test_student_loss_splits_concatenated_logits_and_weights_the_parts():
  # 2 labeled rows, 3 unlabeled rows, 2 classes.
  logits = np.array([[1.0, 0.0], [0.0, 2.0], [0.3, 0.1], [0.0, 0.0], [-1.0, 1.0]],
                    np.float32)
  labels = np.array([0, 1])
  targets = np.array([[0.8, 0.2], [0.5, 0.5], [0.1, 0.9]], np.float32)
  ls = _log_softmax(logits)
  smooth = np.array([[0.95, 0.05], [0.05, 0.95]])
  lab = np.mean(-(smooth * ls[:2]).sum(-1))
  unl = np.mean(-(targets * ls[2:]).sum(-1))
  w = tf.Variable([[1.0, -2.0], [3.0, 0.5]])
  decay = 1e-2 * (1 + 4 + 9 + 0.25) / 2
  parts = losses.student_loss(tf.constant(logits), tf.constant(labels), targets,
                              unlabel_ratio=1.5, label_smoothing=0.1, weight_decay=1e-2,
                              decay_vars=[w])
  np.testing.assert_allclose(float(parts.labeled), lab, rtol=1e-5)
  np.testing.assert_allclose(float(parts.unlabeled), unl, rtol=1e-5)
  np.testing.assert_allclose(float(parts.weight_decay), decay, rtol=1e-5)
  np.testing.assert_allclose(float(parts.total), lab + 1.5 * unl + decay, rtol=1e-5)


def test_supervised_loss_has_no_unlabeled_part():
  logits = tf.constant([[3.0, -3.0]])
  parts = losses.student_loss(logits, tf.constant([0]), None, unlabel_ratio=0.0,
                              label_smoothing=0.0)
  expected = -_log_softmax([[3.0, -3.0]])[0, 0]
  assert float(parts.unlabeled) == 0.0
  np.testing.assert_allclose(float(parts.total), expected, rtol=1e-4)


def test_weight_decay_skips_batch_norm_weights():
  inputs = keras.Input((4,))
  x = keras.layers.Dense(3, name="dense")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False, name="head")(x))
  names = sorted(v.path for v in losses.decay_variables(model))
  assert names == sorted(["dense/kernel", "dense/bias", "head/kernel"])
  expected = sum(float(np.sum(np.square(v.numpy()))) / 2 for v in
                 losses.decay_variables(model))
  assert math.isclose(float(losses.l2_sum(losses.decay_variables(model))), expected,
                      rel_tol=1e-5)
