"""predict(): one worker's pseudo-label shards, resumable; see the package docstring."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Set

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.config import PredictConfig
from noisy_student.predict import sink as sink_lib
from noisy_student.predict import stream
from noisy_student.train import distribute
from tfrecords import format as fmt
from tfrecords import integrity

PreprocessFn = stream.PreprocessFn


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
      "num_classes": num_classes,
      "image_size": image_size,
      "num_bins": num_bins,
  }


def shard_ranges(num_records: int, num_shards: int) -> np.ndarray:
  """[num_shards + 1] boundaries: shard k covers records [b[k], b[k+1])."""
  return np.array([k * num_records // num_shards for k in range(num_shards + 1)], np.int64)


def _validate(model: Any, cfg: PredictConfig, batch_size: int, class_names: Optional[Sequence[str]],
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
  if cfg.num_shards < 1 or batch_size < 1:
    raise ValueError(f"num_shards={cfg.num_shards} and eval_batch_size={batch_size} "
                     "must be >= 1")
  if batch_size % strategy.num_replicas_in_sync:
    raise ValueError(f"eval_batch_size={batch_size} must be a multiple of the "
                     f"{strategy.num_replicas_in_sync} replicas")
  return num_classes


def _adopt_alias(output_dir: str, names: Set[str], fingerprint: Dict[str, Any],
                 aliases: Sequence[str]) -> Dict[str, Any]:
  """`fingerprint`, or the one with a teacher alias when the directory's shards were
  written under it (resumed as they are)."""
  if not aliases or not any(n.endswith((fmt.MANIFEST_SUFFIX, fmt.COUNT_SUFFIX))
                            for n in names):
    return fingerprint
  digests = {m["fingerprint_digest"] for m in fmt.list_manifests(output_dir)}
  for path in tf.io.gfile.glob(f"{output_dir}/*{fmt.COUNT_SUFFIX}"):
    with tf.io.gfile.GFile(path) as f:
      digests.add(json.load(f)["fingerprint_digest"])
  for alias in aliases:
    other = dict(fingerprint, teacher=alias)
    if fmt.fingerprint_digest(fingerprint) not in digests and (
        fmt.fingerprint_digest(other) in digests):
      return other
  return fingerprint


def _check_output_dir(output_dir: str, names: Set[str], digest: str) -> None:
  """Refuses an output dir holding shards (or counts) written with other flags.

  `names`: the directory's listing, so a fresh directory costs no further file calls.
  """
  if not any(n.endswith((fmt.MANIFEST_SUFFIX, fmt.COUNT_SUFFIX)) for n in names):
    return
  found = fmt.list_manifests(output_dir)
  for path in tf.io.gfile.glob(f"{output_dir}/*{fmt.COUNT_SUFFIX}"):
    with tf.io.gfile.GFile(path) as f:
      found.append({**json.load(f), "shard": path})
  for m in found:
    if m["fingerprint_digest"] != digest:
      raise ValueError(
          f"output_dir {output_dir} holds {m['shard']} written with other flags "
          f"({json.dumps(m['fingerprint'], default=str)}); use a fresh output_dir or the "
          "same teacher, source, num_workers and num_shards")


def _worker_count(source: Any, cfg: PredictConfig, output_dir: str, names: Set[str],
                  prefix: str, fingerprint: Dict[str, Any]) -> int:
  """This worker's record count; counted once (bytes only) and cached for resume."""
  name = (f"{fmt.MANIFEST_PREFIX}{prefix}-worker-{cfg.worker_index:05d}-of-"
          f"{cfg.num_workers:05d}{fmt.COUNT_SUFFIX}")
  path = f"{output_dir}/{name}"
  if name in names:
    with tf.io.gfile.GFile(path) as f:
      return int(json.load(f)["num_records"])
  if cfg.num_workers == 1 and getattr(source, "size", None) is not None:
    n = int(source.size)  # Counted when the source was opened; no dataset to build.
  else:
    ds = source.dataset(num_workers=cfg.num_workers, worker_index=cfg.worker_index)
    n = int(ds.cardinality())
    if n < 0:  # Unknown (large TFRecords): one pass that reads but does not decode.
      n = int(ds.map(lambda r: r["id"]).reduce(np.int64(0), lambda c, _: c + 1))
  fmt.write_json_atomic(path, {"num_records": n, "fingerprint": fingerprint,
                               "fingerprint_digest": fmt.fingerprint_digest(fingerprint)})
  return n


