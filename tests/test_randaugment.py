"""RandAugment's driver: op lists, grouped kernel vs per-op path, variants, tf.data.

The ops' values against the original's formulas are in test_randaugment_original.py.
"""
import functools

import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from noisy_student.config import DataConfig
from noisy_student.data import augment_ops as ops
from noisy_student.data import augment_table as table
from noisy_student.data import randaugment as ra

SEED = tf.constant([3, 4], tf.int64)
ALL_OPS = table.op_names()


def _image(size=24, lo=40, hi=200, seed=0):
  """A random uint8 image whose range is not 0..255 (so AutoContrast acts)."""
  rng = np.random.RandomState(seed)
  return rng.randint(lo, hi, (size, size, 3)).astype(np.uint8)


# A magnitude where the op must change `_image()`.
_CHANGING_MAG = {name: 9.0 for name in ALL_OPS}
_CHANGING_MAG["Solarize"] = 5.0


@pytest.mark.parametrize("name", ALL_OPS)
def test_every_op_eager_and_in_tf_data(name):
  image = _image()
  mag = _CHANGING_MAG[name]
  eager = ra.apply_op(image, name, mag, SEED).numpy()
  assert eager.dtype == np.uint8 and eager.shape == image.shape
  assert not np.array_equal(eager, image), name
  ds = tf.data.Dataset.from_tensors(image).repeat(2).map(
      lambda x: ra.apply_op(x, name, mag, SEED), num_parallel_calls=2)
  for out in ds.as_numpy_iterator():
    np.testing.assert_array_equal(out, eager)


def _draws(num_seeds, num_layers, cutout_op=True, salt=9):
  """[num_seeds, num_layers] op indices randaugment draws for seeds [s, salt]."""
  ds = tf.data.Dataset.range(num_seeds).map(
      lambda s: ra.draw_ops(tf.stack([s, salt]), num_layers, cutout_op))
  return np.stack(list(ds.as_numpy_iterator()))


@functools.lru_cache(maxsize=None)
def _seed_drawing(name):
  """A seed whose first RandAugment layer draws op `name`."""
  first = _draws(400, 1)[:, 0]
  s = int(np.flatnonzero(first == ALL_OPS.index(name))[0])
  return tf.constant([s, 9], tf.int64)


def test_op_list_with_and_without_cutout():
  """The original's 15 ops plus Cutout last by default (noisystudent randaugment.py:
  530-535 with main.py:278-279 cutout_op=True); --nocutout_op leaves the 15."""
  assert len(ALL_OPS) == 16 and ALL_OPS[-1] == "Cutout"
  assert table.op_names(cutout_op=False) == ALL_OPS[:-1]
  with_cutout = set(_draws(160, 2, salt=2).ravel())
  without = set(_draws(160, 2, cutout_op=False, salt=2).ravel())
  assert with_cutout == set(range(16)) and without == set(range(15))
  # randaugment's and DataConfig's default list has Cutout.
  image, seed = _image(), _seed_drawing("Cutout")
  np.testing.assert_array_equal(ra.randaugment(image, seed, 1, 10.0).numpy(),
                                ra.apply_op(image, "Cutout", 10.0, seed).numpy())
  other = table.op_names(False)[int(ra.draw_ops(seed, 1, cutout_op=False)[0])]
  np.testing.assert_array_equal(ra.randaugment(image, seed, 1, 10.0, cutout_op=False),
                                ra.apply_op(image, other, 10.0, seed).numpy())
  assert DataConfig().cutout_op and DataConfig().randaug_variant == "original"


@pytest.mark.parametrize("variant,mag", [("original", 10.0), ("original", 27.0),
                                         ("scaled", 27.0)])
def test_grouped_kernel_equals_per_op_path(variant, mag):
  """randaugment's grouped branches give exactly the drawn op's per-op result."""
  for img in (_image(size=20, lo=0, hi=256), _image(size=20, seed=3)):
    for name in ALL_OPS:
      seed = _seed_drawing(name)
      ours = ra.randaugment(img, seed, 1, mag, variant=variant).numpy()
      np.testing.assert_array_equal(
          ours, ra.apply_op(img, name, mag, seed, variant=variant).numpy(),
          err_msg=f"{name} at M={mag}, {variant}")


def _blend(target, image, factor):
  a, b = np.float32(target), image.astype(np.float32)
  return np.clip(a + np.float32(factor) * (b - a), 0, 255).astype(np.uint8)


def test_scaled_variant():
  """Constants x S/224, saturating integers, Contrast towards the mean grey."""
  img = _image(size=600, lo=0, hi=256)
  img[img == 128] = 129
  small = img[:32, :32]

  def scaled(image, name, mag, seed=SEED):
    return ra.apply_op(image, name, mag, seed, variant="scaled").numpy()

  # M=27: bits 10 -> 8 (all kept), threshold 691 -> 256 (nothing inverted).
  np.testing.assert_array_equal(scaled(small, "Posterize", 27), small)
  np.testing.assert_array_equal(scaled(small, "Solarize", 27), small)
  np.testing.assert_array_equal(scaled(small, "Solarize", 10), small)
  factor = 2.7 * 1.8 + 0.1
  grey = float(tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(small), tf.float32)))
  np.testing.assert_array_equal(scaled(small, "Contrast", 27), _blend(grey, small, factor))
  # TranslateX at 600 px: 2.7 * 100 * 600/224 = 723 px, the whole image (the original
  # variant moves 270 px and keeps 330 columns).
  assert (scaled(img, "TranslateX", 27) == 128).all()
  kept = (ra.apply_op(img, "TranslateX", 27, SEED).numpy() != 128).all(-1).any(0).sum()
  assert kept == 330
  # Cutout half-size int(2.7 * 40 * 600/224) = 289: a side of at most 578 and at least
  # 289 pixels, where the original variant's is at most 2 * 108 = 216.
  filled = (scaled(img, "Cutout", 27) == 128).all(-1)
  rows, cols = filled.any(1).sum(), filled.any(0).sum()
  assert 289 <= rows <= 578 and 289 <= cols <= 578
  with pytest.raises(ValueError, match="randaug_variant 'bogus'"):
    ra.randaugment(small, SEED, variant="bogus")


