"""Robustness flags (-> `RobustnessConfig`): ImageNet-C / -P style tests and FGSM, run by
--mode=eval and at every evaluation of --mode=pipeline (docs/robustness.md)."""
from typing import Tuple

from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the robustness flags on `fv`."""
  d = config_lib.RobustnessConfig()
  flags.DEFINE_bool(
      "robustness", d.enabled,
      "Run the robustness report (corruptions, perturbations, FGSM) in --mode=eval and "
      "for every model --mode=pipeline evaluates.", flag_values=fv)
  flags.DEFINE_list(
      "corruptions", list(d.corruptions),
      "ImageNet-C style corruptions; unset: gaussian_noise, shot_noise, impulse_noise, "
      "defocus_blur, motion_blur, zoom_blur, fog, brightness, contrast, pixelate, "
      "jpeg_compression; 'all' adds the extras speckle_noise, gaussian_blur, saturate "
      "(not in the mCE by default, as in ImageNet-C).", flag_values=fv)
  flags.DEFINE_list("severities", [str(s) for s in d.severities],
                    "Corruption severities, each in 1..5.", flag_values=fv)
  flags.DEFINE_list(
      "perturbations", list(d.perturbations),
      "ImageNet-P style perturbation sequences; unset or 'all': gaussian_noise, "
      "shot_noise, translate, rotate, scale, brightness.", flag_values=fv)
  flags.DEFINE_integer("perturbation_frames", d.perturbation_frames,
                       "Frames per perturbation sequence (ImageNet-P: 31).", flag_values=fv)
  flags.DEFINE_list("fgsm_epsilons", [f"{e:g}" for e in d.fgsm_epsilons],
                    "FGSM step sizes in pixel units of 0..255; empty: no FGSM.",
                    flag_values=fv)
  flags.DEFINE_string(
      "robustness_baseline", d.baseline,
      "The model (model_dir or .keras) or robustness report (.json) that CE / mCE and FR / "
      "mFR are relative to (100 = as robust as it). Unset: the pipeline's teacher when "
      "--model_dir has one, else unnormalised numbers only.", flag_values=fv)
  flags.DEFINE_integer("robustness_max_images", d.max_images,
                       "Use only the first N eval images for the robustness report; "
                       "unset: all.", flag_values=fv)


def _numbers(values, flag: str, kind) -> Tuple:
  try:
    return tuple(kind(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated "
                     f"{'integers' if kind is int else 'numbers'}") from None


def to_config(fv: flags.FlagValues) -> config_lib.RobustnessConfig:
  """Reads the robustness flags; raises ValueError on a list that is not numeric."""
  return config_lib.RobustnessConfig(
      enabled=fv.robustness,
      corruptions=tuple(c.strip() for c in fv.corruptions),
      severities=_numbers(fv.severities, "severities", int),
      perturbations=tuple(p.strip() for p in fv.perturbations),
      perturbation_frames=fv.perturbation_frames,
      fgsm_epsilons=_numbers(fv.fgsm_epsilons, "fgsm_epsilons", float),
      baseline=fv.robustness_baseline,
      max_images=fv.robustness_max_images,
      seed=fv.seed)
