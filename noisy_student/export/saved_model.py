"""SavedModel export for serving (TensorFlow Serving, `saved_model_cli`, C++ and Python
loaders, Vertex AI).

The export holds the model's EMA weights, the eval preprocessing (pure TF ops, so a server
needs nothing from this package) and the class names, and has two signatures:

* `serving_default(image_bytes: tf.string [batch])`: encoded JPEG / PNG / BMP / GIF bytes,
  as the TPU EfficientNet export takes them.
* `serving_images(images: tf.uint8 [batch, H, W, 3])`: decoded images of any size.

Both return, per row, `valid` (bool), `classes` (int64), `probabilities` (float32 [C]),
`class_names` (string [k], best first) and `top_k_probabilities` (float32 [k]). A row whose
bytes do not decode has `valid = False`, `classes = -1`, zero probabilities and empty
names; the other rows are answered as usual, and an empty batch gets empty outputs.
(TF Serving's own convention is that a request fails as a whole; one corrupt upload in a
batch of user images should not cost the others their answer, so here it costs a row.)
The class names are also written as `assets/class_names.txt`.

It is written with Keras 3's `keras.export.ExportArchive`, which tracks every Keras
variable (batch-norm statistics included): a `tf.Module` holding a Keras 3 model does not,
and its SavedModel loads in Python but not in TensorFlow's session loader, which
`saved_model_cli run` and TF Serving use (tensorflow/tensorflow#72963).
"""
from __future__ import annotations

import json
import os
from typing import Callable, Dict, Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

from noisy_student import atomic
from noisy_student.export import versions

PreprocessFn = Callable[[tf.Tensor], tf.Tensor]  # uint8 [H, W, 3] -> float32 [S, S, 3].
CheckFn = Callable[[str], Dict]  # A written SavedModel directory -> what was measured.

SIGNATURE_BYTES = "serving_default"
SIGNATURE_IMAGES = "serving_images"
CLASS_NAMES_FILE = "assets/class_names.txt"
CHECK_FILE = "assets.extra/check.json"  # Loaders ignore assets.extra (SavedModel spec).
OUTPUTS = ("valid", "classes", "probabilities", "class_names", "top_k_probabilities")


class Servable:
  """The signatures' functions around a Keras classifier (float32 [b, S, S, 3] on the
  0..255 scale -> logits [b, C])."""

  def __init__(self, model: keras.Model, class_names: Sequence[str],
               preprocess_fn: PreprocessFn, top_k: int = 5):
    self.model = model
    self.class_names = list(class_names)
    self.num_classes = len(self.class_names)
    self.image_size = int(model.input_shape[1])
    self._preprocess_fn = preprocess_fn
    self._top_k = min(top_k, self.num_classes)
    # One traced function for the network, which both signatures call: traced once,
    # stored once in the SavedModel.
    self._forward = tf.function(
        lambda images: tf.cast(model(images, training=False), tf.float32),
        input_signature=[tf.TensorSpec([None, self.image_size, self.image_size, 3],
                                       tf.float32)])

  def _preprocess(self, image: tf.Tensor) -> tf.Tensor:
    out = tf.cast(self._preprocess_fn(image), tf.float32)
    return tf.ensure_shape(out, [self.image_size, self.image_size, 3])

  def _decode(self, image_bytes: tf.Tensor):
    """(index int32 [k], images float32 [k, S, S, 3]) of the rows that decode.

    Decode errors abort a graph, and tf.data's `ignore_errors` is the one graph-mode way
    to drop an element whose op failed and go on; the index says which rows survived.
    Measured: truncated PNG / JPEG / BMP, random bytes and b"" are dropped; a JPEG with
    garbage in its entropy data decodes (libjpeg warns) and is answered.
    """
    n = tf.shape(image_bytes)[0]
    size = self.image_size

    def decode(i, encoded):
      # expand_animations=False: a GIF gives its first frame as [H, W, C], like a PNG.
      image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
      return i, self._preprocess(tf.ensure_shape(image, [None, None, 3]))

    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), image_bytes))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(tf.cast(tf.maximum(n, 1), tf.int64))
    # At most one batch: reduce returns the empty initial state when nothing decoded.
    initial = (tf.zeros([0], tf.int32), tf.zeros([0, size, size, 3], tf.float32))
    return ds.reduce(initial, lambda s, b: (tf.concat([s[0], b[0]], 0),
                                            tf.concat([s[1], b[1]], 0)))

  def _classify(self, index: tf.Tensor, images: tf.Tensor, n: tf.Tensor) -> dict:
    """Outputs for `n` rows, of which rows `index` hold `images`; the rest are invalid."""
    c = self.num_classes
    # A Keras model refuses a batch of 0 (its shape checks), so it is not called then.
    logits = tf.cond(tf.size(index) > 0,
                     lambda: self._forward(images),
                     lambda: tf.zeros([0, c], tf.float32))
    probabilities = tf.nn.softmax(logits, axis=-1)
    top_p, top_i = tf.math.top_k(probabilities, k=self._top_k)
    names = tf.gather(tf.constant(self.class_names, tf.string), top_i)
    rows = index[:, None]

    def scatter(values, fill, dtype):
      base = tf.fill(tf.concat([[n], tf.shape(values)[1:]], 0), tf.constant(fill, dtype))
      return tf.tensor_scatter_nd_update(base, rows, tf.cast(values, dtype))

    return {
        "valid": scatter(tf.ones_like(index, tf.bool), False, tf.bool),
        "classes": scatter(tf.argmax(probabilities, axis=-1), -1, tf.int64),
        "probabilities": scatter(probabilities, 0.0, tf.float32),
        "class_names": scatter(names, "", tf.string),
        "top_k_probabilities": scatter(top_p, 0.0, tf.float32),
    }

  def serve_bytes(self, image_bytes: tf.Tensor) -> dict:
    index, images = self._decode(image_bytes)
    return self._classify(index, images, tf.shape(image_bytes)[0])

  def serve_images(self, images: tf.Tensor) -> dict:
    spec = tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32)
    batch = tf.map_fn(self._preprocess, images, fn_output_signature=spec)
    n = tf.shape(images)[0]
    return self._classify(tf.range(n), batch, n)


