"""Strategies: same loss on 1 vs 2 replicas, batch splitting, multi-worker on localhost."""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.config import DistributeConfig, ModelConfig, TrainConfig
from noisy_student.train import checkpoints
from noisy_student.train import distribute
from noisy_student.train import ema as ema_lib
from noisy_student.train import schedules
from noisy_student.train import steps

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")


def _two_cpus():
  cpus = tf.config.list_logical_devices("CPU")
  if len(cpus) < 2:
    pytest.skip("needs the two logical CPUs tests/conftest.py sets up")
  return [d.name for d in cpus[:2]]


def _batch(num_classes=4, b=8, u=8, size=32):
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(num_classes), size=u).astype(np.float32)
  return {"image": rng.uniform(0, 255, (b, size, size, 3)).astype(np.float32),
          "label": rng.integers(0, num_classes, b).astype(np.int32),
          "unlabeled_image": rng.uniform(0, 255, (u, size, size, 3)).astype(np.float32),
          "probabilities": probs}


def _setup(strategy, initial_weights, cfg):
  """Model, optimizer and EMA under `strategy`, from the same initial weights."""
  with strategy.scope():
    # No noise so both runs compute the same function; sync BN makes the batch
    # statistics global, as the trainer sets it for several replicas.
    model = checkpoints.build_model(ModelConfig(
        "efficientnet-test", 4, input_image_size=32, dropout_rate=0.0,
        stochastic_depth_rate=0.0, sync_batch_norm=strategy.num_replicas_in_sync > 1))
    model.set_weights(initial_weights)
    opt = schedules.build_optimizer(cfg, 0.05)
    opt.build(model.trainable_variables)
    ema = ema_lib.WeightEMA(model, 0.99)
  step = steps.make_replica_step(model, opt, cfg, "stored", cfg.weight_decay,
                                 strategy.num_replicas_in_sync, ema)
  return model, ema, step


def test_mirrored_student_computes_the_same_loss_as_one_device():
  devices = _two_cpus()
  batch = _batch()
  # SGD: its update is proportional to the gradient, so a wrongly scaled all-reduce
  # (e.g. a mean where a sum belongs) would show; RMSProp would normalise it away.
  cfg = TrainConfig(unlabel_ratio=1.0, weight_decay=1e-3, optimizer="sgd")
  init = checkpoints.build_model(ModelConfig("efficientnet-test", 4, input_image_size=32))
  weights = init.get_weights()
  # Reference: the replica step run eagerly on one device (no compilation needed).
  model, ema, step = _setup(tf.distribute.get_strategy(), weights, cfg)
  one_loss = [float(step(batch)["loss"]) for _ in range(2)]
  one = [w.numpy() for w in model.weights] + [s.numpy() for s in ema.shadows]
  # The trainer's compiled multi-step over two replicas, each given half the batch.
  mirrored = tf.distribute.MirroredStrategy(devices)
  model, ema, step = _setup(mirrored, weights, cfg)
  multi = steps.make_multi_step(mirrored, step)
  it = iter(mirrored.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(batch).repeat()))
  two_loss = [float(multi(it, tf.constant(1))[0]["loss"]) for _ in range(2)]
  two = [w.numpy() for w in model.weights] + [s.numpy() for s in ema.shadows]
  # Step 1 checks the forward pass and loss; step 2 checks the gradients were
  # aggregated (summed over replicas of loss / replicas) into the same update.
  np.testing.assert_allclose(two_loss, one_loss, rtol=1e-4)
  assert one_loss[0] != one_loss[1]
  scale = np.sqrt(sum(np.sum(np.square(a)) for a in one) / sum(a.size for a in one))
  for a, b in zip(one, two):
    # Summation order differs between the runs; compare each tensor as a whole. Some
    # tensors get a gradient that is zero in exact arithmetic (a batch-norm shift that
    # another batch norm follows), so they hold only rounding noise (~1e-7, which CI saw
    # differ by 1.3e-6 in norm); the absolute term, relative to the weights' RMS, covers
    # them while a wrong all-reduce scale (an error of the update's size) still fails.
    assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(a) + 1e-4 * scale * np.sqrt(a.size)


