"""`--mode` dispatch: one checked Config -> the phases it names.

    from noisy_student import config, modes
    modes.run(config.Config(mode="pipeline"))      # the Python API of the command line

Nothing below this module imports it back: the phase loop (pipeline.py) and the ablations
(ablations.py) are called from here only.
"""
from __future__ import annotations

from typing import Any

from absl import logging

from noisy_student import ablations
from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import context
from noisy_student import input_checks
from noisy_student import lock
from noisy_student import pipeline
from noisy_student import train as train_lib


def run(cfg: config_lib.Config) -> Any:
  """Checks `cfg` (ConfigError lists every problem), takes the lock of its model_dir
  (faults.Locked when another run holds it) and runs its mode; returns what the mode
  produced (the results rows, a TrainResult, a phase result)."""
  checks.check(cfg)
  checks.storage(cfg)
  with lock.hold(cfg.train.model_dir, enabled=lock.holds_lock(cfg)):
    return _run(cfg)


def _run(cfg: config_lib.Config) -> Any:
  ctx = context.Context(cfg)
  if cfg.mode in ("pipeline", "train", "predict", "ablate"):
    # Multi-worker collectives can only be set up before any other op runs: make the
    # strategy first, and every phase of this run then shares it.
    _ = ctx.strategy
  input_checks.check(ctx)  # Classes agree, images decode: before any work.
  if cfg.mode == "pipeline":
    return pipeline.run_pipeline(cfg, ctx)
  if cfg.mode == "ablate":
    return ablations.run_ablations(cfg, ctx)
  if cfg.mode == "train" and cfg.train.teacher_model_path:
    return pipeline.train_with_teacher(ctx)
  if cfg.mode == "train":
    # A pseudo-label directory is read with the balance plan the filter phase wrote
    # into it, if any (noisy_student.train.inputs.unlabeled_records).
    return train_lib.train(ctx.model_cfg(), cfg.data, cfg.train, cfg.distribute,
                           labeled_source=ctx.source("label"),
                           pseudo_labels=cfg.train.pseudo_label_dir,
                           class_names=ctx.class_names, strategy=ctx.strategy)
  if cfg.mode == "predict":
    teacher = context.trained_model_of(cfg.predict.predict_ckpt_path or ctx.root)
    return pipeline.predict_pseudo_labels(ctx, teacher, checks.pseudo_label_dir(cfg),
                                          cfg.predict)
  if cfg.mode == "filter":
    return pipeline.balance_pseudo_labels(ctx, checks.pseudo_label_dir(cfg))
  model = context.trained_model_of(ctx.root)
  if cfg.mode == "eval":
    result = pipeline.evaluate_model(ctx, model, "eval")
    logging.info("top-1 %.4f top-%d %.4f on %d images", result.top1, result.top_k,
                 result.top5, result.num_images)
    return result
  if cfg.mode == "export":
    return pipeline.export_model(ctx, model)
  raise ValueError(f"--mode={cfg.mode}: unknown; known: {', '.join(config_lib.MODES)}")
