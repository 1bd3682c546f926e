"""The labelling stream: records -> decoded batches -> teacher step -> finished records.

On a CPU-only host every cycle spent outside the teacher is taken from it, so the stream
does per-batch work in TF ops and keeps the teacher's thread to dispatching steps:
images never become numpy arrays, and one host function per batch runs the teacher on
every replica (the numeric part, XLA-compiled with --jit_compile) and then serializes
the records (`tfrecords.format.serialize_batch`) outside the compiled part; the writer
thread (`sink.run_writer`) only writes bytes.
"""
from __future__ import annotations

import queue
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.config import PredictConfig
from noisy_student.predict import sink as sink_lib
from noisy_student.train import distribute
from tfrecords import format as fmt

PreprocessFn = Callable[[tf.Tensor], tf.Tensor]
# What the step reads from a batch; the record index stays on the host.
_STEP_KEYS = ("image", "image/encoded", "id", "label")


def build_dataset(source: Any, cfg: PredictConfig, bounds: np.ndarray, needed: np.ndarray,
                  preprocess_fn: PreprocessFn, batch_size: int) -> tf.data.Dataset:
  """Batches of this worker's records in needed shards, decoded, with their raw fields.

  Elements: {"index": [k] record index in the worker's stream, "id", "image/encoded",
  "label": [k], "image": float32 [k, S, S, 3]}, k = batch_size except at the end.
  """
  ds = source.dataset(num_workers=cfg.num_workers, worker_index=cfg.worker_index)
  ds = ds.enumerate()
  if not needed.all():  # Complete shards are dropped before any of their images decodes.
    bounds_t, needed_t = tf.constant(bounds[1:-1]), tf.constant(needed)
    ds = ds.filter(tf.autograph.experimental.do_not_convert(
        lambda i, _: tf.gather(needed_t, tf.searchsorted(bounds_t, i[None], side="right")[0])))

  @tf.autograph.experimental.do_not_convert  # Plain ops; autograph only costs tracing.
  def decode(index, record):
    return {"index": index, "id": record["id"], "image/encoded": record["image/encoded"],
            "label": tf.cast(record.get("label", tf.constant(-1, tf.int64)), tf.int64),
            "image": tf.cast(preprocess_fn(record["image/encoded"]), tf.float32)}
  # A corrupt image makes its decode op fail and `ignore_errors` drops that record; the
  # shard sink finds it as a gap in `index` and counts and logs it. Measured: the earlier
  # per-chunk sub-datasets that kept failed records in place ran at 1,640 images/s on 64 px
  # JPEGs, this flat map at 7,500 (2 cores).
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().batch(batch_size).prefetch(2)
  # No autotuner: AUTOTUNE stays at its fixed default parallelism (bounded by the cores).
  # With it, deleting the finished iterator stalled until the autotuner's next wake-up:
  # 0.6 to 4.7 s after the last batch in 5 of 10 predict calls of 2,048 images (TF 2.21,
  # 2 cores); without it, never over 10 ms, and its own CPU time is saved too.
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


# Traced steps per teacher, so repeated predict calls with one model (several workers in
# one process, tests, benchmarks) trace it once; weak keys let a dropped model free it.
_STEPS: "weakref.WeakKeyDictionary[Any, Dict[Any, Callable]]" = weakref.WeakKeyDictionary()

Step = Callable[[Dict[str, tf.Tensor]], Sequence[tf.Tensor]]


def make_step(model: Any, strategy: tf.distribute.Strategy, batch_size: int,
              element_spec: Dict[str, Any], jit_compile: bool = False) -> Step:
  """{image, image/encoded, id, label} batch -> (records, classes, confidence), [k] each.

  Records hold softmax(logits) at T = 1 (as the original's predict_label.py:136-141 and
  main.py:462); the student's temperature is applied in training. The teacher always
  sees `batch_size` images (a short batch is padded), split over the replicas, so it is
  traced once and an image's label does not depend on its batch. `jit_compile`: the
  teacher's part (images -> probabilities) is compiled by XLA.
  """
  spec = {k: element_spec[k] for k in _STEP_KEYS}
  key = (id(strategy), batch_size, jit_compile, tuple(sorted(spec.items())))
  steps = _STEPS.setdefault(model, {})
  if key not in steps:  # The strategy is kept with its step so its id stays unique.
    steps[key] = (_new_step(model, strategy, batch_size, spec, jit_compile), strategy)
  return steps[key][0]


def _teacher_fn(model: Any):
  """images [b, S, S, 3] -> (probabilities [b, C], classes int32 [b], confidence [b]):
  the numeric part of the step, the only one a replica (and XLA) runs."""
  def replica_fn(images):
    logits = tf.cast(model(images, training=False), tf.float32)  # Un-noised teacher.
    probs = tf.nn.softmax(logits)
    classes = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return probs, classes, tf.reduce_max(probs, axis=-1)
  return replica_fn


