"""Our RunInference ModelHandler: the un-noised teacher, loaded once per worker process.

Beam's TensorFlow handler loads models with `tf.keras.models.load_model`, which on Keras 3
refuses SavedModel folders and knows nothing of our EMA checkpoints (apache/beam#30613),
so the teacher is loaded here the way the in-process predict loads it
(`train.load_for_inference`: the network rebuilt from build_config.json, float32, the
EMA weights swapped in) under the strategy --strategy / --jit_compile resolve to on the
worker (XLA on GPUs and TPUs, off on CPUs). Each batch goes through the in-process
predict's own step (`predict.stream.make_step`: padded to --eval_batch_size, softmax at
T = 1, records serialized by `tfrecords.format.serialize_batch`), so the records are the
ones the in-process predict writes.

Input elements are raw records (`inputs.RawRecord`); outputs are
`((worker, shard), value)` with value ("L", index, record, class, confidence, id hash)
for a labelled image and ("S", index, id) for one that does not decode (counted, its id
kept in the shard's manifest, as in-process).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler
import numpy as np

from noisy_student import faults
from noisy_student.beam.inputs import NAMESPACE, RawRecord
from noisy_student.config import DistributeConfig

Labelled = Tuple[Tuple[int, int], tuple]
# Begins the Diverged message, which the driver finds in the runner's error (job.py).
NOT_FINITE = "the teacher's outputs are not finite"


@dataclasses.dataclass
class Teacher:
  """What a worker process holds: the model, its compiled step, the decode function."""
  model: Any
  step: Any
  decode: Any  # encoded [n] -> float32 [n, S, S, 3]; raises on a corrupt image.
  decode_one: Any  # encoded scalar -> float32 [S, S, 3].


class TeacherHandler(ModelHandler[RawRecord, Labelled, Teacher]):
  """Loads the teacher of `model_path` and labels batches of raw records."""

  def __init__(self, model_path: str, *, image_size: int, small_image: bool,
               batch_size: int, seed: int, distribute_cfg: DistributeConfig,
               num_classes: int):
    super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
    self._path, self._size, self._small = model_path, image_size, small_image
    self._num_classes = num_classes
    self._batch_size, self._seed, self._dist = batch_size, seed, distribute_cfg

  def load_model(self) -> Teacher:
    """Once per worker process (RunInference shares it between the process's threads)."""
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from noisy_student import predict
    from noisy_student.predict import stream
    from noisy_student.train import checkpoints
    from noisy_student.train import distribute
    # pylint: enable=g-import-not-at-top
    strategy = distribute.make_strategy(self._dist)
    with strategy.scope():
      model = checkpoints.load_for_inference(self._path)
    if int(model.output_shape[-1]) != self._num_classes:
      raise ValueError(f"teacher {self._path} outputs {model.output_shape[-1]} classes, "
                       f"its build_config.json names {self._num_classes}")
    jit = distribute.resolve_jit_compile(self._dist.jit_compile, strategy)
    size = self._size
    spec = {"image": tf.TensorSpec([None, size, size, 3], tf.float32),
            "image/encoded": tf.TensorSpec([None], tf.string),
            "id": tf.TensorSpec([None], tf.string),
            "label": tf.TensorSpec([None], tf.int64)}
    step = stream.make_step(model, strategy, self._batch_size, spec, jit)
    pre = predict.default_preprocess(size, self._small)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
    def decode(encoded):  # Parallel over the batch's images, as tf.data's map is.
      return tf.map_fn(lambda e: tf.cast(pre(e), tf.float32), encoded,
                       fn_output_signature=tf.float32, parallel_iterations=16)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
    def decode_one(encoded):
      return tf.cast(pre(encoded), tf.float32)
    return Teacher(model, step, decode, decode_one)

  def _images(self, teacher: Teacher, encoded: List[bytes]):
    """(images of the decodable ones, their rows in `encoded`). The whole batch at
    once; image by image only when some image fails (then the failures are corrupt)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    errors = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)
    try:
      return teacher.decode(tf.constant(encoded, tf.string)), list(range(len(encoded)))
    except errors:
      pass
    images, rows = [], []
    for r, e in enumerate(encoded):
      try:
        images.append(teacher.decode_one(tf.constant(e, tf.string)))
        rows.append(r)
      except errors:
        continue
    size = self._size
    return (tf.stack(images) if images else tf.zeros([0, size, size, 3])), rows

  def run_inference(self, batch: Sequence[RawRecord], model: Teacher,
                    inference_args: Optional[Dict[str, Any]] = None
                    ) -> Iterable[Labelled]:
    """Labels one batch; every input gives one output (labelled or skipped)."""
    # pylint: disable=g-import-not-at-top
    import tensorflow as tf
    from tfrecords import plan as plan_lib
    # pylint: enable=g-import-not-at-top
    images, rows = self._images(model, [r[5] for r in batch])
    good = [batch[r] for r in rows]
    out: List[Labelled] = []
    if good:
      ids = tf.constant([r[3] for r in good], tf.string)
      records, classes, confidence = model.step({
          "image": images, "image/encoded": tf.constant([r[5] for r in good], tf.string),
          "id": ids, "label": tf.constant([r[4] for r in good], tf.int64)})
      confidence = confidence.numpy()
      if not np.isfinite(confidence).all():  # As the in-process sink: before any write.
        first = good[int(np.flatnonzero(~np.isfinite(confidence))[0])][3]
        raise faults.Diverged(
            f"{NOT_FINITE} (image {first.decode('utf-8', 'replace')}): its training "
            "diverged; train it again with a lower --base_learning_rate")
      hashes = plan_lib.id_hash(ids, self._seed).numpy().tolist()
      for r, record, c, x, h in zip(good, records.numpy().tolist(),
                                    classes.numpy().tolist(), confidence.tolist(),
                                    hashes):
        out.append(((r[0], r[1]), ("L", r[2], record, c, x, h)))
    bad = sorted(set(range(len(batch))) - set(rows))
    for r in bad:
      w, k, i, record_id = batch[r][:4]
      out.append(((w, k), ("S", i, record_id)))
    Metrics.counter(NAMESPACE, "images_labelled").inc(len(good))
    Metrics.counter(NAMESPACE, "images_skipped").inc(len(bad))
    return out

  def get_num_bytes(self, batch: Sequence[RawRecord]) -> int:
    return sum(len(r[5]) for r in batch)  # Not Beam's default pickling of the batch.

  def get_metrics_namespace(self) -> str:
    return NAMESPACE
