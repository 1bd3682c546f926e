"""Predict throughput end to end vs bare `model.predict` on pre-decoded tensors: a ratio.

    python benchmarks/bench_predict.py [--model efficientnet-b0] [--image_size 64]
        [--num_images 2048] [--batch_size 128]

Writes generated JPEGs into one TFRecord file (a `tfrecord:` source), then in one process
times (1) `noisy_student.predict.predict`: read, decode, eval preprocessing, teacher,
soft labels, TFRecord shards + manifests; and (2) `model.predict` on the same images
already decoded and preprocessed into one numpy array, same model and batch size. Both
are warmed up first (tracing excluded) and timed alternately --repeats times. Prints each
repeat (images/s, and CPU ms per image of this process, which other programs' load
changes less than wall time), the best of each side with their ratio (target >= 0.85), the median of the
repeats' ratios, and the load average before and after. Absolute numbers depend on
machine load; the ratio is the figure to keep.
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

import efficientnet  # noqa: E402
from noisy_student import predict  # noqa: E402
from noisy_student.config import PredictConfig  # noqa: E402
from noisy_student.data import sources  # noqa: E402


def write_images(path: str, n: int, size: int, seed: int = 0) -> None:
  """n smooth random JPEGs (size x size) as ImageNet-style tf.Examples in one file."""
  rng = np.random.default_rng(seed)
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(n):
      low = rng.integers(0, 256, (1, 4, 4, 3)).astype(np.float32)
      image = tf.cast(tf.image.resize(low, [size, size])[0], tf.uint8)
      feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[tf.io.encode_jpeg(image, quality=90).numpy()]))}
      writer.write(tf.train.Example(
          features=tf.train.Features(feature=feature)).SerializeToString())


def _bare_fn(model, source, image_size: int, batch: int):
  """A callable timing model.predict on the images pre-decoded into memory."""
  pre = predict.default_preprocess(image_size)
  ds = source.dataset().map(lambda r: pre(r["image/encoded"]),
                            num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  images = np.concatenate(list(ds.as_numpy_iterator()))
  model.predict(images[:batch], batch_size=batch, verbose=0)  # Warm-up (trace).

  return lambda: _timed(lambda: len(model.predict(images, batch_size=batch, verbose=0)))


def _timed(fn):
  """(images/s, CPU ms per image) of one call of fn, which returns its image count.

  CPU time is this process's, all threads: what other programs' load cannot hide.
  """
  start, cpu = time.perf_counter(), time.process_time()
  num_images = fn()
  return (num_images / (time.perf_counter() - start),
          1e3 * (time.process_time() - cpu) / num_images)


def _end_to_end_fn(model, source, image_size: int, batch: int, out: str):
  """A callable timing predict() from encoded bytes to finished shards."""
  runs = iter(range(1 << 20))

  def run():
    cfg = PredictConfig(output_dir=os.path.join(out, f"run{next(runs)}"),
                        eval_batch_size=batch, num_shards=8)
    return predict.predict(model, source, cfg, image_size=image_size, teacher_id="bench")
  run()  # Traces the step (cached per model) and warms up.

  # The whole call is timed: counting, pipeline set-up, all shards and manifests.
  return lambda: _timed(lambda: run().records_written)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="efficientnet-b0")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--num_images", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  keras.utils.set_random_seed(0)
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "images.tfrecord")
    write_images(path, args.num_images, args.image_size + 16)
    source = sources.open_source(f"tfrecord:{path}")
    model = efficientnet.build_model(args.model, args.num_classes, image_size=args.image_size)
    e2e_fn = _end_to_end_fn(model, source, args.image_size, args.batch_size, tmp)
    bare_fn = _bare_fn(model, source, args.image_size, args.batch_size)
    # Alternating repeats: a busy machine's load swings between runs, so each repeat's
    # pair is printed, and the summary is the best of each side plus the median ratio.
    pairs = []
    for r in range(args.repeats):
      (e2e, e2e_cpu), (bare, bare_cpu) = e2e_fn(), bare_fn()
      pairs.append((e2e, bare))
      print(f"repeat {r + 1}: end to end {e2e:7.1f} images/s ({e2e_cpu:.2f} CPU ms/image), "
            f"bare {bare:7.1f} ({bare_cpu:.2f}), ratio {e2e / bare:.3f}", flush=True)
  e2e, bare = (max(side) for side in zip(*pairs))
  print(f"{args.model} @ {args.image_size}px, {args.num_images} images, batch "
        f"{args.batch_size}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after")
  print(f"predict end to end: {e2e:8.1f} images/s (best of {args.repeats})")
  print(f"bare model.predict: {bare:8.1f} images/s (best of {args.repeats}; pre-decoded)")
  print(f"ratio of the bests: {e2e / bare:.3f}; median of the repeats' ratios: "
        f"{np.median([a / b for a, b in pairs]):.3f} (target >= 0.85)")


if __name__ == "__main__":
  main()
