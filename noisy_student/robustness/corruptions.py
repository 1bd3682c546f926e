"""ImageNet-C style corruptions as batched, seeded TF ops: one table, name -> 5 severities.

Hendrycks & Dietterich (ICLR 2019) corrupt ImageNet's 224-px validation crops with 15
corruptions at 5 severities (plus 4 held-out extras). This table holds the ones that can
be done faithfully as TF ops, each with the paper code's constants per severity
(`make_imagenet_c.py`). Sizes in pixels (blur radii, motion length) are scaled by
image_size / 224, so a corruption takes the same share of a 32-px digit as of a 224-px
photo. Left out: frost, which blends photographs of frost that ship with the benchmark
and are not available offline. Glass blur, snow and elastic transform are vectorised
versions of the original loops and library calls; each function says how it differs.

Every function maps float32 `[B, H, W, 3]` images on the 0..255 scale (the models
normalise inside) to the same, clipped; randomness comes from stateless ops with an
explicit seed, so a report is reproducible. Severity 0 returns the input unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
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


def transform(x: tf.Tensor, matrices: tf.Tensor, fill_mode: str = "NEAREST") -> tf.Tensor:
  """Bilinear projective transform per image (`matrices` [B, 8], output -> input
  coordinates), edges repeated outwards so no black border appears ("REFLECT" mirrors
  them instead, as scipy's mode="reflect"). The op's output shape is dynamic: the input's
  static shape is restored, so that later ops can size kernels by it."""
  return tf.ensure_shape(tf.raw_ops.ImageProjectiveTransformV3(
      images=x, transforms=tf.cast(matrices, tf.float32), output_shape=tf.shape(x)[1:3],
      fill_value=0.0, interpolation="BILINEAR", fill_mode=fill_mode), x.shape)


def motion_line(x, length: float, sigma: float, dx: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
  """ImageMagick's MotionBlurImage: each pixel the Gaussian-weighted mean of the pixels on
  a one-sided line of `length` px in the direction (dx, dy) [B] (unit vectors, y down),
  here taps at most 1 px apart, read with bilinear interpolation."""
  taps = np.linspace(0.0, length, int(math.ceil(length)) + 1)
  weights = np.exp(-taps ** 2 / (2 * sigma * sigma))
  weights /= weights.sum()
  ones, zeros = tf.ones_like(dx), tf.zeros_like(dx)
  out = 0.0
  for t, w in zip(taps, weights):
    matrices = tf.stack([ones, zeros, t * dx, zeros, ones, t * dy, zeros, zeros], axis=1)
    out += float(w) * transform(x, matrices)
  return out


def _motion_blur(x, params, seed, scale):
  """ImageMagick's motion blur as ImageNet-C calls it (radius, sigma, angle uniform in
  +-45 degrees per image): a line of 2 * radius + 1 taps. The angle is mirrored against
  ImageMagick's (dy = -sin), which the symmetric range makes the same distribution."""
  length, sigma = 2 * params[0] * scale, params[1] * scale
  angle = tf.random.stateless_uniform(tf.shape(x)[:1], seed, -45.0, 45.0) * (math.pi / 180)
  return motion_line(x, length, sigma, tf.cos(angle), -tf.sin(angle))


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


def sample(x: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
  """`x` [B, H, W, C] read bilinearly at pixel coordinates `rows`, `cols` [B, H, W]
  (clamped to the image): a per-pixel warp, which a projective transform cannot do."""
  h, w, c = x.shape[1], x.shape[2], x.shape[3]
  rows = tf.clip_by_value(rows, 0.0, h - 1.0)[..., None]
  cols = tf.clip_by_value(cols, 0.0, w - 1.0)[..., None]
  r0, c0 = tf.floor(rows), tf.floor(cols)
  fr, fc = rows - r0, cols - c0
  r0, c0 = tf.cast(r0[..., 0], tf.int32), tf.cast(c0[..., 0], tf.int32)
  r1, c1 = tf.minimum(r0 + 1, h - 1), tf.minimum(c0 + 1, w - 1)
  flat = tf.reshape(x, [-1, h * w, c])
  at = lambda r, q: tf.gather(flat, r * w + q, batch_dims=1)
  top = at(r0, c0) * (1 - fc) + at(r0, c1) * fc
  bottom = at(r1, c0) * (1 - fc) + at(r1, c1) * fc
  return top * (1 - fr) + bottom * fr


def _pixel_grid(h: int, w: int):
  """Row and column coordinates of every pixel, [1, H, W] each."""
  rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32),
                           indexing="ij")
  return tf.constant(rows[None]), tf.constant(cols[None])


