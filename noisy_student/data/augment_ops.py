"""RandAugment's image kernels: pure TF ops on uint8 `[H, W, 3]` images.

Each function computes what the original's op computes from an argument that is already
resolved; which argument an op gets at a magnitude is the op table's business
(augment_table.py). Line numbers cite google-research/noisystudent randaugment.py,
whose ops are those of tensorflow/tpu models/official/efficientnet/autoaugment.py.

The ops come in the five kernel shapes that augment_groups.py batches:
  per-value   int32 values -> int32 values, applied to the image or to a 256-entry table
              (Invert, Posterize, Solarize, SolarizeAdd);
  histogram   per-channel histogram -> [3, 256] table (AutoContrast, Equalize);
  blend       a target image blended with the image by a factor (Color, Contrast,
              Brightness, Sharpness);
  matrix      an 8-parameter projective transform, nearest neighbour, fill 128 (Rotate,
              ShearX/Y, TranslateX/Y);
  cutout      a square filled with 128 (Cutout).
"""
from __future__ import annotations

import math
from typing import List

import tensorflow as tf

# randaugment.py:526: replace_value = [128] * 3, the fill of geometric ops and Cutout.
FILL_VALUE = 128


def blend(image1, image2: tf.Tensor, factor) -> tf.Tensor:
  """image1 + factor * (image2 - image1) in float32, clipped to 0..255, cast to uint8.

  randaugment.py:37-77. The original skips the clip when 0 < factor < 1 and returns an
  input unchanged at factor 0 or 1; the result is the same, as an interpolation of
  integers stays within 0..255 and the float arithmetic is exact at 0 and 1. Factors
  above 1 (magnitudes above 5) extrapolate and are clipped. `image1` may be a scalar
  target (broadcast). The uint8 cast truncates, as the original's.
  """
  a = tf.cast(image1, tf.float32)
  b = tf.cast(image2, tf.float32)
  return tf.cast(tf.clip_by_value(a + factor * (b - a), 0.0, 255.0), tf.uint8)


# ---- Per-value ops (int32 values in, int32 values out). ------------------------------

def invert_values(v: tf.Tensor) -> tf.Tensor:
  """255 - v (randaugment.py:350-353)."""
  return 255 - v


def posterize_values(v: tf.Tensor, bits) -> tf.Tensor:
  """Keeps the top `bits` (0..8) bits of each value (randaugment.py:177-180).

  `bits` is the effective count; the table resolves the original's uint8 shift to it.
  """
  shift = 8 - bits
  return tf.bitwise.left_shift(tf.bitwise.right_shift(v, shift), shift)


def solarize_values(v: tf.Tensor, threshold) -> tf.Tensor:
  """Inverts values >= threshold (randaugment.py:131-135); threshold 0 inverts all."""
  return tf.where(v < threshold, v, 255 - v)


def solarize_add_values(v: tf.Tensor, addition, threshold: int = 128) -> tf.Tensor:
  """Adds `addition` to values below `threshold`, clipped to 0..255.

  randaugment.py:138-145: the addition is done in int64, so it saturates at any
  magnitude (no uint8 wrap).
  """
  return tf.where(v < threshold, tf.clip_by_value(v + addition, 0, 255), v)


def apply_values(image: tf.Tensor, fn, *args) -> tf.Tensor:
  """A per-value op on a uint8 image."""
  return tf.cast(fn(tf.cast(image, tf.int32), *args), tf.uint8)


# ---- Histogram ops (a per-channel 256-entry table from the image's histogram). -------

def histogram(image: tf.Tensor) -> tf.Tensor:
  """int32 [3, 256] per-channel counts of a uint8 image."""
  chans = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
  return tf.math.bincount(chans, minlength=256, maxlength=256, axis=-1)


def _value_range(histo: tf.Tensor):
  """Per channel, the lowest and highest value present, int32 [3, 1] each."""
  present = tf.cast(histo > 0, tf.int32)
  lo = tf.argmax(present, axis=1, output_type=tf.int32)
  hi = 255 - tf.argmax(present[:, ::-1], axis=1, output_type=tf.int32)
  return lo[:, None], hi[:, None]


def autocontrast_lut(histo: tf.Tensor) -> tf.Tensor:
  """AutoContrast's int32 [3, 256] table (randaugment.py:242-278).

  Per channel v * scale + offset with scale = 255 / (hi - lo), offset = -lo * scale,
  in float32 and in the original's order of operations, clipped and truncated; a
  constant channel is left as it is.
  """
  lo, hi = _value_range(histo)
  lo_f, hi_f = tf.cast(lo, tf.float32), tf.cast(hi, tf.float32)
  scale = 255.0 / tf.maximum(hi_f - lo_f, 1.0)  # hi > lo wherever the result is used.
  offset = -lo_f * scale
  v = tf.range(256)
  stretched = tf.clip_by_value(tf.cast(v, tf.float32) * scale + offset, 0.0, 255.0)
  return tf.where(hi > lo, tf.cast(stretched, tf.int32), v[None, :])


def equalize_lut(histo: tf.Tensor) -> tf.Tensor:
  """Equalize's int32 [3, 256] table: PIL's rule as the original (randaugment.py:310-347).

  step = (pixels - count of the highest value present) // 255; table = (cumulative
  count + step // 2) // step, shifted right by one entry, clipped to 0..255; a channel
  with step 0 is left as it is.
  """
  _, hi = _value_range(histo)
  last = tf.gather(histo, hi[:, 0], batch_dims=1)
  step = (tf.reduce_sum(histo, axis=1) - last) // 255  # [3]
  safe = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(histo, axis=1) + safe // 2) // safe
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], lut.dtype), lut[:, :-1]], 1), 0, 255)
  return tf.where(step[:, None] == 0, tf.range(256)[None, :], lut)


def apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """uint8 image through an int [3, 256] per-channel table, in one gather."""
  x = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), x), tf.uint8)


# ---- Blend targets (blended with the image by the op's factor). -----------------------

def grey_target(image: tf.Tensor) -> tf.Tensor:
  """Color's target: the uint8 grey image [H, W, 1] (randaugment.py:148-151)."""
  return tf.image.rgb_to_grayscale(image)


def contrast_target(image: tf.Tensor, histogram_mean: bool) -> tf.Tensor:
  """Contrast's target grey level, a float32 scalar.

  histogram_mean=True is the original's (randaugment.py:154-168): it takes
  sum(histogram) / 256 = H*W/256 as the "mean", clips it to 0..255 and truncates it to
  uint8, so the target depends on the image size, not its content (4 at 32 px, 196 at
  224, 255 from 256 px up). A bug, reproduced because the published magnitudes were
  tuned with it. False is PIL's rule: the mean grey level.
  """
  if histogram_mean:
    shape = tf.shape(image, out_type=tf.int64)
    return tf.cast(tf.minimum(shape[0] * shape[1] // 256, 255), tf.float32)
  return tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))


def black_target(image: tf.Tensor) -> tf.Tensor:
  """Brightness's target: black (randaugment.py:171-174)."""
  del image
  return tf.constant(0.0)


def smooth_target(image: tf.Tensor) -> tf.Tensor:
  """Sharpness's target: PIL's SMOOTH filter, border pixels kept (randaugment.py:281-307)."""
  x = tf.cast(image, tf.float32)[None]
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  padded = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
  inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
  return tf.where(inner, padded, image)


# ---- Geometric ops: projective matrices (output -> input coordinates). -----------------

def transform(image: tf.Tensor, matrix) -> tf.Tensor:
  """Applies an 8-parameter projective `matrix`, nearest neighbour, fill 128.

  The original appends a channel of ones, transforms with fill 0 and greys the pixels
  whose extra channel became 0 (randaugment.py:356-399); with nearest-neighbour
  sampling that is exactly a constant fill of 128.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  matrix = tf.stack([tf.cast(m, tf.float32) for m in matrix])
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=image[None], transforms=matrix[None], output_shape=tf.stack([h, w]),
      fill_value=float(FILL_VALUE), interpolation="NEAREST", fill_mode="CONSTANT")
  return out[0]


def rotation_matrix(h: tf.Tensor, w: tf.Tensor, degrees) -> List:
  """Rotation about the centre (randaugment.py:183-205, contrib_image.rotate's matrix)."""
  a = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  cos, sin = tf.cos(a), tf.sin(a)
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return [cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0]


def shear_x_matrix(h, w, level) -> List:
  """Input x = x + level * y (randaugment.py:220-228)."""
  del h, w
  return [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]


def shear_y_matrix(h, w, level) -> List:
  """Input y = level * x + y (randaugment.py:231-239)."""
  del h, w
  return [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0]


def translate_x_matrix(h, w, pixels) -> List:
  """Input x = x + pixels: content moves left by `pixels` (randaugment.py:208-211).

  The original calls contrib_image.translate(image, [-pixels, 0]), whose matrix is
  [1, 0, -dx, 0, 1, -dy, 0, 0].
  """
  del h, w
  return [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0]


def translate_y_matrix(h, w, pixels) -> List:
  """Input y = y + pixels: content moves up by `pixels` (randaugment.py:214-217)."""
  del h, w
  return [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]


# ---- Cutout. ----------------------------------------------------------------------------

def cutout_at(image: tf.Tensor, pad_size, centre: tf.Tensor,
              replace: int = FILL_VALUE) -> tf.Tensor:
  """Fills rows [cy - pad, cy + pad) x cols [cx - pad, cx + pad), clipped, with `replace`.

  The centre (cy, cx) = (int(centre[0] * H), int(centre[1] * W)) for `centre` two floats
  in [0, 1): uniform over the pixels, as the original's (randaugment.py:80-128). Works
  on uint8 or float images.
  """
  h, w = tf.shape(image)[0], tf.shape(image)[1]
  pad = tf.cast(pad_size, tf.int32)
  cy = tf.cast(centre[0] * tf.cast(h, tf.float32), tf.int32)
  cx = tf.cast(centre[1] * tf.cast(w, tf.float32), tf.int32)
  rows, cols = tf.range(h), tf.range(w)
  in_rows = (rows >= cy - pad) & (rows < cy + pad)
  in_cols = (cols >= cx - pad) & (cols < cx + pad)
  mask = (in_rows[:, None] & in_cols[None, :])[:, :, None]
  return tf.where(mask, tf.constant(replace, image.dtype), image)


def cutout(image: tf.Tensor, pad_size, seed: tf.Tensor,
           replace: int = FILL_VALUE) -> tf.Tensor:
  """Cutout at a centre drawn from the stateless int `[2]` `seed`."""
  centre = tf.random.stateless_uniform([2], tf.cast(seed, tf.int64))
  return cutout_at(image, pad_size, centre, replace)
