"""Phase orchestration: teacher -> (predict, balance, student, eval) x N -> fine-tune -> export.

Each phase records its completion in `<model_dir>/phases/<phase>.json` (written atomically
when the phase has finished) together with a fingerprint of the flags it depends on. A run
started again with the same flags skips the finished phases and resumes the one it was
in: training resumes from its last checkpoint and predict from its last complete shard,
so a pipeline killed anywhere loses at most one checkpoint period of work. A finished
phase whose flags changed is refused (with the flags that differ) instead of being mixed
with new results.

Layout of `<model_dir>`:
  config.json              the resolved flags of the latest run
  phases/*.json            completion markers
  teacher/, student_<i>/   training runs (checkpoints, TensorBoard, build_config.json)
  pseudo_<i>/              pseudo-label shards, balance plan, report and plot
  finetune/final.keras     the fine-tuned last student (with --finetune)
  eval/                    per-model eval JSON, confusion PNGs, TensorBoard scalars
  results.json / .png      the table of every model's top-1 / top-5, and its plot
  export/<version>/        the SavedModel for serving
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import tensorflow as tf

import efficientnet
from noisy_student import balance as balance_lib
from noisy_student import config as config_lib
from noisy_student import evaluate as evaluate_lib
from noisy_student import export as export_lib
from noisy_student import finetune as finetune_lib
from noisy_student import predict as predict_lib
from noisy_student import train as train_lib
from noisy_student.data import pipeline as data_pipeline
from noisy_student.data import preprocess
from noisy_student.data import sources
from noisy_student.train import checkpoints
from noisy_student.train import distribute
import tfrecords

Fingerprint = Dict[str, Any]


class PhaseMismatchError(ValueError):
  """A finished phase in model_dir was produced with other flags than this run's."""


def _plain(value: Any) -> Any:
  """JSON round trip: tuples -> lists, dataclasses -> dicts, as stored in a marker."""
  def default(obj):
    if dataclasses.is_dataclass(obj):
      return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} cannot go into a phase marker")
  return json.loads(json.dumps(value, sort_keys=True, default=default))


