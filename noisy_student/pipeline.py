"""The phases of a run and `--mode=pipeline`'s loop over them:
teacher -> (predict, filter, student, eval) x N -> fine-tune -> export.

Each phase records its completion in `<model_dir>/phases/<phase>.json` (written atomically
when the phase has finished) with a fingerprint of the settings it depends on and its
typed result (noisy_student/results.py). A run started again with the same settings skips
the finished phases and resumes the one it was in: training resumes from its last
checkpoint and predict from its last complete shard, so a pipeline killed anywhere loses
at most one checkpoint period of work. A finished phase whose settings changed is refused
(with the settings that differ) instead of being mixed with new results.

Layout of `<model_dir>`:
  config.json              the resolved settings of the latest run
  phases/*.json            completion markers (with --iterations=auto also the held-out
                           split's, each model's held-out result and how the loop ended)
  teacher/, student_<i>/   training runs (checkpoints, TensorBoard, build_config.json)
  pseudo_<i>/              pseudo-label shards, balance plan, report and plot
  finetune/final.keras     the fine-tuned last student (with --finetune)
  eval/                    per-model eval JSON, confusion PNGs, TensorBoard scalars
  results.json / .png      the table of every model's top-1 / top-5, and its plot
  export/<version>/        the SavedModel for serving
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow as tf

from noisy_student import balance as balance_lib
from noisy_student import config as config_lib
from noisy_student import context as context_lib
from noisy_student.context import Context, class_names_of, trained, trained_model_of
from noisy_student import evaluate as evaluate_lib
from noisy_student import export as export_lib
from noisy_student import finetune as finetune_lib
from noisy_student import iterations as iterations_lib
from noisy_student import phases
from noisy_student import predict as predict_lib
from noisy_student import robustness
from noisy_student import teacher_check
from noisy_student import train as train_lib
from noisy_student.data import datasets
from noisy_student.results import (BalancedPseudoLabels, Evaluation, Exported, PseudoLabels,
                                   TeacherCheck, TrainedModel)
from noisy_student.train import checkpoints
import tfrecords
from tfrecords import integrity


def _train(ctx: Context, model_cfg, train_cfg, pseudo_labels=None) -> TrainedModel:
  result = train_lib.train(model_cfg, ctx.cfg.data, train_cfg, ctx.cfg.distribute,
                           labeled_source=ctx.source("label"), pseudo_labels=pseudo_labels,
                           class_names=ctx.class_names, strategy=ctx.strategy)
  return trained(train_cfg.model_dir, model_cfg, global_step=result.global_step)


def _train_cfg(ctx: Context, directory: str, **changes) -> config_lib.TrainConfig:
  return dataclasses.replace(ctx.cfg.train, model_dir=ctx.path(directory),
                             pseudo_label_dir=None, teacher_model_path=None,
                             teacher_model_name=None, **changes)


def teacher_length(cfg: config_lib.Config) -> Dict[str, Any]:
  """The teacher's TrainConfig length fields: --teacher_train_steps, else
  --teacher_train_epochs, else the students' (--train_steps, else --train_epochs).
  --train_ratio is the students' (the original sets it in its student runs, train.sh)."""
  pl = cfg.pipeline
  if pl.teacher_train_steps:
    return {"train_steps": pl.teacher_train_steps, "train_ratio": 1.0}
  if pl.teacher_train_epochs:
    return {"train_steps": None, "train_epochs": pl.teacher_train_epochs, "train_ratio": 1.0}
  return {"train_ratio": 1.0}


def teacher_model_cfg(ctx: Context) -> config_lib.ModelConfig:
  """The teacher's network: --model_name at --teacher_image_size when set (the paper's B7
  teacher ran at 600 while its L2 students trained at 475)."""
  model_cfg = ctx.model_cfg()
  size = ctx.cfg.pipeline.teacher_image_size
  return dataclasses.replace(model_cfg, input_image_size=size) if size else model_cfg


def train_teacher(ctx: Context) -> TrainedModel:
  """Supervised teacher on the labeled data (noised as the paper's teacher is)."""
  return _train(ctx, teacher_model_cfg(ctx),
                _train_cfg(ctx, "teacher", unlabel_ratio=0.0, **teacher_length(ctx.cfg)))


