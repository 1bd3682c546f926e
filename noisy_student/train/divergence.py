"""Divergence: training stops at once, in one line, when it stops being training.

Diverged means any of:
* a step's loss or gradient norm is NaN or Inf (under mixed_float16 a non-finite
  gradient norm is the loss scale overflowing: the optimizer skips that update and
  lowers the scale, which is not divergence; those skips are counted instead);
* a step's loss is above `divergence_factor` x the run's first-step loss (floored at 1,
  so a run initialised near zero loss is not stopped by a normal one): with the default
  1000, a cross entropy that starts at ln(C) must pass ~2,300 for 10 classes;
* a weight, batch-norm statistic or EMA shadow is NaN or Inf when a checkpoint is due;
* the trained model's un-noised outputs are not finite (one batch of fixed images, at
  the end): what a too large first step leaves behind when there is no later loss to
  show it.

The step computes the gradient norm and the loop of steps the first bad step and the
largest loss (scalars), so the check costs one norm per step
(benchmarks/bench_train.py --compare divergence). On divergence the chief writes
`<model_dir>/diverged.json` and no checkpoint after the last finite one;
`checkpoints.load_for_inference` refuses a model_dir with that file, so nothing
downstream (predict, eval, export) runs on it, and training again there removes it.
"""
from __future__ import annotations

import json
import math
from typing import Dict, Optional

import tensorflow as tf

from noisy_student import atomic
from noisy_student import faults

MARKER = "diverged.json"
REFERENCE = "reference_loss.json"  # The first step's loss, kept for resumed runs.
# What the multi-step loop reports beside the metric sums (see steps.make_multi_step).
WORST_KEYS = ("first_loss", "max_loss", "max_loss_index", "bad_index", "bad_loss",
              "bad_grad_norm")


def _join(model_dir: str, name: str) -> str:
  return f"{model_dir.rstrip('/')}/{name}"


def marker_of(model_dir: str) -> Optional[Dict[str, str]]:
  """The divergence record of a training model_dir, or None."""
  path = _join(model_dir, MARKER)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def refuse_if_diverged(model_dir: str) -> None:
  """Raises faults.Diverged when training in `model_dir` diverged (nothing downstream
  may read its checkpoints)."""
  record = marker_of(model_dir)
  if record is not None:
    raise faults.Diverged(f"{model_dir} holds a diverged training run ({MARKER}: "
                          f"{record.get('message', '')})")


class Watch:
  """Host side of the check: the run's reference loss, the chunk checks, the record."""

  def __init__(self, model_dir: str, factor: float, flags_hint: str, chief: bool):
    self.model_dir, self.factor, self.hint, self.chief = model_dir, factor, flags_hint, chief
    self.reference: Optional[float] = None
    path = _join(model_dir, REFERENCE)
    if tf.io.gfile.exists(path):
      with tf.io.gfile.GFile(path) as f:
        self.reference = float(json.load(f)["loss"])
    if chief and tf.io.gfile.exists(_join(model_dir, MARKER)):
      tf.io.gfile.remove(_join(model_dir, MARKER))  # Training again: a new attempt.

  def check(self, worst: Dict[str, float], step: int, last_checkpoint: Optional[str]) -> None:
    """After a loop of steps that started at global step `step` (0-based)."""
    if self.reference is None and math.isfinite(worst["first_loss"]):
      self.reference = worst["first_loss"]
      if self.chief:
        atomic.write_text(_join(self.model_dir, REFERENCE),
                          json.dumps({"loss": self.reference, "step": step + 1}))
    if worst["bad_index"] >= 0:
      at = step + int(worst["bad_index"]) + 1
      what = (f"loss {worst['bad_loss']:.4g}" if not math.isfinite(worst["bad_loss"])
              else f"gradient norm {worst['bad_grad_norm']:.4g}")
      self.stop(at, f"{what} is not finite", last_checkpoint)
    limit = self.factor * max(1.0, self.reference or 0.0)
    if self.factor and worst["max_loss"] > limit:
      at = step + int(worst["max_loss_index"]) + 1
      self.stop(at, f"loss {worst['max_loss']:.4g} is above {self.factor:g} x the first "
                f"step's {self.reference:.4g} (--divergence_factor)", last_checkpoint)

  def stop(self, step: int, what: str, last_checkpoint: Optional[str]) -> None:
    """Records the divergence (chief) and raises faults.Diverged."""
    kept = (f"the last checkpoint with finite weights ({last_checkpoint.rsplit('/', 1)[-1]}) "
            "is kept"
            if last_checkpoint else "no checkpoint was saved")
    message = (f"training in {self.model_dir} diverged at step {step}: {what}; {self.hint}"
               f"; {kept} and nothing downstream runs on this model")
    if self.chief:
      atomic.write_text(_join(self.model_dir, MARKER),
                        json.dumps({"step": step, "message": message}, indent=1))
    raise faults.Diverged(message)


def flags_hint(base_learning_rate: float, warmup_epochs: float,
               dtype_policy: Optional[str]) -> str:
  """The flags to lower, with their values in this run."""
  hint = (f"lower --base_learning_rate (now {base_learning_rate:g}) or raise "
          f"--warmup_epochs (now {warmup_epochs:g})")
  if dtype_policy and dtype_policy != "float32":
    hint += f", or train in float32 (--dtype_policy={dtype_policy} now)"
  return hint


def weights_finite_fn(variables):
  """A compiled () -> bool: every float variable in `variables` is finite."""
  floats = [v for v in variables if tf.as_dtype(v.dtype).is_floating]

  @tf.function
  def all_finite():
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in floats]))
  return all_finite


def outputs_finite(model, image_size: int) -> bool:
  """Whether `model`'s un-noised logits are finite on fixed images (black, white, noise)."""
  noise = tf.random.stateless_uniform([2, image_size, image_size, 3], [0, 1], 0.0, 255.0)
  images = tf.concat([tf.zeros([1, image_size, image_size, 3]),
                      tf.fill([1, image_size, image_size, 3], 255.0), noise], 0)
  return bool(tf.reduce_all(tf.math.is_finite(tf.cast(model(images, training=False),
                                                      tf.float32))))
