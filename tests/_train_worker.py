"""A real training run in its own process, for the multi-worker and kill/resume tests.

Also the home of `make_records`, the generated labeled data the training tests share:
four colours of noisy images, PNG-encoded as raw Contract-2 records, so the real input
pipeline decodes and noises them.

  python tests/_train_worker.py --model_dir DIR [--strategy multi_worker] \
      [--train_steps 6] [--save_every 2] [--result out.json]
"""
import argparse
import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [220, 220, 60]],
                   np.float32)


def make_images(n: int, size: int = 32, seed: int = 0):
  """n uint8 images [n, size, size, 3] of 4 classes (colour + noise) and their labels."""
  rng = np.random.default_rng(seed)
  labels = np.arange(n) % len(COLOURS)
  noise = rng.normal(0, 25, (n, size, size, 3))
  images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
  return images, labels


def make_records(n: int, size: int = 32, seed: int = 0, probabilities: bool = False
                 ) -> tf.data.Dataset:
  """Raw records {"image/encoded", "id", "label"} (+ "probabilities": a confident
  teacher's output, when asked) of generated images."""
  images, labels = make_images(n, size, seed)
  encoded = [tf.io.encode_png(img).numpy() for img in images]
  columns = {"image/encoded": tf.constant(encoded),
             "id": tf.constant([f"gen:{i}" for i in range(n)]),
             "label": tf.constant(labels, tf.int64)}
  if probabilities:
    probs = np.full((n, len(COLOURS)), 0.1 / (len(COLOURS) - 1), np.float32)
    probs[np.arange(n), labels] = 0.9
    columns["probabilities"] = tf.constant(probs)
    columns["label"] = tf.fill([n], tf.constant(-1, tf.int64))
  return tf.data.Dataset.from_tensor_slices(columns)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--strategy", default="default")
  parser.add_argument("--train_steps", type=int, default=6)
  parser.add_argument("--save_every", type=int, default=2)
  parser.add_argument("--iterations_per_loop", type=int, default=1)
  parser.add_argument("--result", default=None)
  args = parser.parse_args(argv)

  from absl import logging  # pylint: disable=import-outside-toplevel
  from noisy_student import config  # pylint: disable=import-outside-toplevel
  from noisy_student.train import distribute, train  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  # Before any other TF op: multi-worker collectives are configured only at startup.
  dist_cfg = config.DistributeConfig(strategy=args.strategy)
  strategy = distribute.make_strategy(dist_cfg)
  model_cfg = config.ModelConfig("efficientnet-test", len(COLOURS), input_image_size=32,
                                 small_image=True)
  data_cfg = config.DataConfig(augment_name="v1", randaug_mag=5, shuffle_buffer=64)
  train_cfg = config.TrainConfig(
      model_dir=args.model_dir, train_batch_size=8, train_steps=args.train_steps,
      unlabel_ratio=1.0, save_checkpoints_steps=args.save_every, warmup_epochs=0.5,
      iterations_per_loop=args.iterations_per_loop, log_every_n_steps=1,
      base_learning_rate=0.05)
  result = train(model_cfg, data_cfg, train_cfg, dist_cfg, strategy=strategy,
                 labeled_source=make_records(64), pseudo_labels=make_records(
                     48, seed=1, probabilities=True),
                 class_names=["red", "green", "blue", "yellow"])
  payload = dataclasses.asdict(result)
  # The learning rate the optimizer used last, to compare with the schedule.
  payload["last_lr"] = float(tf.convert_to_tensor(
      _optimizer_lr(args.model_dir, result.global_step, train_cfg)))
  if args.result:
    with open(args.result, "w") as f:
      json.dump(payload, f)
  return 0


def _optimizer_lr(model_dir: str, step: int, train_cfg) -> float:
  """Learning rate at the last step from the schedule the run saved (schedule.json)."""
  from noisy_student.train import checkpoints, schedules  # pylint: disable=import-outside-toplevel
  images = checkpoints.read_json(f"{model_dir}/{checkpoints.SCHEDULE_STATE}")
  return float(schedules.build_schedule(train_cfg, images["num_train_images"])(step - 1))


if __name__ == "__main__":
  sys.exit(main())
