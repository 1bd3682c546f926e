"""Training input pipeline images/s vs what an EfficientNet-B0 train step consumes.

    python benchmarks/bench_input_pipeline.py [--image_size 224] [--batch_size 16]

Writes generated JPEGs (about ImageNet's average size) to a temp ImageFolder, runs
`labeled_train_dataset` (read, decode, distorted crop, bicubic resize, flip,
RandAugment N=2 M=--magnitude, batch) and, in the same process, EfficientNet-B0 train
steps on batches of the same shape. The ratio pipeline / model must be >= 2 so the
input never starves training. Absolute numbers depend on machine load.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noisy_student.config import DataConfig  # noqa: E402
from noisy_student.data import datasets  # noqa: E402
from noisy_student.data import sources  # noqa: E402


def _write_jpegs(root: str, n: int, height: int = 375, width: int = 500) -> None:
  """n smooth random JPEGs in two class folders (ImageNet's typical 500 x 375)."""
  rng = np.random.RandomState(0)
  for i in range(n):
    low = rng.randint(0, 256, (1, height // 16, width // 16, 3)).astype(np.float32)
    image = tf.cast(tf.image.resize(low, [height, width])[0], tf.uint8)
    folder = os.path.join(root, f"class{i % 2}")
    os.makedirs(folder, exist_ok=True)
    tf.io.write_file(os.path.join(folder, f"{i:05d}.jpg"),
                     tf.io.encode_jpeg(image, quality=90))


def _build_model(image_size: int) -> tuple:
  try:
    import efficientnet  # pylint: disable=import-outside-toplevel
    return efficientnet.build_model("efficientnet-b0", 1000, image_size=image_size), \
        "efficientnet.build_model('efficientnet-b0')"
  except (ImportError, AttributeError):
    return keras.applications.EfficientNetB0(weights=None, input_shape=(
        image_size, image_size, 3)), "keras.applications.EfficientNetB0(weights=None)"


def pipeline_images_per_sec(root: str, args) -> float:
  source = sources.open_source(f"imagefolder:{root}")
  cfg = DataConfig(randaug_mag=args.magnitude, shuffle_buffer=256)
  ds = datasets.labeled_train_dataset(source, image_size=args.image_size,
                                      batch_size=args.batch_size, config=cfg)
  it = iter(ds)
  for _ in range(2):  # Warm-up: tracing, graph optimisation, autotuning.
    next(it)
  start = time.perf_counter()
  for _ in range(args.pipeline_batches):
    next(it)
  return args.pipeline_batches * args.batch_size / (time.perf_counter() - start)


def model_images_per_sec(args) -> tuple:
  model, name = _build_model(args.image_size)
  model.compile(optimizer=keras.optimizers.RMSprop(0.016, rho=0.9, momentum=0.9,
                                                   epsilon=1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = np.random.RandomState(0).uniform(0, 255, (args.batch_size, args.image_size,
                                                args.image_size, 3)).astype(np.float32)
  y = np.zeros([args.batch_size], np.int64)
  model.train_on_batch(x, y)  # Warm-up: tracing.
  model.train_on_batch(x, y)
  start = time.perf_counter()
  for _ in range(args.model_steps):
    model.train_on_batch(x, y)
  return args.model_steps * args.batch_size / (time.perf_counter() - start), name


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--num_files", type=int, default=128)
  parser.add_argument("--magnitude", type=float, default=10.0)
  parser.add_argument("--pipeline_batches", type=int, default=12)
  parser.add_argument("--model_steps", type=int, default=3)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    _write_jpegs(root, args.num_files)
    data = pipeline_images_per_sec(root, args)
    print(f"input pipeline: {data:.1f} images/s (JPEG 500x375 -> {args.image_size}, "
          f"RandAugment 2 x M{args.magnitude:g}, batch {args.batch_size})", flush=True)
  model, name = model_images_per_sec(args)
  print(f"train step:     {model:.1f} images/s ({name}, batch {args.batch_size})")
  print(f"ratio pipeline / train step: {data / model:.1f}x (target >= 2x)")


if __name__ == "__main__":
  main()
