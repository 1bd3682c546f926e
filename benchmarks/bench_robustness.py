"""The robustness report's corruption passes: one fused pipeline vs one pipeline per pass.

    python benchmarks/bench_robustness.py [--num_images 500] [--size 32]
        [--model efficientnet-t0] [--rounds 2]

Both score the same model on the same corrupted images (every corruption of the
benchmark at severities 1..5, 75 passes; the errors are checked equal): "fused" is what
`evaluate_robustness` runs, every pass in one tf.data pipeline feeding one compiled step;
"per pass" builds and drains one pipeline per (corruption, severity), as the report did
before. Run in turn, best of --rounds each; absolute seconds depend on machine load, the
ratio is the figure to keep.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet  # noqa: E402
from noisy_student.robustness import corruptions  # noqa: E402
from noisy_student.robustness import runner  # noqa: E402


def _dataset(num_images: int, size: int, batch_size: int) -> tf.data.Dataset:
  rng = np.random.RandomState(0)
  low = rng.uniform(0, 255, (num_images, size // 4, size // 4, 3)).astype(np.float32)
  images = tf.image.resize(low, [size, size]).numpy()
  labels = rng.randint(0, 10, num_images)
  return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size).cache()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=500)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--model", default="efficientnet-t0")
  parser.add_argument("--rounds", type=int, default=2)
  args = parser.parse_args()
  batch = args.num_images
  model = efficientnet.build_model(args.model, num_classes=10, image_size=args.size,
                                  small_image=args.size <= 64)
  ds = _dataset(args.num_images, args.size, batch)
  passes = [(c, s) for c in corruptions.CORRUPTIONS for s in range(1, 6)]
  strategy = tf.distribute.get_strategy()
  steps = runner._Passes(model, strategy, (), len(passes), False)
  one = runner._Passes(model, strategy, (), 1, False)  # One step for every pass, as before.

  def fused():
    return steps.errors(runner._corrupted(ds, passes, args.num_images, 0, batch), "fused",
                        batch)

  def per_pass():
    return [one.errors(runner._corrupted(ds, [p], args.num_images, 0, batch),
                         f"{p[0]} {p[1]}", batch)[0] for p in passes]

  results, seconds = {}, {"fused": [], "per pass": []}
  for _ in range(args.rounds):
    for name, fn in (("fused", fused), ("per pass", per_pass)):
      start = time.perf_counter()
      results[name] = fn()
      seconds[name].append(time.perf_counter() - start)
  np.testing.assert_allclose(results["fused"], results["per pass"], atol=1e-9)
  best = {name: min(s) for name, s in seconds.items()}
  print(f"{len(passes)} corruption passes over {args.num_images} images at {args.size} px, "
        f"{args.model}, best of {args.rounds}:")
  for name, s in best.items():
    print(f"  {name:9s} {s:6.1f} s  ({len(passes) * args.num_images / s:,.0f} images/s)")
  print(f"  fused / per pass time: {best['fused'] / best['per pass']:.2f}x "
        "(errors equal)")


if __name__ == "__main__":
  main()
