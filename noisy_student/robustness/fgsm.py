"""FGSM (Goodfellow et al. 2015): accuracy under a one-step sign-gradient attack.

x_adv = clip(x + eps * sign(grad_x CE(model(x, training=False), y)), 0, 255), with eps
in pixel units of the 0..255 scale the models take (the Noisy Student paper reports
FGSM on ImageNet with eps up to 16). The gradient is taken once per batch and every
eps is scored from it, so a list of eps costs one backward pass and one forward pass
per eps. eps 0 is the clean image itself.
"""
from __future__ import annotations

from typing import Dict, Sequence

import keras
import tensorflow as tf

from noisy_student import evaluate

DEFAULT_EPSILONS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


def gradient_sign(model: keras.Model, images: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """sign of d(cross entropy)/d(images) with the model in inference mode."""
  images = tf.cast(images, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(images)
    logits = tf.cast(model(images, training=False), tf.float32)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
  return tf.sign(tape.gradient(loss, images))


def attack(images: tf.Tensor, sign: tf.Tensor, epsilon) -> tf.Tensor:
  """The FGSM images at `epsilon` (a float or scalar tensor; 0 returns `images` as they
  are, even where they lie outside 0..255)."""
  epsilon = tf.cast(epsilon, tf.float32)
  adversarial = tf.clip_by_value(images + epsilon * sign, 0.0, 255.0)
  return tf.where(epsilon > 0, adversarial, images)


def make_step(model: keras.Model, epsilons: Sequence[float]):
  """One replica's batch (images, labels, valid) -> {"images": labeled count, "correct":
  int32 [len(epsilons)]}.

  Padding rows (valid False) and unlabeled images (label -1) count nowhere, as in
  `evaluate`. In inference mode every row's gradient depends on that row only, so they
  change no other row's attack.
  """
  epsilons = [float(e) for e in epsilons]

  def step(images, labels, valid) -> Dict[str, tf.Tensor]:
    keep = tf.logical_and(valid, labels >= 0)
    labels = tf.where(keep, labels, 0)
    images = tf.cast(images, tf.float32)
    sign = gradient_sign(model, images, labels)

    def correct(eps):
      logits = model(attack(images, sign, eps), training=False)
      predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
      return evaluate.count(tf.logical_and(keep, tf.equal(predicted, labels)))

    # A loop, not one model call per eps in the graph: each copy of the model in a
    # compiled function costs seconds of graph optimisation. One eps at a time bounds
    # the memory to one batch.
    hits = tf.map_fn(correct, tf.constant(epsilons, tf.float32),
                     fn_output_signature=tf.int32, parallel_iterations=1)
    return {"images": evaluate.count(keep), "correct": hits}
  return step
