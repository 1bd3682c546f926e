"""The un-noised teacher labels the unlabeled source: sharded pseudo-label TFRecords.

`predict(model, source, predict_cfg, image_size=...)` runs the teacher in eval mode
(`training=False`) on eval-preprocessed images, batched, under a tf.distribute strategy,
and writes the records of `tfrecords/format.py`. Worker `worker_index` of `num_workers`
takes its disjoint part of the source (`source.dataset(num_workers, worker_index)`) and
cuts it into `num_shards` contiguous ranges: shard k holds the worker's records
[k*n//S, (k+1)*n//S). Resume is therefore exact: a restart with the same flags skips
shards whose manifest is present and valid (before decoding their images) and rewrites
the others. Batches are padded to a fixed size, so the teacher's output for an image does
not depend on where a run started.
"""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.config import PredictConfig
from tfrecords import format as fmt

PreprocessFn = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class PredictSummary:
  """What one worker's predict did."""
  output_dir: str
  worker_index: int
  num_workers: int
  shard_paths: List[str]  # All this worker's shards, in order.
  shards_written: int  # Written by this run.
  shards_reused: int  # Complete from an earlier run (resume).
  records_written: int  # By this run.
  corrupt_skipped: int  # By this run.
  seconds: float
  images_per_sec: float


def default_preprocess(image_size: int, small_image: bool = False) -> PreprocessFn:
  """Bytes -> float32 [S, S, 3] on 0..255: the data module's decode + eval preprocessing."""
  from noisy_student.data import preprocess  # pylint: disable=g-import-not-at-top
  return lambda encoded: preprocess.preprocess_eval(
      preprocess.decode_image(encoded), image_size, small_image)


def make_fingerprint(predict_cfg: PredictConfig, *, teacher_id: str, source_id: str,
                     num_classes: int, image_size: int,
                     num_bins: int = fmt.DEFAULT_NUM_BINS) -> Dict[str, Any]:
  """The flags that decide the content of the shards; mixing two of them is refused."""
  return {
      "teacher": teacher_id,
      "source": source_id,
      "num_workers": predict_cfg.num_workers,
      "num_shards": predict_cfg.num_shards,
      "teacher_softmax_temp": predict_cfg.teacher_softmax_temp,
      "num_classes": num_classes,
      "image_size": image_size,
      "num_bins": num_bins,
  }


