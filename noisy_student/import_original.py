"""An original TF1 EfficientNet checkpoint -> a model directory of this project (the
library of `efficientnet-import`, noisy_student/import_main.py).

    DIR/
      build_config.json   the network (ModelConfig), its class names, has_ema false
      checkpoint, ckpt-0.* tf.train.Checkpoint of the model, holding the weights read
                          (the EMA shadows unless --no_ema)
      import.json         what was read: source checkpoint, scope, EMA, the leftovers

That is the layout a training run leaves (noisy_student/train/checkpoints.py), so every
reader of a trained model takes it unchanged: `--mode=eval` / `--mode=export` with
`--model_dir=DIR`, `--mode=predict --predict_ckpt_path=DIR` (the model as a teacher),
`--teacher_model_path=DIR` (on the fly) and `--init_model_path=DIR` (fine-tuning).
"""
from __future__ import annotations

import json
import re
from typing import List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

import efficientnet
from efficientnet import original_checkpoint
from noisy_student import faults
from noisy_student.config import ModelConfig
from noisy_student.config import normalize_model_name
from noisy_student.results import TrainedModel
from noisy_student.train import checkpoints

IMPORT_REPORT = "import.json"
IMAGENET_CLASSES = 1000


def read_class_names(path: str) -> List[str]:
  """Class names from a file, indexed by label: tensorflow/tpu's labels_map.json
  ({"0": "tench, Tinca tinca", ...}), a JSON list, or one name per line."""
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  if path.endswith(".json"):
    try:
      payload = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"--class_names_file={path} is not valid JSON ({e})") from None
    if isinstance(payload, dict):
      try:
        keys = sorted(payload, key=int)
      except ValueError:
        raise ValueError(f"--class_names_file={path}: keys must be label numbers "
                         "('0', '1', ...), as in tensorflow/tpu's labels_map.json") from None
      if [int(k) for k in keys] != list(range(len(keys))):
        raise ValueError(f"--class_names_file={path}: labels must run 0..{len(keys) - 1}")
      return [str(payload[k]) for k in keys]
    if isinstance(payload, list):
      return [str(n) for n in payload]
    raise ValueError(f"--class_names_file={path}: expected a JSON object or list")
  return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> Optional[List[str]]:
  """The 1000 ImageNet synsets in label order, or None if tensorflow-datasets lacks them.

  The original's ImageNet labels 0..999 are the sorted synsets (its TFRecords' 1-based
  labels, minus 1), and so are tensorflow-datasets' imagenet2012 labels, whose file this
  reads: an imported model then evaluates on `tfds:imagenet2012` or a folder of synset
  folders without a class-name mismatch.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    path = tfds.core.tfds_path("datasets/imagenet2012/labels.txt")
    with tf.io.gfile.GFile(str(path)) as f:
      names = [line.strip() for line in f if line.strip()]
  except (ImportError, AttributeError, OSError, tf.errors.OpError) as e:
    logging.warning("No ImageNet class names from tensorflow-datasets (%s); the classes "
                    "are numbered", e)
    return None
  return names if len(names) == IMAGENET_CLASSES else None


def _model_name(info: original_checkpoint.CheckpointInfo, model_name: Optional[str]) -> str:
  if model_name:
    return model_name
  if info.scope in efficientnet.MODEL_NAMES:
    return info.scope
  raise ValueError(f"{info.prefix}: its network is named {info.scope!r}, not one of "
                   f"{', '.join(efficientnet.MODEL_NAMES)}; give --model_name")


def import_original(checkpoint: str, output_dir: str, *, model_name: Optional[str] = None,
                    image_size: Optional[int] = None, ema: bool = True,
                    class_names: Optional[Sequence[str]] = None,
                    scope: Optional[str] = None) -> TrainedModel:
  """Reads an original checkpoint into our model and writes it as a model directory.

  Args:
    checkpoint: a TF1 checkpoint prefix, file or folder (local or gs://).
    output_dir: the model directory to write; must not hold a model yet.
    model_name: efficientnet-b0..b8 / l2; default the checkpoint's own (its scope).
    image_size: the resolution the model is used at (build_config.json); default the
      model's native one (800 for L2: pass 475 for the L2-475 checkpoint).
    ema: read the ExponentialMovingAverage shadows (the published accuracies' weights).
    class_names: one per class of the checkpoint's classifier; default the ImageNet
      synsets for a 1000-class one, else numbers.
    scope: the model scope inside the checkpoint, when it holds several.
  Returns:
    The TrainedModel of `output_dir`.
  Raises:
    FileNotFoundError / ValueError naming the file, variable or value at fault.
  """
  model_name = normalize_model_name(model_name) if model_name else None  # "b0" too.
  build_path = f"{output_dir.rstrip('/')}/{checkpoints.BUILD_CONFIG}"
  if tf.io.gfile.exists(build_path):
    raise ValueError(f"--output={output_dir} already holds a model ({build_path}); "
                     "choose another directory or delete it")
  info = original_checkpoint.inspect_checkpoint(checkpoint, scope=scope, prefer=model_name)
  if info.num_classes is None:
    raise ValueError(f"{info.prefix} has no classifier ({info.scope}/head/dense); a model "
                     "directory needs one")
  if image_size is None and re.search(r"l2[_-]475", info.prefix):
    logging.warning("%s looks like the L2-475 checkpoint, published at 475 px; this "
                    "imports it at %d px unless --image_size=475", info.prefix,
                    efficientnet.native_resolution("efficientnet-l2"))
  model_cfg = ModelConfig(model_name=_model_name(info, model_name),
                          num_label_classes=info.num_classes, input_image_size=image_size)
  names = _class_names(class_names, info.num_classes)
  model = checkpoints.build_model(model_cfg)
  _check_space(output_dir, model)
  report = efficientnet.load_original_checkpoint(model, info.prefix, ema=ema,
                                                 scope=info.scope)
  ckpt = checkpoints.make_checkpoint(model)
  saved = tf.train.CheckpointManager(ckpt, output_dir, max_to_keep=1).save(
      checkpoint_number=0)
  checkpoints.write_json_atomic(f"{output_dir.rstrip('/')}/{IMPORT_REPORT}", {
      "source": info.prefix, "report": report.to_json(),
      "input_mean_rgb": list(original_checkpoint.MEAN_RGB),
      "input_stddev_rgb": list(original_checkpoint.STDDEV_RGB)})
  # Last: a directory with build_config.json is a finished model for every reader.
  checkpoints.write_build_config(output_dir, model_cfg, names, has_ema=False)
  size = image_size or efficientnet.native_resolution(model_cfg.model_name)
  logging.info("Wrote %s (%s at %d px, %d classes) to %s.", saved, model_cfg.model_name,
               size, info.num_classes, output_dir)
  return TrainedModel(path=output_dir.rstrip("/"), model_name=model_cfg.model_name,
                      image_size=size, small_image=False)


def _check_space(output_dir: str, model) -> None:
  """Refuses before reading when the weights cannot be written (L2: 1.9 GB)."""
  needed = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in model.weights)
  free = faults.free_bytes(output_dir)
  if free is not None and free < needed + (16 << 20):  # The weights plus the index.
    raise faults.DiskFull(
        f"--output={output_dir}: the weights need about {faults.human_bytes(needed)}, "
        f"{faults.human_bytes(free)} free there; free space or choose another --output")


def _class_names(given: Optional[Sequence[str]], num_classes: int) -> Optional[List[str]]:
  if given is not None:
    if len(given) != num_classes:
      raise ValueError(f"--class_names_file has {len(given)} names, the checkpoint's "
                       f"classifier {num_classes} classes")
    return list(given)
  return imagenet_class_names() if num_classes == IMAGENET_CLASSES else None
