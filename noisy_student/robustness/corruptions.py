"""ImageNet-C style corruptions as batched, seeded TF ops: one table, name -> 5 severities.

Hendrycks & Dietterich (ICLR 2019) corrupt ImageNet's 224-px validation crops with 15
corruptions at 5 severities (plus 4 held-out extras). This table holds the ones that can
be done faithfully as TF ops, each with the paper code's constants per severity
(`make_imagenet_c.py`). Sizes in pixels (blur radii, motion length) are scaled by
image_size / 224, so a corruption takes the same share of a 32-px digit as of a 224-px
photo. Left out: glass blur (a per-pixel random swap loop), snow and frost (frost blends
photographs of frost that ship with the benchmark), elastic transform.

Every function maps float32 `[B, H, W, 3]` images on the 0..255 scale (the models
normalise inside) to the same, clipped; randomness comes from stateless ops with an
explicit seed, so a report is reproducible. Severity 0 returns the input unchanged.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Tuple

import numpy as np
import tensorflow as tf

REFERENCE_SIZE = 224  # ImageNet-C's crop, which its pixel constants refer to.
SEVERITIES = (1, 2, 3, 4, 5)


@dataclasses.dataclass(frozen=True)
class Corruption:
  category: str  # ImageNet-C's grouping: noise, blur, weather, digital.
  fn: Callable  # (images 0..1, parameter, seed [2], scale = size / 224) -> images 0..1.
  severities: Tuple  # ImageNet-C's parameter at severities 1..5.
  extra: bool = False  # ImageNet-C's held-out extras: not in the default list.


# ---- Noise --------------------------------------------------------------------------------

def _gaussian_noise(x, sigma, seed, scale):
  del scale
  return x + sigma * tf.random.stateless_normal(tf.shape(x), seed)


def _shot_noise(x, photons, seed, scale):
  """Poisson noise: `photons` counts at full intensity (fewer: noisier)."""
  del scale
  return tf.random.stateless_poisson(tf.shape(x), seed, x * photons, tf.float32) / photons


def _impulse_noise(x, amount, seed, scale):
  """Salt and pepper on a share `amount` of the values, each channel on its own."""
  del scale
  hit_seed, salt_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  hit = tf.random.stateless_uniform(tf.shape(x), hit_seed) < amount
  salt = tf.cast(tf.random.stateless_uniform(tf.shape(x), salt_seed) < 0.5, x.dtype)
  return tf.where(hit, salt, x)


def _speckle_noise(x, sigma, seed, scale):
  del scale
  return x + x * sigma * tf.random.stateless_normal(tf.shape(x), seed)


# ---- Blur ---------------------------------------------------------------------------------

_SUBSAMPLES = 8  # Points per pixel side when a continuous kernel is integrated.


def pixel_kernel(density: Callable, radius: float) -> np.ndarray:
  """A continuous blur kernel `density(dx, dy)` as a normalised `[K, K]` pixel kernel.

  The density is integrated against each pixel's bilinear tent, which is the blur of the
  bilinearly interpolated image sampled at pixel centres. Unlike sampling the density at
  integer offsets, this changes smoothly with sub-pixel sizes: a radius scaled down to
  0.4 px still blurs a little, and a radius of 0 is the identity.
  """
  half = int(math.ceil(radius)) + 1
  t = np.arange(-half * _SUBSAMPLES, half * _SUBSAMPLES + 1) / _SUBSAMPLES
  xx, yy = np.meshgrid(t, t)
  weights = density(xx, yy).astype(np.float64)
  offsets = np.arange(-half, half + 1)
  tent = np.maximum(0.0, 1.0 - np.abs(t[None, :] - offsets[:, None]))  # [K, points]
  kernel = tent @ weights @ tent.T
  kernel /= kernel.sum()
  keep = np.flatnonzero(kernel.sum(axis=0) > 1e-6 * kernel.max())
  r = max(abs(offsets[keep[0]]), abs(offsets[keep[-1]]))
  return kernel[half - r:half + r + 1, half - r:half + r + 1].astype(np.float32)


def convolve(x: tf.Tensor, kernel: np.ndarray) -> tf.Tensor:
  """Per-channel 2-D convolution with edges reflected (OpenCV's filter2D default)."""
  r = kernel.shape[0] // 2
  if r == 0:
    return x * float(kernel[0, 0])
  channels = x.shape[-1]
  filters = tf.constant(np.tile(kernel[:, :, None, None], [1, 1, channels, 1]))
  padded = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
  return tf.nn.depthwise_conv2d(padded, filters, [1, 1, 1, 1], "VALID")


def _gaussian_blur(x, sigma, seed, scale):
  del seed
  s = sigma * scale
  return convolve(x, pixel_kernel(lambda u, v: np.exp(-(u * u + v * v) / (2 * s * s)),
                                  4 * s))


def _defocus_blur(x, params, seed, scale):
  """A disk of ImageNet-C's radius. Its small Gaussian on top (sigma 0.1-0.5 px) only
  anti-aliases its pixel disk, which integrating the disk over pixels does already."""
  del seed
  r = params[0] * scale
  return convolve(x, pixel_kernel(lambda u, v: (u * u + v * v <= r * r + 1e-9) * 1.0, r))


def transform(x: tf.Tensor, matrices: tf.Tensor) -> tf.Tensor:
  """Bilinear projective transform per image (`matrices` [B, 8], output -> input
  coordinates), edges repeated outwards so no black border appears."""
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=tf.cast(matrices, tf.float32), output_shape=tf.shape(x)[1:3],
      fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")


def _motion_blur(x, params, seed, scale):
  """ImageMagick's motion blur as ImageNet-C calls it (radius, sigma, angle uniform in
  +-45 degrees per image): a one-sided line of 2 * radius + 1 taps with Gaussian weights,
  here taps at most 1 px apart, read with bilinear interpolation."""
  length, sigma = 2 * params[0] * scale, params[1] * scale
  angle = tf.random.stateless_uniform(tf.shape(x)[:1], seed, -45.0, 45.0) * (math.pi / 180)
  dx, dy = tf.cos(angle), -tf.sin(angle)
  taps = np.linspace(0.0, length, int(math.ceil(length)) + 1)
  weights = np.exp(-taps ** 2 / (2 * sigma * sigma))
  weights /= weights.sum()
  ones, zeros = tf.ones_like(dx), tf.zeros_like(dx)
  out = 0.0
  for t, w in zip(taps, weights):
    matrices = tf.stack([ones, zeros, t * dx, zeros, ones, t * dy, zeros, zeros], axis=1)
    out += float(w) * transform(x, matrices)
  return out


def zoom_matrices(x: tf.Tensor, factors: tf.Tensor) -> tf.Tensor:
  """[B, 8] transforms that zoom each image by `factors` [B] about its centre."""
  h, w = (tf.cast(d, tf.float32) for d in (tf.shape(x)[1], tf.shape(x)[2]))
  inv = 1.0 / factors
  zeros = tf.zeros_like(inv)
  return tf.stack([inv, zeros, (w - 1) / 2 * (1 - inv), zeros, inv, (h - 1) / 2 * (1 - inv),
                   zeros, zeros], axis=1)


def _zoom_blur(x, factors, seed, scale):
  """The mean of the image and its zooms by each factor (relative sizes: not scaled)."""
  del seed, scale
  out = x
  for z in factors:
    out += transform(x, zoom_matrices(x, tf.fill(tf.shape(x)[:1], float(z))))
  return out / (len(factors) + 1)


# ---- Weather ------------------------------------------------------------------------------

def fractal_noise(seed, batch, height: int, width: int, decay: float) -> tf.Tensor:
  """A smooth random field `[batch, height, width, 1]` in 0..1: octaves of uniform noise on grids of
  2, 4, 8, ... cells, upsampled bilinearly, the amplitude divided by `decay` per octave
  (the "wibble decay" of ImageNet-C's diamond-square plasma, which this approximates)."""
  octaves = max(1, int(math.ceil(math.log2(max(height, width)))))
  seeds = tf.random.experimental.stateless_split(seed, octaves)
  field = 0.0
  for k in range(octaves):
    grid = 2 ** (k + 1)
    cells = tf.random.stateless_uniform(tf.stack([batch, grid, grid, 1]), seeds[k], -1, 1)
    field += decay ** -k * tf.image.resize(cells, [height, width], method="bilinear")
  low = tf.reduce_min(field, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(field, axis=[1, 2, 3], keepdims=True)
  return (field - low) / tf.maximum(high - low, 1e-6)


def _fog(x, params, seed, scale):
  """A fog-like haze: a smooth random field added, then scaled back to the image's peak."""
  del scale
  thickness, decay = params
  peak = tf.reduce_max(x, axis=[1, 2, 3], keepdims=True)
  haze = fractal_noise(seed, tf.shape(x)[0], x.shape[1], x.shape[2], decay)
  return (x + thickness * haze) * peak / (peak + thickness)


def _hsv(x, fn):
  hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
  return tf.image.hsv_to_rgb(fn(hsv))


def _brightness(x, shift, seed, scale):
  """HSV value + `shift` (ImageNet-C counts brightness as weather: sunlight)."""
  del seed, scale
  return _hsv(x, lambda h: tf.concat(
      [h[..., :2], tf.clip_by_value(h[..., 2:] + shift, 0.0, 1.0)], axis=-1))


# ---- Digital ------------------------------------------------------------------------------

def _contrast(x, factor, seed, scale):
  """Each channel pulled towards its mean by `factor`."""
  del seed, scale
  mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
  return (x - mean) * factor + mean


def _saturate(x, params, seed, scale):
  del seed, scale
  return _hsv(x, lambda h: tf.concat(
      [h[..., :1], tf.clip_by_value(h[..., 1:2] * params[0] + params[1], 0.0, 1.0),
       h[..., 2:]], axis=-1))


def _pixelate(x, fraction, seed, scale):
  """Box-downsampled to `fraction` of the side, box-upsampled back (PIL BOX both ways)."""
  del seed, scale
  h, w = x.shape[1], x.shape[2]
  small = tf.image.resize(x, [max(1, int(h * fraction)), max(1, int(w * fraction))],
                          method="area")
  return tf.image.resize(small, [h, w], method="area")


def _jpeg(x, quality, seed, scale):
  """JPEG at `quality`. The op is per image, hence map_fn (parallel iterations)."""
  del seed, scale
  pixels = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0), tf.uint8)
  out = tf.map_fn(lambda im: tf.image.adjust_jpeg_quality(im, quality), pixels,
                  fn_output_signature=tf.uint8, parallel_iterations=8)
  return tf.cast(out, tf.float32) / 255.0


