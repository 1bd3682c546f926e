"""The one RandAugment op table: op -> level -> arguments, read by every RandAugment path.

Both the per-op path and the grouped kernel (augment_groups.py) take each op's kernel
and arguments from `OPS`; nothing else maps a magnitude to an argument.

Variants (`Level.variant`, the `--randaug_variant` flag):
  "original" (default) reproduces what google-research/noisystudent randaugment.py
    computes in its TF1 graph, at every magnitude: translate and cutout constants in
    pixels at any resolution (100 and 40; the 32-pixel path passes S//8), and above
    M=10 the integer arguments wrap as uint8 (see `_posterize`, `_solarize`) and the
    Contrast target is H*W/256. The published magnitudes (B2 6 ... B7 and L2 27) were
    tuned with this behaviour, bugs included.
  "scaled" is this project's earlier variant: the constants default to 100*S/224 and
    40*S/224 for shorter side S, the posterize bits and the solarize threshold saturate
    (0..8, 0..256) instead of wrapping, and Contrast blends towards the mean grey level
    (PIL's rule).
Rotation, shear and blend factors extrapolate above M=10 in both (M=27 rotates up to 81
degrees), as in the original. Line numbers cite noisystudent randaugment.py.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional, Tuple

import tensorflow as tf

from noisy_student.config import RANDAUG_VARIANTS
from noisy_student.data import augment_ops as ops

MAX_LEVEL = 10.0  # randaugment.py:32.
VARIANTS = RANDAUG_VARIANTS  # Declared with the setting that chooses one.
# randaugment.py:509 (tensorflow/tpu autoaugment.py:694-695): pixels at M=10, used at
# every resolution on the ImageNet path.
ORIGINAL_TRANSLATE_CONST = 100
ORIGINAL_CUTOUT_CONST = 40
REFERENCE_SIZE = 224  # The size the constants are scaled from in the "scaled" variant.

# Kernel groups, in switch order, and the kernel shape each runs (augment_groups.py).
GROUPS = (("geometric", "matrix"), ("values", "per_value"), ("stats", "histogram"),
          ("blend", "blend"), ("sharpness", "blend"), ("cutout", "cutout"))
GROUP_KIND = dict(GROUPS)


@dataclasses.dataclass(frozen=True)
class Level:
  """What the arguments depend on: magnitude M, variant and the two constants.

  The constants are pixels at M=10 (Python numbers, or scalar tensors when scaled with
  a size known only in the graph).
  """
  magnitude: float
  variant: str = "original"
  translate_const: Any = ORIGINAL_TRANSLATE_CONST
  cutout_const: Any = ORIGINAL_CUTOUT_CONST

  @property
  def fraction(self) -> float:
    """M / 10 (the original's level / _MAX_LEVEL)."""
    return self.magnitude / MAX_LEVEL

  @property
  def original(self) -> bool:
    return self.variant == "original"


def _as_uint8(value: int) -> int:
  """A Python int converted to a uint8 graph constant in TF1 (numpy < 1.24): mod 256."""
  return value % 256


def _int(value):
  """int() of a Python number, or the same truncation of a float tensor."""
  return int(value) if isinstance(value, numbers.Real) else tf.cast(value, tf.int32)


def _enhance(lv: Level) -> tuple:
  """Blend factor M/10 * 1.8 + 0.1 (randaugment.py:444-445); 1.0 (identity) at M=5."""
  return (lv.fraction * 1.8 + 0.1,)


def _contrast(lv: Level) -> tuple:
  """The factor, and whether the target is the original's H*W/256 (see contrast_target)."""
  return _enhance(lv) + (lv.original,)


def _rotate(lv: Level) -> tuple:
  """M/10 * 30 degrees, random sign (randaugment.py:429-432)."""
  return (lv.fraction * 30.0,)


def _shear(lv: Level) -> tuple:
  """M/10 * 0.3, random sign (randaugment.py:448-452)."""
  return (lv.fraction * 0.3,)


def _translate(lv: Level) -> tuple:
  """M/10 * translate_const pixels, random sign (randaugment.py:455-459)."""
  const = lv.translate_const
  return (lv.fraction * (float(const) if isinstance(const, numbers.Real) else const),)


def _cutout(lv: Level) -> tuple:
  """Half-size int(M/10 * cutout_const) (randaugment.py:477)."""
  return (_int(lv.fraction * lv.cutout_const),)


def _posterize(lv: Level) -> tuple:
  """Bits kept. The original: bits = int(M/10 * 4) (randaugment.py:468), shift = 8 - bits
  (randaugment.py:179) becomes a uint8 constant (mod 256), and TF's shift kernels clamp
  a shift to 0..7 (tensorflow/core/kernels/cwise_ops.h, left_shift_op / right_shift_op);
  so bits 9, 10 (M >= 22.5) shift by 255, 254 -> 7 and keep 1 bit, bits 8 (M in
  [20, 22.5)) keep all, and bits 0 (M < 2.5) shift by 8 -> 7 and keep 1. An accident
  of uint8 arithmetic, reproduced because B6, B7 and L2's magnitudes were tuned with
  it. Scaled: bits clipped to 0..8.
  """
  bits = int(lv.fraction * 4)
  if lv.original:
    return (8 - min(_as_uint8(8 - bits), 7),)
  return (min(max(bits, 0), 8),)


def _solarize(lv: Level) -> tuple:
  """Threshold. The original: int(M/10 * 256) (randaugment.py:469) compared with a uint8
  image, so it becomes a uint8 constant (mod 256): 256 at M=10 acts as 0 (inverts every
  pixel), 384 at M=15 as 128, 691 at M=27 as 179. An accident of uint8 arithmetic,
  reproduced because the magnitudes from B3's 12 up were tuned with it. Scaled: clipped
  to 0..256 (256: no-op).
  """
  threshold = int(lv.fraction * 256)
  if lv.original:
    return (_as_uint8(threshold),)
  return (min(max(threshold, 0), 256),)


def _solarize_add(lv: Level) -> tuple:
  """Addition int(M/10 * 110) (randaugment.py:470), added in int64 so it saturates."""
  return (int(lv.fraction * 110),)


def _none(lv: Level) -> tuple:
  del lv
  return ()


@dataclasses.dataclass(frozen=True)
class Op:
  """One RandAugment op.

  `kernel` has the shape of its group's kind (augment_ops.py): a per-value function,
  a histogram -> table function, a blend target (image, *args[1:]) with args[0] the
  factor, a matrix (h, w, *args), or cutout_at. `arguments` maps a Level to its
  arguments. `random`: "sign" negates the first argument with probability 1/2 (the
  original's _randomly_negate_tensor, randaugment.py:422-426); "centre" appends the
  cutout centre.
  """
  name: str
  group: str
  kernel: Callable
  arguments: Callable[[Level], tuple] = _none
  random: Optional[str] = None

  @property
  def kind(self) -> str:
    return GROUP_KIND[self.group]


# The original's op list and order (randaugment.py:530-535; Cutout last, added by
# cutout_op). tensorflow/tpu (autoaugment.py:696-699) always has Cutout, before SolarizeAdd.
OPS: Tuple[Op, ...] = (
    Op("AutoContrast", "stats", ops.autocontrast_lut),
    Op("Equalize", "stats", ops.equalize_lut),
    Op("Invert", "values", ops.invert_values),
    Op("Rotate", "geometric", ops.rotation_matrix, _rotate, "sign"),
    Op("Posterize", "values", ops.posterize_values, _posterize),
    Op("Solarize", "values", ops.solarize_values, _solarize),
    Op("Color", "blend", ops.grey_target, _enhance),
    Op("Contrast", "blend", ops.contrast_target, _contrast),
    Op("Brightness", "blend", ops.black_target, _enhance),
    Op("Sharpness", "sharpness", ops.smooth_target, _enhance),
    Op("ShearX", "geometric", ops.shear_x_matrix, _shear, "sign"),
    Op("ShearY", "geometric", ops.shear_y_matrix, _shear, "sign"),
    Op("TranslateX", "geometric", ops.translate_x_matrix, _translate, "sign"),
    Op("TranslateY", "geometric", ops.translate_y_matrix, _translate, "sign"),
    Op("SolarizeAdd", "values", ops.solarize_add_values, _solarize_add),
    Op("Cutout", "cutout", ops.cutout_at, _cutout, "centre"),
)
_BY_NAME = {op.name: op for op in OPS}


def op_list(cutout_op: bool = True) -> Tuple[Op, ...]:
  """The ops drawn from: all 16, or without Cutout (the original's --nocutout_op)."""
  return OPS if cutout_op else tuple(op for op in OPS if op.name != "Cutout")


def op_names(cutout_op: bool = True) -> Tuple[str, ...]:
  return tuple(op.name for op in op_list(cutout_op))


def get(name: str) -> Op:
  if name not in _BY_NAME:
    raise ValueError(f"Unknown RandAugment op {name!r}; known: {op_names()}.")
  return _BY_NAME[name]


def check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"Unknown randaug_variant {variant!r}; known: {VARIANTS}.")


