"""Student training throughput: our trainer + efficientnet-b0 vs Keras `fit`.

  python benchmarks/bench_train.py [--sizes 32 224] [--batch 16] [--loop 4]

One run, side by side, per image size:
  ours:  noisy_student.train.train() on in-memory tensors - efficientnet-b0 with its noise
         (dropout 0.2, stochastic depth 0.2), student mode (unlabel_ratio 1: B/2 labeled +
         B/2 pseudo-labeled images per step, soft targets), RMSProp, EMA, L2 in the loss.
  keras: keras.applications.EfficientNetB0(weights=None) (same dropout / drop-connect),
         compile(RMSprop, cross entropy) + fit on in-memory tensors, batch B.
Both run `--loop` steps per execution; the first execution (compilation) is left out;
2 more are timed. Prints images/s of each and the ratio ours / keras (target >= 0.9).
Contention on a shared machine distorts absolute numbers; compare the ratio.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig  # noqa: E402
from noisy_student.train import train  # noqa: E402

NUM_CLASSES = 10


def _data(n: int, size: int):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, n)
  probs = rng.dirichlet(np.ones(NUM_CLASSES), n).astype(np.float32)
  return images, labels, probs


def ours(size: int, batch: int, loop: int) -> float:
  """images/s of our student training (compilation excluded by the trainer)."""
  images, labels, probs = _data(batch * loop, size)
  labeled = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
  pseudo = tf.data.Dataset.from_tensor_slices(
      {"image": images, "probabilities": probs}).cache()
  with tempfile.TemporaryDirectory() as model_dir:
    cfg = TrainConfig(model_dir=model_dir, train_batch_size=batch // 2,
                      train_steps=3 * loop, unlabel_ratio=1.0, iterations_per_loop=loop,
                      save_checkpoints_steps=3 * loop, log_every_n_steps=loop,
                      num_train_images=batch * loop)
    result = train(ModelConfig("efficientnet-b0", NUM_CLASSES, input_image_size=size),
                   DataConfig(), cfg, DistributeConfig(strategy="default"),
                   labeled_source=labeled, pseudo_labels=pseudo)
  return result.images_per_second


class _Timer(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.times = []

  def on_epoch_begin(self, epoch, logs=None):
    self.start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.times.append(time.perf_counter() - self.start)


def keras_fit(size: int, batch: int, loop: int) -> float:
  """images/s of keras.applications.EfficientNetB0 with plain fit (first epoch = compile)."""
  images, labels, _ = _data(batch * loop, size)
  model = keras.applications.EfficientNetB0(
      weights=None, input_shape=(size, size, 3), classes=NUM_CLASSES,
      classifier_activation=None)
  model.compile(optimizer=keras.optimizers.RMSprop(0.001, rho=0.9, momentum=0.9,
                                                   epsilon=1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=loop)
  timer = _Timer()
  model.fit(images, labels, batch_size=batch, epochs=3, verbose=0, callbacks=[timer])
  return batch * loop * 2 / sum(timer.times[1:])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
  parser.add_argument("--batch", type=int, default=16, help="Images per step (both).")
  parser.add_argument("--loop", type=int, default=4, help="Steps per execution.")
  args = parser.parse_args()
  for size in args.sizes:
    k = keras_fit(size, args.batch, args.loop)
    o = ours(size, args.batch, args.loop)
    print(f"{size:>4} px, batch {args.batch}: ours {o:8.1f} images/s, keras fit "
          f"{k:8.1f} images/s, ratio {o / k:.2f}x", flush=True)


if __name__ == "__main__":
  main()