def shard_ranges(num_records: int, num_shards: int) -> np.ndarray:
  """[num_shards + 1] boundaries: shard k covers records [b[k], b[k+1])."""
  return np.array([k * num_records // num_shards for k in range(num_shards + 1)], np.int64)


def _validate(model: Any, cfg: PredictConfig, class_names: Optional[Sequence[str]],
              num_label_classes: Optional[int], strategy: tf.distribute.Strategy) -> int:
  """Fails at once on bad flags or a teacher of the wrong class count; returns C."""
  num_classes = int(model.output_shape[-1])
  if num_label_classes is not None and num_label_classes != num_classes:
    raise ValueError(
        f"teacher {model.name!r} outputs {num_classes} classes but the labeled data has "
        f"{num_label_classes} (num_label_classes); use the teacher trained on this data")
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(f"teacher {model.name!r} outputs {num_classes} classes but "
                     f"{len(class_names)} class names were given")
  if not 0 <= cfg.worker_index < cfg.num_workers:
    raise ValueError(f"worker_index={cfg.worker_index} must be in [0, num_workers="
                     f"{cfg.num_workers})")
  if cfg.num_shards < 1 or cfg.eval_batch_size < 1:
    raise ValueError(f"num_shards={cfg.num_shards} and eval_batch_size="
                     f"{cfg.eval_batch_size} must be >= 1")
  if cfg.eval_batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"eval_batch_size={cfg.eval_batch_size} must be a multiple of the "
                     f"{strategy.num_replicas_in_sync} replicas")
  if cfg.teacher_softmax_temp != -1 and cfg.teacher_softmax_temp <= 0:
    raise ValueError(f"teacher_softmax_temp={cfg.teacher_softmax_temp} must be > 0, or -1 "
                     "for hard labels")
  return num_classes


def _check_output_dir(output_dir: str, digest: str) -> None:
  """Refuses an output dir holding shards (or counts) written with other flags."""
  found = fmt.list_manifests(output_dir)
  for path in tf.io.gfile.glob(f"{output_dir}/*.count.json"):
    with tf.io.gfile.GFile(path) as f:
      found.append({**json.load(f), "shard": path})
  for m in found:
    if m["fingerprint_digest"] != digest:
      raise ValueError(
          f"output_dir {output_dir} holds {m['shard']} written with other flags "
          f"({json.dumps(m['fingerprint'], default=str)}); use a fresh output_dir or the "
          "same teacher, source, num_workers, num_shards and teacher_softmax_temp")


def _worker_count(source: Any, cfg: PredictConfig, output_dir: str, prefix: str,
                  fingerprint: Dict[str, Any]) -> int:
  """This worker's record count; counted once (bytes only) and cached for resume."""
  path = (f"{output_dir}/{prefix}-worker-{cfg.worker_index:05d}-of-"
          f"{cfg.num_workers:05d}.count.json")
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      return int(json.load(f)["num_records"])
  ds = source.dataset(num_workers=cfg.num_workers, worker_index=cfg.worker_index)
  n = int(ds.cardinality())
  if n < 0 and cfg.num_workers == 1 and getattr(source, "size", None) is not None:
    n = int(source.size)  # Counted when the source was opened.
  if n < 0:  # Unknown (large TFRecords): one pass that reads but does not decode.
    n = int(ds.map(lambda r: r["id"]).reduce(np.int64(0), lambda c, _: c + 1))
  fmt.write_json_atomic(path, {"num_records": n, "fingerprint": fingerprint,
                               "fingerprint_digest": fmt.fingerprint_digest(fingerprint)})
  return n


def _build_dataset(source: Any, cfg: PredictConfig, bounds: np.ndarray, needed: np.ndarray,
                   preprocess_fn: PreprocessFn) -> tf.data.Dataset:
  """Batches of this worker's records in needed shards, decoded, with their raw fields."""
  ds = source.dataset(num_workers=cfg.num_workers, worker_index=cfg.worker_index)
  bounds_t, needed_t = tf.constant(bounds[1:-1]), tf.constant(needed)

  @tf.autograph.experimental.do_not_convert  # Plain ops; autograph only costs tracing.
  def tag(index, record):
    shard = tf.searchsorted(bounds_t, index[None], side="right")[0]
    return {"index": index, "shard": shard, "id": record["id"],
            "image/encoded": record["image/encoded"],
            "label": tf.cast(record.get("label", tf.constant(-1, tf.int64)), tf.int64)}
  ds = ds.enumerate().map(tag)
  # Complete shards are dropped here, before any image of theirs is decoded.
  ds = ds.filter(tf.autograph.experimental.do_not_convert(
      lambda r: tf.gather(needed_t, r["shard"])))
  # A corrupt image makes its decode op fail and `ignore_errors` drops that record; the
  # shard sink finds it as a gap in `index` and counts and logs it. Measured: the earlier
  # per-chunk sub-datasets that kept failed records in place ran at 1,640 images/s on 64 px
  # JPEGs, this flat map at 7,500 (2 cores), and predict end to end is CPU-bound here.
  decode = tf.autograph.experimental.do_not_convert(
      lambda r: {**r, "image": tf.cast(preprocess_fn(r["image/encoded"]), tf.float32)})
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors().batch(cfg.eval_batch_size)
  return ds.prefetch(2)


# Traced steps per teacher, so repeated predict calls with one model (several workers in
# one process, tests) trace it once; weak keys let a dropped model free its step.
_STEPS: "weakref.WeakKeyDictionary[Any, Dict[Any, Callable]]" = weakref.WeakKeyDictionary()


def _make_step(model: Any, strategy: tf.distribute.Strategy, num_classes: int,
               temperature: float) -> Callable[[np.ndarray], Sequence[np.ndarray]]:
  """Images [B, S, S, 3] -> (probabilities, classes, confidence), split over replicas."""
  steps = _STEPS.setdefault(model, {})
  key = (id(strategy), num_classes, temperature)
  if key not in steps:
    steps[key] = (_new_step(model, strategy, num_classes, temperature), strategy)
  return steps[key][0]


def _new_step(model: Any, strategy: tf.distribute.Strategy, num_classes: int,
              temperature: float) -> Callable[[np.ndarray], Sequence[np.ndarray]]:
  n = strategy.num_replicas_in_sync

  def replica_fn(images):
    logits = tf.cast(model(images, training=False), tf.float32)  # Un-noised teacher.
    classes = tf.argmax(logits, axis=-1)
    if temperature == -1:  # Hard labels; confidence stays the teacher's softmax max.
      probs = tf.one_hot(classes, num_classes)
      confidence = tf.reduce_max(tf.nn.softmax(logits), axis=-1)
    else:
      probs = tf.nn.softmax(logits / temperature)
      confidence = tf.reduce_max(probs, axis=-1)
    return probs, classes, confidence

  # No autograph: the step has no tensor-dependent Python control flow, and converting
  # the model's call only costs tracing time.
  @tf.function(autograph=False)
  def step(images):
    parts = tf.split(images, n)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: parts[ctx.replica_id_in_sync_group])
    out = strategy.run(replica_fn, args=(per_replica,))
    # The replicas' parts, in replica order, joined on this host. Not strategy.gather:
    # it runs a collective whose instance keys collide with those of another
    # MirroredStrategy made earlier in the same process (a training phase's).
    return [tf.concat(strategy.experimental_local_results(t), axis=0) for t in out]
  return step