def make_level(image: tf.Tensor, magnitude: float, variant: str = "original",
               translate_const=None, cutout_const=None) -> Level:
  """The Level for `image`; constants left None take the variant's defaults.

  "original": 100 and 40 pixels at every size. "scaled": 100*S/224 and 40*S/224 for
  the image's shorter side S.
  """
  check_variant(variant)
  if variant == "original":
    default_t, default_c = ORIGINAL_TRANSLATE_CONST, ORIGINAL_CUTOUT_CONST
  else:
    size = tf.cast(tf.minimum(tf.shape(image)[0], tf.shape(image)[1]), tf.float32)
    default_t = ORIGINAL_TRANSLATE_CONST * size / REFERENCE_SIZE
    default_c = ORIGINAL_CUTOUT_CONST * size / REFERENCE_SIZE
  return Level(float(magnitude), variant,
               default_t if translate_const is None else translate_const,
               default_c if cutout_const is None else cutout_const)


@dataclasses.dataclass(frozen=True)
class Draw:
  """A layer's random draws besides the op: the sign (+-1.0) and the cutout centre
  (2 floats in [0, 1), fractions of the height and width)."""
  sign: tf.Tensor
  centre: tf.Tensor


def make_draw(rand: tf.Tensor) -> Draw:
  """From a layer's 4 uniforms in [0, 1): [op draw, sign, cutout centre y, x]."""
  return Draw(tf.where(rand[1] < 0.5, -1.0, 1.0), rand[2:])


def drawn_arguments(op: Op, level: Level, draw: Draw) -> tuple:
  """`op`'s arguments at `level`, with its random part from `draw`."""
  args = op.arguments(level)
  if op.random == "sign":
    return (draw.sign * args[0],) + args[1:]
  if op.random == "centre":
    return args + (draw.centre,)
  return args
