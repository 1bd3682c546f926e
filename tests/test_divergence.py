"""Divergence stops training in one line (noisy_student/train/divergence.py): a huge
learning rate on the tiny model, and mixed_float16 loss-scale skips that are not."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from _train_worker import make_records
from noisy_student import faults
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.train import checkpoints
from noisy_student.train import divergence
from noisy_student.train import schedules
from noisy_student.train import train

MODEL = ModelConfig("efficientnet-test", 4, input_image_size=32, small_image=True)
DATA = DataConfig(augment_name=None, shuffle_buffer=64)


def _cfg(model_dir, **kw):
  base = dict(model_dir=str(model_dir), train_batch_size=16, train_steps=12,
              save_checkpoints_steps=4, iterations_per_loop=2, log_every_n_steps=2,
              warmup_epochs=0.0, base_learning_rate=1e6, moving_average_decay=0.99)
  return TrainConfig(**{**base, **kw})


def _train(cfg, model=MODEL):
  return train(model, DATA, cfg, DistributeConfig("default"), labeled_source=make_records(64))


def _all_finite(checkpoint):
  reader = tf.train.load_checkpoint(checkpoint)
  values = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map()]
  return all(np.isfinite(v).all() for v in values
             if isinstance(v, np.ndarray) and v.dtype.kind == "f")


def test_a_huge_learning_rate_stops_at_once_and_nothing_reads_the_model(tmp_path):
  with pytest.raises(faults.Diverged) as e:
    _train(_cfg(tmp_path))
  message = str(e.value)
  assert len(message.splitlines()) == 1 and "diverged at step 2: loss " in message
  assert "above 1000 x the first step's" in message
  assert "lower --base_learning_rate (now 1e+06)" in message
  assert json.load(open(tmp_path / divergence.MARKER))["step"] == 2
  latest = tf.train.latest_checkpoint(str(tmp_path))
  assert latest is None or _all_finite(latest)
  with pytest.raises(faults.Diverged, match="holds a diverged training run"):
    checkpoints.load_for_inference(str(tmp_path))
  # Training again there (with a sane rate) is a new attempt: the record goes.
  result = _train(_cfg(tmp_path, base_learning_rate=0.05, train_steps=4))
  assert result.global_step == 4 and not (tmp_path / divergence.MARKER).exists()
  assert np.isfinite(result.metrics["grad_norm"]) and result.metrics["grad_norm"] > 0


def test_one_huge_step_is_caught_by_the_trained_models_outputs(tmp_path):
  with pytest.raises(faults.Diverged, match="diverged at step 1: the trained model's "
                     "outputs are not finite"):
    _train(_cfg(tmp_path, train_steps=1, iterations_per_loop=1, moving_average_decay=0.0))


def test_mixed_float16_loss_scale_skips_are_not_divergence(tmp_path, monkeypatch):
  # A loss scale near float32's maximum overflows every float16 gradient: each step is a
  # skip (the scale halves), none an update.
  build = schedules.build_optimizer
  monkeypatch.setattr(schedules, "build_optimizer", lambda cfg, schedule, loss_scale=False: (
      keras.optimizers.LossScaleOptimizer(build(cfg, schedule), initial_scale=2.0 ** 126)
      if loss_scale else build(cfg, schedule)))
  model = ModelConfig("efficientnet-test", 4, input_image_size=32, small_image=True,
                      dtype_policy="mixed_float16")
  result = _train(_cfg(tmp_path, train_steps=4, base_learning_rate=0.05), model)
  assert result.global_step == 4 and result.metrics["loss_scale_skips"] == 2
  assert result.metrics["grad_norm"] == 0.0  # No update applied, none counted.
  assert not (tmp_path / divergence.MARKER).exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_naming_the_space(tmp_path, monkeypatch):
  def full(self, checkpoint_number=None):
    os.makedirs(f"{self.directory}/ckpt-{checkpoint_number}_temp")  # As a failed save.
    raise tf.errors.ResourceExhaustedError(
        None, None, f"{self.directory}/ckpt-1_temp/part-0; No space left on device")
  monkeypatch.setattr(tf.train.CheckpointManager, "save", full)
  with pytest.raises(faults.DiskFull) as e:
    _train(_cfg(tmp_path, train_steps=1, iterations_per_loop=1, base_learning_rate=0.05))
  assert str(e.value).startswith(f"no space left on the device writing {tmp_path} (needs "
                                 "about ")
  assert "KB" in str(e.value) and "run the same command again to resume" in str(e.value)
  assert not (tmp_path / "ckpt-1_temp").exists()  # The partial checkpoint is removed.
