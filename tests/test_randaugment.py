"""RandAugment: every op eager and in tf.data, neutral levels, PIL parity, saturation."""
import numpy as np
from PIL import Image, ImageOps
import pytest
import tensorflow as tf

from noisy_student.data import randaugment as ra

SEED = tf.constant([3, 4], tf.int64)


def _image(size=24, lo=40, hi=200, seed=0):
  """A random uint8 image whose range is not 0..255 (so AutoContrast acts)."""
  rng = np.random.RandomState(seed)
  return rng.randint(lo, hi, (size, size, 3)).astype(np.uint8)


# A magnitude where the op must change `_image()` (Solarize is identity at 10).
_CHANGING_MAG = {name: 9.0 for name in ra.CUTOUT_OP_NAMES}
_CHANGING_MAG["Solarize"] = 5.0
_CHANGING_MAG["Invert"] = 0.0


@pytest.mark.parametrize("name", ra.CUTOUT_OP_NAMES)
def test_every_op_eager_and_in_tf_data(name):
  image = _image()
  mag = _CHANGING_MAG[name]
  eager = ra.apply_op(image, name, mag, SEED).numpy()
  assert eager.dtype == np.uint8 and eager.shape == image.shape
  if name not in ("AutoContrast", "Equalize", "Invert"):
    assert not np.array_equal(eager, image), name
  ds = tf.data.Dataset.from_tensors(image).repeat(2).map(
      lambda x: ra.apply_op(x, name, mag, SEED), num_parallel_calls=2)
  for out in ds.as_numpy_iterator():
    np.testing.assert_array_equal(out, eager)


@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Invert"])
def test_parameterless_ops_change_image(name):
  image = _image()
  assert not np.array_equal(ra.apply_op(image, name, 10, SEED).numpy(), image)


# Level at which each op with a parameter is the identity under the original's mapping.
_NEUTRAL = [("Rotate", 0), ("ShearX", 0), ("ShearY", 0), ("TranslateX", 0),
            ("TranslateY", 0), ("Cutout", 0), ("SolarizeAdd", 0), ("Color", 5),
            ("Contrast", 5), ("Brightness", 5), ("Sharpness", 5), ("Solarize", 10),
            ("Solarize", 27), ("Posterize", 20), ("Posterize", 27)]


@pytest.mark.parametrize("name,mag", _NEUTRAL)
def test_neutral_magnitude_is_identity(name, mag):
  image = _image()
  np.testing.assert_array_equal(ra.apply_op(image, name, mag, SEED).numpy(), image)


def test_magnitude_zero_through_randaugment_is_identity_for_geometric_ops():
  image = _image()
  for seed in range(20):
    ops = [ra.OP_NAMES[i] for i in ra.draw_ops(tf.constant([seed, 1]), 2).numpy()]
    if set(ops) <= {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY",
                    "SolarizeAdd"}:
      out = ra.randaugment(image, tf.constant([seed, 1]), 2, 0.0)
      np.testing.assert_array_equal(out.numpy(), image)


def test_pil_parity():
  image = _image(lo=0, hi=256)
  pil = Image.fromarray(_image())
  narrow = _image()
  np.testing.assert_array_equal(ra.equalize(narrow).numpy(),
                                np.asarray(ImageOps.equalize(pil)))
  np.testing.assert_array_equal(ra.invert(image).numpy(), 255 - image)
  for bits in (1, 3, 4):
    np.testing.assert_array_equal(
        ra.posterize(image, bits).numpy(),
        np.asarray(ImageOps.posterize(Image.fromarray(image), bits)))
  for threshold in (0, 77, 128, 255):
    np.testing.assert_array_equal(
        ra.solarize(image, threshold).numpy(),
        np.asarray(ImageOps.solarize(Image.fromarray(image), threshold)))
  ours = ra.autocontrast(narrow).numpy().astype(int)
  theirs = np.asarray(ImageOps.autocontrast(pil)).astype(int)
  assert np.abs(ours - theirs).max() <= 1


def test_saturation_above_ten_has_no_uint8_wrap():
  image = _image(lo=0, hi=256)
  # SolarizeAdd at 27 adds 297 -> every pixel below 128 saturates at 255.
  out = ra.apply_op(image, "SolarizeAdd", 27, SEED).numpy()
  np.testing.assert_array_equal(out, np.where(image < 128, 255, image))
  # Cutout half-size beyond the image covers everything with the fill value.
  out = ra.apply_op(image, "Cutout", 100, SEED).numpy()
  assert (out == ra.FILL_VALUE).all()
  # Translating beyond the image leaves only fill.
  out = ra.apply_op(image, "TranslateX", 27, SEED).numpy()
  assert (out == ra.FILL_VALUE).all()