def _differences(old: Any, new: Any, prefix: str = "") -> List[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return out
  return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class Markers:
  """Completion markers of one pipeline: `<root>/phases/<name>.json`."""

  def __init__(self, root: str):
    self.directory = f"{root.rstrip('/')}/phases"

  def path(self, name: str) -> str:
    return f"{self.directory}/{name}.json"

  def get(self, name: str) -> Optional[Dict[str, Any]]:
    if not tf.io.gfile.exists(self.path(name)):
      return None
    with tf.io.gfile.GFile(self.path(name)) as f:
      return json.load(f)

  def put(self, name: str, fingerprint: Fingerprint, result: Dict[str, Any],
          seconds: float) -> None:
    tf.io.gfile.makedirs(self.directory)
    payload = {"phase": name, "fingerprint": _plain(fingerprint), "result": _plain(result),
               "seconds": round(seconds, 1), "finished": time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp = self.path(name) + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(json.dumps(payload, indent=1, sort_keys=True))
    tf.io.gfile.rename(tmp, self.path(name), overwrite=True)

  def done(self) -> List[str]:
    if not tf.io.gfile.isdir(self.directory):
      return []
    return sorted(n[:-5] for n in tf.io.gfile.listdir(self.directory) if n.endswith(".json"))


def run_phase(markers: Markers, name: str, fingerprint: Fingerprint,
              fn: Callable[[], Dict[str, Any]], redo_if_changed: bool = False
              ) -> Dict[str, Any]:
  """Runs `fn` unless `name` finished earlier with the same fingerprint; returns its result.

  A finished phase with another fingerprint is refused, or redone when `redo_if_changed`
  (the phases after the last student, whose input changes when iterations are added).
  """
  marker = markers.get(name)
  if marker is not None:
    changed = _differences(marker["fingerprint"], _plain(fingerprint))
    if changed and redo_if_changed:
      logging.info("Phase %s: its input changed (%s); redoing it.", name, changed[0])
      marker = None
  if marker is not None:
    if changed:
      raise PhaseMismatchError(
          f"phase {name} in {markers.directory} was run with other flags ("
          f"{'; '.join(changed[:5])}); use a new --model_dir, or delete "
          f"{markers.path(name)} and the phases after it to redo them")
    logging.info("Phase %s: finished earlier (%s), skipped.", name, marker["finished"])
    return marker["result"]
  logging.info("Phase %s: starting.", name)
  start = time.time()
  result = fn()
  markers.put(name, fingerprint, result, time.time() - start)
  logging.info("Phase %s: done in %.0f s.", name, time.time() - start)
  return result


ModelInfo = Dict[str, Any]  # {"path", "model_name", "image_size", "small_image"}


class Context:
  """What the phases of one run share: config, root, strategy, opened sources."""

  def __init__(self, cfg: config_lib.Config):
    self.cfg = cfg
    self.root = cfg.train.model_dir.rstrip("/")
    self._strategy = None
    self._sources = {}

  @property
  def strategy(self) -> tf.distribute.Strategy:
    if self._strategy is None:
      self._strategy = distribute.make_strategy(self.cfg.distribute)
    return self._strategy

  def source(self, which: str) -> sources.Source:
    """'label', 'unlabel' or 'eval': the source of that flag, opened once."""
    if which not in self._sources:
      d = self.cfg.data
      spec = {"label": d.label_data_dir, "unlabel": d.unlabel_data_dir,
              "eval": d.eval_data_dir}[which]
      self._sources[which] = sources.open_source(
          spec, tfds_data_dir=d.tfds_data_dir, label_offset=d.label_offset, seed=d.seed,
          digits_num_labeled=d.digits_num_labeled, digits_num_test=d.digits_num_test,
          labeled=False if which == "unlabel" else None)
    return self._sources[which]

  @property
  def class_names(self) -> List[str]:
    labeled = self.source("label")
    n = self.cfg.model.num_label_classes or labeled.num_classes
    if not n:
      raise ValueError(f"--label_data_dir={labeled.spec} does not name its classes; "
                       "set --num_label_classes")
    names = labeled.class_names or [str(i) for i in range(n)]
    if len(names) != n:
      raise ValueError(f"--num_label_classes={n} but --label_data_dir={labeled.spec} has "
                       f"{len(names)} classes")
    return list(names)

  def model_cfg(self, model_name: Optional[str] = None) -> config_lib.ModelConfig:
    return dataclasses.replace(self.cfg.model, model_name=model_name or
                               self.cfg.model.model_name,
                               num_label_classes=len(self.class_names))

  def load(self, info: ModelInfo):
    with self.strategy.scope():
      return train_lib.load_for_inference(info["path"])

  def path(self, *parts: str) -> str:
    return "/".join([self.root, *parts])


def _info(path: str, model_cfg: config_lib.ModelConfig) -> ModelInfo:
  size = model_cfg.input_image_size or efficientnet.native_resolution(model_cfg.model_name)
  return {"path": path, "model_name": model_cfg.model_name, "image_size": size,
          "small_image": model_cfg.small_image}


def info_of(path: str) -> ModelInfo:
  """A model_dir, or a pipeline's model_dir (its last model: fine-tuned, else the last
  student, else the teacher), or a .keras file -> ModelInfo."""
  markers = Markers(path)
  done = markers.done()
  students = sorted((int(n.split("-")[1]) for n in done if re.fullmatch(r"student-\d+", n)))
  for name in ["finetune"] + [f"student-{i}" for i in reversed(students)] + ["teacher"]:
    if name in done:
      return markers.get(name)["result"]
  directory = path.rsplit("/", 1)[0] if path.endswith(".keras") else path
  return _info(path, checkpoints.read_build_config(directory)["model"])


def _train(ctx: Context, model_cfg, train_cfg, pseudo_labels=None) -> ModelInfo:
  result = train_lib.train(model_cfg, ctx.cfg.data, train_cfg, ctx.cfg.distribute,
                           labeled_source=ctx.source("label"), pseudo_labels=pseudo_labels,
                           class_names=ctx.class_names, strategy=ctx.strategy)
  return dict(_info(train_cfg.model_dir, model_cfg), global_step=result.global_step)


def _train_cfg(ctx: Context, directory: str, **changes) -> config_lib.TrainConfig:
  return dataclasses.replace(ctx.cfg.train, model_dir=ctx.path(directory),
                             pseudo_label_dir=None, teacher_model_path=None,
                             teacher_model_name=None, **changes)


def train_teacher(ctx: Context) -> ModelInfo:
  """Supervised teacher on the labeled data (noised as the paper's teacher is)."""
  steps = ctx.cfg.pipeline.teacher_train_steps or ctx.cfg.train.train_steps
  return _train(ctx, ctx.model_cfg(), _train_cfg(ctx, "teacher", unlabel_ratio=0.0,
                                                  train_steps=steps))


def train_student(ctx: Context, i: int, model_name: str, ratio: float,
                  balanced: Dict[str, Any]) -> ModelInfo:
  """Noised student on labeled + balanced pseudo-labeled data, from scratch."""
  pseudo = tfrecords.read_pseudo_labels(balanced["output_dir"], balanced["plan_path"])
  return _train(ctx, ctx.model_cfg(model_name),
                _train_cfg(ctx, f"student_{i}", unlabel_ratio=ratio), pseudo)


def evaluate_model(ctx: Context, info: ModelInfo, name: str) -> Dict[str, Any]:
  """Top-1 / top-5 of a model on --eval_data_dir; report files under <root>/eval."""
  source = ctx.source("eval")
  if source.class_names and source.class_names != ctx.class_names:
    raise ValueError(f"--eval_data_dir={source.spec} has classes {source.class_names[:5]}"
                     f"..., the labeled data {ctx.class_names[:5]}...; they must match")
  ds = data_pipeline.eval_dataset(source, image_size=info["image_size"],
                                  batch_size=ctx.cfg.predict.eval_batch_size,
                                  small_image=info["small_image"])
  result = evaluate_lib.evaluate(ctx.load(info), ds, class_names=ctx.class_names,
                                 strategy=ctx.strategy)
  report = evaluate_lib.write_report(result, ctx.path("eval"), name=name,
                                     step=info.get("global_step", 0))
  return {"top1": result.top1, "top5": result.top5, "top_k": result.top_k,
          "num_images": result.num_images, "report": report}


def predict_pseudo_labels(ctx: Context, teacher: ModelInfo, output_dir: str,
                          predict_cfg: Optional[config_lib.PredictConfig] = None
                          ) -> Dict[str, Any]:
  """The un-noised teacher labels --unlabel_data_dir into shards in `output_dir`."""
  pcfg = dataclasses.replace(predict_cfg or ctx.cfg.predict, output_dir=output_dir)
  summary = predict_lib.predict(
      ctx.load(teacher), ctx.source("unlabel"), pcfg, image_size=teacher["image_size"],
      class_names=ctx.class_names, num_label_classes=len(ctx.class_names),
      strategy=ctx.strategy, teacher_id=teacher["path"],
      small_image=teacher["small_image"])
  return {"output_dir": output_dir, "records_written": summary.records_written,
          "corrupt_skipped": summary.corrupt_skipped}


def balance_pseudo_labels(ctx: Context, pseudo: Dict[str, Any]) -> Dict[str, Any]:
  """Filter by confidence and balance per class: a plan the student's reader applies."""
  result = balance_lib.balance(pseudo["output_dir"], ctx.cfg.filter,
                               class_names=ctx.class_names)
  if not result.report["totals"]["after"]:
    raise ValueError(f"no pseudo-label in {pseudo['output_dir']} reaches --min_threshold="
                     f"{ctx.cfg.filter.min_threshold}; train the teacher longer or lower it")
  return {"output_dir": pseudo["output_dir"], "plan_path": result.plan_path,
          "report_path": result.report_path, "totals": result.report.get("totals")}


def finetune_model(ctx: Context, info: ModelInfo) -> ModelInfo:
  """The FixRes step on the last student; saved as <root>/finetune/final.keras."""
  model_cfg = checkpoints.read_build_config(info["path"])["model"]
  out = ctx.path("finetune")
  tuned = finetune_lib.finetune(
      ctx.load(info), ctx.source("label"), ctx.cfg.pipeline, model_cfg=model_cfg,
      train_size=info["image_size"], batch_size=ctx.cfg.train.train_batch_size,
      strategy=ctx.strategy, seed=ctx.cfg.data.seed,
      shuffle_buffer=ctx.cfg.data.shuffle_buffer, output_dir=out)
  size = int(tuned.input_shape[1])
  checkpoints.write_build_config(
      out, dataclasses.replace(model_cfg, input_image_size=size), ctx.class_names, False)
  return dict(info, path=f"{out}/{checkpoints.FINAL_MODEL}", image_size=size,
              finetuned_from=info["path"])


def export_model(ctx: Context, info: ModelInfo) -> Dict[str, Any]:
  """SavedModel of `info` (EMA weights, eval preprocessing, class names) for serving."""
  size, small = info["image_size"], info["small_image"]
  path = export_lib.export_saved_model(
      ctx.load(info), ctx.cfg.export.export_dir or ctx.path("export"),
      class_names=ctx.class_names, top_k=ctx.cfg.export.top_k,
      preprocess_fn=lambda image: preprocess.preprocess_eval(image, size, small))
  return {"export_path": path}


# Flags that change how fast or how often, never what a phase produces.
_RUNTIME_ONLY = ("model_dir", "log_every_n_steps", "save_checkpoints_steps",
                 "keep_checkpoint_max", "iterations_per_loop", "pseudo_label_dir",
                 "teacher_model_path", "teacher_model_name", "unlabel_ratio")


def _fingerprints(cfg: config_lib.Config) -> Dict[str, Fingerprint]:
  train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _RUNTIME_ONLY}
  predict = {"teacher_softmax_temp": cfg.predict.teacher_softmax_temp}
  return {"data": {"data": cfg.data, "model": cfg.model},
          "train": {"train": train, "teacher_train_steps": cfg.pipeline.teacher_train_steps},
          "predict": predict, "filter": {"filter": cfg.filter},
          "finetune": {k: v for k, v in dataclasses.asdict(cfg.pipeline).items()
                       if k.startswith("finetune")},
          "export": {"export": cfg.export}}


def _student_ratio(cfg: config_lib.Config, i: int) -> float:
  ratios = cfg.pipeline.student_unlabel_ratios
  if not ratios:
    return cfg.train.unlabel_ratio
  return ratios[0] if len(ratios) == 1 else ratios[i - 1]


def plan(cfg: config_lib.Config) -> List[str]:
  """The phase names of this pipeline, in order."""
  names = ["teacher", "eval-teacher"]
  for i in range(1, len(cfg.student_model_names) + 1):
    names += [f"predict-{i}", f"balance-{i}", f"student-{i}", f"eval-student-{i}"]
  if cfg.pipeline.finetune:
    names += ["finetune", "eval-finetune"]
  if cfg.pipeline.export_at_end:
    names.append("export")
  return names


def _row(name: str, model: ModelInfo, result: Dict[str, Any]) -> Dict[str, Any]:
  return {"name": name, "model": model["model_name"], "image_size": model["image_size"],
          "top1": result["top1"], "top5": result["top5"], "top_k": result["top_k"],
          "num_images": result["num_images"], "path": model["path"]}


def run_pipeline(cfg: config_lib.Config, ctx: Optional[Context] = None
                 ) -> List[Dict[str, Any]]:
  """Runs (or resumes) the whole loop; returns the results table's rows, teacher first."""
  ctx = ctx or Context(cfg)
  markers, fp = Markers(ctx.root), _fingerprints(cfg)
  logging.info("Pipeline in %s: %s (finished earlier: %s)", ctx.root,
               ", ".join(plan(cfg)), ", ".join(markers.done()) or "none")

  def phase(name, fingerprint, fn, last=False):
    return run_phase(markers, name, {**fp["data"], **fingerprint}, fn, redo_if_changed=last)

  def evaluated(label, model, name, last=False):
    return _row(label, model, phase(f"eval-{name}", {"model": model},
                                    lambda: evaluate_model(ctx, model, name), last))

  model = phase("teacher", fp["train"], lambda: train_teacher(ctx))
  rows = [evaluated("teacher", model, "teacher")]
  for i, name in enumerate(cfg.student_model_names, start=1):
    teacher, ratio = model, _student_ratio(cfg, i)
    pseudo = phase(f"predict-{i}", {"teacher": teacher, **fp["predict"]},
                   lambda: predict_pseudo_labels(ctx, teacher, ctx.path(f"pseudo_{i}")))
    balanced = phase(f"balance-{i}", {"pseudo": pseudo, **fp["filter"]},
                     lambda: balance_pseudo_labels(ctx, pseudo))
    model = phase(f"student-{i}", {"balanced": balanced, "student": name, "ratio": ratio,
                                   **fp["train"]},
                  lambda: train_student(ctx, i, name, ratio, balanced))
    rows.append(evaluated(f"student {i}", model, f"student-{i}"))
  if cfg.pipeline.finetune:
    student = model
    model = phase("finetune", {"model": student, **fp["finetune"]},
                  lambda: finetune_model(ctx, student), last=True)
    rows.append(evaluated("fine-tuned", model, "finetune", last=True))
  evaluate_lib.write_results(rows, ctx.root)
  if cfg.pipeline.export_at_end:
    final = model
    exported = phase("export", {"model": final, **fp["export"]},
                     lambda: export_model(ctx, final), last=True)
    logging.info("Exported %s to %s", final["path"], exported["export_path"])
  return rows


def run_mode(cfg: config_lib.Config) -> Any:
  """Runs one `--mode` (see flags/pipeline.py) and returns what it produced."""
  ctx = Context(cfg)
  if cfg.mode in ("pipeline", "train", "predict"):
    # Multi-worker collectives can only be set up before any other op runs: make the
    # strategy first, and every phase of this run then shares it.
    _ = ctx.strategy
  if cfg.mode == "pipeline":
    return run_pipeline(cfg, ctx)
  if cfg.mode == "train":
    # A pseudo-label directory is read with the balance plan the filter phase wrote
    # into it, if any (noisy_student.train.inputs.unlabeled_records).
    return train_lib.train(ctx.model_cfg(), cfg.data, cfg.train, cfg.distribute,
                           labeled_source=ctx.source("label"),
                           pseudo_labels=cfg.train.pseudo_label_dir,
                           class_names=ctx.class_names, strategy=ctx.strategy)
  if cfg.mode == "predict":
    teacher = info_of(cfg.predict.predict_ckpt_path or ctx.root)
    return predict_pseudo_labels(ctx, teacher, cfg.predict.output_dir, cfg.predict)
  if cfg.mode == "filter":
    return balance_pseudo_labels(ctx, {"output_dir": cfg.predict.output_dir})
  info = info_of(ctx.root)
  if cfg.mode == "eval":
    result = evaluate_model(ctx, info, "eval")
    logging.info("top-1 %.4f top-%d %.4f on %d images", result["top1"], result["top_k"],
                 result["top5"], result["num_images"])
    return result
  if cfg.mode == "export":
    return export_model(ctx, info)
  raise ValueError(f"--mode={cfg.mode}: unknown")
