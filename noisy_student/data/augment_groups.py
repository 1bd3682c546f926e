"""Runs RandAugment ops from the op table: one op alone, or by kernel group.

Measured on this 2-core machine (busy, alternating runs, 224 px, inside tf.data): a
15-branch `tf.switch_case` ran Rotate at 14 images/s where the same op called
directly ran at 84-105; with 2-4 branches it ran at the direct speed. So ops that share
a kernel share a branch (augment_table.GROUPS), and the drawn op's parameters are
picked by tensor indexing:
  geometric  Rotate, ShearX, ShearY, TranslateX, TranslateY -> one projective transform
             with the drawn op's matrix;
  values     Invert, Posterize, Solarize, SolarizeAdd -> one 256-entry lookup table;
  stats      AutoContrast, Equalize -> per-channel tables from one histogram;
  blend      Color, Contrast, Brightness -> one blend with the drawn op's target;
  sharpness  Sharpness;  cutout  Cutout.
Only the drawn branch runs, and in it only one image-sized transform, lookup or blend.
`apply_one` (the per-op path) and the group branches read the same table entries and
kernels; tests check that they give identical images.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import tensorflow as tf

from noisy_student.data import augment_ops as ops
from noisy_student.data import augment_table as table


def _hw(image: tf.Tensor):
  return (tf.cast(tf.shape(image)[0], tf.float32),
          tf.cast(tf.shape(image)[1], tf.float32))


def apply_one(image: tf.Tensor, op: table.Op, args: tuple) -> tf.Tensor:
  """Applies `op` with its drawn `args` (see `table.drawn_arguments`); uint8 in and out."""
  kind = op.kind
  if kind == "matrix":
    return ops.transform(image, op.kernel(*_hw(image), *args))
  if kind == "per_value":
    return ops.apply_values(image, op.kernel, *args)
  if kind == "histogram":
    return ops.apply_lut(image, op.kernel(ops.histogram(image)))
  if kind == "blend":
    return ops.blend(op.kernel(image, *args[1:]), image, args[0])
  return op.kernel(image, *args)  # cutout


def _apply_group(image: tf.Tensor, members: Sequence[table.Op], j: tf.Tensor,
                 args: Sequence[tuple]) -> tf.Tensor:
  """Applies member `j` of a group of ops sharing a kernel, computing one kernel."""
  if len(members) == 1:
    return apply_one(image, members[0], args[0])
  kind = members[0].kind
  if kind == "matrix":
    hw = _hw(image)
    matrices = tf.stack([tf.stack([tf.cast(x, tf.float32) for x in op.kernel(*hw, *a)])
                         for op, a in zip(members, args)])
    return ops.transform(image, tf.unstack(tf.gather(matrices, j)))
  if kind == "per_value":
    values = tf.range(256)
    luts = tf.stack([op.kernel(values, *a) for op, a in zip(members, args)])
    return ops.apply_lut(image, tf.tile(tf.gather(luts, j)[None], [3, 1]))
  if kind == "histogram":
    histo = ops.histogram(image)
    luts = tf.stack([op.kernel(histo) for op in members])
    return ops.apply_lut(image, tf.gather(luts, j))
  if kind == "blend":
    # x * 0.0 is exactly 0 for finite x, so the sum is exactly the drawn op's target.
    target = 0.0
    for k, (op, a) in enumerate(zip(members, args)):
      target += (tf.cast(op.kernel(image, *a[1:]), tf.float32)
                 * tf.cast(tf.equal(j, k), tf.float32))
    factor = tf.gather(tf.stack([tf.cast(a[0], tf.float32) for a in args]), j)
    return ops.blend(target, image, factor)
  raise ValueError(f"No grouped kernel for {kind!r} with {len(members)} ops.")


def group_table(cutout_op: bool) -> List[Tuple[str, Tuple[table.Op, ...]]]:
  """[(group, its ops in op-list order)] for the groups that have ops in the list."""
  ops_in_list = table.op_list(cutout_op)
  groups = [(g, tuple(op for op in ops_in_list if op.group == g)) for g, _ in table.GROUPS]
  return [(g, members) for g, members in groups if members]


def branches(image: tf.Tensor, j: tf.Tensor, level: table.Level, draw: table.Draw,
             cutout_op: bool) -> List[Callable[[], tf.Tensor]]:
  """One function per group; `j` is the drawn op's index within its group."""
  def branch(members):
    return lambda: _apply_group(
        image, members, j, [table.drawn_arguments(op, level, draw) for op in members])
  return [branch(members) for _, members in group_table(cutout_op)]


def op_to_group(cutout_op: bool) -> Tuple[tf.Tensor, tf.Tensor]:
  """(group index, index within group) int32 [num_ops] tables, in op-list order."""
  where = {op.name: (g, k) for g, (_, members) in enumerate(group_table(cutout_op))
           for k, op in enumerate(members)}
  names = table.op_names(cutout_op)
  return (tf.constant([where[n][0] for n in names], tf.int32),
          tf.constant([where[n][1] for n in names], tf.int32))