def _new_step(model: Any, strategy: tf.distribute.Strategy, batch_size: int,
              spec: Dict[str, tf.TensorSpec], jit_compile: bool) -> Step:
  n = strategy.num_replicas_in_sync
  image_spec = tf.TensorSpec([batch_size, *spec["image"].shape[1:]], spec["image"].dtype)
  distribute.check_step_tensors(image_spec, "predict's teacher step")
  replica_fn = distribute.compile_step(_teacher_fn(model), jit_compile, strategy)

  # One host function per batch: pad, run the replicas' numeric step, then serialize the
  # records here, outside the compiled part (strings have no place on an accelerator).
  # No autograph: no tensor-dependent Python control flow, and converting the model's
  # call only costs tracing time.
  @tf.function(autograph=False, input_signature=[spec])
  def step(batch):
    images = batch["image"]
    k = tf.shape(images)[0]
    images = tf.pad(images, [[0, batch_size - k], [0, 0], [0, 0], [0, 0]])
    parts = tf.split(tf.ensure_shape(images, image_spec.shape), n)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: parts[ctx.replica_id_in_sync_group])
    out = strategy.run(replica_fn, args=(per_replica,))
    # The replicas' parts, in replica order, joined on this host. Not strategy.gather:
    # it runs a collective whose instance keys collide with those of another
    # MirroredStrategy made earlier in the same process (a training phase's).
    probs, classes, confidence = (
        tf.concat(strategy.experimental_local_results(t), axis=0)[:k] for t in out)
    classes = tf.cast(classes, tf.int64)
    records = fmt.serialize_batch(batch["image/encoded"], batch["id"], batch["label"],
                                  probs, classes, confidence)
    return records, classes, confidence
  return step


def corrupt_ids(source: Any, cfg: PredictConfig,
                preprocess_fn: PreprocessFn) -> Callable[[Sequence[int]], List[str]]:
  """indices of records missing from the labelled stream -> their ids, once confirmed.

  `ignore_errors` also drops records lost to a read error upstream; re-reading the
  missing records tells the two apart: a record whose image decodes now was not corrupt,
  and the run stops rather than count it as skipped. Runs only when records are missing.
  """

  def lookup(indices: Sequence[int]) -> List[str]:
    first, last = int(min(indices)), int(max(indices))
    wanted = tf.constant(sorted(indices), tf.int64)
    ds = source.dataset(num_workers=cfg.num_workers, worker_index=cfg.worker_index)
    ds = ds.enumerate().skip(first).take(last - first + 1)
    ds = ds.filter(lambda i, r: tf.reduce_any(tf.equal(i, wanted)))
    ids = []
    for index, record in ds:
      record_id = record["id"].numpy().decode("utf-8", "replace")
      try:
        preprocess_fn(record["image/encoded"])
      except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        ids.append(record_id)
        continue
      raise RuntimeError(f"record {int(index)} ({record_id}) went missing from the input "
                         "stream although its image decodes: a read error upstream; "
                         "run again with the same flags to resume")
    return ids
  return lookup


class Progress:
  """Logs images/s and ETA at most every `every_secs` seconds."""

  def __init__(self, total: int, every_secs: float):
    self._total, self._every = total, every_secs
    self._start = self._last = time.time()
    self.done = 0

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if now - self._last >= self._every or self.done >= self._total:
      self._last = now
      rate = self.done / max(now - self._start, 1e-9)
      eta = (self._total - self.done) / max(rate, 1e-9)
      logging.info("predict: %d/%d images, %.1f images/s, ETA %.0f s", self.done,
                   self._total, rate, eta)

  @property
  def seconds(self) -> float:
    return time.time() - self._start


def label(ds: tf.data.Dataset, step: Step, sink: sink_lib.ShardSink,
          progress: Progress) -> None:
  """Runs the teacher over `ds` while a writer thread fills the shards."""
  work, errors = queue.Queue(maxsize=4), []
  writer = threading.Thread(target=sink_lib.run_writer, args=(sink, work, errors),
                            daemon=True)
  writer.start()
  end = sink_lib.ABORT  # Unless the loop completes, the open shard must stay incomplete.
  try:
    for batch in ds:  # Tensors straight into the step: no copy of the images to numpy.
      if errors:
        break
      records, classes, confidence = step({k: batch[k] for k in _STEP_KEYS})
      work.put((batch["index"], records, classes, confidence))
      progress.update(int(batch["index"].shape[0]))
    end = None
  finally:
    work.put(end)
    writer.join()
  if errors:
    raise errors[0]