def _corrupt_ids(source: Any, cfg: PredictConfig,
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


class _ShardSink:
  """Routes predicted batches into per-shard writers; closes a shard when it is done."""

  def __init__(self, paths: Sequence[str], bounds: np.ndarray, needed: np.ndarray,
               num_classes: int, fingerprint: Dict[str, Any],
               id_lookup: Callable[[Sequence[int]], List[str]]):
    self._paths, self._bounds, self._needed = paths, bounds, needed
    self._num_classes, self._fingerprint = num_classes, fingerprint
    self._id_lookup = id_lookup
    self._writer: Optional[fmt.ShardWriter] = None
    self._shard = -1
    self._next = 0  # The next record index the open shard expects.
    self.records = 0
    self.corrupt = 0

  def _skip_missing(self, upto: int, present: Sequence[int] = ()) -> None:
    """Records of the open shard in [next, upto) not in `present` failed to decode."""
    if self._writer is None:
      return
    missing = sorted(set(range(self._next, upto)) - set(int(i) for i in present))
    for record_id in (self._id_lookup(missing) if missing else ()):
      logging.warning("skipping corrupt image %s", record_id)
      self._writer.skip(record_id)
      self.corrupt += 1
    self._next = max(self._next, upto)

  def _advance_to(self, shard: int) -> None:
    """Closes the open shard and any needed (empty) shard before `shard`; opens it."""
    while self._shard < shard:
      if self._writer is not None:
        self._skip_missing(int(self._bounds[self._shard + 1]))
        manifest = self._writer.close()
        logging.info("wrote %s (%d records)", self._paths[self._shard],
                     manifest["record_count"])
        self._writer = None
      self._shard += 1
      if self._shard < len(self._paths) and self._needed[self._shard]:
        b = self._bounds
        self._next = int(b[self._shard])
        self._writer = fmt.ShardWriter(
            self._paths[self._shard], self._num_classes, self._fingerprint,
            [int(b[self._shard]), int(b[self._shard + 1])],
            num_bins=self._fingerprint["num_bins"])

  def add(self, batch: Dict[str, np.ndarray], probs: np.ndarray, classes: np.ndarray,
          confidence: np.ndarray) -> None:
    """Writes one batch (it may span shards) of the records that decoded, in order."""
    shard = batch["shard"]
    for k in np.unique(shard):
      self._advance_to(int(k))
      rows = np.flatnonzero(shard == k)
      indices = batch["index"][rows]
      self._skip_missing(int(indices.max()) + 1, indices)
      self._writer.write_batch(
          [batch["image/encoded"][i] for i in rows], [batch["id"][i] for i in rows],
          batch["label"][rows], probs[rows], classes[rows], confidence[rows])
      self.records += len(rows)

  def finish(self) -> None:
    self._advance_to(len(self._paths))

  def abort(self) -> None:
    if self._writer is not None:
      self._writer.abort()


class _Progress:
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


_ABORT = object()  # End marker of a failed run (None ends a completed one).


def _run_writer(sink: _ShardSink, work: "queue.Queue", errors: List[BaseException]) -> None:
  """Writer thread: serialising protos overlaps the teacher, which releases the GIL."""
  item = ()
  try:
    while True:
      item = work.get()
      if item is None or item is _ABORT:
        break
      sink.add(*item)
    if item is _ABORT:  # The producer failed: keep the open shard incomplete.
      sink.abort()
    else:
      sink.finish()
  except BaseException as e:  # pylint: disable=broad-except  (re-raised by the caller)
    errors.append(e)
    sink.abort()
    while item is not None and item is not _ABORT:  # Drain until the end marker.
      item = work.get()


def predict(model: Any, source: Any, predict_cfg: PredictConfig, *, image_size: int,
            class_names: Optional[Sequence[str]] = None,
            num_label_classes: Optional[int] = None,
            strategy: Optional[tf.distribute.Strategy] = None,
            teacher_id: Optional[str] = None, source_id: Optional[str] = None,
            preprocess_fn: Optional[PreprocessFn] = None, small_image: bool = False,
            prefix: str = "train",
            num_bins: int = fmt.DEFAULT_NUM_BINS,
            log_every_secs: float = 30.0) -> PredictSummary:
  """Writes this worker's pseudo-label shards into `predict_cfg.output_dir`.

  Args:
    model: the teacher, a Keras model mapping [B, S, S, 3] float 0..255 to logits [B, C].
    source: a Contract-2 source (`.dataset(num_workers, worker_index)` of raw records).
    predict_cfg: output_dir, eval_batch_size, num_shards (per worker), worker_index,
      num_workers, teacher_softmax_temp (-1: one-hot labels).
    image_size: the teacher's own resolution S (eval preprocessing target).
    class_names: stored in output_dir/class_names.json for the balance report.
    num_label_classes: class count of the labeled data; a teacher that differs fails.
    strategy: tf.distribute strategy to run the teacher under (default: the current one).
    teacher_id, source_id: identify teacher and source in the fingerprint (defaults:
      model.name, source.describe()).
    preprocess_fn: encoded bytes -> float32 [S, S, 3] (default: `default_preprocess`,
      i.e. `noisy_student.data.preprocess` decode + eval centre crop at S).
    small_image: the 32-pixel path's eval preprocessing (resize, no crop).
    prefix: shard file prefix.
    num_bins: confidence histogram bins in each manifest.
    log_every_secs: progress log period.

  Returns:
    A PredictSummary. Raises ValueError on bad flags, a class-count mismatch, or an
    output_dir holding shards written with other flags.
  """
  cfg, strategy = predict_cfg, strategy or tf.distribute.get_strategy()
  num_classes = _validate(model, cfg, class_names, num_label_classes, strategy)
  if source_id is None:
    source_id = source.describe() if hasattr(source, "describe") else type(source).__name__
  fingerprint = make_fingerprint(cfg, teacher_id=teacher_id or model.name,
                                 source_id=str(source_id), num_classes=num_classes,
                                 image_size=image_size, num_bins=num_bins)
  out = cfg.output_dir.rstrip("/")
  tf.io.gfile.makedirs(out)
  _check_output_dir(out, fmt.fingerprint_digest(fingerprint))
  if class_names is not None:
    fmt.write_json_atomic(f"{out}/class_names.json", {"class_names": list(class_names)})
  bounds, paths, needed = _plan_shards(source, cfg, out, prefix, fingerprint)
  preprocess_fn = preprocess_fn or default_preprocess(image_size, small_image)
  ds = _build_dataset(source, cfg, bounds, needed, preprocess_fn)
  step = _make_step(model, strategy, num_classes, cfg.teacher_softmax_temp)
  sink = _ShardSink(paths, bounds, needed, num_classes, fingerprint,
                   _corrupt_ids(source, cfg, preprocess_fn))
  todo = int(sum(bounds[k + 1] - bounds[k] for k in np.flatnonzero(needed)))
  progress = _Progress(todo, log_every_secs)
  _label(ds, step, sink, progress, cfg.eval_batch_size)
  seconds = progress.seconds
  return PredictSummary(
      output_dir=out, worker_index=cfg.worker_index, num_workers=cfg.num_workers,
      shard_paths=paths, shards_written=int(needed.sum()), shards_reused=int((~needed).sum()),
      records_written=sink.records, corrupt_skipped=sink.corrupt, seconds=seconds,
      images_per_sec=progress.done / max(seconds, 1e-9))


def _plan_shards(source: Any, cfg: PredictConfig, out: str, prefix: str,
                 fingerprint: Dict[str, Any]):
  """(bounds, shard paths, needed mask) of this worker; clears a killed run's temp files."""
  n = _worker_count(source, cfg, out, prefix, fingerprint)
  bounds = shard_ranges(n, cfg.num_shards)
  paths = [f"{out}/{fmt.shard_name(prefix, k, cfg.num_shards, cfg.worker_index, cfg.num_workers)}"
           for k in range(cfg.num_shards)]
  needed = np.array([fmt.read_manifest(p) is None for p in paths])
  for p in np.asarray(paths)[needed]:  # Temporary files of a killed run of this worker.
    for stale in tf.io.gfile.glob(f"{p}.tmp-*"):
      tf.io.gfile.remove(stale)
  logging.info("predict worker %d/%d: %d records in %d shards; %d shards complete, "
               "%d records to label", cfg.worker_index, cfg.num_workers, n, cfg.num_shards,
               int((~needed).sum()), int(sum(bounds[k + 1] - bounds[k]
                                             for k in np.flatnonzero(needed))))
  return bounds, paths, needed


def _label(ds: tf.data.Dataset, step: Callable, sink: _ShardSink, progress: _Progress,
           batch_size: int) -> None:
  """Runs the teacher over `ds` while a writer thread fills the shards."""
  work, errors = queue.Queue(maxsize=4), []
  writer = threading.Thread(target=_run_writer, args=(sink, work, errors), daemon=True)
  writer.start()
  end = _ABORT  # Unless the loop completes, the open shard must not be closed as complete.
  try:
    for batch in ds.as_numpy_iterator():
      if errors:
        break
      k = len(batch["index"])
      images = batch.pop("image")
      if k < batch_size:  # A fixed shape: one trace; per-image results independent of k.
        pad = np.zeros((batch_size - k,) + images.shape[1:], images.dtype)
        images = np.concatenate([images, pad])
      probs, classes, confidence = (t.numpy()[:k] for t in step(images))
      work.put((batch, probs, classes, confidence))
      progress.update(k)
    end = None
  finally:
    work.put(end)
    writer.join()
  if errors:
    raise errors[0]
