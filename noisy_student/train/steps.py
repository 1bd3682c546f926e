"""The compiled training step: `iterations_per_loop` steps per host round trip.

One call of the function returned by `make_multi_step` runs N steps (N a tensor, so no
retrace) of `strategy.run(replica_step)` over a distributed iterator - the TPUEstimator
shape, which keeps TPUs and GPUs busy without a Python round trip per step - and returns
the per-step metrics summed over the N steps (host divides by N).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf

from noisy_student.config import TrainConfig
from noisy_student.train import inputs as inputs_lib
from noisy_student.train import losses

# target_confidence: the mean max probability of the pseudo-label targets, the
# original's `unl/target_prob` (main.py:539-540).
# grad_norm: the global gradient norm of the applied updates (skipped ones left out);
# loss_scale_skips: updates a LossScaleOptimizer skipped (a sum, not a mean).
METRICS = ("loss", "labeled_loss", "unlabeled_loss", "weight_decay_loss",
           "labeled_accuracy", "pseudo_accuracy", "target_confidence", "grad_norm",
           "loss_scale_skips")
SUMMED = ("loss_scale_skips",)


def _accuracy(logits: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
  hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32),
                  tf.cast(classes, tf.int32))
  return tf.math.divide_no_nan(tf.reduce_sum(tf.cast(hits, tf.float32)),
                               tf.cast(tf.size(hits), tf.float32))


def _targets(batch: Dict[str, tf.Tensor], cfg: TrainConfig, targets_from: str,
             teacher: Optional[keras.Model]) -> Optional[tf.Tensor]:
  """Pseudo-label targets [u, C] for the unlabeled rows, or None when supervised."""
  if targets_from == inputs_lib.SUPERVISED:
    return None
  if targets_from == inputs_lib.TEACHER:
    # The original's on-the-fly teacher: frozen, un-noised, at its own resolution.
    teacher_logits = tf.stop_gradient(teacher(batch["teacher_image"], training=False))
    return losses.targets_from_logits(teacher_logits, cfg.teacher_softmax_temp,
                                      cfg.label_smoothing)
  return losses.targets_from_probs(batch["probabilities"], cfg.teacher_softmax_temp,
                                   cfg.label_smoothing)


def gradient_norm(grads) -> tf.Tensor:
  """The global norm the divergence check reads (benchmarks/bench_train.py --compare
  divergence swaps it for a constant to measure its cost)."""
  return tf.linalg.global_norm(grads)


def make_replica_step(model: keras.Model, optimizer, cfg: TrainConfig, targets_from: str,
                      weight_decay: float, num_replicas: int, ema=None,
                      teacher: Optional[keras.Model] = None) -> Callable:
  """The step one replica runs on its part of the global batch; returns its metrics."""
  decay_vars = losses.decay_variables(model) if weight_decay else []
  ratio = cfg.unlabel_ratio if targets_from != inputs_lib.SUPERVISED else 0.0
  scales_loss = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  # No tensor-dependent Python control flow inside, so autograph is skipped here: it
  # would only convert the step's helpers, not the model.
  @tf.autograph.experimental.do_not_convert
  def replica_step(batch: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    targets = _targets(batch, cfg, targets_from, teacher)
    images = batch["image"]
    if targets is not None:  # One forward pass over concat(labeled, unlabeled).
      images = tf.concat([images, tf.cast(batch["unlabeled_image"], images.dtype)], 0)
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      parts = losses.student_loss(
          logits, batch["label"], targets, unlabel_ratio=ratio,
          label_smoothing=cfg.label_smoothing, weight_decay=weight_decay,
          decay_vars=decay_vars)
      # Gradients are summed over replicas, so each contributes 1/replicas of the mean.
      scaled = parts.total / num_replicas
      if scales_loss:
        scaled = optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, model.trainable_variables)
    # The divergence check's one cost per step (train/divergence.py). Summed over
    # replicas by the reduction below; under loss scaling an overflow (Inf) is the
    # optimizer's skip, not divergence.
    grad_norm = gradient_norm(grads) * float(num_replicas)
    skipped = tf.constant(0.0)
    if scales_loss:
      grad_norm = grad_norm / tf.cast(optimizer.dynamic_scale, tf.float32)
      skipped = 1.0 - tf.cast(tf.math.is_finite(grad_norm), tf.float32)
    step = tf.identity(optimizer.iterations)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    if scales_loss:
      # A LossScaleOptimizer skips the update when the scaled gradients overflow and then
      # leaves `iterations` behind. The step still counts, as in TF1's loss-scale
      # optimizer, so the global step (schedule, EMA, checkpoints, resume) stays the
      # number of steps run.
      optimizer.iterations.assign(step + 1)
    if ema is not None:
      ema.update(optimizer.iterations)
    num_labeled = tf.shape(batch["label"])[0]
    pseudo_acc = (tf.constant(0.0) if targets is None else
                  _accuracy(logits[num_labeled:], tf.argmax(targets, axis=-1)))
    target_conf = (tf.constant(0.0) if targets is None else
                   tf.reduce_mean(tf.reduce_max(targets, axis=-1)))
    return {"loss": parts.total, "labeled_loss": parts.labeled,
            "unlabeled_loss": parts.unlabeled, "weight_decay_loss": parts.weight_decay,
            "labeled_accuracy": _accuracy(logits[:num_labeled], batch["label"]),
            "pseudo_accuracy": pseudo_acc, "target_confidence": target_conf,
            "grad_norm": grad_norm, "loss_scale_skips": skipped}

  return replica_step


def make_multi_step(strategy: tf.distribute.Strategy, replica_step: Callable) -> Callable:
  """tf.function(iterator, n) running n steps; returns ({metric: sum over the n steps},
  {divergence.WORST_KEYS: the first step's loss, the largest loss and its index, the
  index of the first step with a non-finite loss or gradient norm (-1: none) and its
  values}), indices 0-based within the n steps."""

  @tf.function
  def multi_step(iterator, num_steps: tf.Tensor):
    sums = {k: tf.constant(0.0) for k in METRICS}
    worst = {"first_loss": tf.constant(math.nan), "max_loss": tf.constant(-math.inf),
             "max_loss_index": tf.constant(-1.0), "bad_index": tf.constant(-1.0),
             "bad_loss": tf.constant(0.0), "bad_grad_norm": tf.constant(0.0)}
    for i in tf.range(num_steps):
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      # Every replica holds the same number of rows, so the mean of the per-replica
      # means is the mean over the global batch.
      step = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None)
              for k in METRICS}
      sums, worst = _accumulate(sums, worst, step, tf.cast(i, tf.float32))
    return sums, worst

  return multi_step


def _accumulate(sums, worst, step, i):
  """Adds one step's reduced metrics to the sums and the divergence scalars."""
  loss, norm, skipped = step["loss"], step["grad_norm"], step["loss_scale_skips"] > 0
  applied = tf.math.is_finite(norm)
  bad = ~tf.math.is_finite(loss) | (~applied & ~skipped)
  first_bad = bad & (worst["bad_index"] < 0)
  louder = loss > worst["max_loss"]
  sums = {k: sums[k] + (tf.where(applied, v, 0.0) if k == "grad_norm" else v)
          for k, v in step.items()}
  worst = {"first_loss": tf.where(i == 0, loss, worst["first_loss"]),
           "max_loss": tf.where(louder, loss, worst["max_loss"]),
           "max_loss_index": tf.where(louder, i, worst["max_loss_index"]),
           "bad_index": tf.where(first_bad, i, worst["bad_index"]),
           "bad_loss": tf.where(first_bad, loss, worst["bad_loss"]),
           "bad_grad_norm": tf.where(first_bad, norm, worst["bad_grad_norm"])}
  return sums, worst
