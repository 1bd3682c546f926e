"""Each RandAugment op against the original's formulas, at M = 5, 10, 15, 27.

Expected images are computed here from google-research/noisystudent randaugment.py as
its TF1 graph ran (line numbers below), never from our code: Python ints that meet a
uint8 image become uint8 constants (numpy < 1.24 wrapped them mod 256), TF's shift
kernels clamp a shift to 0..7 (tensorflow/core/kernels/cwise_ops.h), geometric ops
append a channel of ones, transform with fill 0 and grey the emptied pixels
(randaugment.py:356-399). TF ops the original itself calls (rgb_to_grayscale,
depthwise_conv2d, the projective transform kernel, cos/sin) are called as it did.
Sizes: 32 with the 32-pixel path's constants S//8 (noisystudent preprocessing.py:211-216),
224 and 600 with the ImageNet path's 100 and 40 (randaugment.py:509). Ops whose result
does not depend on the size run on a small image.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from noisy_student.data import augment_ops
from noisy_student.data import randaugment as ra

MAGNITUDES = (5, 10, 15, 27)
SIZES = (32, 224, 600)
SEED = tf.constant([3, 4], tf.int64)


def _image(size, seed=0, avoid_fill=False):
  rng = np.random.RandomState(seed)
  img = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
  if avoid_fill:  # So the pixels a geometric op or Cutout fills are recognisable.
    img[img == 128] = 129
  return img


def _consts(size):
  """(translate_const, cutout_const) the original passes at this size."""
  return (size // 8, size // 8) if size == 32 else (100, 40)


def _apply(img, name, mag, seed=SEED):
  """Our op; at 32 px with the constants preprocess passes, else with the defaults."""
  t, c = _consts(32) if img.shape[0] == 32 else (None, None)
  return ra.apply_op(img, name, mag, seed, translate_const=t, cutout_const=c).numpy()


def _as_uint8_const(value):
  """A Python int turned into a uint8 graph constant by TF1 (wraps mod 256)."""
  return int(np.array(value).astype(np.uint8))


# ---- The original's ops, from its formulas. ------------------------------------------

def orig_blend(image1, image2, factor):
  """randaugment.py:37-77."""
  if factor == 0.0:
    return image1
  if factor == 1.0:
    return image2
  a, b = image1.astype(np.float32), image2.astype(np.float32)
  temp = a + np.float32(factor) * (b - a)
  if 0.0 < factor < 1.0:
    return temp.astype(np.uint8)
  return np.clip(temp, 0.0, 255.0).astype(np.uint8)


def orig_enhance_factor(mag):
  return (mag / 10.0) * 1.8 + 0.1  # randaugment.py:444-445.


def orig_posterize(img, mag):
  bits = int((mag / 10.0) * 4)  # randaugment.py:468.
  shift = min(_as_uint8_const(8 - bits), 7)  # :179, the uint8 constant, the kernel clamp.
  return np.left_shift(np.right_shift(img, shift), shift)


def orig_solarize(img, mag):
  threshold = _as_uint8_const(int((mag / 10.0) * 256))  # :469, compared in uint8 at :135.
  return np.where(img < threshold, img, 255 - img)


def orig_solarize_add(img, mag):
  addition = int((mag / 10.0) * 110)  # :470; added in int64 at :143.
  added = np.clip(img.astype(np.int64) + addition, 0, 255).astype(np.uint8)
  return np.where(img < 128, added, img)


def orig_autocontrast(img):
  out = img.copy()  # randaugment.py:253-278, per channel.
  for c in range(3):
    lo, hi = np.float32(img[..., c].min()), np.float32(img[..., c].max())
    if hi > lo:
      scale = np.float32(255.0) / (hi - lo)
      offset = -lo * scale
      im = img[..., c].astype(np.float32) * scale + offset
      out[..., c] = np.clip(im, 0.0, 255.0).astype(np.uint8)
  return out


def orig_equalize(img):
  out = img.copy()  # randaugment.py:312-339, per channel.
  for c in range(3):
    histo = np.bincount(img[..., c].ravel(), minlength=256)
    nonzero = histo[histo != 0]
    step = (nonzero.sum() - nonzero[-1]) // 255
    if step != 0:
      lut = (np.cumsum(histo) + step // 2) // step
      lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
      out[..., c] = lut[img[..., c]]
  return out


def _grey3(img):
  return np.repeat(tf.image.rgb_to_grayscale(img).numpy(), 3, axis=-1)


def orig_color(img, mag):
  return orig_blend(_grey3(img), img, orig_enhance_factor(mag))  # :148-151.


def orig_contrast(img, mag):
  h, w = img.shape[:2]  # :154-168: sum(histogram) / 256 is H*W/256.
  mean = np.clip(np.float32(h * w) / np.float32(256.0), 0.0, 255.0).astype(np.uint8)
  return orig_blend(np.full_like(img, mean), img, orig_enhance_factor(mag))


def orig_brightness(img, mag):
  return orig_blend(np.zeros_like(img), img, orig_enhance_factor(mag))  # :171-174.


def orig_sharpness(img, mag):
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32).reshape(3, 3, 1, 1)
  kernel = np.tile(kernel / 13.0, [1, 1, 3, 1])  # :288-295.
  smooth = tf.nn.depthwise_conv2d(img[None].astype(np.float32), kernel, [1, 1, 1, 1],
                                  "VALID")[0].numpy()
  smooth = np.clip(smooth, 0.0, 255.0).astype(np.uint8)
  degenerate = img.copy()
  degenerate[1:-1, 1:-1] = smooth  # :299-304: the border keeps the original pixels.
  return orig_blend(degenerate, img, orig_enhance_factor(mag))


def orig_transform(img, matrix):
  """contrib_image.transform of wrap(img), then unwrap (randaugment.py:356-399)."""
  wrapped = np.concatenate([img, np.ones_like(img[..., :1])], -1)
  out = tf.raw_ops.ImageProjectiveTransformV3(
      images=wrapped[None], transforms=tf.constant([matrix], tf.float32),
      output_shape=img.shape[:2], fill_value=0.0, interpolation="NEAREST",
      fill_mode="CONSTANT")[0].numpy()
  return np.where(out[..., 3:] == 0, np.uint8(128), out[..., :3])


def orig_rotate_matrix(img, degrees):
  """contrib_image.rotate's matrix for `degrees` (randaugment.py:197-204)."""
  h, w = (np.float32(s) for s in img.shape[:2])
  a = tf.constant(degrees, tf.float32) * np.float32(math.pi / 180.0)
  cos, sin = float(tf.cos(a)), float(tf.sin(a))
  x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
  y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
  return [cos, -sin, x_off, sin, cos, y_off, 0.0, 0.0]


