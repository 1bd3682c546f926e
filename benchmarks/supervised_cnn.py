"""The floor: a small plain supervised CNN trained on the labeled folder only.

  python benchmarks/supervised_cnn.py --label_data_dir=L --eval_data_dir=T \
      [--epochs=100] [--seed=0] [--output=cnn.json]

Six 3x3 conv layers (32, 32, 64, 64, 128, 128 filters, batch norm, ReLU, max-pooling
after every pair), global average pooling, dropout 0.3 and a softmax layer: the kind of
network a user would try first on 32-pixel images. Adam (1e-3) with cosine decay over
`--epochs` epochs of the labeled set, batch 32, and simple augmentation that keeps the
class (shifts of 10%, rotations of 10 degrees, zoom of 10%; no flips, which would change
digits and letters). Prints and writes JSON: test top-1, final training accuracy, epochs,
steps, images, seconds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BATCH = 32


def load_folder(path: str, image_size: int, shuffle: bool, seed: int):
  """(dataset of (uint8-valued float images, int labels), class names) of a class-folder tree."""
  ds = keras.utils.image_dataset_from_directory(
      path, labels="inferred", label_mode="int", image_size=(image_size, image_size),
      batch_size=None, shuffle=shuffle, seed=seed, interpolation="bilinear")
  return ds, ds.class_names


def build_model(num_classes: int, image_size: int, seed: int) -> keras.Model:
  """The 6-conv network with its augmentation layers in front (active in training only)."""
  init = keras.initializers.HeNormal(seed=seed)
  layers = [keras.Input((image_size, image_size, 3)), keras.layers.Rescaling(1 / 255.0),
            keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed),
            keras.layers.RandomRotation(10 / 360, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2)]
  for filters in (32, 64, 128):
    for _ in range(2):
      layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                     kernel_initializer=init),
                 keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers.append(keras.layers.MaxPooling2D())
  layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dropout(0.3, seed=seed),
             keras.layers.Dense(num_classes, activation="softmax", kernel_initializer=init)]
  return keras.Sequential(layers)


def run(label_data_dir: str, eval_data_dir: str, epochs: int = 100, image_size: int = 32,
        seed: int = 0) -> dict:
  """Trains on `label_data_dir`, evaluates on `eval_data_dir`; returns the report dict."""
  start = time.time()
  keras.utils.set_random_seed(seed)
  train, names = load_folder(label_data_dir, image_size, True, seed)
  test, test_names = load_folder(eval_data_dir, image_size, False, seed)
  if names != test_names:
    raise ValueError(f"--eval_data_dir classes {test_names} differ from the labeled {names}")
  num_train = int(train.cardinality())
  steps = epochs * math.ceil(num_train / BATCH)
  model = build_model(len(names), image_size, seed)
  schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
  model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy",
                metrics=["accuracy"])
  history = model.fit(train.cache().shuffle(num_train, seed=seed).batch(BATCH)
                      .prefetch(tf.data.AUTOTUNE), epochs=epochs, verbose=0)
  probs = model.predict(test.batch(256), verbose=0)
  labels = np.concatenate([y.numpy() for _, y in test.batch(1024)])
  top1 = float(np.mean(np.argmax(probs, axis=1) == labels))
  return {"model": "supervised_cnn_6conv", "label_data_dir": label_data_dir,
          "eval_data_dir": eval_data_dir, "seed": seed, "epochs": epochs, "steps": steps,
          "batch_size": BATCH, "num_labeled": num_train, "num_test": int(labels.size),
          "train_accuracy_last_epoch": float(history.history["accuracy"][-1]),
          "top1": top1, "seconds": round(time.time() - start, 1)}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--label_data_dir", required=True)
  p.add_argument("--eval_data_dir", required=True)
  p.add_argument("--epochs", type=int, default=100)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default=None, help="JSON report path")
  args = p.parse_args(argv)
  report = run(args.label_data_dir, args.eval_data_dir, args.epochs, args.image_size, args.seed)
  print(json.dumps(report, indent=1))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  main()
