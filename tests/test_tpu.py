"""The TPU path, as far as a CPU allows: what reaches a step, per-host input, the
--use_tpu flags and the TPUClusterResolver call (mocked), and the whole train loop
under a strategy with XLA on."""
import keras
import numpy as np
import pytest
import tensorflow as tf

import flags
from noisy_student import checks
from _train_worker import make_records
from absl import flags as absl_flags
from noisy_student import evaluate
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.train import distribute
from noisy_student.train import inputs
from noisy_student.train import steps as steps_lib
from noisy_student.train import train

pytestmark = pytest.mark.accelerator

DATA = DataConfig(augment_name="v1", randaug_mag=5, shuffle_buffer=16)
PLAIN = DataConfig(augment_name=None, shuffle_buffer=16)  # Same contract, less work.


@pytest.mark.parametrize("targets", [inputs.SUPERVISED, inputs.STORED, inputs.TEACHER])
def test_each_host_feeds_its_replicas_static_numeric_batches(targets):
  """Raw records (strings, int64) become per-replica batches of float32 / int32 with
  static shapes, each input pipeline (a TPU host) reading its own part."""
  spec = inputs.InputSpec(targets, 2, 0 if targets == inputs.SUPERVISED else 4, 32,
                          24 if targets == inputs.TEACHER else None, 4, small_image=True)
  pseudo = make_records(16, seed=1, probabilities=targets == inputs.STORED)
  dataset_fn = inputs.make_dataset_fn(make_records(16), pseudo, PLAIN, spec, 0)
  labels = []
  for host in range(2):  # 2 hosts, 4 replicas in all.
    ds = dataset_fn(tf.distribute.InputContext(2, host, 4))
    expected = {"image": ([2, 32, 32, 3], tf.float32), "label": ([2], tf.int32)}
    if targets != inputs.SUPERVISED:
      expected["unlabeled_image"] = ([4, 32, 32, 3], tf.float32)
    if targets == inputs.STORED:
      expected["probabilities"] = ([4, 4], tf.float32)
    if targets == inputs.TEACHER:
      expected["teacher_image"] = ([4, 24, 24, 3], tf.float32)
    assert {k: (v.shape.as_list(), v.dtype) for k, v in ds.element_spec.items()} == expected
    labels.append({int(y) for b in ds.take(3) for y in b["label"]})
  # make_records labels record i with i % 4; host h reads records h, h + 2, ...
  assert labels == [{0, 2}, {1, 3}]


def test_step_inputs_a_tpu_cannot_take_fail_everywhere():
  check = distribute.check_step_tensors
  check({"image": tf.TensorSpec([2, 8, 8, 3], tf.float32),
         "label": tf.TensorSpec([2], tf.int32)}, "ok")
  with pytest.raises(ValueError, match="the input: id has dtype string"):
    check({"id": tf.TensorSpec([2], tf.string)}, "the input")
  with pytest.raises(ValueError, match="x: label has dtype int64"):
    check({"label": tf.TensorSpec([2], tf.int64)}, "x")
  with pytest.raises(ValueError, match=r"x: 0 has shape \(None, 8\) with an unknown"):
    check((tf.TensorSpec([None, 8], tf.float32),), "x")
  with pytest.raises(ValueError, match="x: r is a RaggedTensorSpec"):
    check({"r": tf.RaggedTensorSpec([2, None], tf.float32)}, "x")


def test_a_summed_step_returning_int64_fails_everywhere():
  strategy = tf.distribute.get_strategy()
  run = evaluate.summed_step(
      lambda images, labels, valid: {"n": tf.reduce_sum(tf.cast(valid, tf.int64))}, strategy)
  ds = tf.data.Dataset.from_tensor_slices((tf.zeros([3, 2, 2, 3]), tf.zeros([3], tf.int64)))
  with pytest.raises(ValueError, match="a summed step's outputs: n has dtype int64"):
    evaluate.sum_over_dataset(run, ds.batch(2), strategy)


