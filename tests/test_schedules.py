"""Learning-rate schedules at known steps and the optimizer choices."""
import math

import keras
import numpy as np
import pytest

from noisy_student.config import TrainConfig
from noisy_student.train import schedules


def _lr(schedule, step):
  return float(schedule(step))


def test_original_schedule_warmup_and_staircase():
  # 1280 images, batch 128 -> 10 steps per epoch; scaled lr = 0.016 * 128 / 256 = 0.008.
  cfg = TrainConfig(train_batch_size=128, train_steps=500, warmup_epochs=5,
                    lr_decay_epochs=2.4, lr_decay_factor=0.97)
  s = schedules.build_schedule(cfg, 1280)
  assert math.isclose(_lr(s, 0), 0.0, abs_tol=1e-12)
  assert math.isclose(_lr(s, 25), 0.008 * 25 / 50, rel_tol=1e-6)  # Warm-up: 50 steps.
  # After warm-up the staircase counts from step 0: decay every 24 steps.
  assert math.isclose(_lr(s, 50), 0.008 * 0.97 ** 2, rel_tol=1e-6)
  assert math.isclose(_lr(s, 71), 0.008 * 0.97 ** 2, rel_tol=1e-6)
  assert math.isclose(_lr(s, 72), 0.008 * 0.97 ** 3, rel_tol=1e-6)
  assert math.isclose(_lr(s, 499), 0.008 * 0.97 ** 20, rel_tol=1e-6)


def test_final_base_lr_stretches_the_stairs_like_the_original():
  cfg = TrainConfig(train_batch_size=256, train_steps=1000, warmup_epochs=5,
                    base_learning_rate=0.016, final_base_lr=0.0002)
  # 2560 images -> 10 steps/epoch, 100 epochs; (100 - 5) / (log(1/80) / log(0.97)).
  decay_epochs = 95 / (math.log(0.0002 / 0.016) / math.log(0.97))
  assert math.isclose(schedules.final_lr_decay_epochs(cfg, 2560), decay_epochs)
  s = schedules.build_schedule(cfg, 2560)
  stairs = math.floor(999 / int(decay_epochs * 10))
  assert math.isclose(_lr(s, 999), 0.016 * 0.97 ** stairs, rel_tol=1e-5)
  # The stairs count from step 0 (warm-up included), as the original's, so the last
  # rate undershoots final_base_lr by the warm-up's share: 0.97^(100/0.656) ~ 0.5x.
  assert 0.0001 < _lr(s, 999) < 0.0002


def test_cosine_with_warmup():
  cfg = TrainConfig(train_batch_size=256, train_steps=110, warmup_epochs=1,
                    lr_schedule="cosine", base_learning_rate=0.1)
  s = schedules.build_schedule(cfg, 2560)  # 10 warm-up steps to 0.1, then 100 cosine.
  assert math.isclose(_lr(s, 5), 0.05, rel_tol=1e-5)
  assert math.isclose(_lr(s, 10), 0.1, rel_tol=1e-5)
  assert math.isclose(_lr(s, 60), 0.05, rel_tol=1e-4)
  assert _lr(s, 110) < 1e-6


@pytest.mark.parametrize("labeled, batch, epochs, ratio, steps", [
    (100, 32, 160, 1.0, 500),    # The demo: 160 epochs of digits' 100 labeled images.
    (600, 32, 160, 1.0, 3000),   # The same epochs of 600 images: 6x the steps.
    (1281167, 4096, 350, 1.0, 109474),  # The original's default: 350 ImageNet epochs.
    (1281167, 4096, 350, 2.0, 218948),  # Its B0-B4 students: --train_ratio=2.
    (10, 4, 1, 1.0, 2),          # Truncated, as the original's int().
    (10, 4, 0.1, 1.0, 1),        # At least one step.
])
def test_length_in_epochs(labeled, batch, epochs, ratio, steps):
  cfg = TrainConfig(train_batch_size=batch, train_epochs=epochs, train_ratio=ratio)
  assert schedules.total_steps(cfg, labeled) == steps
  assert f"{steps} steps" in schedules.describe_length(cfg, labeled)


def test_explicit_steps_override_epochs_and_train_ratio_scales_them():
  cfg = TrainConfig(train_batch_size=32, train_epochs=160, train_steps=777)
  assert schedules.total_steps(cfg, 600) == 777
  # The original truncates: int(train_steps * train_ratio) (main.py:707-709).
  cfg = TrainConfig(train_batch_size=32, train_steps=777, train_ratio=1.5)
  assert schedules.total_steps(cfg, 600) == 1165


def test_train_ratio_stretches_the_stairs_like_the_original():
  # 1280 images at batch 128: 10 steps per epoch; decay every 2.4 x 2 = 4.8 epochs.
  cfg = TrainConfig(train_batch_size=128, train_epochs=100, warmup_epochs=0,
                    train_ratio=2.0)
  s = schedules.build_schedule(cfg, 1280)
  assert math.isclose(_lr(s, 47), 0.008, rel_tol=1e-6)
  assert math.isclose(_lr(s, 48), 0.008 * 0.97, rel_tol=1e-6)
  # final_base_lr counts the stretched length: 200 epochs less 5 warm-up.
  cfg = TrainConfig(train_batch_size=256, train_epochs=100, train_ratio=2.0,
                    final_base_lr=0.0002)
  decay_epochs = 195 / (math.log(0.0002 / 0.016) / math.log(0.97))
  assert math.isclose(schedules.final_lr_decay_epochs(cfg, 2560), decay_epochs)


@pytest.mark.parametrize("name,cls", [("rmsprop", keras.optimizers.RMSprop),
                                      ("sgd", keras.optimizers.SGD),
                                      ("adamw", keras.optimizers.AdamW)])
def test_optimizers_by_flag(name, cls):
  cfg = TrainConfig(optimizer=name, weight_decay=1e-4)
  opt = schedules.build_optimizer(cfg, 0.1)
  assert isinstance(opt, cls)
  if name == "rmsprop":
    assert (opt.rho, opt.momentum, opt.epsilon) == (0.9, 0.9, 1e-3)
  # The L2 term lives in the loss except for AdamW's decoupled decay.
  assert schedules.loss_weight_decay(cfg) == (0.0 if name == "adamw" else 1e-4)


def test_loss_scale_wrapper_and_unknown_names():
  opt = schedules.build_optimizer(TrainConfig(), 0.1, loss_scale=True)
  assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
  with pytest.raises(ValueError, match="optimizer='adam'"):
    schedules.build_optimizer(TrainConfig(optimizer="adam"), 0.1)
  with pytest.raises(ValueError, match="lr_schedule='linear'"):
    schedules.build_schedule(TrainConfig(lr_schedule="linear"), 1000)
  with pytest.raises(ValueError, match="num_train_images=0"):
    schedules.build_schedule(TrainConfig(), 0)


def test_schedule_round_trips_keras_serialization():
  s = schedules.WarmupStaircaseDecay(0.1, 10, 5, 0.5)
  again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
  np.testing.assert_allclose([_lr(again, t) for t in (3, 12, 17)],
                             [_lr(s, t) for t in (3, 12, 17)])