def _teacher_length_flag(cfg: config_lib.Config) -> str:
  """The flag that sets the teacher's length in this run."""
  if cfg.pipeline.teacher_train_steps:
    return "--teacher_train_steps"
  if cfg.pipeline.teacher_train_epochs or not cfg.train.train_steps:
    return "--teacher_train_epochs"
  return "--teacher_train_steps (or --train_steps)"


def check_teacher(ctx: Context, teacher: TrainedModel, held_out: float) -> TeacherCheck:
  """The teacher on its own labeled images, un-noised: a loud warning, with the flag to
  raise, when it under-fits (noisy_student/teacher_check.py)."""
  images = checkpoints.schedule_images(teacher.directory, None)
  epochs = (teacher.global_step * ctx.cfg.train.train_batch_size / images) if images else 0
  result = teacher_check.check(
      ctx.load(teacher), ctx.source("label"), model_dir=teacher.directory,
      image_size=teacher.image_size, small_image=teacher.small_image,
      batch_size=ctx.cfg.eval.eval_batch_size, epochs=epochs,
      length_flag=_teacher_length_flag(ctx.cfg), strategy=ctx.strategy,
      jit_compile=ctx.jit_compile)
  return dataclasses.replace(result, held_out_accuracy=held_out)


def train_student(ctx: Context, i: int, model_name: str, ratio: float,
                  balanced: BalancedPseudoLabels, directory: Optional[str] = None
                  ) -> TrainedModel:
  """Noised student on labeled + balanced pseudo-labeled data, from scratch, in
  `<root>/<directory>` (default `student_<i>`)."""
  pseudo = tfrecords.read_pseudo_labels(balanced.output_dir, balanced.plan_path,
                                        relabel_dir=balanced.relabel_dir)
  return _train(ctx, ctx.model_cfg(model_name),
                _train_cfg(ctx, directory or f"student_{i}", unlabel_ratio=ratio), pseudo)


def train_with_teacher(ctx: Context) -> train_lib.TrainResult:
  """--mode=train with --teacher_model_path: the original's own student training, with
  the teacher run on the fly on --unlabel_data_dir's raw images (its SVHN run.sh).

  The teacher (a model_dir, a pipeline's model_dir: its last model, or a .keras file)
  runs un-noised at its own resolution; its build_config.json names it, so
  --teacher_model_name (which the original needs to rebuild the graph) is optional and
  must agree when given.
  """
  cfg = ctx.cfg
  teacher = trained_model_of(cfg.train.teacher_model_path)
  name = cfg.train.teacher_model_name
  if name and name != teacher.model_name:
    raise ValueError(f"--teacher_model_name={name}, but --teacher_model_path="
                     f"{cfg.train.teacher_model_path} holds a {teacher.model_name} (its "
                     "build_config.json); drop the flag or give the matching name")
  if teacher.small_image != cfg.model.small_image:
    raise ValueError(f"--teacher_model_path={cfg.train.teacher_model_path} was trained "
                     f"with small_image={teacher.small_image}, the student has "
                     f"--small_image={cfg.model.small_image}; they must match (the "
                     "teacher's view is preprocessed by the student's path)")
  train_cfg = dataclasses.replace(cfg.train, teacher_model_path=teacher.path)
  logging.info("On-the-fly teacher: %s (%s, %d px) labels %s.", teacher.path,
               teacher.model_name, teacher.image_size, cfg.data.unlabel_data_dir)
  return train_lib.train(ctx.model_cfg(), cfg.data, train_cfg, cfg.distribute,
                         labeled_source=ctx.source("label"),
                         pseudo_labels=ctx.source("unlabel"), class_names=ctx.class_names,
                         strategy=ctx.strategy)


