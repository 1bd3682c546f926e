"""Per-image RandAugment as the original ran it (google-research/noisystudent).

For each of `num_layers` layers one op is drawn uniformly (stateless, from `seed`) from
the op list (augment_table.py: 16 ops with Cutout, the original's default, or 15) and
only that op runs (noisystudent randaugment.py:538-553). A `tf.switch_case` over ops
grouped by kernel (augment_groups.py) runs it. Images are uint8 `[H, W, 3]`.

What each op computes at magnitude M, and the "original" / "scaled" variants, is in
the one op table, augment_table.py, and in docs/data.md.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import tensorflow as tf

from noisy_student.data import augment_groups
from noisy_student.data import augment_table as table


def apply_op(image: tf.Tensor, name: str, magnitude: float, seed: tf.Tensor, *,
             variant: str = "original", translate_const: Optional[float] = None,
             cutout_const: Optional[float] = None) -> tf.Tensor:
  """Applies the op `name` at `magnitude`, with the draws randaugment's first layer makes.

  Args:
    image: uint8 `[H, W, 3]`.
    name: one of `augment_table.op_names()`.
    magnitude: M (10 = the original's maximum level; larger values extrapolate).
    seed: int `[2]`; gives the random sign and the cutout centre.
    variant, translate_const, cutout_const: as in `randaugment`.
  Returns:
    uint8 `[H, W, 3]`.
  """
  op = table.get(name)
  image = tf.convert_to_tensor(image)
  level = table.make_level(image, magnitude, variant, translate_const, cutout_const)
  draw = table.make_draw(_layer_randoms(seed, 1)[0])
  return augment_groups.apply_one(image, op, table.drawn_arguments(op, level, draw))


def _layer_randoms(seed: tf.Tensor, num_layers: int) -> tf.Tensor:
  """[num_layers, 4] uniforms per layer: op draw, sign, cutout centre y, x.

  One RNG op for everything keeps the per-image fixed cost low in tf.data.
  """
  return tf.random.stateless_uniform([num_layers, 4], tf.cast(seed, tf.int64))


def _op_indices(rand: tf.Tensor, cutout_op: bool) -> tf.Tensor:
  n = len(table.op_list(cutout_op))
  return tf.minimum(tf.cast(rand[:, 0] * n, tf.int32), n - 1)


def draw_ops(seed: tf.Tensor, num_layers: int, cutout_op: bool = True) -> tf.Tensor:
  """The op indices (into `augment_table.op_names(cutout_op)`) `randaugment` draws."""
  return _op_indices(_layer_randoms(seed, num_layers), cutout_op)


@functools.lru_cache(maxsize=32)
def _traced(num_layers: int, magnitude: float, cutout_op: bool, variant: str,
            translate_const, cutout_const) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """`randaugment` as a tf.function, traced once per setting and shared by datasets.

  Tracing the switch takes seconds; every tf.data map (and every test) would otherwise
  retrace it.
  """
  # autograph=False: the ops are chosen by switch_case and the Python branches are
  # static, so conversion would only parse this module's source (about 2 s a process:
  # benchmarks/bench_tracing.py).
  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8),
                                tf.TensorSpec([2], tf.int64)], autograph=False)
  def fn(image, seed):
    level = table.make_level(image, magnitude, variant, translate_const, cutout_const)
    rand = _layer_randoms(seed, num_layers)
    indices = _op_indices(rand, cutout_op)
    group_of, index_in_group = augment_groups.op_to_group(cutout_op)
    for i in range(num_layers):
      branches = augment_groups.branches(
          image, tf.gather(index_in_group, indices[i]), level, table.make_draw(rand[i]),
          cutout_op)
      image = tf.switch_case(tf.gather(group_of, indices[i]), branches)
      image.set_shape([None, None, 3])
    return image
  return fn


def randaugment(image: tf.Tensor, seed: tf.Tensor, num_layers: int = 2,
                magnitude: float = 10.0, *, cutout_op: bool = True,
                variant: str = "original", translate_const: Optional[float] = None,
                cutout_const: Optional[float] = None) -> tf.Tensor:
  """Applies RandAugment to one image.

  Args:
    image: uint8 `[H, W, 3]`.
    seed: int `[2]` stateless seed; the same seed gives the same ops and parameters.
    num_layers: ops applied in sequence (the original's randaug_layer, N).
    magnitude: shared level M (the original's randaug_mag); a Python number.
    cutout_op: include Cutout in the ops drawn from (the original's --cutout_op,
      default True, noisystudent main.py:278-279).
    variant: "original" (the original's arithmetic) or "scaled"; see augment_table.py.
    translate_const, cutout_const: pixels at M=10; None takes the variant's default
      (original: 100 and 40 at every size; scaled: those x S/224).
  Returns:
    uint8 `[H, W, 3]`, same shape as `image`.
  """
  image = tf.convert_to_tensor(image)
  if image.dtype != tf.uint8:
    raise TypeError(f"randaugment expects a uint8 image, got {image.dtype}.")
  magnitude = float(magnitude)
  if magnitude < 0:
    raise ValueError(f"randaug_mag must be >= 0, got {magnitude}.")
  table.check_variant(variant)
  image = tf.ensure_shape(image, [None, None, 3])
  static_shape = image.shape
  out = _traced(int(num_layers), magnitude, bool(cutout_op), variant, translate_const,
                cutout_const)(image, tf.cast(seed, tf.int64))
  out.set_shape(static_shape)
  return out
