"""Student training throughput: our trainer vs Keras `fit`, or our trainer with vs without
XLA, or with vs without the divergence check.

  python benchmarks/bench_train.py [--sizes 32 224] [--batch 16] [--loop 4]
      [--compare keras|xla|divergence] [--jit_compile auto|true|false] [--dtype_policy float32]
      [--unlabel_ratio 1] [--models efficientnet-b0] [--strategy default]

One run, side by side, per model and image size:
  ours:  noisy_student.train.train() on in-memory tensors - the model with its noise
         (dropout 0.2, stochastic depth 0.2), student mode (B / (1 + r) labeled +
         r B / (1 + r) pseudo-labeled images per step, r = --unlabel_ratio, soft targets),
         RMSProp, EMA, L2 in the loss, under --strategy (per-replica batch B).
  keras: keras.applications.EfficientNetB0(weights=None) (same dropout / drop-connect),
         compile(RMSprop, cross entropy) + fit on in-memory tensors, batch B (per
         replica), under the same precision and XLA setting (--compare keras, default).
  xla:   ours again with XLA on, against ours with XLA off (--compare xla).
  divergence: ours as it runs (the step computes the global gradient norm that
         train/divergence.py checks) against ours with that norm replaced by a constant
         (--compare divergence); the ratio is the check's cost.
Both run `--loop` steps per execution; the first execution (compilation) is left out;
2 more are timed. Prints images/s of each and the ratio (target >= 0.9 against keras).
Contention on a shared machine distorts absolute numbers; compare the ratio.
"""
import argparse
import json
import os
import tempfile
import time
from typing import Dict, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig  # noqa: E402
from noisy_student.train import distribute  # noqa: E402
from noisy_student.train import steps as steps_lib  # noqa: E402
from noisy_student.train import train  # noqa: E402

NUM_CLASSES = 10


def _data(n: int, size: int):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, n)
  probs = rng.dirichlet(np.ones(NUM_CLASSES), n).astype(np.float32)
  return images, labels, probs


def labeled_batch(batch: int, unlabel_ratio: float) -> int:
  """Labeled images of a step of `batch` images in all (the rest are pseudo-labeled)."""
  return max(1, int(round(batch / (1.0 + unlabel_ratio))))


def ours(size: int, batch: int, loop: int, *, model: str = "efficientnet-b0",
         unlabel_ratio: float = 1.0, jit_compile: str = "auto",
         dtype_policy: str = "float32", strategy: str = "default") -> float:
  """images/s of our student training (compilation excluded by the trainer).

  `batch`: images per step and replica, labeled and pseudo-labeled together.
  """
  dist = DistributeConfig(strategy=strategy, jit_compile=jit_compile)
  made = distribute.make_strategy(dist)
  replicas = made.num_replicas_in_sync
  per_replica = labeled_batch(batch, unlabel_ratio)
  n = batch * replicas * loop
  images, labels, probs = _data(n, size)
  labeled = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
  pseudo = tf.data.Dataset.from_tensor_slices(
      {"image": images, "probabilities": probs}).cache()
  with tempfile.TemporaryDirectory() as model_dir:
    cfg = TrainConfig(model_dir=model_dir, train_batch_size=per_replica * replicas,
                      train_steps=3 * loop, unlabel_ratio=unlabel_ratio,
                      iterations_per_loop=loop, save_checkpoints_steps=3 * loop,
                      log_every_n_steps=loop, num_train_images=n)
    result = train(ModelConfig(model, NUM_CLASSES, input_image_size=size,
                               dtype_policy=dtype_policy),
                   DataConfig(), cfg, dist, labeled_source=labeled, pseudo_labels=pseudo,
                   strategy=made)
  return result.images_per_second


class _Timer(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self.start)


