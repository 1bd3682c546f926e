"""Per-image RandAugment with the original noisystudent op list and level mapping.

For each of `num_layers` layers one op is drawn uniformly (stateless, from `seed`) and
applied; a `tf.switch_case` over ops grouped by kernel (see augment_groups.py for why
and the measurement) runs only the drawn op. Images are uint8 `[H, W, 3]`; geometric
ops use nearest-neighbour sampling and fill 128, as the original. The op functions
below are the reference each group is tested against; `apply_op` runs one by name.

Level mapping at magnitude M (10 is the original's maximum level; see docs/data.md):
  Rotate M/10*30 deg, ShearX/Y M/10*0.3, TranslateX/Y M/10*translate_const px (random
  sign); Posterize keeps int(M/10*4) bits; Solarize threshold int(M/10*256); SolarizeAdd
  adds int(M/10*110) below 128; Color/Contrast/Brightness/Sharpness factor M/10*1.8+0.1;
  Cutout (only with cutout_op) half-size int(M/10*cutout_const).
Above M=10 the integer parameters saturate instead of wrapping uint8: posterize bits are
clipped to [0, 8], the solarize threshold to [0, 256], the solarize addition to [0, 255],
the cutout half-size to the image size and translations to the image size. Rotation,
shear and blend factors extrapolate (blends clip pixels to 0..255), as in the original.

Size scaling: the original used translate 100 px and cutout 40 px at every resolution
(ImageNet values for 224). We scale them with the image's shorter side S:
translate_const = 100*S/224 and cutout_const = 40*S/224, unless given explicitly (the
32-pixel path passes the original's S//8 for both).
"""
from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateX", "TranslateY", "SolarizeAdd")
CUTOUT_OP_NAMES = OP_NAMES + ("Cutout",)


def op_names(cutout_op: bool = False) -> tuple:
  """The ops drawn from, in the original's order (Cutout last, only with cutout_op)."""
  return CUTOUT_OP_NAMES if cutout_op else OP_NAMES


def default_constants(size) -> tuple:
  """(translate_const, cutout_const) for shorter side `size` (ImageNet values at 224)."""
  size = tf.cast(size, tf.float32)
  return 100.0 * size / 224.0, 40.0 * size / 224.0


# ---- Pixel ops (uint8 in, uint8 out). -------------------------------------------------

def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
  """image1 + factor * (image2 - image1), clipped to 0..255 (0: image1, 1: image2)."""
  a = tf.cast(image1, tf.float32)
  b = tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Stretches each channel to 0..255 (constant channels unchanged)."""
  x = tf.cast(image, tf.float32)
  lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  out = tf.where(hi > lo, tf.clip_by_value((x - lo) * scale, 0.0, 255.0), x)
  return tf.cast(out, tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL-style per-channel histogram equalisation (the original's LUT rule)."""
  shape = tf.shape(image)
  chans = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))  # [3, HW]
  histo = tf.math.bincount(chans, minlength=256, maxlength=256, axis=-1)  # [3, 256]
  last = tf.gather(histo, tf.reduce_max(chans, axis=1), batch_dims=1)
  step = (tf.reduce_sum(histo, axis=1) - last) // 255  # [3]
  safe = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(histo, axis=1) + safe // 2) // safe
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], lut.dtype), lut[:, :-1]], 1), 0, 255)
  mapped = tf.gather(lut, chans, batch_dims=1)
  out = tf.where(step[:, None] == 0, chans, tf.cast(mapped, tf.int32))
  return tf.reshape(tf.cast(tf.transpose(out), tf.uint8), shape)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - tf.convert_to_tensor(image)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the top `bits` bits (clipped to 0..8, so no shift wraps)."""
  shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
  x = tf.cast(image, tf.int32)
  return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(x, shift), shift), tf.uint8)


def solarize(image: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts pixels >= threshold (clipped to 0..256; 256 inverts nothing)."""
  t = tf.clip_by_value(tf.cast(threshold, tf.int32), 0, 256)
  return tf.where(tf.cast(image, tf.int32) < t, image, 255 - image)


def solarize_add(image: tf.Tensor, addition, threshold: int = 128) -> tf.Tensor:
  """Adds `addition` (clipped to 0..255) to pixels below threshold, saturating."""
  x = tf.cast(image, tf.int32)
  add = tf.clip_by_value(tf.cast(addition, tf.int32), 0, 255)
  added = tf.cast(tf.clip_by_value(x + add, 0, 255), tf.uint8)
  return tf.where(x < threshold, added, image)


def _grey(image: tf.Tensor) -> tf.Tensor:
  return tf.image.rgb_to_grayscale(image)  # uint8 [H, W, 1]


