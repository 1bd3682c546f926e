"""Is the teacher good enough to teach? Checked after it trains, before it labels anything.

A student learns from the teacher's pseudo-labels, so a teacher that under-fits its own
labeled images hands its errors on, and the students come out worse than the teacher
(issue 10's 600-image run: 27 epochs, training accuracy 29%, every student lost). Three
signs, each with the flag to raise:

* its un-noised accuracy on its labeled images is near chance (< 2 / classes);
* it is below 50% (a network this size fits most of its training images, ImageNet ones
  included, when it has trained long enough);
* its noised training accuracy was still rising by more than 5 points between the
  second-to-last and the last tenth of the run.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from noisy_student import evaluate as evaluate_lib
from noisy_student.data import datasets
from noisy_student.results import TeacherCheck

MAX_IMAGES = 10_000  # Enough for a 0.5-point estimate; a full ImageNet pass is not needed.
MIN_FIT = 0.5
MAX_RISE = 0.05


def training_curve(model_dir: str, tag: str = "labeled_accuracy") -> List[Tuple[int, float]]:
  """(step, value) of a training run's summaries (model_dir/train), in step order."""
  points = {}
  for path in tf.io.gfile.glob(f"{model_dir.rstrip('/')}/train/events.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          points[event.step] = float(tf.make_ndarray(value.tensor))
  return sorted(points.items())


def rise(curve: Sequence[Tuple[int, float]]) -> Optional[float]:
  """Mean of the last tenth of the steps minus the mean of the tenth before (None when the
  curve is too short to tell)."""
  if len(curve) < 4:
    return None
  last_step = curve[-1][0]
  tenth = last_step / 10

  def mean(low, high):
    values = [v for s, v in curve if low < s <= high]
    return sum(values) / len(values) if values else None

  last, before = mean(last_step - tenth, last_step), mean(last_step - 2 * tenth,
                                                           last_step - tenth)
  return None if last is None or before is None else last - before


def diagnose(train_accuracy: float, num_classes: int, rising: Optional[float],
             epochs: float, length_flag: str) -> List[str]:
  """The warnings for a teacher (empty when it fits): each says what to raise."""
  fix = f"raise {length_flag} (it trained {epochs:.0f} epochs)"
  chance = 1.0 / num_classes
  warnings = []
  if train_accuracy < 2 * chance:
    warnings.append(f"the teacher is close to chance on its own labeled images "
                    f"({100 * train_accuracy:.1f}%, chance {100 * chance:.1f}%): {fix}")
  elif train_accuracy < MIN_FIT:
    warnings.append(f"the teacher under-fits: {100 * train_accuracy:.1f}% on its own "
                    f"labeled images: {fix}")
  if rising is not None and rising > MAX_RISE:
    warnings.append(f"the teacher was still learning: its training accuracy rose "
                    f"{100 * rising:.1f} points over the last tenth of the run: {fix}")
  return warnings


def check(model, labeled_source, *, model_dir: str, image_size: int, small_image: bool,
          batch_size: int, epochs: float, length_flag: str, strategy=None,
          jit_compile: bool = False) -> TeacherCheck:
  """Measures the teacher (EMA weights, eval mode) on its labeled images and warns."""
  ds = datasets.eval_dataset(labeled_source, image_size=image_size, batch_size=batch_size,
                             small_image=small_image)
  ds = ds.take(math.ceil(MAX_IMAGES / batch_size))
  result = evaluate_lib.evaluate(model, ds, strategy=strategy, jit_compile=jit_compile,
                                 class_names=labeled_source.class_names)
  num_classes = int(model.output_shape[-1])
  rising = rise(training_curve(model_dir))
  warnings = diagnose(result.top1, num_classes, rising, epochs, length_flag)
  for line in warnings:
    logging.warning("!" * 78 + "\n!!! %s\n" + "!" * 78, line)
  if not warnings:
    logging.info("Teacher check: %.1f%% on %d of its labeled images; it fits.",
                 100 * result.top1, result.num_images)
  return TeacherCheck(train_accuracy=result.top1, train_images=result.num_images,
                      num_classes=num_classes, epochs=epochs, rise=rising,
                      warnings=warnings)