def test_batch_must_split_across_replicas():
  mirrored = tf.distribute.MirroredStrategy(_two_cpus())
  assert distribute.per_replica_batch(8, mirrored) == 4
  with pytest.raises(ValueError, match="train_batch_size=7 does not split evenly across 2"):
    distribute.per_replica_batch(7, mirrored)
  assert distribute.unlabeled_per_replica(3, 2.5) == 8  # ceil(7.5)


def test_strategy_selection_and_precision():
  assert distribute.resolve_strategy_name(DistributeConfig(strategy="auto")) == "default"
  assert distribute.resolve_strategy_name(DistributeConfig(use_tpu=True)) == "tpu"
  with pytest.raises(ValueError, match="--strategy='gpu' is unknown"):
    distribute.make_strategy(DistributeConfig(strategy="gpu"))
  mirrored = distribute.make_strategy(DistributeConfig(strategy="mirrored"))
  assert mirrored.num_replicas_in_sync == len(tf.config.list_logical_devices("CPU"))
  cfg = distribute.resolve_model_config(ModelConfig(), DistributeConfig(use_bfloat16=True),
                                        mirrored)
  assert cfg.dtype_policy == "mixed_bfloat16"  # No GPU here: bfloat16 on CPU.
  assert cfg.sync_batch_norm == (mirrored.num_replicas_in_sync > 1)


def test_multi_worker_needs_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    distribute.make_strategy(DistributeConfig(strategy="multi_worker"))


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _start_two_workers(model_dir, worker_args):
  """Two training processes on localhost under MultiWorkerMirroredStrategy (TF_CONFIG);
  worker_args(index) -> that worker's extra arguments. Their output is one text pipe."""
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": index}}),
               TF_CPP_MIN_LOG_LEVEL="2")
    procs.append(subprocess.Popen(
        [sys.executable, WORKER, "--model_dir", model_dir, "--strategy", "multi_worker",
         *worker_args(index)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  return procs


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_local_workers(tmp_path):
  model_dir = str(tmp_path / "run")
  procs = _start_two_workers(model_dir, lambda index: [
      "--train_steps", "4", "--save_every", "2",
      "--result", str(tmp_path / f"result{index}.json")])
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(2)]
  assert [r["num_replicas"] for r in results] == [2, 2]
  assert [r["global_step"] for r in results] == [4, 4]
  # Both workers saw the same globally reduced loss; only the chief wrote model_dir.
  assert results[0]["metrics"]["loss"] == pytest.approx(results[1]["metrics"]["loss"])
  assert results[0]["final_model_path"] and not results[1]["final_model_path"]
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
  assert not [n for n in os.listdir(model_dir) if n.startswith(".worker")]


@pytest.mark.slow
def test_sigterm_to_one_worker_makes_every_worker_save_at_the_same_step(tmp_path):
  """Preemption of one machine: the signal is shared (an all-reduce after each loop of
  steps), so both workers take part in the save and stop at the same step."""
  from noisy_student.train import preemption  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path / "run")
  procs = _start_two_workers(model_dir, lambda index: [
      "--train_steps", "60", "--save_every", "60"])
  seen = []
  for line in procs[1].stdout:  # The non-chief worker gets the signal.
    seen.append(line)
    if "step 3/60 " in line:
      break
  procs[1].send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  outputs[1] = "".join(seen) + outputs[1]
  for p, out in zip(procs, outputs):
    assert p.returncode == preemption.EXIT_CODE, out[-3000:]
  stopped_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
  assert 3 <= stopped_at < 60
  for out in outputs:
    assert f"Preempted at step {stopped_at}" in out, out[-3000:]
