"""Filter and balance flags (-> `FilterConfig`)."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the filter flags on `fv`."""
  d = config_lib.FilterConfig()
  flags.DEFINE_float("min_threshold", d.min_threshold,
                     "Drop pseudo-labels whose confidence is below this (paper: 0.3).",
                     flag_values=fv)
  flags.DEFINE_integer("num_image", d.num_image,
                       "Target images per class (paper: 130000); 0 keeps all that pass.",
                       flag_values=fv)
  flags.DEFINE_bool("upsample", d.upsample, "Duplicate classes short of --num_image.",
                    flag_values=fv)
  flags.DEFINE_bool("exact_topk", d.exact_topk,
                    "Exact per-class top-K (records must fit in memory).", flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.FilterConfig:
  """Reads the filter flags; the seed is the data seed."""
  return config_lib.FilterConfig(
      min_threshold=fv.min_threshold, num_image=fv.num_image, upsample=fv.upsample,
      exact_topk=fv.exact_topk, seed=fv.seed)
