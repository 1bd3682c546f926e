"""The trainer's replica step on one fixed batch, for the XLA and precision tests."""
import types

import numpy as np
import tensorflow as tf

from noisy_student.config import ModelConfig
from noisy_student.train import checkpoints
from noisy_student.train import distribute
from noisy_student.train import ema as ema_lib
from noisy_student.train import schedules
from noisy_student.train import steps

CLASSES = 4


def tiny_model(classes: int = CLASSES, **kwargs):
  """efficientnet-test at 32 px without noise (deterministic), as the trainer builds it."""
  return checkpoints.build_model(ModelConfig(
      "efficientnet-test", classes, input_image_size=32, dropout_rate=0.0,
      stochastic_depth_rate=0.0, **kwargs))


def make_batch(targets_from: str, b: int = 4, u: int = 4, size: int = 32):
  """One replica's batch of the trainer's input for `targets_from` (see train/inputs.py)."""
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32),
           "label": rng.integers(0, CLASSES, b).astype(np.int32)}
  if targets_from != "supervised":
    batch["unlabeled_image"] = rng.uniform(0, 255, (u, size, size, 3)).astype(np.float32)
  if targets_from == "stored":
    batch["probabilities"] = rng.dirichlet(np.ones(CLASSES), u).astype(np.float32)
  if targets_from == "teacher":
    batch["teacher_image"] = rng.uniform(0, 255, (u, size, size, 3)).astype(np.float32)
  return batch


def run_steps(weights, cfg, targets_from: str, jit: bool, num_steps: int = 2, teacher=None,
              policy: str = "float32", learning_rate: float = 0.01,
              batch_size: int = 4, strategy=None, eager: bool = False
              ) -> types.SimpleNamespace:
  """`num_steps` steps of the trainer's replica step (optimizer, EMA, loss scaling under
  mixed_float16 as the trainer sets them) from `weights`, one step per call of the
  trainer's multi-step, under `strategy` (default: the default strategy; with several
  replicas, batch norm is synchronised and each gets its part of the batch).

  Every step sees the same global batch of `batch_size` labeled (and as many
  unlabeled) images. `eager`: the replica step runs eagerly instead (no tracing, for a
  reference of a few steps on the default strategy; multi is then None). Returns
  metrics (a dict per step), state (weights then EMA shadows, numpy), model, ema,
  optimizer, replica_step (uncompiled), compiled (what strategy.run called) and multi.
  """
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = tiny_model(dtype_policy=policy, sync_batch_norm=replicas > 1)
    model.set_weights(weights)
    optimizer = schedules.build_optimizer(cfg, learning_rate,
                                          loss_scale=policy == "mixed_float16")
    optimizer.build(model.trainable_variables)
    ema = ema_lib.WeightEMA(model, 0.99)
  replica_step = steps.make_replica_step(model, optimizer, cfg, targets_from, cfg.weight_decay,
                                         replicas, ema, teacher)
  compiled = distribute.compile_step(replica_step, jit, strategy)
  batch = make_batch(targets_from, batch_size, batch_size)
  if eager:
    multi = None
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    metrics = [{k: float(v) for k, v in replica_step(tensors).items()}
               for _ in range(num_steps)]
  else:
    multi = steps.make_multi_step(strategy, compiled)
    batches = iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch).repeat()))
    metrics = [{k: float(v) for k, v in multi(batches, tf.constant(1))[0].items()}
               for _ in range(num_steps)]
  state = [w.numpy() for w in model.weights] + [s.numpy() for s in ema.shadows]
  return types.SimpleNamespace(metrics=metrics, state=state, model=model, ema=ema,
                               optimizer=optimizer, replica_step=replica_step,
                               compiled=compiled, multi=multi)


def assert_states_close(a_state, b_state, rel: float = 1e-3) -> None:
  """Each tensor as a whole (summation order differs between runs); tensors that hold
  only rounding noise (gradients zero in exact arithmetic) are covered by the absolute
  term, relative to the weights' RMS."""
  scale = np.sqrt(sum(np.sum(np.square(a)) for a in a_state) / sum(a.size for a in a_state))
  for a, b in zip(a_state, b_state):
    assert np.linalg.norm(a - b) <= rel * np.linalg.norm(a) + 1e-4 * scale * np.sqrt(a.size)