def _glass_blur(x, params, seed, scale):
  """ImageNet-C's glass blur (sigma, max_delta, iterations): Gaussian blur, pixels
  shuffled locally, Gaussian blur again (frosted glass in front of the scene).

  The original swaps pixels one at a time, sweeping from the bottom-right corner to the
  top-left, each with the pixel at an offset drawn per axis from randint(-d, d), i.e.
  -d..d-1 (numpy's upper end is exclusive, so the offsets lean up-left). That loop is
  sequential. Here every pixel at once takes the value at its own offset, drawn the same
  way, for `iterations` rounds: a gather instead of a permutation, so a value can be
  copied twice or lost, where the swaps keep each exactly once; no value travels more than
  d px per round, where a swapped value can be carried on by later swaps of the same
  sweep; edge pixels read clamped coordinates, where the original leaves a d-px border
  unvisited. The offsets are scaled by image size / 224 and read bilinearly, so below 224
  px a swap is a sub-pixel shift. The original's uint8 rounding between the steps is left
  out.
  """
  sigma, delta, rounds = params
  x = _gaussian_blur(x, sigma, seed, scale)
  rows, cols = _pixel_grid(x.shape[1], x.shape[2])
  offset_shape = tf.concat([tf.shape(x)[:3], [2]], axis=0)
  for round_seed in tf.unstack(tf.random.experimental.stateless_split(seed, rounds)):
    offsets = tf.random.stateless_uniform(offset_shape, round_seed, -delta, delta, tf.int32)
    offsets = tf.cast(offsets, tf.float32) * scale
    x = sample(x, rows + offsets[..., 0], cols + offsets[..., 1])
  return _gaussian_blur(x, sigma, seed, scale)


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


def _snow(x, params, seed, scale):
  """ImageNet-C's snow (loc, scale, zoom, threshold, radius, sigma, keep): a layer of
  normal noise at (loc, scale), zoomed (flakes `zoom` px wide), zeroed below `threshold`,
  clipped to 0..1 and motion-blurred (ImageMagick's radius, sigma, angle uniform in -135
  to -45 degrees: streaks falling downwards); the image is mixed with a brightened grey
  copy (the share 1 - `keep` of max(x, 1.5 grey + 0.5)), then the layer and its
  180-degree rotation are added.

  The noise is zoomed to flakes of `zoom` * size / 224 px (a grid of size / that many
  cells, resized bilinearly): the original zooms per-pixel noise, so its `zoom` is a size
  in pixels, like the blur radius. Below 224 / zoom px (50 to 112 px) a flake is smaller
  than a pixel and the resize samples the noise's bilinear field at pixel centres, which
  keeps the layer's mean (the added brightness) the same at every size. The original's
  uint8 rounding of the layer (twice, through PNG) is left out.
  """
  loc, spread, zoom, threshold, radius, sigma, keep = params
  h, w = x.shape[1], x.shape[2]
  noise_seed, angle_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  flake = zoom * scale
  grid = tf.stack([tf.shape(x)[0], math.ceil(h / flake), math.ceil(w / flake), 1])
  noise = tf.random.stateless_normal(grid, noise_seed, loc, spread)
  layer = tf.image.resize(noise, [h, w], method="bilinear")
  layer = tf.clip_by_value(tf.where(layer < threshold, 0.0, layer), 0.0, 1.0)
  angle = tf.random.stateless_uniform(tf.shape(x)[:1], angle_seed, -135.0, -45.0)
  angle *= math.pi / 180
  layer = motion_line(layer, 2 * radius * scale, sigma * scale, tf.cos(angle), tf.sin(angle))
  grey = tf.image.rgb_to_grayscale(x)
  x = keep * x + (1 - keep) * tf.maximum(x, grey * 1.5 + 0.5)
  return x + layer + tf.reverse(layer, axis=[1, 2])


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