def color(image: tf.Tensor, factor) -> tf.Tensor:
  return blend(tf.image.grayscale_to_rgb(_grey(image)), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
  """Blends towards the mean grey level (PIL's rule).

  The original computed sum(histogram)/256 = H*W/256 as the "mean", a known bug that
  makes the op depend on image size; we use the true mean grey level, as PIL does.
  """
  mean = tf.reduce_mean(tf.cast(_grey(image), tf.float32))
  return blend(tf.fill(tf.shape(image), mean), image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
  """Blends with PIL's SMOOTH filter (border pixels keep their values)."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  return blend(tf.where(inner, padded, image), image, factor)


def cutout(image: tf.Tensor, pad_size, seed: tf.Tensor, replace: int = FILL_VALUE):
  """Fills a (2*pad_size)^2 square (clipped at the borders) at a random centre."""
  centre = tf.random.stateless_uniform([2], tf.cast(seed, tf.int64))
  return cutout_at(image, pad_size, centre, replace)


def cutout_at(image: tf.Tensor, pad_size, centre: tf.Tensor,
               replace: int = FILL_VALUE) -> tf.Tensor:
  """Cutout centred at fractions `centre` (2 floats in [0, 1)) of the height, width."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  pad = tf.clip_by_value(tf.cast(pad_size, tf.int32), 0, tf.maximum(h, w))
  cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
  cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
  rows = tf.range(h)
  cols = tf.range(w)
  in_rows = (rows >= cy - pad) & (rows < cy + pad)
  in_cols = (cols >= cx - pad) & (cols < cx + pad)
  mask = (in_rows[:, None] & in_cols[None, :])[:, :, None]
  return tf.where(mask, tf.constant(replace, image.dtype), image)


# ---- Geometric ops: one projective transform, nearest, fill 128. ------------------------

def transform(image: tf.Tensor, matrix: List) -> tf.Tensor:
  """Applies the 8-parameter projective `matrix` (output -> input coordinates)."""
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=tf.cast(tf.stack(matrix)[None], tf.float32),
      output_shape=tf.stack([h, w]), fill_value=float(FILL_VALUE),
      interpolation="NEAREST", fill_mode="CONSTANT")
  return out[0]


def rotation_matrix(h: tf.Tensor, w: tf.Tensor, degrees) -> List:
  """The 8 transform parameters rotating an h x w image about its centre."""
  a = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(a), tf.sin(a)
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  zero = tf.constant(0.0)
  return [cos, -sin, x_off, sin, cos, y_off, zero, zero]


def rotate(image: tf.Tensor, degrees) -> tf.Tensor:
  """Rotates about the centre by `degrees` (positive: counter-clockwise)."""
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  return transform(image, rotation_matrix(h, w, degrees))


def shear_x(image: tf.Tensor, level) -> tf.Tensor:
  return transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level) -> tf.Tensor:
  return transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, pixels) -> tf.Tensor:
  return transform(image, [1.0, 0.0, -pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, pixels) -> tf.Tensor:
  return transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, -pixels, 0.0, 0.0])


# ---- RandAugment. --------------------------------------------------------------------

def _branches(image: tf.Tensor, magnitude: float, rand: tf.Tensor, translate_const,
              cutout_const, cutout_op: bool) -> List[Callable[[], tf.Tensor]]:
  """One zero-argument function per op, with its level argument at `magnitude`.

  `rand` holds this layer's 4 uniform numbers: [op draw, sign, cutout y, cutout x].
  """
  level = magnitude / MAX_LEVEL
  sign = tf.where(rand[1] < 0.5, -1.0, 1.0)
  size = tf.cast(tf.minimum(tf.shape(image)[0], tf.shape(image)[1]), tf.float32)
  enhance = level * 1.8 + 0.1
  pixels = tf.minimum(level * tf.cast(translate_const, tf.float32), size)
  fns = {
      "AutoContrast": lambda: autocontrast(image),
      "Equalize": lambda: equalize(image),
      "Invert": lambda: invert(image),
      "Rotate": lambda: rotate(image, sign * level * 30.0),
      "Posterize": lambda: posterize(image, int(level * 4)),
      "Solarize": lambda: solarize(image, int(min(level, 1e3) * 256)),
      "Color": lambda: color(image, enhance),
      "Contrast": lambda: contrast(image, enhance),
      "Brightness": lambda: brightness(image, enhance),
      "Sharpness": lambda: sharpness(image, enhance),
      "ShearX": lambda: shear_x(image, sign * level * 0.3),
      "ShearY": lambda: shear_y(image, sign * level * 0.3),
      "TranslateX": lambda: translate_x(image, sign * pixels),
      "TranslateY": lambda: translate_y(image, sign * pixels),
      "SolarizeAdd": lambda: solarize_add(image, int(min(level, 1e3) * 110)),
      "Cutout": lambda: cutout_at(
          image, tf.cast(level * tf.cast(cutout_const, tf.float32), tf.int32), rand[2:]),
  }
  return [fns[name] for name in op_names(cutout_op)]


