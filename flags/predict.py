"""Pseudo-labelling flags (-> `PredictConfig`)."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the predict flags on `fv` (the original's names are aliases)."""
  d = config_lib.PredictConfig()
  flags.DEFINE_string("predict_ckpt_path", None,
                      "Teacher model_dir for --mode=predict; unset: --model_dir.",
                      flag_values=fv)
  flags.DEFINE_string("output_dir", None,
                      "Where pseudo-label shards go; unset: <model_dir>/pseudo.",
                      flag_values=fv)
  flags.DEFINE_integer("eval_batch_size", d.eval_batch_size,
                       "Batch size of prediction and evaluation.", flag_values=fv)
  flags.DEFINE_integer("num_shards", d.num_shards, "Output shards per worker.",
                       flag_values=fv)
  flags.DEFINE_integer("worker_index", d.worker_index,
                       "This worker's index among --num_workers.", flag_values=fv)
  flags.DEFINE_integer("num_workers", d.num_workers,
                       "Workers splitting the unlabeled data (any count).", flag_values=fv)
  # The original's names for the same two things.
  flags.DEFINE_alias("worker_id", "worker_index", flag_values=fv)
  flags.DEFINE_alias("total_replicas", "num_workers", flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.PredictConfig:
  """Reads the predict flags (predict stores T = 1 probabilities: the temperature is
  training's)."""
  output_dir = fv.output_dir or f"{fv.model_dir.rstrip('/')}/pseudo"
  return config_lib.PredictConfig(
      predict_ckpt_path=fv.predict_ckpt_path, output_dir=output_dir,
      eval_batch_size=fv.eval_batch_size, num_shards=fv.num_shards,
      worker_index=fv.worker_index, num_workers=fv.num_workers)
