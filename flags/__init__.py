"""All command-line flags of `noisy-student`, grouped, and their translation to a Config.

Only the entry point (`noisy_student.main`) uses this package:

  flags.define_all()                     # once, before absl parses argv
  config = flags.to_config(FLAGS)        # -> noisy_student.config.Config
  errors = flags.validate(config, mode)  # one line per problem, before any work

Flag names follow the original noisystudent code where they mean the same thing;
`--worker_id` / `--total_replicas` are aliases of `--worker_index` / `--num_workers`.
Presets live in `flags/presets/*.flags` (use them with `--flagfile=`).
"""
import dataclasses
import os
from typing import List

from absl import flags as absl_flags

from flags import ablation as ablation_flags
from flags import data as data_flags
from flags import distribute as distribute_flags
from flags import export as export_flags
from flags import filter as filter_flags
from flags import model as model_flags
from flags import pipeline as pipeline_flags
from flags import predict as predict_flags
from flags import robustness as robustness_flags
from flags import train as train_flags
from flags import validate as validate_module
from flags.validate import ConfigError, normalize_model_name, validate
from noisy_student import config as config_lib

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")

_GROUPS = (model_flags, data_flags, train_flags, predict_flags, filter_flags,
           distribute_flags, export_flags, pipeline_flags, ablation_flags,
           robustness_flags)

__all__ = ["ConfigError", "PRESETS_DIR", "define_all", "to_config", "validate",
           "normalize_model_name"]


def define_all(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines every group's flags on `flag_values` (call once per FlagValues)."""
  for group in _GROUPS:
    group.define(flag_values)


DEMO_PRESET = os.path.join(PRESETS_DIR, "demo.flags")
DATA_FLAGS = ("label_data_dir", "unlabel_data_dir", "eval_data_dir")


def apply_demo_defaults(fv: absl_flags.FlagValues) -> bool:
  """Without any data flag, the run is the embedded demo: presets/demo.flags becomes the
  default of every flag the user did not set. Returns whether it applied."""
  if any(fv[name].present for name in DATA_FLAGS):
    return False
  with open(DEMO_PRESET, encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip().startswith("--")]
  for line in lines:
    name, _, value = line[2:].partition("=")
    if not fv[name].present:
      fv.set_default(name, value or "true")
  return True


def to_config(flag_values: absl_flags.FlagValues = absl_flags.FLAGS) -> config_lib.Config:
  """Turns parsed flags into the frozen `Config` handed to library code.

  Without data flags the embedded demo's recipe fills in the unset flags (see
  `apply_demo_defaults`). Model names are normalised ('b0' -> 'efficientnet-b0'). Raises
  `ConfigError` (one line) when a flag cannot be read, e.g. non-numeric ratios.
  """
  fv = flag_values
  apply_demo_defaults(fv)
  try:
    model = model_flags.to_config(fv)
    pipeline = pipeline_flags.to_config(fv)
    ablation = ablation_flags.to_config(fv)
    robustness = robustness_flags.to_config(fv)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  model = dataclasses.replace(model, model_name=normalize_model_name(model.model_name))
  train = train_flags.to_config(fv)
  if train.teacher_model_name:
    train = dataclasses.replace(
        train, teacher_model_name=normalize_model_name(train.teacher_model_name))
  students = tuple(normalize_model_name(n) for n in fv.student_model_names)
  return config_lib.Config(
      mode=fv.mode, model=model, data=data_flags.to_config(fv), train=train,
      distribute=distribute_flags.to_config(fv), predict=predict_flags.to_config(fv),
      filter=filter_flags.to_config(fv), export=export_flags.to_config(fv),
      student_model_names=students, pipeline=pipeline, ablation=ablation,
      robustness=robustness)

