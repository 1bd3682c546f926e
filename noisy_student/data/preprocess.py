"""Decoding and the original's train / eval preprocessing (pure TF ops).

Outputs are float32 `[S, S, 3]` with pixels on the 0..255 scale (clipped after the
bicubic resize, which overshoots); the model normalises. Randomness is stateless: every
random function takes an int `[2]` seed, so a seed reproduces the exact image.
"""
from __future__ import annotations

import threading
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from noisy_student.data import augment_ops
from noisy_student.data import randaugment as randaugment_lib

CROP_PADDING = 32  # Eval crop keeps S / (S + 32) of the shorter side, as the original.


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG, PNG, BMP or GIF (first frame) bytes to uint8 `[H, W, 3]`.

  Grey, grey+alpha, RGBA and palette images become 3 channels (alpha is dropped).
  Raises InvalidArgumentError on corrupt bytes; `decode_or_skip` skips those instead.
  Pure TF, so it works inside a SavedModel serving signature.
  """
  image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


class SkipCounter:
  """Counts (and remembers the first ids of) records skipped as undecodable.

  Thread-safe; shared by every dataset it is passed to. `count` is exact once the
  dataset has been consumed; predict can store it in its manifest.
  """

  def __init__(self, max_ids: int = 1000):
    self._lock = threading.Lock()
    self._count = 0
    self._ids: List[str] = []
    self._max_ids = max_ids

  @property
  def count(self) -> int:
    with self._lock:
      return self._count

  @property
  def ids(self) -> List[str]:
    """The first `max_ids` skipped ids, in the order they were met."""
    with self._lock:
      return list(self._ids)

  def record(self, record_id: bytes) -> None:
    record_id = record_id.decode("utf-8", "replace") if isinstance(record_id, bytes) \
        else str(record_id)
    with self._lock:
      self._count += 1
      if len(self._ids) < self._max_ids:
        self._ids.append(record_id)
      count = self._count
    logging.warning("Skipped undecodable image %s (%d skipped so far).", record_id, count)


def _record_skip(counter: Optional[SkipCounter], record_id: tf.Tensor) -> tf.Tensor:
  def log(rid):
    if counter is not None:
      counter.record(rid.numpy())
    else:
      logging.warning("Skipped undecodable image %s.", rid.numpy().decode("utf-8", "replace"))
    return False
  return tf.reshape(tf.py_function(log, [record_id], tf.bool), [])


def _id_of(record) -> tf.Tensor:
  """The record's id: "id" (sources) or "image/id" (pseudo-label records)."""
  for key in ("id", "image/id"):
    if key in record:
      return record[key]
  return tf.constant("<record without id>")


