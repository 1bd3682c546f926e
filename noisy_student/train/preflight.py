"""Checks and set-up before training: configuration, class counts, inputs, workers.

Every error names the flag or path to change; all of them fire before any checkpoint
is touched.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from absl import logging
import keras
import tensorflow as tf

import efficientnet
from noisy_student import settings
from noisy_student.config import ModelConfig, TrainConfig
from noisy_student.train import checkpoints
from noisy_student.train import distribute
from noisy_student.train import inputs as inputs_lib
from noisy_student.train import schedules


@dataclasses.dataclass(frozen=True)
class PreparedInputs:
  labeled: object  # Source or tf.data.Dataset.
  unlabeled: object  # Path, dataset or None.
  spec: inputs_lib.InputSpec
  num_train_images: int
  class_names: Optional[Sequence[str]]


def check_train_config(cfg: TrainConfig) -> TrainConfig:
  """Rejects values that would fail later or train silently wrong (the settings' own
  checks); returns `cfg` with an unset unlabel_ratio read as 0 (a teacher)."""
  settings.require(cfg)
  if cfg.unlabel_ratio is None:
    cfg = dataclasses.replace(cfg, unlabel_ratio=0.0)
  return cfg


def chief_and_checkpoint_dir(strategy: tf.distribute.Strategy, model_dir: str):
  """(is_chief, where this worker saves): non-chief workers save to a scratch dir.

  MultiWorkerMirroredStrategy needs every worker to take part in a save; only the
  chief's copy lands in model_dir.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None)
  task_id = getattr(resolver, "task_id", 0) or 0
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True, model_dir
  cluster = resolver.cluster_spec().as_dict()
  chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                   and "chief" not in cluster)
  if chief:
    return True, model_dir
  return False, f"{model_dir.rstrip('/')}/.worker-{task_type}-{task_id}"


def cleanup_worker_dir(chief: bool, ckpt_dir: str) -> None:
  if not chief and tf.io.gfile.exists(ckpt_dir):
    tf.io.gfile.rmtree(ckpt_dir)


def input_size(model: keras.Model) -> int:
  """The square input resolution a built model expects."""
  shape = model.input_shape
  if shape[1] is None:
    raise ValueError(f"{model.name} has no fixed input size; build it with image_size.")
  return int(shape[1])


def _labeled_stream(labeled_source) -> tf.data.Dataset:
  if isinstance(labeled_source, tf.data.Dataset):
    return labeled_source
  if hasattr(labeled_source, "dataset"):
    return labeled_source.dataset()
  raise TypeError(f"labeled_source must be a Source or tf.data.Dataset, not "
                  f"{type(labeled_source).__name__}.")


def _num_train_images(cfg: TrainConfig, labeled_source, chief: bool) -> int:
  counted = cfg.num_train_images or getattr(labeled_source, "size", None)
  if counted is None and tf.train.latest_checkpoint(cfg.model_dir) is None:
    logging.info("Counting the labeled images for the schedule (set --num_train_images "
                 "to skip this pass).")
    counted = inputs_lib.count_examples(_labeled_stream(labeled_source))
  if chief:
    counted = checkpoints.schedule_images(cfg.model_dir, counted)
  elif counted is None:
    counted = int(checkpoints.read_json(
        f"{cfg.model_dir.rstrip('/')}/{checkpoints.SCHEDULE_STATE}")["num_train_images"])
  if not counted:
    raise ValueError(f"The labeled source {_describe(labeled_source)} has no images.")
  return int(counted)


def _describe(source) -> str:
  return getattr(source, "spec", None) or type(source).__name__


def _check_labeled(model_cfg: ModelConfig, labeled_source, class_names) -> None:
  num = model_cfg.num_label_classes
  source_classes = getattr(labeled_source, "num_classes", None)
  if source_classes is not None and source_classes != num:
    raise ValueError(f"The labeled data {_describe(labeled_source)} has {source_classes} "
                     f"classes but --num_label_classes={num}; make them agree.")
  if class_names is not None and len(class_names) != num:
    raise ValueError(f"{len(class_names)} class names given but --num_label_classes={num}.")
  inputs_lib.first_element_or_error(_labeled_stream(labeled_source),
                                    f"The labeled source {_describe(labeled_source)}")


