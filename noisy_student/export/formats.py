"""`--export_format`: one trained classifier -> the SavedModel, `.keras` or LiteRT export,
each run on real images before it is published (check.py).

Called by the pipeline's export phase and `--mode=export` with the model loaded with its
EMA weights; the check images come from the eval source, LiteRT's int8 calibration
images from the labeled one.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

from absl import logging
import keras

from noisy_student.config import ExportConfig
from noisy_student.data import preprocess
from noisy_student.data.source import Source
from noisy_student.export import check as check_lib
from noisy_student.export import deploy
from noisy_student.export import saved_model
from noisy_student.export import tflite
from noisy_student.results import Exported

DEFAULT_DIRS = {"saved_model": "export", "keras": "export-keras", "tflite": "export-tflite"}
CALIBRATION_SEED = 0


def needs_labeled_images(cfg: ExportConfig) -> bool:
  """Whether the export reads the labeled source (LiteRT int8 calibration)."""
  return cfg.export_format == "tflite" and cfg.tflite_int8


def export(model: keras.Model, cfg: ExportConfig, export_dir: str, *,
           class_names: Sequence[str], small_image: bool,
           eval_source: Optional[Source] = None,
           label_source: Optional[Source] = None,
           version: Optional[int] = None) -> Exported:
  """Writes `model` as `cfg.export_format` to `<export_dir>/<version>/`, checked on
  `cfg.check_images` images of `eval_source` (none: unchecked)."""
  size = int(model.input_shape[1])
  preprocess_fn = lambda image: preprocess.preprocess_eval(image, size, small_image)
  images = None
  if cfg.check_images and eval_source is not None:
    images = check_lib.load_images(eval_source, cfg.check_images, class_names)
    if not len(images):
      logging.warning("Export check: no decodable image in %s; unchecked.",
                      eval_source.spec)
      images = None
  measured = {}

  def checked(measure):  # Records what the check measured; None when nothing to check.
    return None if images is None else lambda arg: measured.update(measure(arg)) or measured

  fmt, common = cfg.export_format, dict(class_names=class_names, version=version)
  if fmt == "saved_model":
    path = saved_model.export_saved_model(
        model, export_dir, preprocess_fn=preprocess_fn, top_k=cfg.top_k, **common,
        check=checked(lambda p: check_lib.check_saved_model(
            p, model, preprocess_fn, images, saved_model.SIGNATURE_BYTES)))
  elif fmt == "keras":
    path = deploy.export_keras(
        model, export_dir, small_image=small_image, **common,
        check=checked(lambda p: check_lib.check_deployable(
            keras.models.load_model(p), model, preprocess_fn, images, size)))
  elif fmt == "tflite":
    path = tflite.export_tflite(
        model, export_dir, small_image=small_image, **common,
        representative=_calibration(cfg, label_source, class_names, size),
        check=checked(lambda paths: {kind: check_lib.check_deployable(
            tflite.LiteRTModel(p), model, preprocess_fn, images, size)
                                     for kind, p in paths.items()}))
  else:
    raise ValueError(f"--export_format={fmt}: unknown; known: {', '.join(DEFAULT_DIRS)}")
  _log(fmt, path, measured)
  return Exported(export_path=path, export_format=fmt, check=measured)


def _calibration(cfg: ExportConfig, label_source: Optional[Source],
                 class_names: Sequence[str], size: int):
  """uint8 [n, S, S, 3] int8 calibration images from the labeled data, or None."""
  if not cfg.tflite_int8:
    return None
  if label_source is None:
    raise ValueError("--tflite_int8 calibrates on the labeled data: none was given")
  return check_lib.load_images(label_source, cfg.calibration_images, class_names,
                               shuffle_seed=CALIBRATION_SEED).at_size(size)


def _log(fmt: str, path: str, result: Dict) -> None:
  parts = result.items() if fmt == "tflite" else [(fmt, result)]
  for kind, r in parts:
    if r:
      logging.info("Export check %s (%s): top-1 agreement with Keras %.4f on %d images "
                   "of %s, max |dp| %.2g%s", kind, path, r["top1_agreement"], r["images"],
                   r["source"], r["max_probability_difference"],
                   f", top-1 {r['top1']:.4f} (Keras {r['keras_top1']:.4f})"
                   if "top1" in r else "")
