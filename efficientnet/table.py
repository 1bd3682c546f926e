"""The model table with parameter counts and FLOPs: `efficientnet-table`.

Counts are analytic, from the same block specs `build_model` uses, so printing the whole
table (L2 included) takes milliseconds instead of building ~1.5B parameters. Tests check
the parameter counts against built Keras models and B0's FLOPs against the paper.

FLOPs follow the EfficientNet paper's convention: multiply-adds of the convolutions and
the classifier (B0: 0.39B), at the native resolution. Batch norm, activations, pooling
and the squeeze-excite gating multiply are not counted (together ~1% of B0).

    efficientnet-table            # or: python -m efficientnet
    efficientnet-table --names efficientnet-b0,efficientnet-l2 --num_classes 10
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import List, Optional, Sequence

from efficientnet import params as params_lib


@dataclasses.dataclass(frozen=True)
class ModelCost:
  """Trainable parameters and multiply-adds of one model at one resolution."""
  params: int
  multiply_adds: int


def _conv(h: int, w: int, k: int, c_in: int, c_out: int, stride: int = 1,
          bias: bool = False):
  """Returns (out_h, out_w, params, multiply-adds) of a 'same' conv."""
  oh, ow = math.ceil(h / stride), math.ceil(w / stride)
  params = k * k * c_in * c_out + (c_out if bias else 0)
  return oh, ow, params, oh * ow * k * k * c_in * c_out


def _block_cost(h: int, w: int, spec: params_lib.BlockSpec):
  """Returns (out_h, out_w, params, multiply-adds) of one MBConv block."""
  params = macs = 0
  c = spec.input_filters
  if spec.expand_ratio != 1:
    _, _, p, m = _conv(h, w, 1, c, spec.expanded_filters)
    c = spec.expanded_filters
    params += p + 2 * c  # 1x1 kernel + batch-norm scale/shift.
    macs += m
  oh, ow = math.ceil(h / spec.stride), math.ceil(w / spec.stride)
  params += spec.kernel_size ** 2 * c + 2 * c  # Depthwise kernel + batch-norm scale/shift.
  macs += oh * ow * spec.kernel_size ** 2 * c
  if spec.se_filters:
    params += (c * spec.se_filters + spec.se_filters) + (spec.se_filters * c + c)
    macs += 2 * c * spec.se_filters
  _, _, p, m = _conv(oh, ow, 1, c, spec.output_filters)
  return oh, ow, params + p + 2 * spec.output_filters, macs + m


def model_cost(model_name: str, num_classes: int = 1000, *,
               image_size: Optional[int] = None, small_image: bool = False,
               width_coefficient: Optional[float] = None,
               depth_coefficient: Optional[float] = None) -> ModelCost:
  """Trainable parameters and multiply-adds of `build_model` with the same arguments.

  Args:
    model_name: one of `MODEL_NAMES`.
    num_classes: classifier size.
    image_size: resolution; None is the native one.
    small_image, width_coefficient, depth_coefficient: as for `build_model`.
  Returns:
    `ModelCost` (batch norm counts 2 trainable weights per channel, as Keras).
  """
  row = params_lib.resolve(model_name, image_size, None, width_coefficient,
                           depth_coefficient)
  width = row.width_coefficient
  stem = params_lib.round_filters(params_lib.STEM_FILTERS, width)
  h, w, params, macs = _conv(row.resolution, row.resolution, 3, 3, stem, stride=2)
  params += 2 * stem
  c = stem
  for spec in params_lib.block_specs(width, row.depth_coefficient, small_image):
    h, w, p, m = _block_cost(h, w, spec)
    params, macs, c = params + p, macs + m, spec.output_filters
  head = params_lib.round_filters(params_lib.HEAD_FILTERS, width)
  _, _, p, m = _conv(h, w, 1, c, head)
  params += p + 2 * head + head * num_classes + num_classes
  macs += m + head * num_classes
  return ModelCost(params=params, multiply_adds=macs)


def format_table(names: Sequence[str], num_classes: int = 1000) -> str:
  """The table as text: one row per model at its native resolution."""
  header = (f"{'name':<20}{'resolution':>11}{'width':>7}{'depth':>7}{'dropout':>9}"
            f"{'params':>14}{'GFLOPs':>9}")
  lines: List[str] = [header, "-" * len(header)]
  for name in names:
    row = params_lib.get_model_params(name)
    cost = model_cost(name, num_classes)
    gflops = cost.multiply_adds / 1e9
    lines.append(
        f"{name:<20}{row.resolution:>11}{row.width_coefficient:>7.2f}"
        f"{row.depth_coefficient:>7.2f}{row.dropout_rate:>9.1f}{cost.params:>14,}"
        + (f"{gflops:>9.2f}" if gflops >= 0.01 else f"{gflops:>9.4f}"))
  lines.append(f"params: trainable, with {num_classes} classes.")
  lines.append("GFLOPs: billions of multiply-adds at the native resolution "
               "(the paper's convention).")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default sys.argv[1:]), prints the table; returns the exit code."""
  parser = argparse.ArgumentParser(
      prog="efficientnet-table",
      description="EfficientNet models: resolution, scaling, parameters and FLOPs.")
  parser.add_argument("--names", default=",".join(params_lib.MODEL_NAMES),
                      help="comma-separated model names (default: all)")
  parser.add_argument("--num_classes", type=int, default=1000)
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.names.split(",") if n.strip()]
  try:
    for name in names:
      params_lib.get_model_params(name)
    if args.num_classes < 1:
      raise ValueError(f"--num_classes must be >= 1, got {args.num_classes}")
  except ValueError as e:
    parser.error(str(e))
  print(format_table(names, args.num_classes))
  return 0


def run() -> None:
  """Console-script entry point (`efficientnet-table`)."""
  sys.exit(main())
