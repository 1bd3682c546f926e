"""EMA of weights: the original's num_updates warm-up, BN statistics, swap in and out."""
import keras
import numpy as np
import tensorflow as tf

from noisy_student.train import ema as ema_lib


def _model():
  inputs = keras.Input((3,))
  x = keras.layers.Dense(2, name="dense")(inputs)
  x = keras.layers.BatchNormalization(name="bn")(x)
  return keras.Model(inputs, x)


def test_decay_warm_up_matches_num_updates_formula():
  for step, expected in [(0, 0.1), (1, 2 / 11), (10, 11 / 20), (1000, 1001 / 1010)]:
    np.testing.assert_allclose(float(ema_lib.ema_decay(0.9999, step)), expected, rtol=1e-6)
  np.testing.assert_allclose(float(ema_lib.ema_decay(0.9, 10**6)), 0.9, rtol=1e-6)


def test_update_averages_weights_and_batch_norm_statistics():
  # float32 shadows against a float64 reference: an absolute tolerance covers values near 0.
  model = _model()
  ema = ema_lib.WeightEMA(model, 0.99)
  covered = {v.path for v in ema_lib.averaged_variables(model)}
  assert {"bn/moving_mean", "bn/moving_variance", "dense/kernel", "bn/gamma"} <= covered
  kernel = model.get_layer("dense").kernel
  mean = model.get_layer("bn").moving_mean
  k0, m0 = kernel.numpy(), mean.numpy()
  kernel.assign(k0 + 1.0)
  mean.assign(m0 + 2.0)
  ema.update(tf.constant(1))  # decay = min(0.99, 2/11).
  d = 2 / 11
  shadow = dict(zip([v.path for v in ema_lib.averaged_variables(model)], ema.shadows))
  np.testing.assert_allclose(shadow["dense/kernel"].numpy(), d * k0 + (1 - d) * (k0 + 1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(shadow["bn/moving_mean"].numpy(), d * m0 + (1 - d) * (m0 + 2),
                             rtol=1e-5, atol=1e-6)
  ema.update(tf.constant(10**6))  # decay capped at 0.99.
  prev = d * k0 + (1 - d) * (k0 + 1)
  np.testing.assert_allclose(shadow["dense/kernel"].numpy(),
                             0.99 * prev + 0.01 * (k0 + 1), rtol=1e-5, atol=1e-6)


def test_swapped_in_restores_the_trained_weights_after():
  model = _model()
  ema = ema_lib.WeightEMA(model, 0.5)
  kernel = model.get_layer("dense").kernel
  trained = kernel.numpy() + 3.0
  kernel.assign(trained)
  ema.update(tf.constant(10**6))  # decay 0.5: shadow = mean of initial and trained.
  with ema.swapped_in():
    np.testing.assert_allclose(kernel.numpy(), trained - 1.5, rtol=1e-6)
  np.testing.assert_allclose(kernel.numpy(), trained, rtol=1e-6)


def test_bad_decay_is_rejected():
  import pytest  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match="moving_average_decay"):
    ema_lib.WeightEMA(_model(), 1.0)