# ---- The table ----------------------------------------------------------------------------

CORRUPTIONS = {
    "gaussian_noise": Corruption("noise", _gaussian_noise, (.08, .12, .18, .26, .38)),
    "shot_noise": Corruption("noise", _shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": Corruption("noise", _impulse_noise, (.03, .06, .09, .17, .27)),
    "defocus_blur": Corruption("blur", _defocus_blur,
                               ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5))),
    "motion_blur": Corruption("blur", _motion_blur,
                              ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    "zoom_blur": Corruption("blur", _zoom_blur, tuple(
        tuple(np.round(np.arange(1, stop, step), 2)) for stop, step in
        ((1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)))),
    "fog": Corruption("weather", _fog,
                      ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))),
    "brightness": Corruption("weather", _brightness, (.1, .2, .3, .4, .5)),
    "contrast": Corruption("digital", _contrast, (.4, .3, .2, .1, .05)),
    "pixelate": Corruption("digital", _pixelate, (.6, .5, .4, .3, .25)),
    "jpeg_compression": Corruption("digital", _jpeg, (25, 18, 15, 10, 7)),
    "speckle_noise": Corruption("noise", _speckle_noise, (.15, .2, .35, .45, .6), True),
    "gaussian_blur": Corruption("blur", _gaussian_blur, (1, 2, 3, 4, 6), True),
    "saturate": Corruption("digital", _saturate,
                           ((.3, 0), (.1, 0), (2, 0), (5, .1), (20, .2)), True),
}
NAMES = tuple(CORRUPTIONS)
DEFAULT_NAMES = tuple(n for n, c in CORRUPTIONS.items() if not c.extra)