def evaluate_model(ctx: Context, model: TrainedModel, name: str) -> Evaluation:
  """Top-1 / top-5 of a model on --eval_data_dir, and its robustness report when
  --robustness (mCE, mFR, FGSM in the result); report files under <root>/eval."""
  names = class_names_of(model)
  source = ctx.source("eval")
  if source.class_names and source.class_names != names:
    raise ValueError(f"--eval_data_dir={source.spec} has classes {source.class_names[:5]}"
                     f"..., the model {model.path} {names[:5]}...; they must match")
  ds = _eval_data(ctx, model)
  keras_model = ctx.load(model)
  result = evaluate_lib.evaluate(keras_model, ds, class_names=names, strategy=ctx.strategy,
                                 jit_compile=ctx.jit_compile)
  report = evaluate_lib.write_report(result, ctx.path("eval"), name=name,
                                     step=model.global_step)
  extra = (_robustness(ctx, model, name, keras_model, ds) if ctx.cfg.robustness.enabled
           else {})
  return Evaluation(top1=result.top1, top5=result.top5, top_k=result.top_k,
                    num_images=result.num_images, report=report, robustness=extra)


def _eval_data(ctx: Context, model: TrainedModel):
  return datasets.eval_dataset(ctx.source("eval"), image_size=model.image_size,
                               batch_size=ctx.cfg.eval.eval_batch_size,
                               small_image=model.small_image)


def _robustness(ctx: Context, model: TrainedModel, name: str, keras_model, ds
                ) -> Dict[str, Any]:
  """The robustness report of an evaluated model, relative to `_robustness_baseline`.

  A pipeline's teacher is its own baseline (its mCE and mFR are 100), unless
  --robustness_baseline names another model.
  """
  baseline = _robustness_baseline(ctx, name)
  result = robustness.evaluate_robustness(
      keras_model, ds, ctx.cfg.robustness, image_size=model.image_size, baseline=baseline,
      strategy=ctx.strategy, batch_size=ctx.cfg.eval.eval_batch_size, name=name,
      seed=ctx.cfg.data.seed, jit_compile=ctx.jit_compile)
  if baseline is None and name == "teacher":
    robustness.normalise(result, result)
  path = robustness.write_report(result, ctx.path("eval"), name=name,
                                 step=model.global_step)
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
  settings = robustness.settings_of(ctx.cfg.robustness, ctx.cfg.data.seed)
  if tf.io.gfile.exists(cached):
    report = robustness.read_report(cached)
    if report.get("model_path") == path and report["settings"] == settings:
      return report
  model = trained_model_of(path)
  result = robustness.evaluate_robustness(
      ctx.load(model), _eval_data(ctx, model), ctx.cfg.robustness,
      image_size=model.image_size, strategy=ctx.strategy,
      batch_size=ctx.cfg.eval.eval_batch_size, name="baseline", seed=ctx.cfg.data.seed,
      jit_compile=ctx.jit_compile)
  result["model_path"] = path
  robustness.write_report(robustness.normalise(result, result), ctx.path("eval"),
                          name="baseline")
  return result


def predict_pseudo_labels(ctx: Context, teacher: TrainedModel, output_dir: str,
                          predict_cfg: Optional[config_lib.PredictConfig] = None
                          ) -> PseudoLabels:
  """The un-noised teacher labels --unlabel_data_dir into shards in `output_dir`:
  in-process, or as one Beam job on --runner (which writes the balance plan too)."""
  pcfg = dataclasses.replace(predict_cfg or ctx.cfg.predict, output_dir=output_dir)
  names = class_names_of(teacher)
  # Relative to the shards, so a moved model_dir resumes its own (phases.py); the same
  # on Beam, so either can finish the other's directory.
  teacher_id = phases.relative_path(teacher.path, output_dir)
  if pcfg.runner:
    from noisy_student import beam  # pylint: disable=g-import-not-at-top (optional extra)
    summary = beam.predict(
        teacher.path, ctx.source("unlabel"), pcfg, filter_cfg=ctx.cfg.filter,
        image_size=teacher.image_size, batch_size=ctx.cfg.eval.eval_batch_size,
        class_names=names, teacher_id=teacher_id, teacher_aliases=(teacher.path,),
        seed=ctx.cfg.data.seed, small_image=teacher.small_image,
        distribute_cfg=ctx.cfg.distribute)
    return PseudoLabels(output_dir=output_dir, records_written=summary.records_written,
                        corrupt_skipped=summary.corrupt_skipped)
  summary = predict_lib.predict(
      ctx.load(teacher), ctx.source("unlabel"), pcfg, image_size=teacher.image_size,
      batch_size=ctx.cfg.eval.eval_batch_size,
      class_names=names, num_label_classes=len(names), strategy=ctx.strategy,
      teacher_id=teacher_id, teacher_aliases=(teacher.path,),
      small_image=teacher.small_image, jit_compile=ctx.jit_compile)
  return PseudoLabels(output_dir=output_dir, records_written=summary.records_written,
                      corrupt_skipped=summary.corrupt_skipped)


