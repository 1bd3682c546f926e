"""Predict throughput end to end vs bare `model.predict` on pre-decoded tensors: a ratio.

    python benchmarks/bench_predict.py [--model efficientnet-b0] [--image_size 64]
        [--num_images 2048] [--batch_size 128]

Writes generated JPEGs into one TFRecord file (a `tfrecord:` source), then in one process
times (1) `noisy_student.predict.predict`: read, decode, eval preprocessing, teacher,
soft labels, TFRecord shards + manifests; and (2) `model.predict` on the same images
already decoded and preprocessed into one numpy array, same model and batch size. Both
are warmed up first (tracing excluded) and timed alternately --repeats times. Prints each
repeat (images/s; CPU ms per image of this process, which other programs' load changes
less than wall time; the share of the machine's CPU that other programs and the
hypervisor took meanwhile, so a disturbed repeat shows), the best of each side with
their ratio (target >= 0.85), the median of the repeats' ratios, and the load average
before and after. The same two ratios against bare up to its last batch are printed
too: stricter, since they leave out model.predict's input-pipeline teardown, which TF's
tf.data autotuner can stretch by seconds (predict turns the autotuner off). Absolute
numbers depend on machine load; the ratio is the figure to keep.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Dict, NamedTuple, Optional

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

  marks = {}

  class LastBatch(keras.callbacks.Callback):
    def on_predict_batch_end(self, batch, logs=None):
      marks["last"] = time.perf_counter()

  def run():
    marks["start"] = time.perf_counter()
    return len(model.predict(images, batch_size=batch, verbose=0, callbacks=[LastBatch()]))

  def timed():
    timing = _timed(run)
    return timing._replace(to_last_batch=len(images) / (marks["last"] - marks["start"]))
  return timed


class _Timing(NamedTuple):
  images_per_sec: float
  cpu_ms_per_image: float  # This process, all threads.
  others: float  # Share of the machine's CPU time used by other programs meanwhile.
  steal: float  # Share taken by the hypervisor (a VM's neighbours).
  # Bare only: images/s up to the end of model.predict's last batch, i.e. without the
  # teardown of its input pipeline (TF's autotuner can hold that for seconds).
  to_last_batch: float = float("nan")


def _machine_ticks() -> Optional[np.ndarray]:
  """(busy, steal, total) CPU ticks of the whole machine so far; None off Linux."""
  try:
    with open("/proc/stat") as f:
      ticks = np.array(f.readline().split()[1:], np.int64)
  except (OSError, ValueError):
    return None
  # user nice system idle iowait irq softirq steal [guest guest_nice: inside user, nice]
  total = int(ticks[:8].sum())
  return np.array([total - ticks[3] - ticks[4] - ticks[7], ticks[7], total])


def _timed(fn) -> _Timing:
  """Times one call of fn, which returns its image count.

  On a shared machine the load of others shows here, so each repeat can be judged.
  """
  machine, start, cpu = _machine_ticks(), time.perf_counter(), time.process_time()
  num_images = fn()
  seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
  others = steal = float("nan")
  if machine is not None:
    busy, stolen, total = _machine_ticks() - machine
    ours = cpu * os.sysconf("SC_CLK_TCK")
    others, steal = max(busy - ours, 0) / max(total, 1), stolen / max(total, 1)
  return _Timing(num_images / seconds, 1e3 * cpu / num_images, others, steal)


def _end_to_end_fn(model, source, image_size: int, batch: int, out: str):
  """A callable timing predict() from encoded bytes to finished shards."""
  runs = iter(range(1 << 20))

  def run():
    cfg = PredictConfig(output_dir=os.path.join(out, f"run{next(runs)}"), num_shards=8)
    return predict.predict(model, source, cfg, image_size=image_size, batch_size=batch,
                           teacher_id="bench")
  run()  # Traces the step (cached per model) and warms up.

  # The whole call is timed: counting, pipeline set-up, all shards and manifests.
  return lambda: _timed(lambda: run().records_written)


def _describe(t: _Timing) -> str:
  last = "" if np.isnan(t.to_last_batch) else f" ({t.to_last_batch:.1f} to its last batch)"
  return (f"{t.images_per_sec:6.1f} images/s{last}, {t.cpu_ms_per_image:.2f} CPU ms/image "
          f"(others {100 * t.others:.0f}%, steal {100 * t.steal:.0f}%)")


def measure(model_name: str = "efficientnet-b0", image_size: int = 64,
            num_images: int = 2048, batch_size: int = 128, num_classes: int = 100,
            repeats: int = 2) -> Dict[str, float]:
  """Both sides, alternately `repeats` times; prints every repeat and the summary and
  returns {"end_to_end", "bare", "bare_to_last_batch" (images/s, best of the repeats),
  "ratio" (of the bests), "median_ratio", ...}."""
  keras.utils.set_random_seed(0)
  load_before = os.getloadavg()[0]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "images.tfrecord")
    write_images(path, num_images, image_size + 16)
    source = sources.open_source(f"tfrecord:{path}")
    model = efficientnet.build_model(model_name, num_classes, image_size=image_size)
    e2e_fn = _end_to_end_fn(model, source, image_size, batch_size, tmp)
    bare_fn = _bare_fn(model, source, image_size, batch_size)
    # Alternating repeats: a busy machine's load swings between runs, so each repeat's
    # pair is printed, and the summary is the best of each side plus the median ratio.
    pairs = []
    for r in range(repeats):
      e2e, bare = e2e_fn(), bare_fn()
      pairs.append((e2e.images_per_sec, bare.images_per_sec, bare.to_last_batch))
      print(f"repeat {r + 1}: end to end {_describe(e2e)}; bare {_describe(bare)}; ratio "
            f"{e2e.images_per_sec / bare.images_per_sec:.3f}", flush=True)
  e2e, bare, bare_compute = (max(side) for side in zip(*pairs))
  median = float(np.median([a / b for a, b, _ in pairs]))
  print(f"{model_name} @ {image_size}px, {num_images} images, batch {batch_size}; load "
        f"average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
  print(f"predict end to end: {e2e:8.1f} images/s (best of {repeats})")
  print(f"bare model.predict: {bare:8.1f} images/s (best of {repeats}; pre-decoded); "
        f"{bare_compute:.1f} to its last batch")
  print(f"ratio of the bests: {e2e / bare:.3f}; median of the repeats' ratios: "
        f"{median:.3f} (target >= 0.85)")
  print(f"stricter, against bare to its last batch: ratio of the bests "
        f"{e2e / bare_compute:.3f}, median {np.median([a / c for a, _, c in pairs]):.3f}",
        flush=True)
  return {"model": model_name, "image_size": image_size, "num_images": num_images,
          "batch_size": batch_size, "end_to_end": e2e, "bare": bare,
          "bare_to_last_batch": bare_compute, "ratio": e2e / bare, "median_ratio": median}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="efficientnet-b0")
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--num_images", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  measure(args.model, args.image_size, args.num_images, args.batch_size,
          args.num_classes, args.repeats)


if __name__ == "__main__":
  main()
