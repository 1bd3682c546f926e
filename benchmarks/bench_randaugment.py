"""Per-image RandAugment throughput: ours vs keras.layers.RandAugment, one run, ratios.

    python benchmarks/bench_randaugment.py [--sizes 32,224] [--num_images 128]
        [--variant original|scaled] [--no_cutout_op]

Both run per image inside the same kind of tf.data map (parallel calls, AUTOTUNE) on
the same generated uint8 images, 2 ops per image, at a strong magnitude. Keras's layer
is not the original's RandAugment (it draws ops per call, computes every op and then
selects); it is the library a user would reach for, hence the comparison. Ours runs
the library defaults (16 ops with Cutout, the original's arithmetic) unless told.
Absolute images/s depend on machine load; the ratio is the figure to keep.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noisy_student.data import randaugment as ra  # noqa: E402


def _images(size: int, n: int) -> np.ndarray:
  """Smooth random images (low-res noise upsampled), like photos more than noise is."""
  rng = np.random.RandomState(size)
  low = rng.randint(0, 256, (n, max(2, size // 8), max(2, size // 8), 3)).astype(np.float32)
  return tf.cast(tf.image.resize(low, [size, size]), tf.uint8).numpy()


def _ours(images: np.ndarray, magnitude: float, variant: str,
          cutout_op: bool) -> tf.data.Dataset:
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
  return ds.map(lambda i, x: ra.randaugment(x, tf.stack([tf.constant(0, tf.int64), i]),
                                            2, magnitude, cutout_op=cutout_op,
                                            variant=variant),
                num_parallel_calls=tf.data.AUTOTUNE)


def _keras(images: np.ndarray, magnitude: float) -> tf.data.Dataset:
  layer = keras.layers.RandAugment(value_range=(0, 255), num_ops=2,
                                   factor=min(1.0, magnitude / 10.0), seed=0)
  ds = tf.data.Dataset.from_tensor_slices(images)
  return ds.map(lambda x: layer(tf.cast(x, tf.float32)), num_parallel_calls=tf.data.AUTOTUNE)


def _rate(ds: tf.data.Dataset, n: int) -> float:
  start = time.perf_counter()
  count = sum(1 for _ in ds)
  assert count == n, (count, n)
  return count / (time.perf_counter() - start)


def _compare(datasets: dict, n: int, rounds: int) -> dict:
  """Best images/s of each dataset over `rounds` alternating passes.

  Alternating the two programs pass by pass (after a warm-up of each) exposes both to
  the same machine load, so their ratio is meaningful on a busy machine.
  """
  for ds in datasets.values():
    for _ in ds.take(8):  # Warm-up: tracing and graph optimisation are not throughput.
      pass
  best = {name: 0.0 for name in datasets}
  for _ in range(rounds):
    for name, ds in datasets.items():
      best[name] = max(best[name], _rate(ds, n))
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="32,224")
  parser.add_argument("--num_images", type=int, default=128)
  parser.add_argument("--magnitude", type=float, default=10.0)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--variant", default="original", choices=["original", "scaled"])
  parser.add_argument("--no_cutout_op", action="store_true",
                      help="15 ops, without Cutout.")
  args = parser.parse_args()
  print(f"{'size':>5} {'ours img/s':>11} {'keras img/s':>12} {'ratio':>6}")
  for size in (int(s) for s in args.sizes.split(",")):
    n = args.num_images if size <= 64 else max(16, args.num_images // 2)
    images = _images(size, n)
    ours_ds = _ours(images, args.magnitude, args.variant, not args.no_cutout_op)
    best = _compare({"ours": ours_ds,
                     "keras": _keras(images, args.magnitude)}, n, args.rounds)
    ours, theirs = best["ours"], best["keras"]
    print(f"{size:>5} {ours:>11.1f} {theirs:>12.1f} {ours / theirs:>5.1f}x", flush=True)


if __name__ == "__main__":
  main()