def heal_pseudo_labels(ctx: Context, teacher: TrainedModel, output_dir: str) -> None:
  """Before a finished predict phase's shards are read: a missing or damaged shard (cut,
  bit-flipped, deleted) re-opens predict for those shards only; the others are kept."""
  found = integrity.problems(output_dir)
  if not found:
    return
  fp = tfrecords.list_manifests(output_dir)
  total = (fp[0]["fingerprint"]["num_workers"] * fp[0]["fingerprint"]["num_shards"]
           if fp else len(found))
  logging.warning("predict: %s; re-opening predict for those shards only (the others "
                  "are kept).", integrity.describe(found, total))
  predict_pseudo_labels(ctx, teacher, output_dir)
  integrity.check_complete(tfrecords.list_manifests(output_dir), output_dir)


def balance_pseudo_labels(ctx: Context, pseudo_dir: str,
                          plan_dir: Optional[str] = None) -> BalancedPseudoLabels:
  """Filter by confidence and balance per class: a plan the student's reader applies,
  written into the pseudo-label directory or `plan_dir`. Class names are the ones the
  predict phase recorded (its teacher's)."""
  result = balance_lib.balance(pseudo_dir, ctx.cfg.filter, output_dir=plan_dir,
                               seed=ctx.cfg.data.seed)
  totals = result.report.get("totals") or {}
  if not totals.get("after"):
    raise ValueError(f"no pseudo-label in {pseudo_dir} reaches --min_threshold="
                     f"{ctx.cfg.filter.min_threshold}; train the teacher longer or lower it")
  return BalancedPseudoLabels(output_dir=pseudo_dir, plan_path=result.plan_path,
                              report_path=result.report_path, totals=totals)


def finetune_model(ctx: Context, model: TrainedModel) -> TrainedModel:
  """The FixRes step on the last student; saved as <root>/finetune/final.keras."""
  build = checkpoints.read_build_config(model.directory)
  out = ctx.path("finetune")
  tuned = finetune_lib.finetune(
      ctx.load(model), ctx.source("label"), ctx.cfg.pipeline, model_cfg=build["model"],
      train_size=model.image_size, batch_size=ctx.cfg.train.train_batch_size,
      strategy=ctx.strategy, seed=ctx.cfg.data.seed,
      shuffle_buffer=ctx.cfg.data.shuffle_buffer, output_dir=out)
  size = int(tuned.input_shape[1])
  checkpoints.write_build_config(
      out, dataclasses.replace(build["model"], input_image_size=size),
      build["class_names"], False)
  return dataclasses.replace(model, path=f"{out}/{checkpoints.FINAL_MODEL}",
                             image_size=size, finetuned_from=model.path)


def export_model(ctx: Context, model: TrainedModel) -> Exported:
  """`--export_format` of `model` (EMA weights, eval preprocessing, its class names),
  checked on the eval images and, for int8 LiteRT, calibrated on the labeled ones."""
  cfg = ctx.cfg.export
  return export_lib.export(
      ctx.load(model), cfg,
      cfg.export_dir or ctx.path(export_lib.DEFAULT_DIRS[cfg.export_format]),
      class_names=class_names_of(model), small_image=model.small_image,
      eval_source=ctx.source("eval") if cfg.check_images else None,
      label_source=ctx.source("label") if export_lib.needs_labeled_images(cfg) else None)


