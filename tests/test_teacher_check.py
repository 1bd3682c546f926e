"""The teacher is checked before it teaches: an under-fit teacher warns, a fit one does not."""
import keras
import pytest

from _train_worker import make_records
from noisy_student import teacher_check
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.data import sources
from noisy_student.train import load_for_inference, train

NAMES = ["red", "green", "blue", "yellow"]


def test_diagnose_names_the_flag_to_raise():
  assert teacher_check.diagnose(0.98, 10, 0.01, 160, "--teacher_train_epochs") == []
  chance = teacher_check.diagnose(0.12, 10, None, 3, "--teacher_train_epochs")
  assert len(chance) == 1 and "close to chance" in chance[0]
  assert "raise --teacher_train_epochs (it trained 3 epochs)" in chance[0]
  # The 600-image run of issue 10: 27 epochs, 29% on its own images, still climbing.
  weak = teacher_check.diagnose(0.29, 10, 0.08, 27, "--teacher_train_epochs")
  assert len(weak) == 2 and "under-fits: 29.0%" in weak[0] and "still learning" in weak[1]
  assert teacher_check.diagnose(0.9, 10, 0.08, 50, "--train_steps")[0].startswith(
      "the teacher was still learning: its training accuracy rose 8.0 points")


def test_rise_compares_the_last_tenth_with_the_one_before():
  flat = [(s, 0.9) for s in range(10, 110, 10)]
  assert teacher_check.rise(flat) == pytest.approx(0.0)
  climbing = [(s, s / 100) for s in range(10, 110, 10)]  # Step 100: 1.0, step 90: 0.9.
  assert teacher_check.rise(climbing) == pytest.approx(0.1)
  assert teacher_check.rise(flat[:3]) is None


def _teacher(model_dir, steps, lr):
  keras.utils.set_random_seed(0)
  records = make_records(128)
  source = sources.Source(spec="colours", labeled=True, class_names=NAMES,
                          size=128, _dataset_fn=lambda n, i: records.shard(n, i))
  cfg = TrainConfig(model_dir=str(model_dir), train_batch_size=16, train_steps=steps,
                    save_checkpoints_steps=steps, iterations_per_loop=min(steps, 10),
                    log_every_n_steps=10, warmup_epochs=0.0, base_learning_rate=lr,
                    moving_average_decay=0.9)
  model_cfg = ModelConfig("efficientnet-test", len(NAMES), input_image_size=32,
                          small_image=True)
  train(model_cfg, DataConfig(augment_name=None, shuffle_buffer=64), cfg,
        DistributeConfig(strategy="default"), labeled_source=source)
  return teacher_check.check(
      load_for_inference(str(model_dir)), source, model_dir=str(model_dir),
      image_size=32, small_image=True, batch_size=64, epochs=steps * 16 / 128,
      length_flag="--teacher_train_epochs")


def test_an_under_fit_teacher_warns_and_a_fit_one_does_not(tmp_path):
  weak = _teacher(tmp_path / "weak", steps=2, lr=1e-6)
  assert weak.train_accuracy < 0.5 and weak.train_images == 128
  assert weak.warnings and "--teacher_train_epochs" in weak.warnings[0]
  fit = _teacher(tmp_path / "fit", steps=80, lr=0.05)
  assert fit.train_accuracy >= 0.9, fit
  assert fit.warnings == [] and fit.rise is not None and fit.rise < 0.05
