"""The EfficientNet model table, block specs and the original's rounding rules.

Everything here is plain data and pure Python (no TensorFlow), so the table command and
the analytic parameter / FLOP counter can use it without building a network. The numbers
are those of tensorflow/tpu `efficientnet_builder.py` and google-research/noisystudent.
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple

# ImageNet RGB statistics on the 0..255 pixel scale; the model normalises inside.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

BATCH_NORM_MOMENTUM = 0.99
BATCH_NORM_EPSILON = 1e-3
DEPTH_DIVISOR = 8
STEM_FILTERS = 32
HEAD_FILTERS = 1280
SE_RATIO = 0.25


@dataclasses.dataclass(frozen=True)
class ModelParams:
  """One row of the model table."""
  name: str
  width_coefficient: float
  depth_coefficient: float
  resolution: int
  dropout_rate: float


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of the unscaled (B0) network: `repeats` MBConv blocks."""
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_ratio: float = SE_RATIO


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One concrete MBConv block after width / depth scaling.

  `name` is the Keras layer-name prefix ("block2b_"), the same scheme as
  keras.applications, so weights can be matched by layer name.
  """
  name: str
  index: int  # Position among all blocks, 0-based (drives the stochastic-depth rate).
  kernel_size: int
  stride: int
  expand_ratio: int
  input_filters: int
  output_filters: int
  se_filters: int  # 0: no squeeze-excite.

  @property
  def expanded_filters(self) -> int:
    return self.input_filters * self.expand_ratio

  @property
  def has_identity_skip(self) -> bool:
    """Residual (and so stochastic depth) only where shapes match, as the original."""
    return self.stride == 1 and self.input_filters == self.output_filters


# (width, depth, resolution, dropout). `efficientnet-t0..t2` are CPU-sized 32-pixel models
# (meant for --small_image) that grow as B0 -> B1 -> B2 do, so a small run's students can
# be equal or larger than their teacher as the paper's are (its B7 -> L0 -> L1 -> L2); t0 is
# the demo's teacher (flags/presets/demo.flags says how they were measured).
# `efficientnet-test` is a tiny model for tests that goes through the same builder; depth
# 0.3 keeps one identity-skip block with stochastic depth (block6b) besides block1a.
_TABLE: Tuple[ModelParams, ...] = (
    ModelParams("efficientnet-b0", 1.0, 1.0, 224, 0.2),
    ModelParams("efficientnet-b1", 1.0, 1.1, 240, 0.2),
    ModelParams("efficientnet-b2", 1.1, 1.2, 260, 0.3),
    ModelParams("efficientnet-b3", 1.2, 1.4, 300, 0.3),
    ModelParams("efficientnet-b4", 1.4, 1.8, 380, 0.4),
    ModelParams("efficientnet-b5", 1.6, 2.2, 456, 0.4),
    ModelParams("efficientnet-b6", 1.8, 2.6, 528, 0.5),
    ModelParams("efficientnet-b7", 2.0, 3.1, 600, 0.5),
    ModelParams("efficientnet-b8", 2.2, 3.6, 672, 0.5),
    ModelParams("efficientnet-l2", 4.3, 5.3, 800, 0.5),
    ModelParams("efficientnet-t0", 0.1, 0.3, 32, 0.2),
    ModelParams("efficientnet-t1", 0.15, 0.4, 32, 0.2),
    ModelParams("efficientnet-t2", 0.2, 0.5, 32, 0.2),
    ModelParams("efficientnet-test", 0.1, 0.3, 32, 0.2),
)
_BY_NAME = {p.name: p for p in _TABLE}

MODEL_NAMES: Tuple[str, ...] = tuple(p.name for p in _TABLE)

# The B0 stages (repeats, kernel, stride, expand, in, out), all with squeeze-excite 0.25.
STAGES: Tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
# The original's `small_image_model` (32-pixel inputs) sets stride 1 in these stages.
SMALL_IMAGE_STRIDE1_STAGES = (1, 2)


def get_model_params(model_name: str) -> ModelParams:
  """Returns the table row of `model_name`; ValueError listing known names if unknown."""
  try:
    return _BY_NAME[model_name]
  except KeyError:
    raise ValueError(
        f"Unknown EfficientNet model_name {model_name!r}; known names: "
        f"{', '.join(MODEL_NAMES)}") from None


def native_resolution(model_name: str) -> int:
  """The input resolution the model was designed for (e.g. 224 for b0)."""
  return get_model_params(model_name).resolution


def round_filters(filters: int, width_coefficient: float) -> int:
  """Scales a filter count by width, rounding to a multiple of 8 (never down > 10%)."""
  scaled = filters * width_coefficient
  new_filters = max(DEPTH_DIVISOR,
                    int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
  if new_filters < 0.9 * scaled:
    new_filters += DEPTH_DIVISOR
  return int(new_filters)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """Scales a stage's block count by depth, rounding up."""
  return int(math.ceil(depth_coefficient * repeats))


