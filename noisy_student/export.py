"""SavedModel export for serving (TensorFlow Serving, tf.saved_model.load, Vertex AI).

The export holds the model's EMA weights, the eval preprocessing (pure TF ops, so a server
needs nothing from this package) and the class names, and has two signatures:

* `serving_default(image_bytes: tf.string [batch])`: encoded JPEG / PNG / BMP / GIF bytes,
  as the TPU EfficientNet export takes them.
* `serving_images(images: tf.uint8 [batch, H, W, 3])`: decoded images of any size.

Both return `classes` (int64 [batch]), `probabilities` (float32 [batch, C]),
`class_names` (string [batch, k], best first) and `top_k_probabilities` (float32
[batch, k]). The class names are also written as `assets/class_names.txt`.

The SavedModel goes to `<export_dir>/<version>/`, the layout TF Serving watches; it is
written under a temporary name that Serving ignores and renamed when complete.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Callable, Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

PreprocessFn = Callable[[tf.Tensor], tf.Tensor]  # uint8 [H, W, 3] -> float32 [S, S, 3].

SIGNATURE_BYTES = "serving_default"
SIGNATURE_IMAGES = "serving_images"


class ServingModule(tf.Module):
  """Wraps a Keras classifier with decoding, preprocessing and class names."""

  def __init__(self, model: keras.Model, class_names: Sequence[str],
               preprocess_fn: PreprocessFn, top_k: int = 5):
    super().__init__(name="serving")
    self.model = model
    self._preprocess_fn = preprocess_fn
    self._top_k = min(top_k, len(class_names))
    self.class_names = tf.constant(list(class_names), dtype=tf.string)
    self._image_size = int(model.input_shape[1])

  def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
    # expand_animations=False: a GIF gives its first frame as [H, W, C], like JPEG / PNG.
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])

  def _preprocess(self, image: tf.Tensor) -> tf.Tensor:
    out = tf.cast(self._preprocess_fn(image), tf.float32)
    return tf.ensure_shape(out, [self._image_size, self._image_size, 3])

  def _classify(self, batch: tf.Tensor) -> dict:
    logits = tf.cast(self.model(batch, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    top_p, top_i = tf.math.top_k(probabilities, k=self._top_k)
    return {
        "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64),
        "probabilities": probabilities,
        "class_names": tf.gather(self.class_names, top_i),
        "top_k_probabilities": top_p,
    }

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serve_bytes(self, image_bytes: tf.Tensor) -> dict:
    spec = tf.TensorSpec([self._image_size, self._image_size, 3], tf.float32)
    batch = tf.map_fn(lambda b: self._preprocess(self._decode(b)), image_bytes,
                      fn_output_signature=spec)
    return self._classify(batch)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve_images(self, images: tf.Tensor) -> dict:
    spec = tf.TensorSpec([self._image_size, self._image_size, 3], tf.float32)
    batch = tf.map_fn(self._preprocess, images, fn_output_signature=spec)
    return self._classify(batch)


def next_version(export_dir: str) -> int:
  """The next integer version under `export_dir` (1 when empty), as TF Serving counts."""
  if not tf.io.gfile.isdir(export_dir):
    return 1
  versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir)
              if re.fullmatch(r"\d+/?", n)]
  return max(versions, default=0) + 1


def remove_leftovers(export_dir: str) -> list:
  """Removes the `tmp-<version>-<pid>` folders an interrupted export left in `export_dir`
  (TF Serving skips them, but they pile up); returns their paths. Locally a folder whose
  process still runs is kept; remote ones (gs://) are all removed: the model_dir lock
  (noisy_student/lock.py) keeps a second export of the same run from running."""
  if not tf.io.gfile.isdir(export_dir):
    return []
  removed = []
  for name in tf.io.gfile.listdir(export_dir):
    match = re.fullmatch(r"tmp-\d+-(\d+)/?", name)
    if not match or int(match.group(1)) == os.getpid():
      continue
    if "://" not in export_dir and _pid_alive(int(match.group(1))):
      continue
    path = f"{export_dir.rstrip('/')}/{name.rstrip('/')}"
    tf.io.gfile.rmtree(path)
    logging.info("Removed %s, left by an interrupted export.", path)
    removed.append(path)
  return removed


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def export_saved_model(model: keras.Model, export_dir: str, *,
                       class_names: Sequence[str], preprocess_fn: PreprocessFn,
                       top_k: int = 5, version: Optional[int] = None) -> str:
  """Writes a servable SavedModel of `model` to `<export_dir>/<version>`.

  Args:
    model: a classifier taking float32 [batch, S, S, 3] on the 0..255 scale and returning
      logits; its weights as they are now are exported (load it with EMA weights).
    export_dir: base directory (local or gs://); TF Serving's `--model_base_path`.
    class_names: one name per output logit.
    preprocess_fn: uint8 [H, W, 3] -> float32 [S, S, 3] eval preprocessing (TF ops only).
    top_k: class names returned per image.
    version: integer version; None: one more than the largest there.

  Returns:
    The directory of the written SavedModel.
  """
  num_classes = int(model.output_shape[-1])
  if len(class_names) != num_classes:
    raise ValueError(f"export: {len(class_names)} class names for a model with "
                     f"{num_classes} outputs")
  remove_leftovers(export_dir)
  version = next_version(export_dir) if version is None else version
  final_dir = f"{export_dir.rstrip('/')}/{version}"
  if tf.io.gfile.exists(final_dir):
    raise FileExistsError(f"export: {final_dir} already exists; pick another version")
  tmp_dir = f"{export_dir.rstrip('/')}/tmp-{version}-{os.getpid()}"  # Serving skips it.
  module = ServingModule(model, class_names, preprocess_fn, top_k)
  with tempfile.TemporaryDirectory() as local:
    names_file = os.path.join(local, "class_names.txt")
    with open(names_file, "w", encoding="utf-8") as f:
      f.write("\n".join(class_names) + "\n")
    module.class_names_file = tf.saved_model.Asset(names_file)
    signatures = {
        SIGNATURE_BYTES: module.serve_bytes.get_concrete_function(),
        SIGNATURE_IMAGES: module.serve_images.get_concrete_function(),
    }
    tf.io.gfile.makedirs(export_dir)
    tf.saved_model.save(module, tmp_dir, signatures=signatures)
  tf.io.gfile.rename(tmp_dir, final_dir)
  logging.info("Exported SavedModel (%d classes, %d px) to %s", num_classes,
               module._image_size, final_dir)  # pylint: disable=protected-access
  return final_dir
