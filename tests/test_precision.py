"""Mixed precision: mixed_bfloat16 (TPU) and mixed_float16 with loss scaling (GPU) train
steps, run on CPU: logits, losses, EMA and batch-norm statistics stay float32, and a
short run's losses track float32's."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from _steps import make_batch, run_steps, tiny_model
from _train_worker import make_records
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.train import train

pytestmark = pytest.mark.accelerator

CFG = TrainConfig(unlabel_ratio=1.0, weight_decay=1e-4, optimizer="sgd")
RUN = dict(num_steps=20, batch_size=16, learning_rate=0.002)  # 16 + 16 images per step.
# Relative differences from float32 that the tests allow: (first step's loss, from the
# same weights; mean loss of the last 5 of 20 steps). Measured: bfloat16 (8 significant
# bits, epsilon 0.8%) 0.16% and 0.6%; float16 (11 bits, epsilon 0.1%) 0.002% and 0.3% on
# one CPU, 0.11% on the first step on another whose oneDNN has no float16 kernels (the
# log says it falls back to Eigen's): the first step is allowed 3 float16 epsilons. Per
# step, the runs part ways early (up to 25% at step 3 in bfloat16: from a random start,
# the loss falls fast and small differences grow) and join again as the loss flattens.
TOLERANCE = {"mixed_bfloat16": (1e-2, 3e-2), "mixed_float16": (3e-3, 3e-2)}


def assert_tracks_float32(run, reference, policy):
  losses = np.array([m["loss"] for m in run.metrics])
  expected = np.array([m["loss"] for m in reference.metrics])
  assert np.all(np.isfinite(losses))
  first, last = TOLERANCE[policy]
  assert losses[0] == pytest.approx(expected[0], rel=first)
  assert losses[-5:].mean() == pytest.approx(expected[-5:].mean(), rel=last)
  assert losses[-5:].mean() < 0.5 * losses[0]  # It trained.


@pytest.fixture(scope="module")
def float32_run():
  keras.utils.set_random_seed(0)
  weights = tiny_model().get_weights()
  return weights, run_steps(weights, CFG, "stored", False, **RUN)


@pytest.mark.parametrize("policy", [
    "mixed_bfloat16",
    # The GPU's policy: benchmarks/device_check.sh runs it on GPUs, CI with -m slow.
    pytest.param("mixed_float16", marks=pytest.mark.slow)])
def test_mixed_step_keeps_float32_state_and_tracks_float32(policy, float32_run):
  weights, reference = float32_run
  run = run_steps(weights, CFG, "stored", False, policy=policy, **RUN)
  compute = policy.split("_")[1]
  assert run.model.get_layer("stem_conv").compute_dtype == compute
  assert isinstance(run.optimizer, keras.optimizers.LossScaleOptimizer) == (
      policy == "mixed_float16")
  # Skipped float16 updates (overflowing scaled gradients) still count as steps.
  assert int(run.optimizer.iterations) == RUN["num_steps"]
  # Logits and every loss part are float32; weights, batch-norm statistics and the EMA
  # shadows are float32 variables.
  batch = make_batch("stored")
  assert run.model(batch["image"], training=False).dtype == tf.float32
  parts = run.replica_step({k: tf.constant(v) for k, v in batch.items()})
  assert {v.dtype for v in parts.values()} == {tf.float32}
  stats = [v for v in run.model.weights if "moving_" in v.path]
  assert stats and all(v.dtype == "float32" for v in run.model.weights)
  assert all(s.dtype == tf.float32 for s in run.ema.shadows)
  assert len(run.ema.shadows) == len(run.model.trainable_weights) + len(stats)
  assert_tracks_float32(run, reference, policy)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_step_compiles_under_xla(policy, float32_run):
  weights, reference = float32_run
  assert_tracks_float32(run_steps(weights, CFG, "stored", True, policy=policy, **RUN),
                        reference, policy)


@pytest.mark.slow
def test_trainer_picks_loss_scaling_for_float16_and_trains(tmp_path):
  """train() end to end under mixed_float16: loss scaling on, the global step counts
  every step (the first ones overflow and are skipped), losses finite."""
  model = ModelConfig("efficientnet-test", 4, input_image_size=32, small_image=True,
                      dtype_policy="mixed_float16")
  cfg = TrainConfig(model_dir=str(tmp_path), train_batch_size=8, train_steps=4,
                    unlabel_ratio=1.0, save_checkpoints_steps=4, iterations_per_loop=2,
                    log_every_n_steps=2, warmup_epochs=0.0)
  result = train(model, DataConfig(augment_name=None, shuffle_buffer=16), cfg,
                 DistributeConfig("default"), labeled_source=make_records(32),
                 pseudo_labels=make_records(32, seed=1, probabilities=True))
  assert result.global_step == 4 and np.isfinite(result.metrics["loss"])
  reader = tf.train.load_checkpoint(result.checkpoint_path)
  # The checkpoint holds the loss scale's variables: the optimizer was wrapped.
  assert any("scale" in name for name in reader.get_variable_to_shape_map())