def resolve(names: Sequence[str]) -> Tuple[str, ...]:
  """A flag's list -> corruption names: empty = the default (ImageNet-C's benchmark set
  as far as implemented), "all" = every one; unknown names raise with the known ones."""
  if not names:
    return DEFAULT_NAMES
  if list(names) == ["all"]:
    return NAMES
  unknown = [n for n in names if n not in CORRUPTIONS]
  if unknown:
    raise ValueError(f"unknown corruption {', '.join(unknown)}; known: {', '.join(NAMES)} "
                     "(or all)")
  return tuple(names)


def corrupt(images: tf.Tensor, name: str, severity: int, seed) -> tf.Tensor:
  """`images` float32 [B, H, W, 3] on 0..255 with corruption `name` at `severity` (0..5).

  `seed` is a stateless seed (int [2]); the same seed gives the same corruption. H and W
  must be static (they size the kernels). Severity 0 returns `images` itself.
  """
  if name not in CORRUPTIONS:
    resolve([name])  # Raises with the known names.
  if not 0 <= severity <= len(SEVERITIES):
    raise ValueError(f"corruption severity {severity}: must be in 0..{len(SEVERITIES)}")
  if severity == 0:
    return images
  corruption = CORRUPTIONS[name]
  scale = min(images.shape[1], images.shape[2]) / REFERENCE_SIZE
  x = tf.cast(images, tf.float32) / 255.0
  out = corruption.fn(x, corruption.severities[severity - 1], seed, scale)
  # Static shapes survive (map_fn and resizes lose them), so a compiled model step fed
  # by every corruption in turn is traced once, not once per corruption.
  return tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0) * 255.0, images.shape)