def _affine_matrices(x, shift, seed):
  """[B, 8] output -> input transforms of ImageNet-C's random affine: the corners of a
  right triangle around the centre (legs 2/3 of the shorter side) each moved by
  uniform(-shift, shift) px per axis. The original warps by the map from the triangle to
  the moved one; its inverse, which `transform` needs, is the map from the moved triangle
  back, solved here per image. (The original puts the centre at (h // 2, w // 2) as (x, y),
  the same on its square crops.)"""
  h, w = x.shape[1], x.shape[2]
  cx, cy, half = w // 2, h // 2, min(h, w) // 3
  src = tf.constant([[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]],
                    tf.float32)
  moved = src + tf.random.stateless_uniform(
      tf.stack([tf.shape(x)[0], 3, 2]), seed, -shift, shift)
  ones = tf.ones_like(moved[..., :1])
  coefficients = tf.linalg.solve(tf.concat([moved, ones], axis=-1),
                                 tf.broadcast_to(src, tf.shape(moved)))  # [B, 3, 2]
  zeros = tf.zeros_like(coefficients[:, :2, 0])
  return tf.concat([coefficients[..., 0], coefficients[..., 1], zeros], axis=1)


def reflect_index(index: np.ndarray, n: int) -> np.ndarray:
  """Indices outside 0..n-1 mirrored back, the edge pixel repeated (scipy's "reflect":
  d c b a | a b c d | d c b a), for any distance from the edge."""
  index = np.mod(index, 2 * n)
  return np.where(index < n, index, 2 * n - 1 - index)


@functools.lru_cache(maxsize=None)
def smoothing_matrix(n: int, sigma: float) -> np.ndarray:
  """[n, n] matrix of scipy.ndimage.gaussian_filter1d(mode="reflect", truncate=3) on n
  values. A matrix because ImageNet-C's kernel (radius 3 sigma, up to 512 px) can be wider
  than the image, which a padded convolution cannot do."""
  radius = int(3 * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * offsets ** 2 / sigma ** 2)
  weights /= weights.sum()
  matrix = np.zeros([n, n])
  rows = np.repeat(np.arange(n), len(offsets))
  np.add.at(matrix, (rows, reflect_index(rows + np.tile(offsets, n), n)),
            np.tile(weights, n))
  return matrix.astype(np.float32)


def _field_rms(h: int, w: int, sigma: float) -> float:
  """Mean RMS (over pixels) of uniform(-1, 1) noise smoothed by `smoothing_matrix`."""
  mean_square = lambda m: float(np.square(m.astype(np.float64)).sum() / m.shape[0])
  return math.sqrt(mean_square(smoothing_matrix(h, sigma)) *
                   mean_square(smoothing_matrix(w, sigma)) / 3)


def displacement(seed, batch, h: int, w: int, alpha: float, sigma: float, scale: float):
  """ImageNet-C's elastic displacement `[batch, 2 (x, y), H, W]` in px:
  uniform(-1, 1) noise, Gaussian-smoothed (sigma, reflected edges, truncated at 3 sigma),
  times alpha.

  alpha is not a size in pixels by itself: the smoothed noise shrinks as sigma grows in
  pixels. So sigma is scaled by image size / 224, and alpha such that the field's RMS is
  size / 224 times that of the 224 x 224 original (exactly the original at 224)."""
  gain = scale * _field_rms(REFERENCE_SIZE, REFERENCE_SIZE, sigma) / _field_rms(
      h, w, sigma * scale)
  noise = tf.random.stateless_uniform(tf.stack([batch, 2, h, w]), seed, -1.0, 1.0)
  smooth_rows = tf.constant(smoothing_matrix(h, sigma * scale))
  smooth_cols = tf.constant(smoothing_matrix(w, sigma * scale))
  field = tf.matmul(tf.matmul(smooth_rows, noise), smooth_cols, transpose_b=True)
  return field * (alpha * gain)


