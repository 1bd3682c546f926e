"""Ablation flags (-> `AblationConfig`), read by `--mode=ablate`."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the ablation flags on `fv`."""
  d = config_lib.AblationConfig()
  flags.DEFINE_list(
      "ablations", list(d.ablations),
      "--mode=ablate: variants of the iteration-1 student to train besides the main arm "
      "(teacher and --ablation_iterations students): no_noise, no_randaugment, "
      "no_dropout, no_stochastic_depth, hard_labels, balance, no_filter, larger_student.",
      flag_values=fv)
  flags.DEFINE_list("ablation_seeds", [str(s) for s in d.seeds],
                    "--mode=ablate: seeds; each seed is a whole run (data split, init, "
                    "noise) in <model_dir>/seed_<s>.", flag_values=fv)
  flags.DEFINE_integer("ablation_iterations", d.iterations,
                       "--mode=ablate: Noisy Student iterations of the main arm.",
                       flag_values=fv)
  flags.DEFINE_float("ablation_larger_scale", d.larger_scale,
                     "--mode=ablate: the larger student's width and depth coefficients "
                     "are the teacher's times this.", flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.AblationConfig:
  """Reads the ablation flags; raises ValueError on a seed that is not an integer."""
  try:
    seeds = tuple(int(s) for s in fv.ablation_seeds)
  except ValueError:
    raise ValueError(f"--ablation_seeds={','.join(fv.ablation_seeds)}: "
                     "seeds must be integers") from None
  return config_lib.AblationConfig(
      ablations=tuple(a.strip() for a in fv.ablations), seeds=seeds,
      iterations=fv.ablation_iterations, larger_scale=fv.ablation_larger_scale)