def predict(model: Any, source: Any, predict_cfg: PredictConfig, *, image_size: int,
            batch_size: int,
            class_names: Optional[Sequence[str]] = None,
            num_label_classes: Optional[int] = None,
            strategy: Optional[tf.distribute.Strategy] = None,
            teacher_id: Optional[str] = None, source_id: Optional[str] = None,
            preprocess_fn: Optional[PreprocessFn] = None, small_image: bool = False,
            prefix: str = "train",
            num_bins: int = fmt.DEFAULT_NUM_BINS,
            log_every_secs: float = 30.0,
            jit_compile: Optional[bool] = None,
            teacher_aliases: Sequence[str] = ()) -> PredictSummary:
  """Writes this worker's pseudo-label shards into `predict_cfg.output_dir`.

  Args:
    model: the teacher, a Keras model mapping [B, S, S, 3] float 0..255 to logits [B, C].
    source: a Contract-2 source (`.dataset(num_workers, worker_index)` of raw records).
    predict_cfg: output_dir, num_shards (per worker), worker_index, num_workers. The
      records hold softmax(logits) at T = 1 whatever the training temperature (the
      original's predict_label.py:136-141): training applies it.
    image_size: the teacher's own resolution S (eval preprocessing target).
    batch_size: global batch of the teacher's step (--eval_batch_size), a multiple of
      the replicas; the last batch is padded to it.
    class_names: stored in output_dir/class_names.json (fmt.CLASS_NAMES_FILE) for the
      balance report.
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
    jit_compile: compile the teacher's step with XLA; None: `--jit_compile=auto` for
      `strategy`.
    teacher_aliases: other ids the same teacher had in shards written by older versions
      (its absolute path, before ids became relative to the output directory): a
      directory of such shards is resumed under its own fingerprint.

  Returns:
    A PredictSummary. Raises ValueError on bad flags, a class-count mismatch, or an
    output_dir holding shards written with other flags.
  """
  cfg, strategy = predict_cfg, strategy or tf.distribute.get_strategy()
  num_classes = _validate(model, cfg, batch_size, class_names, num_label_classes, strategy)
  if source_id is None:
    source_id = source.describe() if hasattr(source, "describe") else type(source).__name__
  fingerprint = make_fingerprint(cfg, teacher_id=teacher_id or model.name,
                                 source_id=str(source_id), num_classes=num_classes,
                                 image_size=image_size, num_bins=num_bins)
  out = cfg.output_dir.rstrip("/")
  tf.io.gfile.makedirs(out)
  names = set(tf.io.gfile.listdir(out))  # One listing serves every check below.
  fingerprint = _adopt_alias(out, names, fingerprint, teacher_aliases)
  _check_output_dir(out, names, fmt.fingerprint_digest(fingerprint))
  if class_names is not None:
    fmt.write_json_atomic(f"{out}/{fmt.CLASS_NAMES_FILE}",
                          {"class_names": list(class_names)})
  bounds, paths, needed = _plan_shards(source, cfg, out, names, prefix, fingerprint)
  preprocess_fn = preprocess_fn or default_preprocess(image_size, small_image)
  ds = stream.build_dataset(source, cfg, bounds, needed, preprocess_fn, batch_size)
  if jit_compile is None:
    jit_compile = distribute.resolve_jit_compile("auto", strategy)
  step = stream.make_step(model, strategy, batch_size, ds.element_spec, jit_compile)
  sink = sink_lib.ShardSink(paths, bounds, needed, num_classes, fingerprint,
                            stream.corrupt_ids(source, cfg, preprocess_fn))
  todo = int(sum(bounds[k + 1] - bounds[k] for k in np.flatnonzero(needed)))
  progress = stream.Progress(todo, log_every_secs)
  stream.label(ds, step, sink, progress)
  _check_some_decoded(source, cfg, sink, [p for p, n in zip(paths, needed) if n],
                      resumed=not needed.all())
  seconds = progress.seconds
  return PredictSummary(
      output_dir=out, worker_index=cfg.worker_index, num_workers=cfg.num_workers,
      shard_paths=paths, shards_written=int(needed.sum()), shards_reused=int((~needed).sum()),
      records_written=sink.records, corrupt_skipped=sink.corrupt, seconds=seconds,
      images_per_sec=progress.done / max(seconds, 1e-9))


def _check_some_decoded(source: Any, cfg: PredictConfig, sink: sink_lib.ShardSink,
                        written: Sequence[str], resumed: bool) -> None:
  """Refuses a worker's part of the source in which no image decoded (a folder of
  corrupt or non-image files): shards of 0 records would only fail later, in filter.
  Their manifests are removed, so a run after the folder is fixed predicts them again."""
  if sink.records or not sink.corrupt or resumed:
    return
  for path in written:
    if tf.io.gfile.exists(fmt.manifest_path(path)):
      tf.io.gfile.remove(fmt.manifest_path(path))
  spec = getattr(source, "spec", None) or str(source)
  raise ValueError(
      f"--unlabel_data_dir={spec}: none of its images decodes ({sink.corrupt} skipped as "
      f"corrupt{' in worker ' + str(cfg.worker_index) + ' part' if cfg.num_workers > 1 else ''}"
      "); give a folder of JPEG / PNG / BMP / GIF images")


def _damaged(path: str) -> bool:
  """Whether a shard with a manifest must be written again (cut, grown or bit-flipped)."""
  manifest = fmt.read_manifest(path)
  problem = integrity.shard_problem(path, manifest) if manifest else "size differs"
  if problem:
    logging.warning("predict: %s is damaged (%s); predicting it again.", path, problem)
  return bool(problem)


def _plan_shards(source: Any, cfg: PredictConfig, out: str, names: Set[str], prefix: str,
                 fingerprint: Dict[str, Any]):
  """(bounds, shard paths, needed mask) of this worker; clears a killed run's temp files.

  `names`: the listing of `out`, so shards without a manifest cost no file calls.
  """
  n = _worker_count(source, cfg, out, names, prefix, fingerprint)
  bounds = shard_ranges(n, cfg.num_shards)
  shards = [fmt.shard_name(prefix, k, cfg.num_shards, cfg.worker_index, cfg.num_workers)
            for k in range(cfg.num_shards)]
  paths = [f"{out}/{s}" for s in shards]
  needed = np.array([fmt.manifest_name(s) not in names or _damaged(p)
                     for s, p in zip(shards, paths)])
  redo = set(np.asarray(shards)[needed].tolist())
  for name in names:  # Temporary files of a killed run of this worker.
    if ".tmp-" in name and name.split(".tmp-")[0] in redo:
      tf.io.gfile.remove(f"{out}/{name}")
  logging.info("predict worker %d/%d: %d records in %d shards; %d shards complete, "
               "%d records to label", cfg.worker_index, cfg.num_workers, n, cfg.num_shards,
               int((~needed).sum()), int(sum(bounds[k + 1] - bounds[k]
                                             for k in np.flatnonzero(needed))))
  return bounds, paths, needed
