"""LiteRT (TFLite) export, for phones and edge devices: the deployable classifier
(`deploy.py`: uint8 [1, S, S, 3] in, eval preprocessing inside, probabilities out),
converted with `tf.lite.TFLiteConverter` in float32 and, with a representative set,
int8 post-training quantization; run with the LiteRT interpreter from PyPI
(`ai_edge_litert`, the `tflite` extra).

int8 is the converter's integer quantization with float fallback: weights and
activations int8 wherever LiteRT has an int8 kernel, calibrated on the representative
images; the uint8 input and float32 output stay as they are.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from noisy_student import atomic
from noisy_student.export import deploy
from noisy_student.export import versions

FILES = {"float32": "model.tflite", "int8": "model_int8.tflite"}


def convert(model: keras.Model, representative: Optional[np.ndarray] = None) -> bytes:
  """A deployable Keras model -> .tflite bytes at batch 1; int8 when `representative`
  (uint8 [n, S, S, 3] images) is given."""
  size = int(model.input_shape[1])
  with tempfile.TemporaryDirectory() as local:
    # Through a SavedModel (what from_keras_model does, without its printout): from a
    # concrete function, the converter keeps the weights as resource variables, which
    # int8 calibration cannot read (READ_VARIABLE "variable != nullptr").
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: model(x, training=False), input_signature=[
        tf.TensorSpec([1, size, size, 3], tf.uint8, name="images")])
    archive.write_out(local, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(local)
    if representative is not None:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: ([im[None]] for im in representative)
    return converter.convert()


def interpreter_class():
  """LiteRT's Interpreter, or one line saying how to install it."""
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("--export_format=tflite runs the written model with LiteRT: "
                      "pip install 'noisy-student[tflite]' (ai-edge-litert), or set "
                      "--export_check_images=0 to write it unchecked") from e
  return Interpreter


class LiteRTModel:
  """A .tflite classifier (path or bytes) run with the LiteRT interpreter."""

  def __init__(self, model: Union[str, bytes]):
    interpreter = interpreter_class()
    if isinstance(model, str):
      with tf.io.gfile.GFile(model, "rb") as f:
        model = f.read()
    self._interpreter = interpreter(model_content=model)
    self._interpreter.allocate_tensors()
    self._input = self._interpreter.get_input_details()[0]
    self._output = self._interpreter.get_output_details()[0]

  @property
  def input_shape(self):
    return tuple(int(d) for d in self._input["shape"])

  @property
  def input_dtype(self):
    return self._input["dtype"]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """uint8 [n, S, S, 3] -> float32 [n, C], one image per invoke (batch 1 model)."""
    out = []
    for image in images:
      self._interpreter.set_tensor(self._input["index"], image[None])
      self._interpreter.invoke()
      out.append(np.array(self._interpreter.get_tensor(self._output["index"])[0]))
    return np.stack(out) if out else np.zeros([0, int(self._output["shape"][-1])],
                                              np.float32)


def export_tflite(model: keras.Model, export_dir: str, *, class_names: Sequence[str],
                  small_image: bool, representative: Optional[np.ndarray] = None,
                  version: Optional[int] = None,
                  check: Optional[Callable[[Dict[str, str]], Dict]] = None) -> str:
  """Writes `<export_dir>/<version>/model.tflite` (float32), `model_int8.tflite` when
  `representative` images are given, and `class_names.txt`; `check({"float32": path,
  "int8": path})`'s dict goes to `check.json`. Returns the version directory."""
  deployable = deploy.deployable(model, small_image)
  with versions.new_version(export_dir, version) as (tmp_dir, final_dir):
    paths = {}
    for kind, data in [("float32", None), ("int8", representative)]:
      if kind == "int8" and representative is None:
        continue
      paths[kind] = os.path.join(tmp_dir, FILES[kind])
      content = convert(deployable, data)
      atomic.write_with(paths[kind], lambda f, c=content: f.write(c), mode="wb")
    deploy.write_side_files(tmp_dir, class_names)
    if check is not None:
      atomic.write_text(os.path.join(tmp_dir, deploy.CHECK_FILE),
                        json.dumps(check(paths), indent=2, sort_keys=True))
  return final_dir
