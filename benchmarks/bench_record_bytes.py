"""Bytes per pseudo-label record, with and without the original's `label` and `prob` keys.

    python benchmarks/bench_record_bytes.py

Serializes records with tfrecords.format.serialize_batch (what predict writes), then the
same records without the two keys the original's trainer needs, for 10 and 1000
classes and a typical id; prints the bytes of each without the image, and the share of
a whole record for ImageNet-sized (110 kB) and digits-sized (~100 B) images.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfrecords import format as fmt  # noqa: E402


def _sizes(num_classes: int, image_bytes: int) -> tuple:
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(num_classes), 64).astype(np.float32)
  records = fmt.serialize_batch(
      tf.constant([b"x" * image_bytes] * 64),
      tf.constant([b"/data/unlabeled/n01440764_10026.JPEG"] * 64),
      tf.fill([64], tf.constant(-1, tf.int64)), tf.constant(probs),
      tf.constant(probs.argmax(1)), tf.constant(probs.max(1))).numpy()
  after = np.mean([len(r) for r in records])
  before = []
  for r in records:
    example = tf.train.Example.FromString(r)
    for key in (fmt.ORIGINAL_CLASS_KEY, fmt.ORIGINAL_CONFIDENCE_KEY):
      del example.features.feature[key]
    before.append(example.ByteSize())
  return float(np.mean(before)), float(after)


def main() -> None:
  for num_classes in (10, 1000):
    before, after = _sizes(num_classes, 0)
    print(f"C={num_classes}: {before:.0f} -> {after:.0f} bytes per record without the "
          f"image (+{after - before:.0f})")
    for name, image in (("ImageNet JPEG", 110_000), ("digits PNG", 100)):
      print(f"  with a {image:,}-byte image ({name}): +{(after - before) / (before + image):.3%}")


if __name__ == "__main__":
  main()
