"""The student's loss, exactly as the original noisystudent `main.py` computes it.

One forward pass runs over `concat(labeled[B], unlabeled[U])`; the logits are split back:

  total = labeled_ce + unlabel_ratio * unlabeled_ce + weight_decay * sum(sum(w^2) / 2)

* labeled_ce: softmax cross entropy with label smoothing, mean over the labeled batch.
* unlabeled_ce: mean over the unlabeled batch of sum(-target * log_softmax(logits)), with
  target = probs^(1/T) renormalised (stored probabilities) or softmax(teacher_logits / T)
  (teacher run on the fly); T == -1 gives hard one-hot argmax targets with label smoothing.
* the weight decay covers every trainable weight except batch-norm ones.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional

import keras
import tensorflow as tf

HARD_LABELS = -1.0  # teacher_softmax_temp value meaning "one-hot argmax".


@dataclasses.dataclass(frozen=True)
class LossParts:
  """The loss of one step on one replica (all scalars, float32)."""
  total: tf.Tensor
  labeled: tf.Tensor
  unlabeled: tf.Tensor
  weight_decay: tf.Tensor


def smooth(one_hot: tf.Tensor, label_smoothing: float) -> tf.Tensor:
  """one_hot [N, C] -> (1 - s) * one_hot + s / C, as tf.losses.softmax_cross_entropy."""
  num_classes = tf.cast(tf.shape(one_hot)[-1], one_hot.dtype)
  return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes


def _check_temperature(temperature: float) -> None:
  if temperature != HARD_LABELS and temperature <= 0:
    raise ValueError(
        f"teacher_softmax_temp={temperature} is invalid: use a temperature > 0 for soft "
        "pseudo-labels or -1 for hard (one-hot argmax) ones.")


def targets_from_probs(probs: tf.Tensor, temperature: float,
                       label_smoothing: float = 0.1) -> tf.Tensor:
  """Stored teacher probabilities [N, C] -> training targets [N, C] (rows sum to 1).

  Soft: probs^(1/T) renormalised (T = 1 leaves them as stored). Hard (T == -1): the
  argmax one-hot with label smoothing, as the original.
  """
  _check_temperature(temperature)
  probs = tf.cast(probs, tf.float32)
  if temperature == HARD_LABELS:
    hard = tf.one_hot(tf.argmax(probs, axis=-1), tf.shape(probs)[-1])
    return smooth(hard, label_smoothing)
  sharpened = tf.pow(probs, 1.0 / temperature)
  return sharpened / tf.reduce_sum(sharpened, axis=-1, keepdims=True)


def targets_from_logits(logits: tf.Tensor, temperature: float,
                        label_smoothing: float = 0.1) -> tf.Tensor:
  """On-the-fly teacher logits [N, C] -> targets: softmax(logits / T), or hard one-hot."""
  _check_temperature(temperature)
  logits = tf.cast(logits, tf.float32)
  if temperature == HARD_LABELS:
    hard = tf.one_hot(tf.argmax(logits, axis=-1), tf.shape(logits)[-1])
    return smooth(hard, label_smoothing)
  return tf.nn.softmax(logits / temperature, axis=-1)


def soft_cross_entropy(targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
  """mean over rows of sum(-targets * log_softmax(logits)); 0 for an empty batch."""
  per_row = -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)
  return tf.math.divide_no_nan(tf.reduce_sum(per_row),
                               tf.cast(tf.size(per_row), tf.float32))


def labeled_cross_entropy(labels: tf.Tensor, logits: tf.Tensor,
                          label_smoothing: float) -> tf.Tensor:
  """Integer labels [N] and logits [N, C] -> mean smoothed softmax cross entropy."""
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1])
  return soft_cross_entropy(smooth(one_hot, label_smoothing), logits)


def decay_variables(model: keras.Model) -> list:
  """The trainable variables the original decays: all but batch-norm gamma/beta.

  The original filtered by the name 'batch_normalization'; matching the layer type is
  the same set without depending on how layers are named.
  """
  bn_ids = set()
  for layer in model._flatten_layers(include_self=False, recursive=True):  # pylint: disable=protected-access
    if isinstance(layer, keras.layers.BatchNormalization):
      bn_ids.update(id(w) for w in layer.weights)
  return [v for v in model.trainable_variables if id(v) not in bn_ids]


def l2_sum(variables: Iterable) -> tf.Tensor:
  """sum over variables of sum(w^2) / 2 (tf.nn.l2_loss), in float32."""
  terms = [tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in variables]
  return tf.add_n(terms) if terms else tf.constant(0.0)


def student_loss(logits: tf.Tensor, labels: tf.Tensor,
                 unlabeled_targets: Optional[tf.Tensor], *, unlabel_ratio: float,
                 label_smoothing: float, weight_decay: float = 0.0,
                 decay_vars: Iterable = ()) -> LossParts:
  """Splits the logits of one concatenated forward pass and returns the loss parts.

  Args:
    logits: [B + U, C] logits of concat(labeled, unlabeled) images (any float dtype).
    labels: [B] integer labels of the first B rows.
    unlabeled_targets: [U, C] target distributions for the last U rows, or None (U = 0,
      the supervised teacher).
    unlabel_ratio: weight of the unlabeled term (the original weights by the batch ratio).
    label_smoothing: for the labeled term.
    weight_decay: coefficient of sum(w^2)/2 over `decay_vars` (0 leaves it out).
    decay_vars: the variables to decay, see `decay_variables`.
  Returns:
    LossParts of float32 scalars.
  """
  logits = tf.cast(logits, tf.float32)
  num_labeled = tf.shape(labels)[0]
  labeled = labeled_cross_entropy(labels, logits[:num_labeled], label_smoothing)
  if unlabeled_targets is None:
    unlabeled = tf.constant(0.0)
  else:
    unlabeled = soft_cross_entropy(tf.cast(unlabeled_targets, tf.float32),
                                   logits[num_labeled:])
  decay = weight_decay * l2_sum(decay_vars) if weight_decay else tf.constant(0.0)
  total = labeled + unlabel_ratio * unlabeled + decay
  return LossParts(total=total, labeled=labeled, unlabeled=unlabeled, weight_decay=decay)
