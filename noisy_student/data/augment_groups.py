"""RandAugment's ops grouped by kernel, so one small `tf.switch_case` picks the drawn op.

Measured on this 2-core machine (busy, alternating runs, 224 px, inside tf.data): a
15-branch `tf.switch_case` ran Rotate at 14 images/s where the same op called
directly ran at 84-105; with 2-4 branches it ran at the direct speed. So ops that share
a kernel share a branch, and the drawn op's parameters are picked by tensor indexing:
  geometric  Rotate, ShearX, ShearY, TranslateX, TranslateY -> one projective transform
             with the drawn op's matrix;
  lut        Invert, Posterize, Solarize, SolarizeAdd -> one 256-entry lookup table;
  stats      AutoContrast, Equalize -> per-channel tables from one histogram;
  blend      Color, Contrast, Brightness -> one blend with the drawn op's target;
  sharpness  Sharpness;  cutout  Cutout (with cutout_op).
Only the drawn branch runs, and in it only one image-sized transform, lookup or blend
is computed. Each group gives exactly the op functions' results (tests check it).
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import tensorflow as tf

from noisy_student.data import randaugment as ra

GROUPS = (("geometric", ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")),
          ("lut", ("Invert", "Posterize", "Solarize", "SolarizeAdd")),
          ("stats", ("AutoContrast", "Equalize")),
          ("blend", ("Color", "Contrast", "Brightness")),
          ("sharpness", ("Sharpness",)),
          ("cutout", ("Cutout",)))


def _apply_lut(image: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
  """uint8 image through an int [3, 256] per-channel table, in one gather."""
  x = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), x), tf.uint8)


def value_luts(level: float) -> tf.Tensor:
  """[4, 256] tables of Invert, Posterize, Solarize, SolarizeAdd at `level` = M/10."""
  v = tf.range(256)
  shift = 8 - min(max(int(level * 4), 0), 8)
  threshold = min(max(int(level * 256), 0), 256)
  add = min(max(int(level * 110), 0), 255)
  return tf.stack([255 - v,
                   tf.bitwise.left_shift(tf.bitwise.right_shift(v, shift), shift),
                   tf.where(v < threshold, v, 255 - v),
                   tf.where(v < 128, tf.minimum(v + add, 255), v)])


def stats_luts(image: tf.Tensor) -> tf.Tensor:
  """[2, 3, 256] tables of AutoContrast and Equalize for `image`, from one histogram."""
  chans = tf.transpose(tf.reshape(tf.cast(image, tf.int32), [-1, 3]))
  histo = tf.math.bincount(chans, minlength=256, maxlength=256, axis=-1)  # [3, 256]
  v = tf.range(256)
  present = histo > 0
  lo = tf.argmax(tf.cast(present, tf.int32), axis=1, output_type=tf.int32)[:, None]
  hi = 255 - tf.argmax(tf.cast(present[:, ::-1], tf.int32), axis=1,
                       output_type=tf.int32)[:, None]
  lo_f, hi_f = tf.cast(lo, tf.float32), tf.cast(hi, tf.float32)
  scale = 255.0 / tf.maximum(hi_f - lo_f, 1.0)
  stretched = tf.cast(tf.clip_by_value((tf.cast(v, tf.float32) - lo_f) * scale, 0.0,
                                       255.0), tf.int32)
  auto = tf.where(hi > lo, stretched, v[None, :])
  last = tf.gather(histo, hi[:, 0], batch_dims=1)
  step = (tf.reduce_sum(histo, axis=1) - last) // 255
  safe = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(histo, axis=1) + safe // 2) // safe
  lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], lut.dtype), lut[:, :-1]], 1), 0, 255)
  equal = tf.where(step[:, None] == 0, v[None, :], tf.cast(lut, tf.int32))
  return tf.stack([auto, equal])


def geometric_matrices(image: tf.Tensor, level: float, sign: tf.Tensor,
                       pixels: tf.Tensor) -> tf.Tensor:
  """[5, 8] transforms of Rotate, ShearX, ShearY, TranslateX, TranslateY."""
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  one, zero = tf.constant(1.0), tf.constant(0.0)
  shear, shift = sign * level * 0.3, sign * pixels
  return tf.stack([
      tf.stack(ra.rotation_matrix(h, w, sign * level * 30.0)),
      tf.stack([one, shear, zero, zero, one, zero, zero, zero]),
      tf.stack([one, zero, zero, shear, one, zero, zero, zero]),
      tf.stack([one, zero, -shift, zero, one, zero, zero, zero]),
      tf.stack([one, zero, zero, zero, one, -shift, zero, zero])])


def blend_group(image: tf.Tensor, j: tf.Tensor, factor: float) -> tf.Tensor:
  """Color (j=0), Contrast (1) or Brightness (2): one blend towards its target."""
  grey = tf.cast(tf.image.rgb_to_grayscale(image), tf.float32)
  is_color = tf.cast(tf.equal(j, 0), tf.float32)
  mean = tf.reduce_mean(grey) * tf.cast(tf.equal(j, 1), tf.float32)
  # x * 0.0 is exactly 0 for finite x, so each target equals its op's own one.
  return ra.blend(grey * is_color + mean, image, factor)


def branches(image: tf.Tensor, j: tf.Tensor, magnitude: float, rand: tf.Tensor,
             translate_const, cutout_const, cutout_op: bool
             ) -> List[Callable[[], tf.Tensor]]:
  """One function per group; `j` is the drawn op's index within its group."""
  level = magnitude / ra.MAX_LEVEL
  sign = tf.where(rand[1] < 0.5, -1.0, 1.0)
  size = tf.cast(tf.minimum(tf.shape(image)[0], tf.shape(image)[1]), tf.float32)
  pixels = tf.minimum(level * tf.cast(translate_const, tf.float32), size)
  enhance = level * 1.8 + 0.1
  fns = {
      "geometric": lambda: ra.transform(
          image, tf.unstack(tf.gather(geometric_matrices(image, level, sign, pixels), j))),
      "lut": lambda: _apply_lut(image, tf.tile(tf.gather(value_luts(level), j)[None],
                                               [3, 1])),
      "stats": lambda: _apply_lut(image, tf.gather(stats_luts(image), j)),
      "blend": lambda: blend_group(image, j, enhance),
      "sharpness": lambda: ra.sharpness(image, enhance),
      "cutout": lambda: ra.cutout_at(
          image, tf.cast(level * tf.cast(cutout_const, tf.float32), tf.int32), rand[2:]),
  }
  return [fns[name] for name, _ in group_table(cutout_op)]


def group_table(cutout_op: bool) -> Sequence:
  return GROUPS if cutout_op else GROUPS[:-1]


def op_to_group(cutout_op: bool):
  """(group index, index within group) int32 [num_ops] tables, by `ra.op_names` order."""
  where = {op: (g, k) for g, (_, ops) in enumerate(group_table(cutout_op))
           for k, op in enumerate(ops)}
  names = ra.op_names(cutout_op)
  return (tf.constant([where[n][0] for n in names], tf.int32),
          tf.constant([where[n][1] for n in names], tf.int32))
