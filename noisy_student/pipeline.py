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
import re
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow as tf

import efficientnet
from noisy_student import balance as balance_lib
from noisy_student import config as config_lib
from noisy_student import evaluate as evaluate_lib
from noisy_student import export as export_lib
from noisy_student import finetune as finetune_lib
from noisy_student import phases
from noisy_student import predict as predict_lib
from noisy_student import robustness
from noisy_student import train as train_lib
from noisy_student.data import pipeline as data_pipeline
from noisy_student.data import preprocess
from noisy_student.data import sources
from noisy_student.train import checkpoints
from noisy_student.train import distribute
import tfrecords

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

  @property
  def jit_compile(self) -> bool:
    """--jit_compile resolved for this run's strategy (eval, predict, robustness)."""
    return distribute.resolve_jit_compile(self.cfg.distribute.jit_compile, self.strategy)

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

  def derive(self, cfg: config_lib.Config) -> "Context":
    """A Context for `cfg` (another root or recipe) sharing this one's strategy, and its
    opened sources when `cfg` reads the same data (the digits split depends on the seed)."""
    other = Context(cfg)
    other._strategy = self._strategy  # pylint: disable=protected-access
    if _source_fields(cfg.data) == _source_fields(self.cfg.data):
      other._sources = self._sources  # pylint: disable=protected-access
    return other


def _source_fields(data: config_lib.DataConfig) -> tuple:
  return (data.label_data_dir, data.unlabel_data_dir, data.eval_data_dir, data.tfds_data_dir,
          data.label_offset, data.seed, data.digits_num_labeled, data.digits_num_test)


def _info(path: str, model_cfg: config_lib.ModelConfig) -> ModelInfo:
  size = model_cfg.input_image_size or efficientnet.native_resolution(model_cfg.model_name)
  return {"path": path, "model_name": model_cfg.model_name, "image_size": size,
          "small_image": model_cfg.small_image}


def info_of(path: str) -> ModelInfo:
  """A model_dir, or a pipeline's model_dir (its last model: fine-tuned, else the last
  student, else the teacher), or a .keras file -> ModelInfo."""
  markers = phases.Markers(path)
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
                  balanced: Dict[str, Any], directory: Optional[str] = None) -> ModelInfo:
  """Noised student on labeled + balanced pseudo-labeled data, from scratch, in
  `<root>/<directory>` (default `student_<i>`)."""
  pseudo = tfrecords.read_pseudo_labels(balanced["output_dir"], balanced["plan_path"])
  return _train(ctx, ctx.model_cfg(model_name),
                _train_cfg(ctx, directory or f"student_{i}", unlabel_ratio=ratio), pseudo)


def evaluate_model(ctx: Context, info: ModelInfo, name: str) -> Dict[str, Any]:
  """Top-1 / top-5 of a model on --eval_data_dir, and its robustness report when
  --robustness (mCE, mFR, FGSM in the result); report files under <root>/eval."""
  source = ctx.source("eval")
  if source.class_names and source.class_names != ctx.class_names:
    raise ValueError(f"--eval_data_dir={source.spec} has classes {source.class_names[:5]}"
                     f"..., the labeled data {ctx.class_names[:5]}...; they must match")
  ds = _eval_data(ctx, info)
  model = ctx.load(info)
  result = evaluate_lib.evaluate(model, ds, class_names=ctx.class_names,
                                 strategy=ctx.strategy, jit_compile=ctx.jit_compile)
  report = evaluate_lib.write_report(result, ctx.path("eval"), name=name,
                                     step=info.get("global_step", 0))
  out = {"top1": result.top1, "top5": result.top5, "top_k": result.top_k,
         "num_images": result.num_images, "report": report}
  if ctx.cfg.robustness.enabled:
    out.update(_robustness(ctx, info, name, model, ds))
  return out


def _eval_data(ctx: Context, info: ModelInfo):
  return data_pipeline.eval_dataset(ctx.source("eval"), image_size=info["image_size"],
                                    batch_size=ctx.cfg.predict.eval_batch_size,
                                    small_image=info["small_image"])


def _robustness(ctx: Context, info: ModelInfo, name: str, model, ds) -> Dict[str, Any]:
  """The robustness report of an evaluated model, relative to `_robustness_baseline`.

  A pipeline's teacher is its own baseline (its mCE and mFR are 100), unless
  --robustness_baseline names another model.
  """
  baseline = _robustness_baseline(ctx, name)
  result = robustness.evaluate_robustness(
      model, ds, ctx.cfg.robustness, image_size=info["image_size"], baseline=baseline,
      strategy=ctx.strategy, batch_size=ctx.cfg.predict.eval_batch_size, name=name,
      jit_compile=ctx.jit_compile)
  if baseline is None and name == "teacher":
    robustness.normalise(result, result)
  path = robustness.write_report(result, ctx.path("eval"), name=name,
                                 step=info.get("global_step", 0))
  return robustness.summary_fields(result, path)


def _robustness_baseline(ctx: Context, name: str) -> Optional[Dict[str, Any]]:
  """--robustness_baseline's report (a model is evaluated once, its report kept in
  <root>/eval/baseline_robustness.json); else, for models other than the teacher, the
  report of the teacher in this model_dir, if it has one; else None."""
  path = ctx.cfg.robustness.baseline
  if path and path.endswith(".json"):
    return robustness.read_report(path)
  if path:
    return _baseline_model_report(ctx, path)
  teacher = phases.Markers(ctx.root).get("eval-teacher")
  report = (teacher or {}).get("result", {}).get("robustness_report")
  if name == "teacher" or not report:
    return None
  return robustness.read_report(report)