def _reflect_coordinate(t, n: int):
  """Continuous coordinates mirrored into the image as scipy's map_coordinates does with
  mode="reflect" (half a pixel beyond the edge is the edge pixel)."""
  t = tf.math.floormod(t + 0.5, 2.0 * n) - 0.5
  return tf.where(t > n - 0.5, 2.0 * n - 1.0 - t, t)


def _elastic_transform(x, params, seed, scale):
  """ImageNet-C's elastic transform (alpha, sigma, affine shift; the original's constants
  say 244 where 224 was meant, and are used as they are): a random affine warp, then each
  pixel read at its own smooth random displacement, bilinearly, edges mirrored.

  The affine warp is bilinear with edges mirrored half a pixel further out than OpenCV's
  BORDER_REFLECT_101 (TensorFlow's "REFLECT" is scipy's). The affine shift is in pixels,
  so scaled by image size / 224; the displacement field too (see `displacement`)."""
  alpha, sigma, shift = params
  h, w = x.shape[1], x.shape[2]
  affine_seed, field_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  x = transform(x, _affine_matrices(x, shift * scale, affine_seed), "REFLECT")
  field = displacement(field_seed, tf.shape(x)[0], h, w, alpha, sigma, scale)
  rows, cols = _pixel_grid(h, w)
  return sample(x, _reflect_coordinate(rows + field[:, 1], h),
                _reflect_coordinate(cols + field[:, 0], w))


# ---- The table ----------------------------------------------------------------------------

CORRUPTIONS = {
    "gaussian_noise": Corruption("noise", _gaussian_noise, (.08, .12, .18, .26, .38)),
    "shot_noise": Corruption("noise", _shot_noise, (60, 25, 12, 5, 3)),
    "impulse_noise": Corruption("noise", _impulse_noise, (.03, .06, .09, .17, .27)),
    "defocus_blur": Corruption("blur", _defocus_blur,
                               ((3, .1), (4, .5), (6, .5), (8, .5), (10, .5))),
    "glass_blur": Corruption("blur", _glass_blur,
                             ((.7, 1, 2), (.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    "motion_blur": Corruption("blur", _motion_blur,
                              ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    "zoom_blur": Corruption("blur", _zoom_blur, tuple(
        tuple(np.round(np.arange(1, stop, step), 2)) for stop, step in
        ((1.11, .01), (1.16, .01), (1.21, .02), (1.26, .02), (1.31, .03)))),
    "snow": Corruption("weather", _snow, (
        (.1, .3, 3, .5, 10, 4, .8), (.2, .3, 2, .5, 12, 4, .7), (.55, .3, 4, .9, 12, 8, .7),
        (.55, .3, 4.5, .85, 12, 8, .65), (.55, .3, 2.5, .85, 12, 12, .55))),
    "fog": Corruption("weather", _fog,
                      ((1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4))),
    "brightness": Corruption("weather", _brightness, (.1, .2, .3, .4, .5)),
    "contrast": Corruption("digital", _contrast, (.4, .3, .2, .1, .05)),
    # (alpha, sigma, affine shift); 244 is the original's typo for 224, kept as it is.
    "elastic_transform": Corruption("digital", _elastic_transform, (
        (244 * 2, 244 * .7, 244 * .1), (244 * 2, 244 * .08, 244 * .2),
        (244 * .05, 244 * .01, 244 * .02), (244 * .07, 244 * .01, 244 * .02),
        (244 * .12, 244 * .01, 244 * .02))),
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