def _block_letter(j: int) -> str:
  # keras.applications names blocks a, b, c...; past 'z' (only with custom depths) we
  # fall back to numbers so names stay unique.
  return chr(ord("a") + j) if j < 26 else str(j)


def block_specs(width_coefficient: float, depth_coefficient: float,
                small_image: bool = False) -> List[BlockSpec]:
  """Expands the stage table into concrete blocks for the given scaling.

  Args:
    width_coefficient: multiplies every filter count (then rounded).
    depth_coefficient: multiplies every stage's repeats (then rounded up).
    small_image: the original's 32-pixel variant (stride 1 in the 2nd and 3rd stages).

  Returns:
    One `BlockSpec` per MBConv block, in order.
  """
  _check_positive("width_coefficient", width_coefficient)
  _check_positive("depth_coefficient", depth_coefficient)
  blocks = []
  for i, stage in enumerate(STAGES):
    stride = 1 if (small_image and i in SMALL_IMAGE_STRIDE1_STAGES) else stage.stride
    in_filters = round_filters(stage.input_filters, width_coefficient)
    out_filters = round_filters(stage.output_filters, width_coefficient)
    for j in range(round_repeats(stage.repeats, depth_coefficient)):
      # The first block of a stage changes resolution and width; the rest keep them.
      block_in = in_filters if j == 0 else out_filters
      se_filters = (max(1, int(block_in * stage.se_ratio))
                    if 0 < stage.se_ratio <= 1 else 0)
      blocks.append(BlockSpec(
          name=f"block{i + 1}{_block_letter(j)}_", index=len(blocks),
          kernel_size=stage.kernel_size, stride=stride if j == 0 else 1,
          expand_ratio=stage.expand_ratio, input_filters=block_in,
          output_filters=out_filters, se_filters=se_filters))
  return blocks


def stochastic_depth_rates(blocks: List[BlockSpec], rate: float) -> List[float]:
  """Per-block drop rates: `rate * i / N` for block i of N, 0 without an identity skip."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f"stochastic_depth_rate must be in [0, 1), got {rate}")
  n = len(blocks)
  return [rate * b.index / n if b.has_identity_skip else 0.0 for b in blocks]


def _check_positive(what: str, value: float) -> None:
  if not value > 0:
    raise ValueError(f"{what} must be > 0, got {value}")


def resolve(model_name: str, image_size: Optional[int] = None,
            dropout_rate: Optional[float] = None,
            width_coefficient: Optional[float] = None,
            depth_coefficient: Optional[float] = None) -> ModelParams:
  """The table row of `model_name` with any overrides applied (None keeps the table's)."""
  row = get_model_params(model_name)
  resolved = dataclasses.replace(
      row,
      resolution=row.resolution if image_size is None else int(image_size),
      dropout_rate=row.dropout_rate if dropout_rate is None else float(dropout_rate),
      width_coefficient=(row.width_coefficient if width_coefficient is None
                         else float(width_coefficient)),
      depth_coefficient=(row.depth_coefficient if depth_coefficient is None
                         else float(depth_coefficient)))
  if resolved.resolution < 1:
    raise ValueError(f"image_size must be >= 1, got {image_size}")
  if not 0.0 <= resolved.dropout_rate < 1.0:
    raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
  _check_positive("width_coefficient", resolved.width_coefficient)
  _check_positive("depth_coefficient", resolved.depth_coefficient)
  return resolved