def test_magnitude_zero_through_randaugment_is_identity_for_geometric_ops():
  image = _image()
  checked = 0
  for seed in range(40):
    names = [ALL_OPS[i] for i in ra.draw_ops(tf.constant([seed, 1]), 2).numpy()]
    if set(names) <= {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
                      "SolarizeAdd", "Cutout"}:
      out = ra.randaugment(image, tf.constant([seed, 1]), 2, 0.0)
      np.testing.assert_array_equal(out.numpy(), image)
      checked += 1
  assert checked > 0


def test_pil_parity():
  image = _image(lo=0, hi=256)
  narrow = _image()
  pil = Image.fromarray(narrow)
  np.testing.assert_array_equal(ra.apply_op(narrow, "Equalize", 10, SEED).numpy(),
                                np.asarray(ImageOps.equalize(pil)))
  for bits in (1, 3, 4):
    np.testing.assert_array_equal(
        ops.apply_values(image, ops.posterize_values, bits).numpy(),
        np.asarray(ImageOps.posterize(Image.fromarray(image), bits)))
  for threshold in (0, 77, 128, 255):
    np.testing.assert_array_equal(
        ops.apply_values(image, ops.solarize_values, threshold).numpy(),
        np.asarray(ImageOps.solarize(Image.fromarray(image), threshold)))
  ours = ra.apply_op(narrow, "AutoContrast", 10, SEED).numpy().astype(int)
  assert np.abs(ours - np.asarray(ImageOps.autocontrast(pil)).astype(int)).max() <= 1


def test_geometry_nearest_and_fill():
  image = _image(size=16, lo=0, hi=256)
  # +-90 degrees on a square image is an exact (nearest) rotation.
  out = ops.transform(image, ops.rotation_matrix(16.0, 16.0, 90.0)).numpy()
  assert np.array_equal(out, np.rot90(image, 1)) or np.array_equal(out, np.rot90(image, -1))
  sheared = ops.transform(image, ops.shear_x_matrix(16, 16, 0.5)).numpy()
  np.testing.assert_array_equal(sheared[0], image[0])  # Row 0 does not move.
  assert (sheared[-1, -7:] == ops.FILL_VALUE).all()


def test_batch_of_copies_gets_different_ops():
  image = _image(size=32)
  ds = tf.data.Dataset.from_tensors(image).repeat(64).enumerate().map(
      lambda i, x: (ra.randaugment(x, tf.stack([tf.constant(0, tf.int64), i]), 2, 10.0),
                    ra.draw_ops(tf.stack([tf.constant(0, tf.int64), i]), 2)),
      num_parallel_calls=tf.data.AUTOTUNE)
  outs, drawn = zip(*ds.as_numpy_iterator())
  assert len({tuple(o) for o in drawn}) > 20
  assert len({o.tobytes() for o in outs}) > 30
  assert len({o for pair in drawn for o in pair}) == len(ALL_OPS)


def test_dtype_shape_range_and_determinism():
  image = _image(size=40)
  a = ra.randaugment(image, tf.constant([5, 6]), 2, 27.0)
  b = ra.randaugment(image, tf.constant([5, 6]), 2, 27.0)
  assert a.dtype == tf.uint8 and a.shape == (40, 40, 3)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  outs = {ra.randaugment(image, tf.constant([5, s]), 2, 27.0).numpy().tobytes()
          for s in range(8)}
  assert len(outs) > 4


def test_only_drawn_op_is_built_as_a_case():
  traced = ra._traced(2, 10.0, True, "original", None, None)  # pylint: disable=protected-access
  fn = traced.get_concrete_function()
  types = [op.type for op in fn.graph.get_operations()]
  assert sum(t in ("Case", "StatelessCase") for t in types) == 2  # One per layer.
  # The op bodies live only inside the case branches, not in the main graph.
  assert "ImageProjectiveTransformV3" not in types and "DepthwiseConv2dNative" not in types


def test_bad_inputs():
  with pytest.raises(TypeError, match="uint8"):
    ra.randaugment(tf.zeros([8, 8, 3]), SEED)
  with pytest.raises(ValueError, match="randaug_mag"):
    ra.randaugment(tf.zeros([8, 8, 3], tf.uint8), SEED, 2, -1)
  with pytest.raises(ValueError, match="Unknown RandAugment op"):
    ra.apply_op(tf.zeros([8, 8, 3], tf.uint8), "Zoom", 5, SEED)
  with pytest.raises(ValueError, match="randaug_variant"):
    ra.apply_op(tf.zeros([8, 8, 3], tf.uint8), "Rotate", 5, SEED, variant="saturating")
