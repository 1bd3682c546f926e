"""The paper's last step: fine-tune at the test resolution (the train/test resolution fix).

Training crops random regions (objects look larger) while testing centre-crops (objects
look smaller), so a network tested at its training resolution sees objects at another
scale than it learned (Touvron et al., FixRes). The paper fine-tunes the final student
for about 1.5 epochs at a larger test resolution on *unaugmented* labeled images with the
shallow layers frozen; this module does that with Keras `fit`.

  model = finetune(source_model, labeled_source, cfg, image_size=..., model_cfg=...)

The fine-tuned network is saved as `<output_dir>/final.keras` (no EMA: too few steps).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from noisy_student.config import ModelConfig, PipelineConfig
from noisy_student.data import datasets
from noisy_student.data import preprocess
from noisy_student.train import checkpoints

# FixRes found the best test resolution about 1.15x the training one for random crops.
DEFAULT_SCALE = 1.15


def default_image_size(train_size: int) -> int:
  """1.15 x the training size, rounded to a multiple of 8 (the strides divide it)."""
  return int(round(train_size * DEFAULT_SCALE / 8.0)) * 8


def resize_model(model: keras.Model, model_cfg: ModelConfig, image_size: int) -> keras.Model:
  """The same network (same weights) built for `image_size` inputs.

  EfficientNet is fully convolutional up to global pooling, so every weight keeps its shape.
  """
  cfg = dataclasses.replace(model_cfg, input_image_size=image_size, sync_batch_norm=False)
  resized = checkpoints.build_model(cfg)
  resized.set_weights(model.get_weights())
  return resized


def freeze_leading_layers(model: keras.Model, fraction: float) -> int:
  """Freezes the first `fraction` of the layers that hold weights; returns how many.

  Frozen batch-norm layers then run in inference mode (Keras 3 semantics), so the shallow
  features stay exactly what the student learned.
  """
  weighted = [layer for layer in model.layers if layer.weights]
  count = int(len(weighted) * fraction)
  for layer in weighted[:count]:
    layer.trainable = False
  return count


def labeled_eval_stream(source, image_size: int, batch_size: int, *, small_image: bool,
                        seed: int, shuffle_buffer: int) -> tf.data.Dataset:
  """Endless shuffled (image, label) batches at *eval* preprocessing (no noise)."""
  ds = source.dataset().shuffle(shuffle_buffer, seed=seed).repeat()
  ds = preprocess.decode_or_skip(ds)
  ds = datasets.eval_preprocess(ds, image_size, small_image)
  ds = ds.map(lambda r: (r["image"], r["label"]))
  return datasets.batch_prefetch(ds, batch_size, drop_remainder=True)


def finetune(model: keras.Model, labeled_source, cfg: PipelineConfig, *,
             model_cfg: ModelConfig, train_size: int, batch_size: int,
             strategy: Optional[tf.distribute.Strategy] = None, seed: int = 0,
             shuffle_buffer: int = 10_000, output_dir: Optional[str] = None
             ) -> keras.Model:
  """Fine-tunes `model` at the test resolution; returns the fine-tuned model.

  Args:
    model: the trained student (EMA weights loaded).
    labeled_source: a Contract-2 labeled `Source`.
    cfg: finetune_image_size (None: `default_image_size(train_size)`), finetune_epochs,
      finetune_learning_rate (per 256 images), finetune_frozen_fraction.
    model_cfg: the student's ModelConfig (to rebuild it at the new size).
    train_size: the student's training resolution.
    batch_size: global batch size.
    strategy: where to train (default: the current strategy).
    seed, shuffle_buffer: order of the labeled images.
    output_dir: if given, the result is saved there as final.keras.
  """
  strategy = strategy or tf.distribute.get_strategy()
  size = cfg.finetune_image_size or default_image_size(train_size)
  num_images = labeled_source.size
  if not num_images:
    raise ValueError(f"finetune: {labeled_source.spec} does not say how many images it "
                     "holds; the number of fine-tuning steps depends on it")
  batch_size = min(batch_size, num_images)
  steps = max(1, math.ceil(cfg.finetune_epochs * num_images / batch_size))
  with strategy.scope():
    tuned = resize_model(model, model_cfg, size)
    frozen = freeze_leading_layers(tuned, cfg.finetune_frozen_fraction)
    lr = cfg.finetune_learning_rate * batch_size / 256.0
    tuned.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
  logging.info("Fine-tuning at %d px (trained at %d) for %d steps of %d images, "
               "%d leading weighted layers frozen, lr %.2g.", size, train_size, steps,
               batch_size, frozen, lr)
  data = labeled_eval_stream(labeled_source, size, batch_size,
                             small_image=model_cfg.small_image, seed=seed,
                             shuffle_buffer=shuffle_buffer)
  tuned.fit(data, steps_per_epoch=steps, epochs=1, verbose=2)
  if output_dir:
    tf.io.gfile.makedirs(output_dir)
    checkpoints.save_final_model(tuned, output_dir)
  return tuned
