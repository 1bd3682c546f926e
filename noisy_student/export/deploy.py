"""The deployable classifier of the `.keras` and LiteRT exports: uint8 images in,
probabilities out, the eval preprocessing inside, built only from Keras layers.

Input: uint8 `[batch, S, S, 3]`, a decoded image already resized to the model's side S
(what a phone's camera pipeline hands over). Inside: the original's eval crop (centre
S/(S+32); none on the 32-pixel path), the bicubic resize back to S written as matrix
products (`efficientnet.LinearResize`, so LiteRT needs no bicubic kernel), the clip to
0..255, the classifier (its weights as they are: load it with EMA weights) and a softmax.
Output: float32 `[batch, C]` probabilities. On an S x S image it computes what
`preprocess.preprocess_eval` and the classifier compute, to float rounding (tested).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Callable, Dict, Optional, Sequence

import keras

import efficientnet.layers as efficientnet_layers
from noisy_student import atomic
from noisy_student.data import preprocess
from noisy_student.export import versions

KERAS_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.txt"
CHECK_FILE = "check.json"


def deployable(model: keras.Model, small_image: bool) -> keras.Model:
  """`model` (float32 [b, S, S, 3] 0..255 -> logits) wrapped as described above."""
  size = int(model.input_shape[1])
  if small_image:  # The 32-pixel path resizes without cropping.
    top, left, crop = 0, 0, size
  else:
    top, left, crop = (int(v) for v in preprocess.center_crop_window(size, size, size))
  images = keras.Input([size, size, 3], dtype="uint8", name="images")
  x = keras.layers.Cropping2D(((top, size - top - crop), (left, size - left - crop)),
                              name="eval_crop")(images)
  x = efficientnet_layers.LinearResize(size, preprocess.EVAL_RESIZE_METHOD,
                                       name="eval_resize")(x)
  x = keras.layers.ReLU(max_value=255.0, name="eval_clip")(x)  # Bicubic overshoots.
  probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model(x))
  return keras.Model(images, probabilities, name=f"{model.name}_deployable")


def write_side_files(directory: str, class_names: Sequence[str]) -> None:
  atomic.write_text(os.path.join(directory, CLASS_NAMES_FILE),
                    "\n".join(class_names) + "\n")


def export_keras(model: keras.Model, export_dir: str, *, class_names: Sequence[str],
                 small_image: bool, version: Optional[int] = None,
                 check: Optional[Callable[[str], Dict]] = None) -> str:
  """Writes `<export_dir>/<version>/model.keras` (the deployable model) and
  `class_names.txt`; `check(path of model.keras)`'s dict goes to `check.json`.

  `keras.models.load_model` opens the file after `import efficientnet` (which registers
  the custom layers); `get_layer(model.name)` of it is the classifier itself.
  Returns the version directory.
  """
  model_file = deployable(model, small_image)
  with versions.new_version(export_dir, version) as (tmp_dir, final_dir):
    with tempfile.TemporaryDirectory() as local:
      path = os.path.join(local, KERAS_FILE)
      model_file.save(path)
      atomic.copy_file(path, os.path.join(tmp_dir, KERAS_FILE))
    write_side_files(tmp_dir, class_names)
    if check is not None:
      atomic.write_text(os.path.join(tmp_dir, CHECK_FILE),
                        json.dumps(check(os.path.join(tmp_dir, KERAS_FILE)),
                                   indent=2, sort_keys=True))
  return final_dir