def _baseline_model_report(ctx: Context, path: str) -> Dict[str, Any]:
  cached = ctx.path("eval", "baseline_robustness.json")
  settings = robustness.settings_of(ctx.cfg.robustness)
  if tf.io.gfile.exists(cached):
    report = robustness.read_report(cached)
    if report.get("model_path") == path and report["settings"] == settings:
      return report
  info = info_of(path)
  result = robustness.evaluate_robustness(
      ctx.load(info), _eval_data(ctx, info), ctx.cfg.robustness,
      image_size=info["image_size"], strategy=ctx.strategy,
      batch_size=ctx.cfg.predict.eval_batch_size, name="baseline",
      jit_compile=ctx.jit_compile)
  result["model_path"] = path
  robustness.write_report(robustness.normalise(result, result), ctx.path("eval"),
                          name="baseline")
  return result


def predict_pseudo_labels(ctx: Context, teacher: ModelInfo, output_dir: str,
                          predict_cfg: Optional[config_lib.PredictConfig] = None
                          ) -> Dict[str, Any]:
  """The un-noised teacher labels --unlabel_data_dir into shards in `output_dir`."""
  pcfg = dataclasses.replace(predict_cfg or ctx.cfg.predict, output_dir=output_dir)
  summary = predict_lib.predict(
      ctx.load(teacher), ctx.source("unlabel"), pcfg, image_size=teacher["image_size"],
      class_names=ctx.class_names, num_label_classes=len(ctx.class_names),
      strategy=ctx.strategy, teacher_id=teacher["path"],
      small_image=teacher["small_image"], jit_compile=ctx.jit_compile)
  return {"output_dir": output_dir, "records_written": summary.records_written,
          "corrupt_skipped": summary.corrupt_skipped}


def balance_pseudo_labels(ctx: Context, pseudo: Dict[str, Any],
                          plan_dir: Optional[str] = None) -> Dict[str, Any]:
  """Filter by confidence and balance per class: a plan the student's reader applies,
  written into the pseudo-label directory or `plan_dir`."""
  result = balance_lib.balance(pseudo["output_dir"], ctx.cfg.filter, output_dir=plan_dir,
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


def fingerprints(cfg: config_lib.Config) -> Dict[str, phases.Fingerprint]:
  """Per phase kind, the flags its result depends on (runtime-only flags left out)."""
  train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in _RUNTIME_ONLY}
  predict = {"teacher_softmax_temp": cfg.predict.teacher_softmax_temp}
  return {"data": {"data": cfg.data, "model": cfg.model},
          "train": {"train": train, "teacher_train_steps": cfg.pipeline.teacher_train_steps},
          "predict": predict, "filter": {"filter": cfg.filter},
          "finetune": {k: v for k, v in dataclasses.asdict(cfg.pipeline).items()
                       if k.startswith("finetune")},
          "export": {"export": cfg.export},
          "eval": {"robustness": robustness.settings_of(cfg.robustness)
                   if cfg.robustness.enabled else None}}


def student_ratio(cfg: config_lib.Config, i: int) -> float:
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


def result_row(name: str, model: ModelInfo, result: Dict[str, Any]) -> Dict[str, Any]:
  """One line of the results table (JSON-able)."""
  return {"name": name, "model": model["model_name"], "image_size": model["image_size"],
          "top1": result["top1"], "top5": result["top5"], "top_k": result["top_k"],
          "num_images": result["num_images"], "path": model["path"],
          **{k: result[k] for k in robustness.SUMMARY_KEYS if k in result}}


def run_pipeline(cfg: config_lib.Config, ctx: Optional[Context] = None
                 ) -> List[Dict[str, Any]]:
  """Runs (or resumes) the whole loop; returns the results table's rows, teacher first."""
  ctx = ctx or Context(cfg)
  markers, fp = phases.Markers(ctx.root), fingerprints(cfg)
  logging.info("Pipeline in %s: %s (finished earlier: %s)", ctx.root,
               ", ".join(plan(cfg)), ", ".join(markers.done()) or "none")

  def phase(name, fingerprint, fn, last=False):
    return phases.run_phase(markers, name, {**fp["data"], **fingerprint}, fn,
                            redo_if_changed=last)

  def evaluated(label, model, name):
    # Redone rather than refused when the eval flags change: it only reads a model.
    return result_row(label, model, phase(f"eval-{name}", {"model": model, **fp["eval"]},
                                          lambda: evaluate_model(ctx, model, name), True))

  model = phase("teacher", fp["train"], lambda: train_teacher(ctx))
  rows = [evaluated("teacher", model, "teacher")]
  for i, name in enumerate(cfg.student_model_names, start=1):
    teacher, ratio = model, student_ratio(cfg, i)
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
    rows.append(evaluated("fine-tuned", model, "finetune"))
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
  if cfg.mode in ("pipeline", "train", "predict", "ablate"):
    # Multi-worker collectives can only be set up before any other op runs: make the
    # strategy first, and every phase of this run then shares it.
    _ = ctx.strategy
  if cfg.mode == "pipeline":
    return run_pipeline(cfg, ctx)
  if cfg.mode == "ablate":
    from noisy_student import ablations  # pylint: disable=g-import-not-at-top
    return ablations.run_ablations(cfg, ctx)
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
