"""Exponential moving average of a model's weights, batch-norm statistics included.

decay_t = min(decay, (1 + t) / (10 + t)) with t the global step, as the original's
`tf.train.ExponentialMovingAverage(decay, num_updates=global_step)`.

Why not a library: Keras 3's optimizer EMA (`use_ema=True`) averages only the trainable
variables and has no num_updates warm-up; `tf.train.ExponentialMovingAverage` wants raw
tf.Variables and creates its shadows lazily inside `apply`, which does not sit well with
variables created under a tf.distribute scope and restored before the first step. The
arithmetic is three lines; the shadows are plain variables tracked by tf.train.Checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import keras
import tensorflow as tf


def averaged_variables(model: keras.Model) -> List:
  """The variables worth averaging: trainable weights plus batch-norm moving stats.

  Seed-generator states and other integer bookkeeping are left out (they are not weights).
  """
  trainable = list(model.trainable_variables)
  seen = {id(v) for v in trainable}
  stats = [v for v in model.non_trainable_variables
           if id(v) not in seen and v.dtype.startswith("float")
           and ("moving_mean" in v.path or "moving_variance" in v.path)]
  return trainable + stats


def ema_decay(decay: float, step: tf.Tensor) -> tf.Tensor:
  """min(decay, (1 + step) / (10 + step)) as float32."""
  step = tf.cast(step, tf.float32)
  return tf.minimum(tf.constant(decay, tf.float32), (1.0 + step) / (10.0 + step))


class WeightEMA(tf.Module):
  """Shadow copies of a model's weights, updated after every optimizer step.

  Create it under the strategy scope (the shadows are mirrored like the weights); call
  `update(step)` inside the replica step, after the optimizer applied its update.
  """

  def __init__(self, model: keras.Model, decay: float, name: str = "ema"):
    super().__init__(name=name)
    if not 0.0 < decay < 1.0:
      raise ValueError(f"moving_average_decay={decay} must be in (0, 1); use 0 in the "
                       "config to train without an EMA.")
    self.decay = decay
    self._model_vars = averaged_variables(model)
    # ONLY_FIRST_REPLICA: every replica computes the same value (the weights are in sync;
    # with local batch norm the first replica's statistics are kept, as TPUEstimator did).
    self.shadows = [
        tf.Variable(tf.convert_to_tensor(v), trainable=False, name=_safe_name(v.path),
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        for v in self._model_vars]

  def update(self, step: tf.Tensor) -> None:
    """shadow <- d * shadow + (1 - d) * weight, with d = ema_decay(decay, step)."""
    d = ema_decay(self.decay, step)
    for shadow, var in zip(self.shadows, self._model_vars):
      value = tf.cast(tf.convert_to_tensor(var), tf.float32)
      shadow.assign(d * shadow + (1.0 - d) * value)

  def copy_to_model(self) -> None:
    """Overwrites the model's weights with the averages (for eval/predict/export)."""
    for shadow, var in zip(self.shadows, self._model_vars):
      var.assign(tf.cast(shadow, var.dtype))

  @contextlib.contextmanager
  def swapped_in(self) -> Iterator[None]:
    """Within the block the model holds the EMA weights; its own come back after."""
    backup = [tf.identity(tf.convert_to_tensor(v)) for v in self._model_vars]
    self.copy_to_model()
    try:
      yield
    finally:
      for value, var in zip(backup, self._model_vars):
        var.assign(value)


def _safe_name(path: str) -> str:
  return "ema/" + path.replace(":", "_")
