"""Tracing time with autograph as we run it (off) vs on, one run, side by side.

    python benchmarks/bench_tracing.py [--rounds 2] [--model efficientnet-t0]

Every phase of a run traces its graphs once before its first step, so on a small model
tracing is a visible part of the wall time (the demo trains three models and writes a
robustness report for each). Three graphs are traced both ways, in alternation:
  randaugment: the per-image RandAugment function every training input maps;
  train step:  a student's n-step loop (the replica step inside tf.range), as the
               trainer compiles it;
  corruptions: the robustness report's one map over all 70 corruption passes
               (runner.chunk_map, as the report builds it).
"on" is the same Python function run through autograph, as TensorFlow would by default.
Each arm runs in a fresh interpreter (autograph caches its conversions per process, and
a run pays the first one); seconds are wall time to a concrete function, imports left
out. Machine load moves absolute figures; the ratio is the figure to keep.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet  # noqa: E402
from noisy_student.config import TrainConfig  # noqa: E402
from noisy_student.data import randaugment as ra  # noqa: E402
from noisy_student.robustness import corruptions  # noqa: E402
from noisy_student.robustness import runner  # noqa: E402
from noisy_student.train import inputs  # noqa: E402
from noisy_student.train import steps  # noqa: E402

SIZE, CLASSES, BATCH = 32, 10, 8


def _unwrapped(fn):
  """The function under tf.autograph.experimental.do_not_convert."""
  return getattr(fn, "__wrapped__", fn)


def randaugment(autograph: bool) -> float:
  python_fn = ra._traced.__wrapped__(2, 5.0, True, "original", None, None).python_function
  fn = tf.function(python_fn, autograph=autograph)
  start = time.time()
  fn.get_concrete_function(tf.TensorSpec([SIZE, SIZE, 3], tf.uint8),
                           tf.TensorSpec([2], tf.int64))
  return time.time() - start


def train_step(autograph: bool, model_name: str) -> float:
  model = efficientnet.build_model(model_name, num_classes=CLASSES, image_size=SIZE,
                                   small_image=True)
  optimizer = keras.optimizers.AdamW(1e-3)
  optimizer.build(model.trainable_variables)
  cfg = dataclasses.replace(TrainConfig(), unlabel_ratio=2.0)
  step = steps.make_replica_step(model, optimizer, cfg, inputs.STORED, 1e-5, 1)
  if autograph:
    step = _unwrapped(step)
  multi = steps.make_multi_step(tf.distribute.get_strategy(), step)
  batch = {"image": tf.zeros([BATCH, SIZE, SIZE, 3]),
           "label": tf.zeros([BATCH], tf.int32),
           "unlabeled_image": tf.zeros([2 * BATCH, SIZE, SIZE, 3]),
           "probabilities": tf.fill([2 * BATCH, CLASSES], 1.0 / CLASSES)}
  iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
  start = time.time()
  multi.get_concrete_function(iterator, tf.constant(1))
  return time.time() - start


def corruption_map(autograph: bool) -> float:
  passes = runner.corruption_passes(
      [(n, v) for n in corruptions.DEFAULT_NAMES for v in corruptions.SEVERITIES])
  apply = runner.chunk_map(passes, 0, runner.SEED_CHUNK)
  fn = tf.function(_unwrapped(apply), autograph=autograph)
  start = time.time()
  fn.get_concrete_function(
      tf.TensorSpec([], tf.int64),
      (tf.TensorSpec([runner.SEED_CHUNK, SIZE, SIZE, 3], tf.float32),
       tf.TensorSpec([runner.SEED_CHUNK], tf.int32)))
  return time.time() - start


CASES = {"randaugment": lambda ag, model: randaugment(ag),
         "train step": train_step,
         "corruptions": lambda ag, model: corruption_map(ag)}


def _in_fresh_process(case: str, autograph: bool, model: str) -> float:
  """Seconds the case takes in a new interpreter: autograph caches what it converted, so
  only a process's first trace pays what a phase of a run pays."""
  out = subprocess.run(
      [sys.executable, __file__, "--one", case, "--autograph", str(int(autograph)),
       "--model", model], check=True, capture_output=True, text=True).stdout
  return float(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--model", default="efficientnet-t0")
  parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)
  parser.add_argument("--autograph", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    print(CASES[args.one](bool(args.autograph), args.model))
    return
  totals = {(name, ag): 0.0 for name in CASES for ag in (False, True)}
  for _ in range(args.rounds):
    for name in CASES:
      for ag in (False, True):
        totals[(name, ag)] += _in_fresh_process(name, ag, args.model)
  print(f"{'graph':<12} {'off (ours) s':>12} {'on s':>8} {'off / on':>9}")
  for name in CASES:
    off, on = (totals[(name, ag)] / args.rounds for ag in (False, True))
    print(f"{name:<12} {off:>12.2f} {on:>8.2f} {off / on:>8.2f}x")


if __name__ == "__main__":
  main()