def test_geometry_nearest_and_fill():
  image = _image(size=16, lo=0, hi=256)
  # +-90 degrees on a square image is an exact (nearest) rotation.
  out = ra.rotate(image, 90.0).numpy()
  assert np.array_equal(out, np.rot90(image, 1)) or np.array_equal(out, np.rot90(image, -1))
  shifted = ra.translate_x(image, 5.0).numpy()
  np.testing.assert_array_equal(shifted[:, 5:], image[:, :-5])
  assert (shifted[:, :5] == 128).all()
  sheared = ra.shear_x(image, 0.5).numpy()
  np.testing.assert_array_equal(sheared[0], image[0])  # Row 0 does not move.


def test_translate_and_cutout_scale_with_size():
  t224, c224 = ra.default_constants(224)
  t32, c32 = ra.default_constants(32)
  assert float(t224) == pytest.approx(100) and float(c224) == pytest.approx(40)
  assert float(t32) == pytest.approx(100 * 32 / 224)
  image = np.full((32, 32, 3), 7, np.uint8)
  out = ra.apply_op(image, "Cutout", 10, SEED).numpy()
  side = int(40 * 32 / 224) * 2  # Half-size 5 -> at most a 10 x 10 square.
  filled = (out == 128).all(-1)
  assert 0 < filled.sum() <= side * side
  assert filled.any(0).sum() <= side and filled.any(1).sum() <= side


def test_batch_of_copies_gets_different_ops():
  image = _image(size=32)
  ds = tf.data.Dataset.from_tensors(image).repeat(64).enumerate().map(
      lambda i, x: (ra.randaugment(x, tf.stack([tf.constant(0, tf.int64), i]), 2, 10.0),
                    ra.draw_ops(tf.stack([tf.constant(0, tf.int64), i]), 2)),
      num_parallel_calls=tf.data.AUTOTUNE)
  outs, ops = zip(*ds.as_numpy_iterator())
  assert len({tuple(o) for o in ops}) > 20
  assert len({o.tobytes() for o in outs}) > 30
  assert len({o for pair in ops for o in pair}) == len(ra.OP_NAMES)


def test_dtype_shape_range_and_determinism():
  image = _image(size=40)
  a = ra.randaugment(image, tf.constant([5, 6]), 2, 27.0, cutout_op=True)
  b = ra.randaugment(image, tf.constant([5, 6]), 2, 27.0, cutout_op=True)
  c = ra.randaugment(image, tf.constant([5, 7]), 2, 27.0, cutout_op=True)
  assert a.dtype == tf.uint8 and a.shape == (40, 40, 3)
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  outs = {ra.randaugment(image, tf.constant([5, s]), 2, 27.0, cutout_op=True).numpy()
          .tobytes() for s in range(8)}
  assert len(outs) > 4 and c.shape == a.shape


def test_only_drawn_op_is_built_as_a_case():
  traced = ra._traced(2, 10.0, False, None, None)  # pylint: disable=protected-access
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


def _seed_per_op():
  """{op name: a seed whose first layer draws that op}."""
  found = {}
  for s in range(400):
    seed = tf.constant([s, 9], tf.int64)
    found.setdefault(ra.CUTOUT_OP_NAMES[int(ra.draw_ops(seed, 1, cutout_op=True)[0])], seed)
    if len(found) == len(ra.CUTOUT_OP_NAMES):
      return found
  raise AssertionError(f"only drew {sorted(found)}")


@pytest.mark.parametrize("mag", [0.0, 7.0, 27.0])
def test_grouped_dispatch_equals_each_op(mag):
  """randaugment's grouped branches give exactly the drawn op's own result."""
  for img in (_image(size=20, lo=0, hi=256), _image(size=20, seed=3)):
    for name, seed in _seed_per_op().items():
      ours = ra.randaugment(img, seed, 1, mag, cutout_op=True).numpy()
      np.testing.assert_array_equal(ours, ra.apply_op(img, name, mag, seed).numpy(),
                                    err_msg=f"{name} at M={mag}")
