"""The table of `--mode=ablate`'s variants: each is the iteration-1 student with one thing
changed (its noise, its labels, its balancing, its size). Pure Python, so the command
line checks `--ablations` without loading TensorFlow; noisy_student/ablations.py runs them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict

import efficientnet  # The model table only; this does not load Keras.
from noisy_student.config import Config


def replace(cfg: Config, **groups: Dict[str, Any]) -> Config:
  """cfg with fields of its groups replaced: replace(cfg, model={"dropout_rate": 0})."""
  return dataclasses.replace(cfg, **{
      group: dataclasses.replace(getattr(cfg, group), **changes)
      for group, changes in groups.items()})


def _scaled(cfg: Config) -> Config:
  """A student `larger_scale` times the teacher's width and depth (same resolution)."""
  table = efficientnet.get_model_params(cfg.model.model_name)
  scale = cfg.ablation.larger_scale
  width = cfg.model.width_coefficient or table.width_coefficient
  depth = cfg.model.depth_coefficient or table.depth_coefficient
  return replace(cfg, model={"width_coefficient": width * scale,
                             "depth_coefficient": depth * scale})


def _balance_flipped(cfg: Config, totals: Dict[str, int], num_classes: int) -> Config:
  """Balancing switched: off when the run balances; else on, with the mean per-class
  count of the pseudo-labels that pass the threshold as the target."""
  if cfg.filter.num_image:
    return replace(cfg, filter={"num_image": 0})
  target = max(1, math.ceil(totals["kept_unique"] / num_classes))
  return replace(cfg, filter={"num_image": target, "upsample": True})


@dataclasses.dataclass(frozen=True)
class Variant:
  """A student trained like the iteration-1 student but for `change`."""
  description: str
  paper: str  # The paper's corresponding finding, for the results page.
  change: Callable[[Config, Dict[str, int], int], Config]
  rebalances: bool = False  # Its own balance plan over the iteration-1 pseudo-labels.


_NO_INPUT_NOISE = {"augment_name": None, "small_image_cutout": False}

# One table of the variants; `teacher` and `iteration_<i>` come from the main arm.
VARIANTS: Dict[str, Variant] = {
    "no_noise": Variant(
        "student without noise (no RandAugment, dropout, stochastic depth)",
        "removing the student's noise loses most of the gain",
        lambda cfg, *_: replace(cfg, data=_NO_INPUT_NOISE,
                                 model={"dropout_rate": 0.0, "stochastic_depth_rate": 0.0})),
    "no_randaugment": Variant(
        "student without RandAugment", "each noise contributes",
        lambda cfg, *_: replace(cfg, data=_NO_INPUT_NOISE)),
    "no_dropout": Variant(
        "student without dropout", "each noise contributes",
        lambda cfg, *_: replace(cfg, model={"dropout_rate": 0.0})),
    "no_stochastic_depth": Variant(
        "student without stochastic depth", "each noise contributes",
        lambda cfg, *_: replace(cfg, model={"stochastic_depth_rate": 0.0})),
    "hard_labels": Variant(
        "hard (one-hot) pseudo-labels instead of soft",
        "soft labels beat hard ones for out-of-domain unlabeled data; in-domain they are close",
        lambda cfg, *_: replace(cfg, train={"teacher_softmax_temp": -1.0})),
    "balance": Variant(
        "balancing switched (on with the mean class count as target, or off)",
        "balancing helps, most for small models",
        _balance_flipped, rebalances=True),
    "no_filter": Variant(
        "no confidence filter (every pseudo-label kept)",
        "filtering low-confidence pseudo-labels helps in-domain",
        lambda cfg, *_: replace(cfg, filter={"min_threshold": 0.0}), rebalances=True),
    "larger_student": Variant(
        "larger student (width and depth x --ablation_larger_scale)",
        "a larger student helps",
        lambda cfg, *_: _scaled(cfg)),
}