def keras_fit(size: int, batch: int, loop: int, *, jit_compile: str = "auto",
              dtype_policy: str = "float32") -> float:
  """images/s of keras.applications.EfficientNetB0 with plain fit (first epoch = compile),
  on one device, with the XLA setting resolved as ours is and the same precision."""
  jit = distribute.resolve_jit_compile(jit_compile, tf.distribute.get_strategy())
  images, labels, _ = _data(batch * loop, size)
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(dtype_policy)
  try:
    model = keras.applications.EfficientNetB0(
        weights=None, input_shape=(size, size, 3), classes=NUM_CLASSES,
        classifier_activation=None)
  finally:
    keras.config.set_dtype_policy(previous)
  # compile() wraps the optimizer in a LossScaleOptimizer under mixed_float16.
  model.compile(optimizer=keras.optimizers.RMSprop(0.001, rho=0.9, momentum=0.9,
                                                   epsilon=1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=loop, jit_compile=jit)
  timer = _Timer()
  model.fit(images, labels, batch_size=batch, epochs=3, verbose=0, callbacks=[timer])
  return batch * loop * 2 / sum(timer.times[1:])


def _with_and_without_check(size: int, args: argparse.Namespace, kwargs, swap: bool):
  """(images/s with the divergence check, without it); `swap` runs "without" second, so
  alternate repeats cancel a drift of the machine's load."""
  def without():
    real = steps_lib.gradient_norm
    steps_lib.gradient_norm = lambda grads: tf.constant(0.0)
    try:
      return ours(size, args.batch, args.loop, jit_compile=args.jit_compile, **kwargs)
    finally:
      steps_lib.gradient_norm = real

  def with_check():
    return ours(size, args.batch, args.loop, jit_compile=args.jit_compile, **kwargs)
  if swap:
    mine = with_check()
    return mine, without()
  other = without()
  return with_check(), other


def compare(size: int, args: argparse.Namespace, model: str = "efficientnet-b0",
            against: Optional[str] = None, repeat: int = 0) -> Dict[str, float]:
  """One side-by-side measurement: {"ours", "other", "ratio", ...} in images/s."""
  against = against or args.compare
  kwargs = dict(model=model, unlabel_ratio=args.unlabel_ratio,
                dtype_policy=args.dtype_policy, strategy=args.strategy)
  if against == "xla":
    other = ours(size, args.batch, args.loop, jit_compile="false", **kwargs)
    mine = ours(size, args.batch, args.loop, jit_compile="true", **kwargs)
    label = "ours without XLA"
  elif against == "divergence":
    mine, other = _with_and_without_check(size, args, kwargs, swap=repeat % 2 == 1)
    label = "ours without the check"
  else:
    other = keras_fit(size, args.batch, args.loop, jit_compile=args.jit_compile,
                      dtype_policy=args.dtype_policy)
    mine = ours(size, args.batch, args.loop, jit_compile=args.jit_compile, **kwargs)
    label = "keras fit"
  print(f"{size:>4} px, batch {args.batch}, {model}, {args.dtype_policy}: "
        f"{'ours with XLA' if against == 'xla' else 'ours'} {mine:8.1f} images/s, "
        f"{label} {other:8.1f} images/s, ratio {mine / other:.2f}x", flush=True)
  return {"size": size, "batch": args.batch, "model": model, "against": against,
          "dtype_policy": args.dtype_policy, "ours": mine, "other": other,
          "ratio": mine / other}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
  p.add_argument("--batch", type=int, default=16,
                 help="Images per step and replica (both; ours: labeled + pseudo-labeled).")
  p.add_argument("--loop", type=int, default=4, help="Steps per execution.")
  p.add_argument("--compare", choices=["keras", "xla", "divergence"], default="keras")
  p.add_argument("--repeats", type=int, default=1,
                 help="Alternating measurements per size (the ratios are printed each).")
  p.add_argument("--jit_compile", choices=distribute.JIT_COMPILE, default="auto")
  p.add_argument("--dtype_policy", default="float32",
                 choices=["float32", "mixed_bfloat16", "mixed_float16"])
  p.add_argument("--unlabel_ratio", type=float, default=1.0)
  p.add_argument("--models", nargs="+", default=["efficientnet-b0"],
                 help="Our model(s); keras fit is always EfficientNetB0.")
  p.add_argument("--strategy", default="default", choices=distribute.STRATEGIES)
  p.add_argument("--json", default=None, help="Also write the results to this file.")
  return p


def main() -> None:
  args = parser().parse_args()
  results = [compare(size, args, model, repeat=r) for model in args.models
             for size in args.sizes for r in range(args.repeats)]
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