def orig_geometric(img, name, mag, sign):
  """Rotate, ShearX/Y with the level at `mag` and the given sign (:429-459)."""
  level = mag / 10.0
  if name == "Rotate":
    return orig_transform(img, orig_rotate_matrix(img, sign * level * 30.0))
  shear = sign * level * 0.3
  matrix = [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0] if name == "ShearX" else \
      [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]
  return orig_transform(img, matrix)


def orig_translate(img, axis, pixels):
  """Content moved by -pixels along `axis` (contrib translate([-pixels, 0]), :208-217),
  nearest neighbour, 128 where the source is outside: plain numpy indexing."""
  n = img.shape[axis]
  src = np.floor(np.arange(n) + np.float32(pixels) + 0.5).astype(int)
  valid = (src >= 0) & (src < n)
  out = np.take(img, np.clip(src, 0, n - 1), axis=axis)
  mask = valid[None, :, None] if axis == 1 else valid[:, None, None]
  return np.where(mask, out, np.uint8(128))


_PER_PIXEL = {
    "AutoContrast": lambda img, m: orig_autocontrast(img),
    "Equalize": lambda img, m: orig_equalize(img),
    "Invert": lambda img, m: 255 - img,
    "Posterize": orig_posterize, "Solarize": orig_solarize,
    "SolarizeAdd": orig_solarize_add, "Color": orig_color,
    "Brightness": orig_brightness, "Sharpness": orig_sharpness,
}


# ---- Tests. -----------------------------------------------------------------------------