def decode_or_skip(ds: tf.data.Dataset, counter: Optional[SkipCounter] = None,
                   num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
  """Stage: adds "image" (uint8 [H, W, 3]) to each record; skips undecodable ones.

  Args:
    ds: records with "image/encoded" and "id" or "image/id" (other keys pass through).
    counter: counts and remembers the skipped ids (each is logged either way).
    num_parallel_calls: decode parallelism.
  Returns:
    The records that decoded, in order, each with "image" added.
  """
  def try_decode(record):
    # A one-element dataset whose decode error is ignored is empty; the fallback
    # element (ok=False) then comes first. tf.data has no other per-element
    # error capture that keeps the record's id for the log.
    good = tf.data.Dataset.from_tensors(record).map(
        lambda r: (dict(r, image=decode_image(r["image/encoded"])), True)
    ).ignore_errors()
    bad = tf.data.Dataset.from_tensors(
        (dict(record, image=tf.zeros([0, 0, 3], tf.uint8)), False))
    return good.concatenate(bad).take(1)

  ds = ds.interleave(try_decode, cycle_length=16, block_length=1,
                     num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.filter(lambda r, ok: tf.cond(ok, lambda: True,
                                       lambda: _record_skip(counter, _id_of(r))))
  return ds.map(lambda r, ok: r)


EVAL_RESIZE_METHOD = "bicubic"  # The original's; the deployable export follows it.


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """Bicubic resize to `[S, S]`, clipped back to 0..255 (bicubic overshoots)."""
  out = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                        method=EVAL_RESIZE_METHOD)
  return tf.clip_by_value(out, 0.0, 255.0)


def center_crop_window(h, w, image_size: int):
  """(top, left, crop): the original eval crop's square, centre S/(S+32) of the shorter
  side, of an h x w image (ints or int32 tensors; the deployable export reuses it)."""
  crop = tf.cast(image_size / (image_size + CROP_PADDING)
                 * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  crop = tf.maximum(crop, 1)
  return (h - crop + 1) // 2, (w - crop + 1) // 2, crop


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The original eval crop: centre S/(S+32) of the shorter side, then bicubic resize."""
  shape = tf.shape(image)
  top, left, crop = center_crop_window(shape[0], shape[1], image_size)
  return _resize(image[top:top + crop, left:left + crop], image_size)


def distorted_crop(image: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
  """The original train crop: distorted bounding box, else the eval centre crop.

  Box: min object covered 0.1, aspect 3/4..4/3, area 0.08..1, 10 attempts; when every
  attempt fails the op returns the whole image, which the original detects and replaces
  by the centre crop. Returns float32 `[S, S, 3]`.
  """
  shape = tf.shape(image)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=0.1, aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
      area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
  out = tf.cond(failed, lambda: center_crop(image, image_size),
                 lambda: _resize(tf.slice(image, begin, size), image_size))
  return tf.ensure_shape(out, [image_size, image_size, 3])


def _augment(image: tf.Tensor, seed: tf.Tensor, augment_name: Optional[str],
             randaug_layer: int, randaug_mag: float, cutout_op: bool,
             randaug_variant: str, translate_const=None,
             cutout_const=None) -> tf.Tensor:
  """RandAugment on a float 0..255 image (via uint8, as the original); float32 out."""
  if not augment_name:
    return image
  if augment_name != "v1":
    raise ValueError(f"Unknown augment_name {augment_name!r}; use 'v1' (RandAugment) "
                     "or None.")
  as_uint8 = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  out = randaugment_lib.randaugment(
      as_uint8, seed, randaug_layer, randaug_mag, cutout_op=cutout_op,
      variant=randaug_variant, translate_const=translate_const,
      cutout_const=cutout_const)
  return tf.cast(out, tf.float32)


def preprocess_train(image: tf.Tensor, image_size: int, seed: tf.Tensor, *,
                     random_flip: bool = True, augment_name: Optional[str] = "v1",
                     randaug_layer: int = 2, randaug_mag: float = 10.0,
                     cutout_op: bool = True,
                     randaug_variant: str = "original") -> tf.Tensor:
  """Train preprocessing: distorted crop, bicubic resize, flip, RandAugment.

  RandAugment's translate and cutout constants are the original's 100 and 40 pixels
  at any S (randaug_variant "original"; "scaled" scales them with S / 224).

  Args:
    image: uint8 `[H, W, 3]`; seed: int `[2]`.
  Returns:
    float32 `[S, S, 3]`, 0..255.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
  image = distorted_crop(image, image_size, seeds[0])
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[1])
  image = _augment(image, seeds[2], augment_name, randaug_layer, randaug_mag, cutout_op,
                   randaug_variant)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_small_train(image: tf.Tensor, image_size: int, seed: tf.Tensor, *,
                           random_flip: bool = False, augment_name: Optional[str] = "v1",
                           randaug_layer: int = 2, randaug_mag: float = 10.0,
                           cutout: bool = True, cutout_op: bool = True,
                           randaug_variant: str = "original") -> tf.Tensor:
  """The original 32-pixel path: no crop; RandAugment, extra cutout, pad-4 random crop.

  Images not already S x S are resized (bicubic) first. RandAugment uses the original's
  translate and cutout constants S//8 (noisystudent preprocessing.py:211-216; in either
  randaug_variant); the extra cutout (when `cutout` and augmenting)
  has half-size S//4 and fill 128. Then reflect-pad 4 and a random S x S crop; a flip
  only when `random_flip` (the original flipped CIFAR-10, not SVHN).
  Returns float32 `[S, S, 3]`, 0..255.
  """
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
  image = tf.cast(image, tf.float32)
  if image.shape[0] != image_size or image.shape[1] != image_size:
    image = _resize(image, image_size)
  image = _augment(image, seeds[0], augment_name, randaug_layer, randaug_mag, cutout_op,
                   randaug_variant, translate_const=image_size // 8,
                   cutout_const=image_size // 8)
  if augment_name and cutout:
    image = augment_ops.cutout(image, image_size // 4, seeds[1])
  padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="REFLECT")
  image = tf.image.stateless_random_crop(padded, [image_size, image_size, 3], seeds[2])
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, seeds[3])
  return tf.ensure_shape(image, [image_size, image_size, 3])


def preprocess_eval(image: tf.Tensor, image_size: int,
                    small_image: bool = False) -> tf.Tensor:
  """Eval / teacher preprocessing: centre crop and bicubic resize, no noise.

  Args:
    image: uint8 (or float 0..255) `[H, W, 3]`.
    image_size: output side S.
    small_image: the 32-pixel path, which does not crop (only resizes if needed).
  Returns:
    float32 `[S, S, 3]`, 0..255. Pure TF ops (usable in a serving signature).
  """
  if small_image:
    image = _resize(image, image_size)
  else:
    image = center_crop(image, image_size)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def element_seed(seed: int, index: tf.Tensor) -> tf.Tensor:
  """The int64 `[2]` stateless seed of the `index`-th element of a stream."""
  return tf.stack([tf.constant(np.int64(seed)), tf.cast(index, tf.int64)])