def write_saved_model(servable: Servable, directory: str) -> None:
  """Writes the SavedModel of `servable` (both signatures, class names) to `directory`."""
  archive = keras.export.ExportArchive()
  archive.track(servable.model)
  archive.add_endpoint(SIGNATURE_BYTES, servable.serve_bytes, input_signature=[
      tf.TensorSpec([None], tf.string, name="image_bytes")])
  archive.add_endpoint(SIGNATURE_IMAGES, servable.serve_images, input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  archive.write_out(directory, verbose=False)  # Through tf.io.gfile: gs:// works.
  # A plain file in the SavedModel's assets folder, for people and tools; the graph
  # holds the names as constants and needs no file.
  atomic.write_text(os.path.join(directory, CLASS_NAMES_FILE),
                      "\n".join(servable.class_names) + "\n")


def export_saved_model(model: keras.Model, export_dir: str, *,
                       class_names: Sequence[str], preprocess_fn: PreprocessFn,
                       top_k: int = 5, version: Optional[int] = None,
                       check: Optional[CheckFn] = None) -> str:
  """Writes a servable SavedModel of `model` to `<export_dir>/<version>`.

  Args:
    model: a classifier taking float32 [batch, S, S, 3] on the 0..255 scale and returning
      logits; its weights as they are now are exported (load it with EMA weights).
    export_dir: base directory (local or gs://); TF Serving's `--model_base_path`.
    class_names: one name per output logit.
    preprocess_fn: uint8 [H, W, 3] -> float32 [S, S, 3] eval preprocessing (TF ops only).
    top_k: class names returned per image.
    version: integer version; None: one more than the largest there.
    check: run on the written SavedModel before it is published; the dict it returns is
      stored as `assets.extra/check.json`, an exception it raises aborts the export.

  Returns:
    The directory of the written SavedModel.
  """
  num_classes = int(model.output_shape[-1])
  if len(class_names) != num_classes:
    raise ValueError(f"export: {len(class_names)} class names for a model with "
                     f"{num_classes} outputs")
  servable = Servable(model, class_names, preprocess_fn, top_k)
  with versions.new_version(export_dir, version) as (tmp_dir, final_dir):
    write_saved_model(servable, tmp_dir)
    if check is not None:
      atomic.write_text(os.path.join(tmp_dir, CHECK_FILE),
                          json.dumps(check(tmp_dir), indent=2, sort_keys=True) + "\n")
  logging.info("Exported SavedModel (%d classes, %d px) to %s", num_classes,
               servable.image_size, final_dir)
  return final_dir
