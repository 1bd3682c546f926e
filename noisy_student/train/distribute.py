"""tf.distribute strategy, precision policy and batch split from a DistributeConfig.

strategy names: "default" (one device, no distribution), "one_device", "mirrored" (all
local GPUs, or all logical CPUs when there is no GPU), "multi_worker" (TF_CONFIG),
"tpu" (TPUClusterResolver from tpu / tpu_zone / gcp_project) and "auto": tpu when
use_tpu or tpu is set, multi_worker when TF_CONFIG names more than one worker, mirrored
when there are several local GPUs, else default.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

from absl import logging
import tensorflow as tf

from noisy_student.config import STRATEGIES, DistributeConfig, ModelConfig

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