def _check_unlabeled(model_cfg: ModelConfig, unlabeled, targets: str) -> None:
  """The unlabeled stream is non-empty and its probabilities have C classes."""
  name = (unlabeled if isinstance(unlabeled, str) else
          getattr(unlabeled, "spec", "the pseudo_labels dataset"))
  records = inputs_lib.unlabeled_records(unlabeled)
  first = inputs_lib.first_element_or_error(records, f"The unlabeled source {name}")
  if targets == inputs_lib.TEACHER and not {"image/encoded", "teacher_image"} & set(first):
    raise ValueError(f"{name} holds no raw images ('image/encoded') for the on-the-fly "
                     "teacher to label; give --unlabel_data_dir images or TFRecords.")
  if targets == inputs_lib.STORED:
    if "probabilities" not in first:
      raise ValueError(f"{name} has no 'probabilities'; give pseudo-labels written by the "
                       "predict phase, or an on-the-fly teacher.")
    if float(tf.reduce_sum(first["probabilities"])) < 0.5:
      raise ValueError(f"The first record of {name} has probabilities summing to "
                       f"{float(tf.reduce_sum(first['probabilities'])):g}, not 1: "
                       "placeholders (the original's proc_svhn.py:139-142 writes zeros "
                       "into unlabeled images), not pseudo-labels. Label them with "
                       "--mode=predict, or train with an on-the-fly --teacher_model_path.")
    found = int(first["probabilities"].shape[-1])
    if found != model_cfg.num_label_classes:
      raise ValueError(f"The pseudo-labels in {name} have {found} classes but "
                       f"--num_label_classes={model_cfg.num_label_classes}; the teacher "
                       "and the student must use the same classes.")


def check_teacher(teacher: Optional[keras.Model], model_cfg: ModelConfig, targets: str) -> None:
  if targets != inputs_lib.TEACHER:
    return
  found = int(teacher.output_shape[-1])
  if found != model_cfg.num_label_classes:
    raise ValueError(f"The teacher predicts {found} classes but --num_label_classes="
                     f"{model_cfg.num_label_classes}; the teacher, the student and the "
                     "data must use the same classes.")


def _targets(cfg: TrainConfig, unlabeled, teacher) -> str:
  if cfg.unlabel_ratio == 0:
    return inputs_lib.SUPERVISED
  if unlabeled is None:
    raise ValueError(f"--unlabel_ratio={cfg.unlabel_ratio} trains a student, which needs "
                     "pseudo-labels (--pseudo_label_dir) or unlabeled images with a "
                     "teacher (--teacher_model_path); set --unlabel_ratio=0 for a teacher.")
  if teacher is not None or cfg.teacher_model_path:
    return inputs_lib.TEACHER
  return inputs_lib.STORED


def prepare_inputs(model_cfg: ModelConfig, cfg: TrainConfig, strategy, labeled_source,
                   pseudo_labels, teacher, class_names, chief: bool) -> PreparedInputs:
  """Validates the streams and sizes the per-replica batches."""
  unlabeled = pseudo_labels if pseudo_labels is not None else cfg.pseudo_label_dir
  targets = _targets(cfg, unlabeled, teacher)
  class_names = class_names or getattr(labeled_source, "class_names", None)
  _check_labeled(model_cfg, labeled_source, class_names)
  if targets != inputs_lib.SUPERVISED:
    _check_unlabeled(model_cfg, unlabeled, targets)
  labeled_batch = distribute.per_replica_batch(cfg.train_batch_size, strategy)
  unlabeled_batch = (0 if targets == inputs_lib.SUPERVISED else
                     distribute.unlabeled_per_replica(labeled_batch, cfg.unlabel_ratio))
  image_size = model_cfg.input_image_size or efficientnet.native_resolution(model_cfg.model_name)
  spec = inputs_lib.InputSpec(targets, labeled_batch, unlabeled_batch, image_size, None,
                              model_cfg.num_label_classes, model_cfg.small_image)
  num_images = _num_train_images(cfg, labeled_source, chief)
  logging.info("Training a %s: %s, %d labeled + %d unlabeled images per replica and step, "
               "%d replicas, for %s.",
               "teacher" if targets == inputs_lib.SUPERVISED else "student",
               model_cfg.model_name, labeled_batch, unlabeled_batch,
               strategy.num_replicas_in_sync, schedules.describe_length(cfg, num_images))
  return PreparedInputs(labeled_source, unlabeled, spec, num_images, class_names)