@pytest.mark.parametrize("mag", MAGNITUDES)
@pytest.mark.parametrize("name", sorted(_PER_PIXEL))
def test_size_independent_op_matches_original(name, mag):
  for img in (_image(24), _image(24, seed=1) // 2 + 40):  # Full and narrow ranges.
    np.testing.assert_array_equal(_apply(img, name, mag), _PER_PIXEL[name](img, mag),
                                  err_msg=f"{name} at M={mag}")


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mag", MAGNITUDES)
def test_contrast_matches_original(mag, size):
  img = _image(size)
  np.testing.assert_array_equal(_apply(img, "Contrast", mag), orig_contrast(img, mag))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mag", MAGNITUDES)
def test_geometric_ops_match_original(mag, size):
  img = _image(size, avoid_fill=True)
  translate_const = _consts(size)[0]
  for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
    out = _apply(img, name, mag)
    if name.startswith("Translate"):
      pixels = (mag / 10.0) * float(translate_const)  # randaugment.py:456.
      axis = 1 if name == "TranslateX" else 0
      expected = [orig_translate(img, axis, s * pixels) for s in (1, -1)]
    else:
      expected = [orig_geometric(img, name, mag, s) for s in (1, -1)]
    assert any(np.array_equal(out, e) for e in expected), f"{name} M={mag} S={size}"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mag", MAGNITUDES)
def test_cutout_matches_original(mag, size):
  """A square of half-size int(M/10 * cutout_const) at some centre (:80-128, :477)."""
  img = _image(size, avoid_fill=True)
  pad = int((mag / 10.0) * _consts(size)[1])
  for s in range(3):
    out = _apply(img, "Cutout", mag, tf.constant([s, 5], tf.int64))
    filled = (out == 128).all(-1)
    np.testing.assert_array_equal(out[~filled], img[~filled])
    rows, cols = np.flatnonzero(filled.any(1)), np.flatnonzero(filled.any(0))
    assert filled.sum() == rows.size * cols.size  # One axis-aligned rectangle.
    # Rows [max(0, cy - pad), min(S, cy + pad)) for some centre cy in [0, S).
    for span in (rows, cols):
      assert any((max(0, c - pad), min(size, c + pad)) == (span[0], span[-1] + 1)
                 for c in range(size)), (span[0], span[-1], pad)


def test_translate_direction_and_sign_follow_the_original():
  """Positive pixels move content left (contrib translate([-pixels, 0]), :210); the
  sign is random per image (:422-426), so both directions occur."""
  img = _image(32, avoid_fill=True)
  shifts = set()
  for s in range(12):
    out = _apply(img, "TranslateX", 10, tf.constant([s, 1], tf.int64))  # 4 px at 32.
    if np.array_equal(out[:, :-4], img[:, 4:]) and (out[:, -4:] == 128).all():
      shifts.add("left")
    elif np.array_equal(out[:, 4:], img[:, :-4]) and (out[:, :4] == 128).all():
      shifts.add("right")
    else:
      raise AssertionError(f"seed {s}: not a 4-pixel shift")
  assert shifts == {"left", "right"}
  # The kernel itself: +4 pixels moves content left, as the original's translate_x(4).
  for axis, matrix in ((1, augment_ops.translate_x_matrix(32, 32, 4.0)),
                       (0, augment_ops.translate_y_matrix(32, 32, 4.0))):
    np.testing.assert_array_equal(augment_ops.transform(img, matrix).numpy(),
                                  orig_translate(img, axis, 4.0))


def test_published_magnitudes_where_uint8_wraps():
  """The B4..B7/L2 magnitudes cross the uint8 wrap; the op is then no no-op."""
  img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
  solarized = {m: _apply(img, "Solarize", m) for m in (12, 15, 18, 24, 27)}
  for m, threshold in ((12, 51), (15, 128), (18, 204), (24, 102), (27, 179)):
    np.testing.assert_array_equal(solarized[m], np.where(img < threshold, img, 255 - img))
  for m in (24, 27):  # bits 9, 10: shift 255, 254, clamped to 7 -> one bit kept.
    np.testing.assert_array_equal(_apply(img, "Posterize", m), img & 0x80)
  np.testing.assert_array_equal(_apply(img, "Posterize", 20), img)  # bits 8.
  np.testing.assert_array_equal(_apply(img, "Solarize", 10), 255 - img)  # 256 -> 0.