# Settings that change how fast, how often or where, never what a phase produces; and the
# ones each phase receives separately (a student's ratio, a phase's directory).
_NOT_IN_FINGERPRINT = ("model_dir", "log_every_n_steps", "divergence_factor",
                       "save_checkpoints_steps", "keep_checkpoint_max",
                       "iterations_per_loop", "pseudo_label_dir",
                       "teacher_model_path", "teacher_model_name", "unlabel_ratio")


def fingerprints(cfg: config_lib.Config) -> Dict[str, phases.Fingerprint]:
  """Per phase kind, the settings its result depends on."""
  train = {k: v for k, v in dataclasses.asdict(cfg.train).items()
           if k not in _NOT_IN_FINGERPRINT}
  # Predict's records depend on no setting of its own: they hold T = 1 probabilities, a
  # convention recorded so markers of older code (which stored softmax(logits / T)) differ.
  predict = {"probabilities_temperature": tfrecords.STORED_TEMPERATURE}
  # The teacher's own length and size: a student-only change does not retrain it.
  teacher = {**train, **teacher_length(cfg),
             "image_size": cfg.pipeline.teacher_image_size or cfg.model.input_image_size}
  # Held-out labeled images change what every model trains on (None: nothing held out).
  held = ({"fraction": cfg.pipeline.validation_fraction}
          if cfg.mode == "pipeline" and cfg.pipeline.iterations == "auto" else None)
  return {"data": {"data": cfg.data, "model": cfg.model, "holdout": held},
          "teacher": {"train": teacher}, "train": {"train": train},
          "predict": predict, "filter": {"filter": cfg.filter},
          "finetune": {k: v for k, v in dataclasses.asdict(cfg.pipeline).items()
                       if k.startswith("finetune")},
          "export": {"export": cfg.export},
          "eval": {"robustness": robustness.settings_of(cfg.robustness, cfg.data.seed)
                   if cfg.robustness.enabled else None}}


def student_ratio(cfg: config_lib.Config, i: int) -> float:
  """Iteration i's unlabeled batch ratio (1-based)."""
  ratios = cfg.pipeline.student_unlabel_ratios
  if ratios:
    return ratios[0] if len(ratios) == 1 else ratios[i - 1]
  if cfg.train.unlabel_ratio is None:
    return config_lib.DEFAULT_STUDENT_UNLABEL_RATIO
  return cfg.train.unlabel_ratio


def plan(cfg: config_lib.Config) -> List[str]:
  """The phase names of this pipeline, in order (with --iterations=auto, up to its cap)."""
  auto = cfg.pipeline.iterations == "auto"
  names = ["validation-split"] if auto else []
  names += ["teacher", "eval-teacher", "check-teacher"] + (["validate-teacher"] if auto
                                                           else [])
  for i in range(1, len(cfg.student_model_names) + 1):
    names += [f"predict-{i}", f"balance-{i}", f"student-{i}", f"eval-student-{i}"]
    names += [f"validate-student-{i}"] if auto else []
  names += ["iterations"] if auto else []
  if cfg.pipeline.finetune:
    names += ["finetune", "eval-finetune"]
  if cfg.pipeline.export_at_end:
    names.append("export")
  return names


def result_row(name: str, model: TrainedModel, result: Evaluation) -> Dict[str, Any]:
  """One line of the results table (JSON-able)."""
  return {"name": name, "model": model.model_name, "image_size": model.image_size,
          "params": context_lib.model_params(model), "top1": result.top1, "top5": result.top5, "top_k": result.top_k,
          "num_images": result.num_images, "path": model.path, **result.robustness}


def notes(rows: List[Dict[str, Any]], checked: TeacherCheck) -> List[str]:
  """What the results table should say under it: the teacher check's warnings and each
  student that is worse than its teacher."""
  out = [f"WARNING: {w}" for w in checked.warnings]
  for teacher, row in zip(rows, rows[1:]):
    if row.get("worse_than_teacher"):
      out.append(f"WARNING: {row['name']} ({100 * row['top1']:.2f}%) is worse than its "
                 f"teacher, {teacher['name']} ({100 * teacher['top1']:.2f}%)")
  return out


