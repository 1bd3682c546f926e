"""Learning-rate schedules and optimizers: the original's and two for small data.

Original (EfficientNet `utils.build_learning_rate` / noisystudent `main.py`):
  scaled_lr = base_learning_rate * global_batch / 256
  lr(step)  = scaled_lr * step / warmup_steps                      if step < warmup_steps
            = scaled_lr * factor ^ floor(step / decay_steps)       otherwise
  with decay_steps = lr_decay_epochs * steps_per_epoch, factor 0.97. `final_base_lr`
  instead stretches the stairs, as the original: decay_epochs = (train epochs - warm-up
  epochs) / (log(final_base_lr / base_learning_rate) / log(factor)), so the rate reaches
  about final_base_lr * batch / 256 at the last step.
  The optimizer is RMSProp(rho 0.9, momentum 0.9, epsilon 1e-3). Keras 3's RMSprop puts
  epsilon inside the square root like TF1's; TF1 started the mean square at 1, Keras at 0.
Cosine: linear warm-up to scaled_lr, then cosine to 0 at the last step (keras CosineDecay).

Length (`total_steps`): --train_steps if set, else --train_epochs passes over the labeled
images, times the original's --train_ratio, which also stretches the stairs (main.py:705-
709 and 577 of google-research/noisystudent: `train_steps *= train_ratio`, `decay_epochs =
2.4 * train_ratio`).
"""
from __future__ import annotations

import math
from typing import Optional

import keras
import tensorflow as tf

from noisy_student.config import TrainConfig

OPTIMIZERS = ("rmsprop", "sgd", "adamw")
SCHEDULES = ("exponential", "cosine")


@keras.saving.register_keras_serializable(package="noisy_student")
class WarmupStaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up, then staircase exponential decay counted from step 0 (original)."""

  def __init__(self, scaled_lr: float, warmup_steps: int, decay_steps: int,
               decay_factor: float):
    self.scaled_lr = float(scaled_lr)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = max(1, int(decay_steps))
    self.decay_factor = float(decay_factor)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    decayed = self.scaled_lr * tf.pow(
        self.decay_factor, tf.floor(step / float(self.decay_steps)))
    if not self.warmup_steps:
      return decayed
    warmup = self.scaled_lr * step / float(self.warmup_steps)
    return tf.where(step < self.warmup_steps, warmup, decayed)

  def get_config(self):
    return {"scaled_lr": self.scaled_lr, "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps, "decay_factor": self.decay_factor}


def steps_per_epoch(cfg: TrainConfig, num_train_images: int) -> float:
  """Steps in one pass over the labeled images at the global batch size."""
  if num_train_images <= 0:
    raise ValueError(f"num_train_images={num_train_images}: the labeled source is empty "
                     "or the --num_train_images flag is wrong.")
  return num_train_images / cfg.train_batch_size


def total_steps(cfg: TrainConfig, num_train_images: int) -> int:
  """The run's length in steps: train_steps, else train_epochs of the labeled images,
  then times train_ratio, each truncated as the original's int() (its default 109474 steps
  are int(350 epochs x 1281167 / 4096); with --train_ratio=2, 218948); at least 1."""
  base = cfg.train_steps or int(cfg.train_epochs * steps_per_epoch(cfg, num_train_images)
                                + 1e-9)
  return max(1, int(base * cfg.train_ratio))


def describe_length(cfg: TrainConfig, num_train_images: int) -> str:
  """"N steps (E epochs of M labeled images at batch B)" for logs."""
  steps = total_steps(cfg, num_train_images)
  return (f"{steps} steps ({steps / steps_per_epoch(cfg, num_train_images):.1f} epochs of "
          f"{num_train_images} labeled images at batch {cfg.train_batch_size})")


def final_lr_decay_epochs(cfg: TrainConfig, num_train_images: int) -> float:
  """The original's stair length (epochs) that lands on final_base_lr at the end."""
  if not 0 < cfg.final_base_lr < cfg.base_learning_rate:
    raise ValueError(f"final_base_lr={cfg.final_base_lr} must be in (0, "
                     f"base_learning_rate={cfg.base_learning_rate}).")
  steps = total_steps(cfg, num_train_images)
  total_epochs = steps / steps_per_epoch(cfg, num_train_images) - cfg.warmup_epochs
  if total_epochs <= 0:
    raise ValueError(f"final_base_lr needs the training ({steps} steps) to cover more "
                     f"than warmup_epochs={cfg.warmup_epochs} epochs.")
  decay_times = math.log(cfg.final_base_lr / cfg.base_learning_rate) / math.log(
      cfg.lr_decay_factor)
  return total_epochs / decay_times


def build_schedule(cfg: TrainConfig, num_train_images: int):
  """TrainConfig + labeled-set size -> a keras LearningRateSchedule over global steps."""
  spe = steps_per_epoch(cfg, num_train_images)
  scaled_lr = cfg.base_learning_rate * cfg.train_batch_size / 256.0
  warmup_steps = int(cfg.warmup_epochs * spe)
  if cfg.lr_schedule == "exponential":
    decay_epochs = cfg.lr_decay_epochs * cfg.train_ratio
    if cfg.final_base_lr is not None:
      decay_epochs = final_lr_decay_epochs(cfg, num_train_images)
    decay_steps = max(1, int(decay_epochs * spe))
    return WarmupStaircaseDecay(scaled_lr, warmup_steps, decay_steps, cfg.lr_decay_factor)
  if cfg.lr_schedule == "cosine":
    steps = total_steps(cfg, num_train_images)
    warmup_steps = min(warmup_steps, steps - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else scaled_lr,
        decay_steps=max(1, steps - warmup_steps), alpha=0.0,
        warmup_target=scaled_lr if warmup_steps else None, warmup_steps=warmup_steps)
  raise ValueError(f"lr_schedule={cfg.lr_schedule!r} is unknown; use one of {SCHEDULES}.")


def build_optimizer(cfg: TrainConfig, schedule,
                    loss_scale: Optional[bool] = False) -> keras.optimizers.Optimizer:
  """The optimizer named by `cfg.optimizer`, driven by `schedule`.

  rmsprop and sgd leave weight decay to the loss (the original's L2 term); adamw applies
  its decoupled decay of `cfg.weight_decay` to all but batch-norm and bias weights, and
  the trainer then leaves the L2 term out of the loss. `loss_scale` wraps the optimizer
  for float16 training.
  """
  if cfg.optimizer == "rmsprop":
    opt = keras.optimizers.RMSprop(learning_rate=schedule, rho=0.9, momentum=0.9,
                                   epsilon=1e-3)
  elif cfg.optimizer == "sgd":
    opt = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, nesterov=True)
  elif cfg.optimizer == "adamw":
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
  else:
    raise ValueError(f"optimizer={cfg.optimizer!r} is unknown; use one of {OPTIMIZERS}.")
  if loss_scale:
    opt = keras.optimizers.LossScaleOptimizer(opt)
  return opt


def loss_weight_decay(cfg: TrainConfig) -> float:
  """The L2 coefficient that goes into the loss (0 where the optimizer decays)."""
  return 0.0 if cfg.optimizer == "adamw" else cfg.weight_decay