def apply_op(image: tf.Tensor, name: str, magnitude: float, seed: tf.Tensor, *,
             translate_const: Optional[float] = None,
             cutout_const: Optional[float] = None) -> tf.Tensor:
  """Applies the op `name` (see `CUTOUT_OP_NAMES`) at `magnitude`, as RandAugment would.

  Args:
    image: uint8 `[H, W, 3]`; seed: int `[2]` (random sign, cutout position).
  Returns:
    uint8 `[H, W, 3]`.
  """
  if name not in CUTOUT_OP_NAMES:
    raise ValueError(f"Unknown RandAugment op {name!r}; known: {CUTOUT_OP_NAMES}.")
  image = tf.convert_to_tensor(image)
  translate_const, cutout_const = _constants(image, translate_const, cutout_const)
  rand = _layer_randoms(seed, 1)[0]  # As randaugment's first layer draws them.
  fns = _branches(image, float(magnitude), rand, translate_const, cutout_const,
                  cutout_op=True)
  return fns[CUTOUT_OP_NAMES.index(name)]()


def _constants(image: tf.Tensor, translate_const, cutout_const) -> tuple:
  """Fills in size-scaled defaults for the translate / cutout constants left None."""
  size = tf.minimum(tf.shape(image)[0], tf.shape(image)[1])
  default_t, default_c = default_constants(size)
  return (default_t if translate_const is None else translate_const,
          default_c if cutout_const is None else cutout_const)


def _layer_randoms(seed: tf.Tensor, num_layers: int) -> tf.Tensor:
  """[num_layers, 4] uniforms per layer: op draw, sign, cutout centre y, x.

  One RNG op for everything keeps the per-image fixed cost low in tf.data.
  """
  return tf.random.stateless_uniform([num_layers, 4], tf.cast(seed, tf.int64))


def _op_indices(rand: tf.Tensor, cutout_op: bool) -> tf.Tensor:
  n = len(op_names(cutout_op))
  return tf.minimum(tf.cast(rand[:, 0] * n, tf.int32), n - 1)


def draw_ops(seed: tf.Tensor, num_layers: int, cutout_op: bool = False) -> tf.Tensor:
  """The op indices (into `op_names(cutout_op)`) that `randaugment` draws for `seed`."""
  return _op_indices(_layer_randoms(seed, num_layers), cutout_op)


@functools.lru_cache(maxsize=32)
def _traced(num_layers: int, magnitude: float, cutout_op: bool, translate_const,
            cutout_const) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """`randaugment` as a tf.function, traced once per setting and shared by datasets.

  Tracing the 15-branch switch takes seconds; every tf.data map (and every test)
  would otherwise retrace it.
  """
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([2], tf.int64)])
  def fn(image, seed):
    return _randaugment(image, seed, num_layers, magnitude, cutout_op, translate_const,
                        cutout_const)
  return fn


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2,
                magnitude: float = 10.0, *, cutout_op: bool = False,
                translate_const: Optional[float] = None,
                cutout_const: Optional[float] = None) -> tf.Tensor:
  """Applies RandAugment to one image.

  Args:
    image: uint8 `[H, W, 3]`.
    seed: int `[2]` stateless seed; the same seed gives the same ops and parameters.
    num_layers: ops applied in sequence (the original's randaug_layer, N).
    magnitude: shared level M (the original's randaug_mag); a Python number.
    cutout_op: include Cutout in the ops drawn from (the original's --cutout_op).
    translate_const, cutout_const: pixels at M=10; None scales the ImageNet values
      (100, 40 at 224) with the image's shorter side.
  Returns:
    uint8 `[H, W, 3]`, same shape as `image`.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"randaugment expects a uint8 image, got {image.dtype}.")
  magnitude = float(magnitude)
  if magnitude < 0:
    raise ValueError(f"randaug_mag must be >= 0, got {magnitude}.")
  image = tf.ensure_shape(image, [None, None, 3])
  static_shape = image.shape
  out = _traced(int(num_layers), magnitude, bool(cutout_op), translate_const,
                cutout_const)(image, tf.cast(seed, tf.int64))
  out.set_shape(static_shape)
  return out


def _randaugment(image, seed, num_layers, magnitude, cutout_op, translate_const,
                 cutout_const):
  translate_const, cutout_const = _constants(image, translate_const, cutout_const)
  # Imported here: augment_groups builds on this module's op functions.
  from noisy_student.data import augment_groups  # pylint: disable=g-import-not-at-top
  rand = _layer_randoms(seed, num_layers)
  indices = _op_indices(rand, cutout_op)
  group_of, index_in_group = augment_groups.op_to_group(cutout_op)
  static_shape = image.shape
  for i in range(num_layers):
    branches = augment_groups.branches(
        image, tf.gather(index_in_group, indices[i]), magnitude, rand[i],
        translate_const, cutout_const, cutout_op)
    image = tf.switch_case(tf.gather(group_of, indices[i]), branches)
    image.set_shape(static_shape)
  return image
