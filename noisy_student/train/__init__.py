"""Training phase: teacher and noised student, under any tf.distribute strategy.

Public API:
  train(model_cfg, data_cfg, train_cfg, dist_cfg, *, labeled_source, pseudo_labels=None,
        teacher=None, class_names=None) -> TrainResult
  load_for_inference(model_dir_or_checkpoint, dtype_policy="float32") -> keras.Model
  read_build_config(model_dir) -> dict
"""
from noisy_student.train.checkpoints import load_for_inference
from noisy_student.train.checkpoints import read_build_config
from noisy_student.train.trainer import train
from noisy_student.train.trainer import TrainResult

__all__ = ["train", "TrainResult", "load_for_inference", "read_build_config"]
