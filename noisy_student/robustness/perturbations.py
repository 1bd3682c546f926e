"""ImageNet-P style perturbation sequences and their flip probability, as batched TF ops.

ImageNet-P (Hendrycks & Dietterich, ICLR 2019) turns each validation image into a short
video whose frames differ by a small perturbation, and asks how often the top-1
prediction flips from one frame to the next. Steps per frame follow its generation code
(`make_imagenet_p.py`, difficulty 1): noise sigma 0.03 or 300 photons, 1 px of
translation (scaled here by image_size / 224), 1 degree of rotation, 2.5% of scale, 0.02
of HSV value. The frames of the geometric and brightness sequences are centred on the
clean image (offsets -(T-1)/2 .. (T-1)/2 steps); a noise sequence starts with the clean
image and draws fresh noise for every later frame.

Flip probability, per video then averaged: for noise, the share of frames 2..T whose
prediction differs from the first (clean) frame's; for the others, the share of
consecutive frames whose predictions differ.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Tuple

import tensorflow as tf

from noisy_student.robustness import corruptions

DEFAULT_FRAMES = 10


@dataclasses.dataclass(frozen=True)
class Perturbation:
  noise: bool  # Frames compared with the first (noise) or with the previous frame.
  fn: Callable  # (images [B, H, W, 3] 0..1, offsets per frame, seed, scale) -> [B*T, ...]
  step: float  # ImageNet-P's change between frames.


def _noise_frames(make_noise):
  def fn(x, offsets, seed, scale):
    del scale
    frames = len(offsets)
    repeated = tf.repeat(x, frames, axis=0)  # Image-major: [x0 x0 .. x1 x1 ..].
    noisy = make_noise(repeated, seed)
    first = tf.equal(tf.range(tf.shape(repeated)[0]) % frames, 0)
    return tf.where(first[:, None, None, None], repeated, noisy)
  return fn


def _gaussian(x, seed):
  return x + 0.03 * tf.random.stateless_normal(tf.shape(x), seed)


def _shot(x, seed):
  return tf.random.stateless_poisson(tf.shape(x), seed, x * 300.0, tf.float32) / 300.0


def _geometric(matrices_fn):
  """Frames from per-frame [T, 8] transforms, each applied to every image."""
  def fn(x, offsets, seed, scale):
    del seed
    frames = len(offsets)
    h, w = float(x.shape[1]), float(x.shape[2])
    per_frame = matrices_fn(tf.constant(offsets, tf.float32), h, w, scale)
    matrices = tf.tile(per_frame, tf.stack([tf.shape(x)[0], 1]))
    return corruptions.transform(tf.repeat(x, frames, axis=0), matrices)
  return fn


def _translate(offsets, h, w, scale):
  del h, w
  ones, zeros = tf.ones_like(offsets), tf.zeros_like(offsets)
  return tf.stack([ones, zeros, offsets * scale, zeros, ones, zeros, zeros, zeros], axis=1)


def _rotate(offsets, h, w, scale):
  del scale
  a = offsets * (math.pi / 180.0)
  cos, sin, zeros = tf.cos(a), tf.sin(a), tf.zeros_like(a)
  cx, cy = (w - 1) / 2, (h - 1) / 2
  return tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy,
                   zeros, zeros], axis=1)


def _scale(offsets, h, w, scale):
  del scale
  inv = 1.0 / (1.0 + offsets)
  zeros = tf.zeros_like(inv)
  return tf.stack([inv, zeros, (w - 1) / 2 * (1 - inv), zeros, inv, (h - 1) / 2 * (1 - inv),
                   zeros, zeros], axis=1)


def _brightness(x, offsets, seed, scale):
  del seed, scale
  frames = len(offsets)
  hsv = tf.image.rgb_to_hsv(tf.repeat(x, frames, axis=0))
  shift = tf.tile(tf.constant(offsets, tf.float32), tf.shape(x)[:1])[:, None, None, None]
  value = tf.clip_by_value(hsv[..., 2:] + shift, 0.0, 1.0)
  return tf.image.hsv_to_rgb(tf.concat([hsv[..., :2], value], axis=-1))


PERTURBATIONS = {
    "gaussian_noise": Perturbation(True, _noise_frames(_gaussian), 0.03),
    "shot_noise": Perturbation(True, _noise_frames(_shot), 300.0),
    "translate": Perturbation(False, _geometric(_translate), 1.0),
    "rotate": Perturbation(False, _geometric(_rotate), 1.0),
    "scale": Perturbation(False, _geometric(_scale), 0.025),
    "brightness": Perturbation(False, _brightness, 0.02),
}
NAMES = tuple(PERTURBATIONS)


def resolve(names: Sequence[str]) -> Tuple[str, ...]:
  """A flag's list -> perturbation names: empty or "all" = every one."""
  if not names or list(names) == ["all"]:
    return NAMES
  unknown = [n for n in names if n not in PERTURBATIONS]
  if unknown:
    raise ValueError(f"unknown perturbation {', '.join(unknown)}; known: "
                     f"{', '.join(NAMES)} (or all)")
  return tuple(names)


def frame_offsets(name: str, num_frames: int) -> Tuple[float, ...]:
  """The perturbation's parameter per frame: centred steps (noise: 0 for the clean
  first frame, the noise level for the others)."""
  p = PERTURBATIONS[name]
  if p.noise:
    return (0.0,) + (p.step,) * (num_frames - 1)
  return tuple((i - (num_frames - 1) / 2) * p.step for i in range(num_frames))


def sequences(images: tf.Tensor, name: str, num_frames: int = DEFAULT_FRAMES,
              seed=(0, 0)) -> tf.Tensor:
  """float32 [B, H, W, 3] 0..255 -> [B, num_frames, H, W, 3] 0..255, one video per image.

  H and W must be static. The same `seed` (stateless, int [2]) gives the same frames.
  """
  if name not in PERTURBATIONS:
    resolve([name])  # Raises with the known names.
  if num_frames < 2:
    raise ValueError(f"perturbation frames {num_frames}: need at least 2")
  h, w = images.shape[1], images.shape[2]
  scale = min(h, w) / corruptions.REFERENCE_SIZE
  x = tf.cast(images, tf.float32) / 255.0
  frames = PERTURBATIONS[name].fn(x, frame_offsets(name, num_frames), seed, scale)
  frames = tf.clip_by_value(frames, 0.0, 1.0) * 255.0
  videos = tf.reshape(frames, tf.concat([[-1, num_frames], tf.shape(images)[1:]], axis=0))
  return tf.ensure_shape(videos, [images.shape[0], num_frames, *images.shape[1:]])


def flip_probability(predictions: tf.Tensor, noise: bool) -> tf.Tensor:
  """int [B, T] top-1 per frame -> float32 [B]: each video's share of flipped frames.

  noise: frames 2..T against frame 1 (ImageNet-P's noise sequences); else each frame
  against the one before.
  """
  reference = predictions[:, :1] if noise else predictions[:, :-1]
  flips = tf.not_equal(predictions[:, 1:], reference)
  return tf.reduce_mean(tf.cast(flips, tf.float32), axis=1)
