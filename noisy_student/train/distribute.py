"""tf.distribute strategy, XLA, precision policy and batch split from a DistributeConfig.

strategy names: "default" (one device, no distribution), "one_device", "mirrored" (all
local GPUs, or all logical CPUs when there is no GPU), "multi_worker" (TF_CONFIG),
"tpu" (TPUClusterResolver from tpu / tpu_zone / gcp_project) and "auto": tpu when
use_tpu or tpu is set, multi_worker when TF_CONFIG names more than one worker, mirrored
when there are several local GPUs, else default.

XLA: every step (train, predict, eval, robustness) is the function `strategy.run` calls;
`compile_step` compiles it with `jit_compile=True` when `resolve_jit_compile` says so
("auto": on for GPUs and TPUs, off on CPUs). `check_step_tensors` holds the inputs (and
outputs) of a step to what a TPU accepts, on every platform, so a violation fails here
and not only after a TPU job has queued.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from noisy_student import config as config_lib
from noisy_student.config import STRATEGIES, DistributeConfig, ModelConfig

JIT_COMPILE = config_lib.JIT_COMPILE_SETTINGS
# dtypes of a step's inputs and outputs: what a TPU's infeed takes (no strings, no int64).
STEP_DTYPES = (tf.float32, tf.bfloat16, tf.int32, tf.bool)

def resolve_strategy_name(cfg: DistributeConfig) -> str:
  """The concrete strategy "auto" stands for on this machine."""
  if cfg.strategy not in STRATEGIES:
    raise ValueError(f"--strategy={cfg.strategy!r} is unknown; use one of {STRATEGIES}.")
  if cfg.strategy != "auto":
    return cfg.strategy
  if cfg.use_tpu or cfg.tpu:
    return "tpu"
  if cfg.multi_worker():
    return "multi_worker"
  if len(tf.config.list_logical_devices("GPU")) > 1:
    return "mirrored"
  return "default"


def _tpu_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
  """Connects to the TPU named by --tpu (or the local one) and initialises it."""
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
      tpu=cfg.tpu or "", zone=cfg.tpu_zone, project=cfg.gcp_project)
  if cfg.tpu not in (None, "", "local"):
    tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def _mirrored_devices() -> Optional[list]:
  """All local GPUs; without GPUs, all logical CPUs (tests split the CPU in two)."""
  if tf.config.list_logical_devices("GPU"):
    return None  # MirroredStrategy's own default: every visible GPU.
  return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(cfg: DistributeConfig) -> tf.distribute.Strategy:
  """DistributeConfig -> a tf.distribute.Strategy (connects to the TPU when asked)."""
  name = resolve_strategy_name(cfg)
  if name == "tpu":
    strategy = _tpu_strategy(cfg)
  elif name == "multi_worker":
    if not os.environ.get("TF_CONFIG"):
      raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                       "(cluster and task of this worker).")
    try:
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
      raise RuntimeError(
          "MultiWorkerMirroredStrategy must be created before any other TensorFlow op "
          "runs: call noisy_student.train.distribute.make_strategy at program start and "
          f"pass it to train(strategy=...). ({e})") from e
  elif name == "mirrored":
    strategy = tf.distribute.MirroredStrategy(devices=_mirrored_devices())
  elif name == "one_device":
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    strategy = tf.distribute.OneDeviceStrategy(device)
  else:
    strategy = tf.distribute.get_strategy()
  logging.info("Strategy %s (%s) with %d replicas.", name, type(strategy).__name__,
               strategy.num_replicas_in_sync)
  return strategy


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy,))


def device_types(strategy: tf.distribute.Strategy) -> set:
  """The device types ("CPU", "GPU", "TPU") the replicas of `strategy` run on here."""
  if is_tpu(strategy):
    return {"TPU"}
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # The default strategy: TensorFlow places ops on a GPU if any.
    return {"GPU" if tf.config.list_logical_devices("GPU") else "CPU"}
  return {tf.DeviceSpec.from_string(d).device_type or "CPU" for d in devices}


def resolve_jit_compile(setting: str, strategy: tf.distribute.Strategy) -> bool:
  """Whether the steps run under `strategy` are compiled by XLA (the one place "auto"
  is decided).

  "auto": on when every replica is a GPU or TPU, off on CPUs, where XLA's kernels are
  slower than TensorFlow's own (the --jit_compile flag's help has the measured ratio).
  "true" / "false" force it; "true" with several CPU replicas is refused: TensorFlow
  compiles a replica step that updates mirrored variables only when every device is a
  GPU (MirroredStrategy._use_merge_call), or on a TPU.
  """
  if setting not in JIT_COMPILE:
    raise ValueError(f"--jit_compile={setting!r} is unknown; use one of {JIT_COMPILE}.")
  types = device_types(strategy)
  if setting == "auto":
    return types <= {"GPU", "TPU"}
  if setting == "false":
    return False
  if strategy.num_replicas_in_sync > 1 and types & {"CPU"}:
    raise ValueError(
        f"--jit_compile=true with {strategy.num_replicas_in_sync} CPU replicas: TensorFlow "
        "compiles a step that updates mirrored variables only on GPUs or TPUs; use "
        "--jit_compile=auto (or false), or one replica (--strategy=default).")
  return True


def compile_step(fn: Callable, jit_compile: bool, strategy: tf.distribute.Strategy
                 ) -> Callable:
  """The function to give `strategy.run`: `fn`, compiled by XLA when `jit_compile`.

  On a TPU, TPUStrategy compiles everything inside `strategy.run` itself, so `fn` is
  returned as it is. The compiled function traces once per input shape: feed it
  static shapes (drop_remainder, padded last batches).
  """
  if not jit_compile or is_tpu(strategy):
    return fn
  return tf.function(fn, jit_compile=True, autograph=False)


def check_step_tensors(element_spec: Any, what: str) -> None:
  """Raises ValueError unless every TensorSpec in `element_spec` (a step's inputs, or
  outputs) is a dense tensor of a TPU dtype (`STEP_DTYPES`) and fully known shape.

  Strings, int64, ragged or sparse tensors, Python objects and unknown dimensions
  fail on a TPU only after the job has queued and loaded its data; checking the
  dataset's element_spec on every platform makes them fail at once, anywhere.
  """
  for path, spec in _flatten_with_paths(element_spec):
    problem = None
    if not isinstance(spec, tf.TensorSpec):
      problem = f"is a {type(spec).__name__}, not a dense tensor"
    elif spec.dtype not in STEP_DTYPES:
      problem = f"has dtype {spec.dtype.name} (a TPU step takes " + ", ".join(
          d.name for d in STEP_DTYPES) + ")"
    elif not spec.shape.is_fully_defined():
      problem = f"has shape {spec.shape} with an unknown dimension (XLA needs static shapes)"
    if problem:
      raise ValueError(f"{what}: {path or 'the element'} {problem}.")


def _flatten_with_paths(structure: Any, prefix: str = ""):
  if isinstance(structure, dict):
    for key in sorted(structure):
      yield from _flatten_with_paths(structure[key], f"{prefix}/{key}" if prefix else key)
  elif isinstance(structure, (tuple, list)):
    for i, item in enumerate(structure):
      yield from _flatten_with_paths(item, f"{prefix}/{i}" if prefix else str(i))
  else:
    yield prefix, structure


def precision_policy(cfg: DistributeConfig, strategy: tf.distribute.Strategy) -> str:
  """"mixed_bfloat16" on TPU (or CPU) with use_bfloat16, "mixed_float16" on GPU with it."""
  if not cfg.use_bfloat16:
    return "float32"
  if is_tpu(strategy) or not tf.config.list_logical_devices("GPU"):
    return "mixed_bfloat16"
  return "mixed_float16"  # GPUs before Ampere have no fast bfloat16; float16 + scaling.


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy,
                      what: str = "train_batch_size") -> int:
  """global_batch / replicas, or a ValueError that says which sizes would divide."""
  replicas = strategy.num_replicas_in_sync
  if global_batch <= 0 or global_batch % replicas:
    fits = replicas * max(1, round(global_batch / replicas))
    raise ValueError(f"--{what}={global_batch} does not split evenly across {replicas} "
                     f"replicas; use a multiple of {replicas}, e.g. {fits}.")
  return global_batch // replicas


def unlabeled_per_replica(per_replica_labeled: int, unlabel_ratio: float) -> int:
  """ceil(unlabel_ratio * B) on each replica, as the original computed it per core."""
  if unlabel_ratio < 0:
    raise ValueError(f"--unlabel_ratio={unlabel_ratio} must be >= 0.")
  return int(math.ceil(unlabel_ratio * per_replica_labeled))


def resolve_model_config(model_cfg: ModelConfig, dist_cfg: DistributeConfig,
                         strategy: tf.distribute.Strategy) -> ModelConfig:
  """Sets sync batch norm (replicas > 1) and the precision policy for this strategy."""
  policy = model_cfg.dtype_policy or precision_policy(dist_cfg, strategy)
  return dataclasses.replace(
      model_cfg, dtype_policy=policy,
      sync_batch_norm=model_cfg.sync_batch_norm or strategy.num_replicas_in_sync > 1)