@pytest.fixture
def fake_tpu(monkeypatch):
  """TPUClusterResolver, cluster connection, TPU initialisation and TPUStrategy
  replaced by recorders."""
  calls = {}

  class Resolver:
    def __init__(self, tpu, zone, project):
      calls["resolver"] = (tpu, zone, project)

  class TPUStrategy:
    num_replicas_in_sync = 8

    def __init__(self, resolver):
      self.resolver = resolver

  monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", Resolver)
  monkeypatch.setattr(tf.config, "experimental_connect_to_cluster",
                      lambda resolver: calls.setdefault("connected", resolver))
  monkeypatch.setattr(tf.tpu.experimental, "initialize_tpu_system",
                      lambda resolver: calls.setdefault("initialised", resolver))
  monkeypatch.setattr(tf.distribute, "TPUStrategy", TPUStrategy)
  return calls


def _config(*argv):
  fv = absl_flags.FlagValues()
  flags.define_all(fv)
  fv(["prog", *argv])
  return flags.to_config(fv)


def test_use_tpu_flags_build_a_tpu_strategy(fake_tpu):
  cfg = _config("--use_tpu", "--tpu=my-tpu", "--tpu_zone=us-central1-b",
                "--gcp_project=proj", "--use_bfloat16", "--model_dir=gs://b/run")
  assert checks.problems(cfg) == []
  assert distribute.resolve_strategy_name(cfg.distribute) == "tpu"
  strategy = distribute.make_strategy(cfg.distribute)
  assert isinstance(strategy, tf.distribute.TPUStrategy)
  assert fake_tpu["resolver"] == ("my-tpu", "us-central1-b", "proj")
  assert fake_tpu["connected"] is strategy.resolver is fake_tpu["initialised"]
  # On a TPU: XLA on (TPUStrategy compiles the step itself), bfloat16.
  assert distribute.resolve_jit_compile("auto", strategy)
  step = lambda batch: batch  # noqa: E731
  assert distribute.compile_step(step, True, strategy) is step
  assert distribute.precision_policy(cfg.distribute, strategy) == "mixed_bfloat16"
  resolved = distribute.resolve_model_config(cfg.model, cfg.distribute, strategy)
  assert resolved.dtype_policy == "mixed_bfloat16"


def test_tpu_vm_needs_no_cluster_connection(fake_tpu):
  distribute.make_strategy(DistributeConfig(use_tpu=True, tpu="local"))
  assert fake_tpu["resolver"][0] == "local" and "connected" not in fake_tpu
  assert "initialised" in fake_tpu


def _capture_steps(monkeypatch):
  """Records (compiled replica step, multi-step) of every train() call."""
  made, real = [], steps_lib.make_multi_step

  def make_multi_step(strategy, replica_step):
    made.append((replica_step, real(strategy, replica_step)))
    return made[-1][1]
  monkeypatch.setattr(steps_lib, "make_multi_step", make_multi_step)
  return made


@pytest.mark.slow
def test_train_loop_end_to_end_with_xla_under_a_strategy(tmp_path, monkeypatch):
  """A student (stored pseudo-labels, RandAugment, noise, RMSProp, EMA) trained under
  OneDeviceStrategy with XLA: 20 labeled images in batches of 8, so the input crosses
  epoch boundaries mid-batch; calls of 3 and then 2 steps. Nothing retraces."""
  made = _capture_steps(monkeypatch)
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  distributed = []
  real_distribute = strategy.distribute_datasets_from_function
  monkeypatch.setattr(strategy, "distribute_datasets_from_function",
                      lambda fn, *a, **k: distributed.append(fn) or real_distribute(fn, *a, **k))
  keras.utils.set_random_seed(0)
  model = ModelConfig("efficientnet-test", 4, input_image_size=32, small_image=True)
  cfg = TrainConfig(model_dir=str(tmp_path), train_batch_size=8, train_steps=8,
                    unlabel_ratio=1.0, iterations_per_loop=3, save_checkpoints_steps=8,
                    log_every_n_steps=3, warmup_epochs=0.0, moving_average_decay=0.99)
  result = train(model, DATA, cfg, DistributeConfig("one_device", jit_compile="true"),
                 labeled_source=make_records(20),
                 pseudo_labels=make_records(12, seed=1, probabilities=True),
                 strategy=strategy)
  assert result.jit_compile and result.global_step == 8 and result.targets == "stored"
  assert np.isfinite(result.metrics["loss"]) and result.final_model_path
  assert len(distributed) == 1  # Per-host input (distribute_datasets_from_function).
  (replica_step, multi_step), = made
  assert replica_step.experimental_get_tracing_count() == 1
  assert multi_step.experimental_get_tracing_count() == 1
