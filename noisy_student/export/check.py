"""Each written export run by the program that deploys it, on real images, next to the
Keras model it came from: the SavedModel by TensorFlow's session loader (the C++ path
of `saved_model_cli run` and TF Serving) fed encoded bytes, the `.keras` file by
`keras.models.load_model`, a LiteRT file by the LiteRT interpreter.

What is measured (stored as the export's check.json): on the first N decodable images of
a source, the share whose top-1 class equals the Keras model's (`top1_agreement`), the
largest probability difference, and, when the source's labels name the model's classes,
the top-1 accuracy of both (`top1`, `keras_top1`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from noisy_student.data import preprocess
from noisy_student.data.source import Source

BATCH = 64
Runner = Callable[[np.ndarray], np.ndarray]  # A batch of inputs -> probabilities [n, C].


@dataclasses.dataclass(frozen=True)
class Images:
  """Images an export is checked or calibrated on."""
  encoded: List[bytes]  # The source's own bytes.
  decoded: List[np.ndarray]  # uint8 [H, W, 3].
  labels: np.ndarray  # int64 [n]; meaningful only when `labeled`.
  labeled: bool  # The labels index the model's classes.
  source: str

  def __len__(self) -> int:
    return len(self.encoded)

  def at_size(self, size: int) -> np.ndarray:
    """uint8 [n, S, S, 3]: the deployable models' input (images not S x S are resized,
    bicubic, as an app would before handing them over)."""
    out = [image if image.shape[:2] == (size, size) else
           tf.cast(tf.round(tf.clip_by_value(tf.image.resize(
               tf.cast(image, tf.float32), [size, size], method="bicubic"), 0, 255)),
                   tf.uint8).numpy() for image in self.decoded]
    return np.stack(out) if out else np.zeros([0, size, size, 3], np.uint8)


def load_images(source: Source, count: int, class_names: Sequence[str],
                shuffle_seed: Optional[int] = None) -> Images:
  """The first `count` decodable images of `source` (a seeded shuffle first when
  `shuffle_seed` is set: a calibration set should not be one class)."""
  ds = source.dataset()
  if shuffle_seed is not None:
    ds = ds.shuffle(max(10 * count, 1000), seed=shuffle_seed)
  ds = preprocess.decode_or_skip(ds).take(count)
  records = list(ds.as_numpy_iterator())
  same_classes = (source.class_names is None and source.num_classes == len(class_names)
                  ) or list(source.class_names or []) == list(class_names)
  if not same_classes:
    logging.info("Export check on %s: its classes are not the model's; agreement only.",
                 source.spec)
  return Images(encoded=[r["image/encoded"] for r in records],
                decoded=[r["image"] for r in records],
                labels=np.array([r["label"] for r in records], np.int64),
                labeled=bool(source.labeled and same_classes), source=source.spec)


def keras_probabilities(model: keras.Model, batch: np.ndarray) -> np.ndarray:
  """softmax(model(batch)) in float32, BATCH images at a time."""
  out = [tf.nn.softmax(tf.cast(model(batch[i:i + BATCH], training=False), tf.float32)
                       ).numpy() for i in range(0, len(batch), BATCH)]
  return np.concatenate(out) if out else np.zeros([0, int(model.output_shape[-1])])


def compare(probabilities: np.ndarray, reference: np.ndarray, images: Images) -> Dict:
  """The measured agreement of an export's probabilities with the Keras model's."""
  top, ref_top = probabilities.argmax(-1), reference.argmax(-1)
  out = {"images": len(images), "source": images.source,
         "top1_agreement": float(np.mean(top == ref_top)),
         "max_probability_difference": float(np.max(np.abs(probabilities - reference)))}
  if images.labeled:
    out.update(top1=float(np.mean(top == images.labels)),
               keras_top1=float(np.mean(ref_top == images.labels)))
  return out


def run_batches(run: Runner, inputs) -> np.ndarray:
  return np.concatenate([run(inputs[i:i + BATCH]) for i in range(0, len(inputs), BATCH)])


class SessionLoader:
  """A SavedModel loaded by TensorFlow's TF1 session loader (`saved_model_cli run`'s,
  and the C++ hosts' path), run by the tensor names its SignatureDefs give."""

  def __init__(self, path: str):
    self._graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=self._graph)
    with self._graph.as_default():
      meta = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
    self.signatures = dict(meta.signature_def)

  def run(self, signature: str, **inputs) -> Dict[str, np.ndarray]:
    sig = self.signatures[signature]
    feed = {sig.inputs[k].name: v for k, v in inputs.items()}
    return self._session.run({k: v.name for k, v in sig.outputs.items()}, feed)

  def close(self) -> None:
    self._session.close()


def check_saved_model(path: str, model: keras.Model, preprocess_fn, images: Images,
                      signature: str) -> Dict:
  """`signature` (image bytes) of the SavedModel at `path` vs `model` on the same
  images; every image must come back valid."""
  loader = SessionLoader(path)
  try:
    def run(encoded):
      out = loader.run(signature, image_bytes=np.array(encoded, dtype=object))
      if not out["valid"].all():
        raise ValueError(f"export check: the SavedModel at {path} found images of "
                         f"{images.source} undecodable that the input pipeline decodes")
      return out["probabilities"]
    probabilities = run_batches(run, images.encoded)
  finally:
    loader.close()
  batch = np.stack([preprocess_fn(image).numpy() for image in images.decoded])
  return compare(probabilities, keras_probabilities(model, batch), images)


def check_deployable(run: Runner, model: keras.Model, preprocess_fn, images: Images,
                     size: int) -> Dict:
  """A deployable export (uint8 [n, S, S, 3] -> probabilities) vs `model` with the eval
  preprocessing on the same S x S images."""
  inputs = images.at_size(size)
  reference = keras_probabilities(
      model, np.stack([preprocess_fn(image).numpy() for image in inputs]))
  return compare(run_batches(run, inputs), reference, images)
