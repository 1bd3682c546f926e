"""Mode and pipeline flags (-> `Config.mode`, `student_model_names`, `PipelineConfig`)."""
from typing import Tuple

from absl import flags

from noisy_student import config as config_lib

MODES = ("train", "predict", "filter", "eval", "export", "pipeline", "ablate")


def define(fv: flags.FlagValues) -> None:
  """Defines the mode and pipeline flags on `fv`."""
  d = config_lib.PipelineConfig()
  flags.DEFINE_enum(
      "mode", "pipeline", MODES,
      "train: a teacher (or a student with --unlabel_ratio > 0); predict: pseudo-label "
      "--unlabel_data_dir; filter: filter and balance them; eval: top-1/top-5 on "
      "--eval_data_dir; export: a SavedModel for serving; pipeline: all of it, resumable; "
      "ablate: the paper's ablations over seeds (see --ablations).",
      flag_values=fv)
  flags.DEFINE_list(
      "student_model_names", ["efficientnet-b0"],
      "Pipeline: one student model per iteration, e.g. b0,b0,b1.", flag_values=fv)
  flags.DEFINE_list(
      "student_unlabel_ratios", [],
      "Pipeline: unlabel_ratio per iteration (paper L2: 14,14,28); unset: --unlabel_ratio.",
      flag_values=fv)
  flags.DEFINE_integer("teacher_train_steps", None,
                       "Pipeline: the teacher's steps; unset: --train_steps.",
                       flag_values=fv)
  flags.DEFINE_bool("allow_smaller_student", d.allow_smaller_student,
                    "Allow a student smaller than its teacher (the paper's never is).",
                    flag_values=fv)
  flags.DEFINE_bool("finetune", d.finetune,
                    "Pipeline: fine-tune the last student at the test resolution on "
                    "unaugmented labeled images, shallow layers frozen (FixRes).",
                    flag_values=fv)
  flags.DEFINE_integer("finetune_image_size", None,
                       "Fine-tune and test resolution; unset: 1.15 x the training size.",
                       flag_values=fv)
  flags.DEFINE_float("finetune_epochs", d.finetune_epochs,
                     "Fine-tune passes over the labeled images.", flag_values=fv)
  flags.DEFINE_float("finetune_learning_rate", d.finetune_learning_rate,
                     "Fine-tune SGD rate per 256 images.", flag_values=fv)
  flags.DEFINE_float("finetune_frozen_fraction", d.finetune_frozen_fraction,
                     "Leading share of the layers frozen while fine-tuning.",
                     flag_values=fv)
  flags.DEFINE_bool("export_at_end", d.export_at_end,
                    "Pipeline: export the last model for serving.", flag_values=fv)


def _floats(values, flag: str) -> Tuple[float, ...]:
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated numbers") from None


def to_config(fv: flags.FlagValues) -> config_lib.PipelineConfig:
  """Reads the pipeline flags."""
  return config_lib.PipelineConfig(
      teacher_train_steps=fv.teacher_train_steps,
      student_unlabel_ratios=_floats(fv.student_unlabel_ratios, "student_unlabel_ratios"),
      allow_smaller_student=fv.allow_smaller_student,
      finetune=fv.finetune,
      finetune_image_size=fv.finetune_image_size,
      finetune_epochs=fv.finetune_epochs,
      finetune_learning_rate=fv.finetune_learning_rate,
      finetune_frozen_fraction=fv.finetune_frozen_fraction,
      export_at_end=fv.export_at_end)