def run_pipeline(cfg: config_lib.Config, ctx: Optional[Context] = None
                 ) -> List[Dict[str, Any]]:
  """Runs (or resumes) the whole loop; returns the results table's rows, teacher first."""
  ctx = ctx or Context(cfg)
  markers, fp = phases.Markers(ctx.root), fingerprints(cfg)
  logging.info("Pipeline in %s: %s (finished earlier: %s)", ctx.root,
               ", ".join(plan(cfg)), ", ".join(markers.done()) or "none")

  def phase(name, fingerprint, fn, kind, last=False):
    return phases.run_phase(markers, name, {**fp["data"], **fingerprint}, fn, kind,
                            redo_if_changed=last)

  def evaluated(label, model, name):
    # Redone rather than refused when the eval settings change: it only reads a model.
    return result_row(label, model, phase(f"eval-{name}", {"model": model, **fp["eval"]},
                                          lambda: evaluate_model(ctx, model, name),
                                          Evaluation, last=True))

  rule = iterations_lib.AutoIterations(ctx, phase) if ctx.validation_fraction else None
  model = phase("teacher", fp["teacher"], lambda: train_teacher(ctx), TrainedModel)
  rows = [evaluated("teacher", model, "teacher")]
  teacher = model
  checked = phase("check-teacher", {"model": teacher}, lambda: check_teacher(
      ctx, teacher, rows[0]["top1"]), TeacherCheck, last=True)
  if rule:
    rule.start(teacher, rows[0])
  first = None  # The first iteration's filtered set (--reassign_label relabels it).
  for i, name in enumerate(cfg.student_model_names, start=1):
    teacher, ratio = model, student_ratio(cfg, i)
    pseudo = phase(f"predict-{i}", {"teacher": teacher, **fp["predict"]},
                   lambda: predict_pseudo_labels(ctx, teacher, ctx.path(f"pseudo_{i}")),
                   PseudoLabels)
    if markers.get(f"student-{i}") is None:  # Its shards are still to be read.
      heal_pseudo_labels(ctx, teacher, pseudo.output_dir)
    if cfg.pipeline.reassign_label and i > 1:
      # The first iteration's selection and copies, this teacher's labels.
      balanced = phase(f"balance-{i}", {"pseudo": pseudo, "filtered": first,
                                         "reassign": True},
                       lambda: dataclasses.replace(first, relabel_dir=pseudo.output_dir),
                       BalancedPseudoLabels)
    else:
      balanced = first = phase(f"balance-{i}", {"pseudo": pseudo, **fp["filter"]},
                               lambda: balance_pseudo_labels(ctx, pseudo.output_dir),
                               BalancedPseudoLabels)
    model = phase(f"student-{i}", {"balanced": balanced, "student": name, "ratio": ratio,
                                   **fp["train"]},
                  lambda: train_student(ctx, i, name, ratio, balanced), TrainedModel)
    row = evaluated(f"student {i}", model, f"student-{i}")
    rows.append(dict(row, worse_than_teacher=row["top1"] < rows[-1]["top1"]))
    if rule and not rule.judge(i, model, rows[-1]):
      break
  outcome = rule.finish() if rule else None
  model = outcome.final_model if outcome else model
  if cfg.pipeline.finetune:
    student = model
    model = phase("finetune", {"model": student, **fp["finetune"]},
                  lambda: finetune_model(ctx, student), TrainedModel, last=True)
    rows.append(evaluated("fine-tuned", model, "finetune"))
  evaluate_lib.write_results(
      rows, ctx.root, notes=notes(rows, checked) + (
          [f"Iterations: {outcome.reason}."] if outcome else []),
      teacher_check=checked.to_json(),
      iterations=iterations_lib.summary(cfg, rows, outcome))
  if cfg.pipeline.export_at_end:
    final = model
    exported = phase("export", {"model": final, **fp["export"]},
                     lambda: export_model(ctx, final), Exported, last=True)
    logging.info("Exported %s to %s", final.path, exported.export_path)
  return rows
