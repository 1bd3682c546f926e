"""What a training run leaves in model_dir, and how others load it back.

model_dir/
  build_config.json   ModelConfig (as trained), num_classes, class_names, has_ema:
                      enough for anyone to rebuild the network.
  schedule.json       num_train_images the schedule was built with (kept on resume).
  checkpoint, ckpt-N.* tf.train.Checkpoint of model, optimizer (holds the global step),
                      EMA shadows; the last keep_checkpoint_max are kept.
  final.keras         the inference model with the EMA weights, written at the end.
  train/              TensorBoard summaries.
Every JSON and the .keras file are written to a temporary name and renamed, through
tf.io.gfile, so a killed job never leaves half a file (and gs:// works).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

import efficientnet
import efficientnet.layers  # noqa: F401  Registers StochasticDepth, which .keras files name.
from noisy_student import atomic
from noisy_student.config import ModelConfig
from noisy_student.train import divergence
from noisy_student.train import ema as ema_lib

BUILD_CONFIG = "build_config.json"
SCHEDULE_STATE = "schedule.json"
FINAL_MODEL = "final.keras"


def _join(directory: str, name: str) -> str:
  return f"{directory.rstrip('/')}/{name}"


def write_json_atomic(path: str, payload: Dict[str, Any]) -> None:
  """Writes JSON to `path` atomically."""
  atomic.write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def read_json(path: str) -> Dict[str, Any]:
  try:
    with tf.io.gfile.GFile(path) as f:
      return json.loads(f.read())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); delete it or restore it.") from e


def build_model(model_cfg: ModelConfig, name: Optional[str] = None) -> keras.Model:
  """ModelConfig -> keras.Model through the one EfficientNet builder (Contract 1)."""
  return efficientnet.build_model(
      model_cfg.model_name, model_cfg.num_label_classes,
      image_size=model_cfg.input_image_size, dropout_rate=model_cfg.dropout_rate,
      stochastic_depth_rate=model_cfg.stochastic_depth_rate,
      width_coefficient=model_cfg.width_coefficient,
      depth_coefficient=model_cfg.depth_coefficient, small_image=model_cfg.small_image,
      dtype_policy=model_cfg.dtype_policy, sync_batch_norm=model_cfg.sync_batch_norm,
      name=name)


def write_build_config(model_dir: str, model_cfg: ModelConfig,
                       class_names: Optional[Sequence[str]], has_ema: bool) -> str:
  """Writes model_dir/build_config.json; returns its path."""
  path = _join(model_dir, BUILD_CONFIG)
  write_json_atomic(path, {
      "model": dataclasses.asdict(model_cfg),
      "num_classes": model_cfg.num_label_classes,
      "class_names": list(class_names) if class_names else None,
      "has_ema": has_ema,
  })
  return path


def read_build_config(model_dir: str) -> Dict[str, Any]:
  """model_dir/build_config.json as a dict with "model" turned into a ModelConfig."""
  path = _join(model_dir, BUILD_CONFIG)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} does not exist: {model_dir} is not a model "
                            "directory written by noisy_student.train.")
  payload = read_json(path)
  payload["model"] = ModelConfig(**payload["model"])
  return payload


def schedule_images(model_dir: str, counted: Optional[int]) -> Optional[int]:
  """The num_train_images of an earlier run in model_dir, else `counted` (then saved).

  A resumed run must rebuild the same schedule even if the source grew meanwhile.
  """
  path = _join(model_dir, SCHEDULE_STATE)
  if tf.io.gfile.exists(path):
    saved = int(read_json(path)["num_train_images"])
    if counted is not None and counted != saved:
      logging.warning("%s says num_train_images=%d, the source now has %d; keeping %d so "
                      "the resumed schedule is unchanged.", path, saved, counted, saved)
    return saved
  if counted is not None:
    write_json_atomic(path, {"num_train_images": int(counted)})
  return counted


def make_checkpoint(model: keras.Model, optimizer=None,
                    ema: Optional[ema_lib.WeightEMA] = None) -> tf.train.Checkpoint:
  """The one checkpoint layout: model, optimizer (global step = iterations), ema."""
  parts = {"model": model}
  if optimizer is not None:
    parts["optimizer"] = optimizer
  if ema is not None:
    parts["ema"] = ema
  return tf.train.Checkpoint(**parts)


def resolve_checkpoint(path: str) -> str:
  """A model_dir (-> its latest checkpoint) or a checkpoint prefix -> the prefix."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"No checkpoint in {path} (no 'checkpoint' index file).")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"{path} is neither a model directory nor a checkpoint prefix "
                            "(no .index file).")
  return path


def load_for_inference(path: str, dtype_policy: str = "float32") -> keras.Model:
  """A model_dir, checkpoint prefix or .keras file -> keras.Model with EMA weights.

  The network is rebuilt from build_config.json next to the checkpoint (without
  sync batch norm, float32 unless `dtype_policy` says otherwise); the EMA shadows of
  the checkpoint are swapped in when the run kept an EMA.
  """
  if path.endswith(".keras"):
    divergence.refuse_if_diverged(os.path.dirname(path) or ".")
    return keras.models.load_model(path)
  divergence.refuse_if_diverged(path if tf.io.gfile.isdir(path) else os.path.dirname(path))
  prefix = resolve_checkpoint(path)
  model_dir = path if tf.io.gfile.isdir(path) else os.path.dirname(prefix)
  build = read_build_config(model_dir)
  model_cfg = dataclasses.replace(build["model"], sync_batch_norm=False,
                                  dtype_policy=dtype_policy)
  model = build_model(model_cfg)
  ema = ema_lib.WeightEMA(model, 0.5) if build["has_ema"] else None
  make_checkpoint(model, ema=ema).read(prefix).expect_partial().assert_existing_objects_matched()
  if ema is not None:
    ema.copy_to_model()
  logging.info("Loaded %s (%s EMA weights) from %s.", model_cfg.model_name,
               "with" if ema else "without", prefix)
  return model


def init_from(model: keras.Model, path: str) -> None:
  """Copies the (EMA) weights of another run into `model`; architectures must match."""
  source = load_for_inference(path)
  mine = [tuple(w.shape) for w in model.weights]
  theirs = [tuple(w.shape) for w in source.weights]
  if mine != theirs:
    raise ValueError(f"--init_model_path={path} holds a different network "
                     f"({len(theirs)} weights) than this model ({len(mine)}); initialise "
                     "only from a run of the same model_name and num_label_classes.")
  for var, value in zip(model.weights, source.weights):
    var.assign(tf.cast(value, var.dtype))


def save_final_model(model: keras.Model, model_dir: str) -> str:
  """Saves `model` as model_dir/final.keras atomically (local temp file, then copy+rename)."""
  path = _join(model_dir, FINAL_MODEL)
  with tempfile.TemporaryDirectory() as tmp_dir:
    local = os.path.join(tmp_dir, FINAL_MODEL)
    model.save(local)
    return atomic.copy_file(local, path)
