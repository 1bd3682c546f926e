"""What the phases of one run share (`Context`), and how a trained model is found again
from its directory (`trained_model_of`, `class_names_of`): read by the pipeline's phases,
the ablations and the single-phase modes."""
from __future__ import annotations

import dataclasses
import os
import re
from typing import List, Optional

import tensorflow as tf

import efficientnet
from noisy_student import config as config_lib
from noisy_student import phases
from noisy_student import train as train_lib
from noisy_student.data import holdout
from noisy_student.data import sources
from noisy_student.results import Iterations, TrainedModel
from noisy_student.train import checkpoints
from noisy_student.train import distribute


class Context:
  """What the phases of one run share: config, root, strategy, opened sources."""

  def __init__(self, cfg: config_lib.Config):
    self.cfg = cfg
    self.root = cfg.train.model_dir.rstrip("/")
    self._strategy = None
    self._sources = {}
    self._split = None

  @property
  def strategy(self) -> tf.distribute.Strategy:
    if self._strategy is None:
      self._strategy = distribute.make_strategy(self.cfg.distribute)
    return self._strategy

  @property
  def jit_compile(self) -> bool:
    """--jit_compile resolved for this run's strategy (eval, predict, robustness)."""
    return distribute.resolve_jit_compile(self.cfg.distribute.jit_compile, self.strategy)

  def source(self, which: str) -> sources.Source:
    """'label', 'unlabel', 'eval' or 'validation': the source of that flag, opened once.

    With a validation split (`validation_fraction`), 'label' is the labeled data without
    the held-out images, so no model (teacher, students, fine-tune, the teacher check)
    sees them, and 'validation' is the held-out part."""
    if which in ("label", "validation") and self.validation_fraction:
      part = self.validation_split()
      return part.train if which == "label" else part.held_out
    return self._open(which)

  def _open(self, which: str) -> sources.Source:
    if which not in self._sources:
      d = self.cfg.data
      spec = {"label": d.label_data_dir, "unlabel": d.unlabel_data_dir,
              "eval": d.eval_data_dir}[which]
      self._sources[which] = sources.open_source(
          spec, tfds_data_dir=d.tfds_data_dir, label_offset=d.label_offset, seed=d.seed,
          digits_num_labeled=d.digits_num_labeled, digits_num_test=d.digits_num_test,
          labeled=False if which == "unlabel" else None,
          split={"label": "train", "unlabel": "unlabeled", "eval": "eval"}[which])
    return self._sources[which]

  @property
  def validation_fraction(self) -> Optional[float]:
    """The share of the labeled images held out: --validation_fraction with
    --iterations=auto in --mode=pipeline, else None (nothing held out)."""
    p = self.cfg.pipeline
    return (p.validation_fraction if self.cfg.mode == "pipeline" and p.iterations == "auto"
            else None)

  def validation_split(self) -> holdout.Split:
    """The labeled data's held-out split (seeded by --seed), made once."""
    if self._split is None:
      if not self.validation_fraction:
        raise ValueError("no validation split: one is held out only with --iterations=auto")
      self._split = holdout.split(self._open("label"), self.validation_fraction,
                                  self.cfg.data.seed)
    return self._split

  @property
  def class_names(self) -> List[str]:
    """The labeled data's class names: what a model trained in this run learns."""
    labeled = self.source("label")
    n = self.cfg.model.num_label_classes or labeled.num_classes
    if not n:
      raise ValueError(f"--label_data_dir={labeled.spec} does not name its classes; "
                       "set --num_label_classes")
    names = labeled.class_names or [str(i) for i in range(n)]
    if len(names) != n:
      raise ValueError(f"--num_label_classes={n} but --label_data_dir={labeled.spec} has "
                       f"{len(names)} classes")
    return list(names)

  def model_cfg(self, model_name: Optional[str] = None) -> config_lib.ModelConfig:
    return dataclasses.replace(self.cfg.model, model_name=model_name or
                               self.cfg.model.model_name,
                               num_label_classes=len(self.class_names))

  def load(self, model: TrainedModel):
    with self.strategy.scope():
      return train_lib.load_for_inference(model.path)

  def path(self, *parts: str) -> str:
    return "/".join([self.root, *parts])

  def derive(self, cfg: config_lib.Config) -> "Context":
    """A Context for `cfg` (another root or recipe) sharing this one's strategy, and its
    opened sources when `cfg` reads the same data (the digits split depends on the seed)."""
    other = Context(cfg)
    other._strategy = self._strategy  # pylint: disable=protected-access
    if _source_fields(cfg.data) == _source_fields(self.cfg.data):
      other._sources = self._sources  # pylint: disable=protected-access
      if other.validation_fraction == self.validation_fraction:
        other._split = self._split  # pylint: disable=protected-access
    return other


def _source_fields(data: config_lib.DataConfig) -> tuple:
  return (data.label_data_dir, data.unlabel_data_dir, data.eval_data_dir, data.tfds_data_dir,
          data.label_offset, data.seed, data.digits_num_labeled, data.digits_num_test)


def class_names_of(model: TrainedModel) -> List[str]:
  """The classes `model` was trained on, from its build_config.json: a model's class
  names travel with it, whatever data flags a later command is given."""
  build = checkpoints.read_build_config(model.directory)
  return list(build["class_names"] or [str(i) for i in range(build["num_classes"])])


def trained(path: str, model_cfg: config_lib.ModelConfig, **extra) -> TrainedModel:
  size = model_cfg.input_image_size or efficientnet.native_resolution(model_cfg.model_name)
  return TrainedModel(path=path, model_name=model_cfg.model_name, image_size=size,
                      small_image=model_cfg.small_image, **extra)


def trained_model_of(path: str) -> TrainedModel:
  """A model_dir, or a pipeline's model_dir (its final model: fine-tuned, else the one
  --iterations=auto kept, else the last student, else the teacher), or a .keras file or
  checkpoint prefix beside a build_config.json -> TrainedModel."""
  markers = phases.Markers(path)
  done = markers.done()
  if "finetune" in done:
    return TrainedModel.from_json(markers.get("finetune")["result"])
  if "iterations" in done:
    return Iterations.from_json(markers.get("iterations")["result"]).final_model
  students = sorted((int(n.split("-")[1]) for n in done if re.fullmatch(r"student-\d+", n)))
  for name in [f"student-{i}" for i in reversed(students)] + ["teacher"]:
    if name in done:
      return TrainedModel.from_json(markers.get(name)["result"])
  directory = path if tf.io.gfile.isdir(path) else os.path.dirname(path) or "."
  return trained(path, checkpoints.read_build_config(directory)["model"])


def model_params(model: TrainedModel) -> Optional[int]:
  """Trainable parameters of a trained model, from its build_config.json (analytic, as
  `efficientnet-table` counts them); None when it has none."""
  try:
    build = checkpoints.read_build_config(model.directory)
  except FileNotFoundError:
    return None
  m = build["model"]
  return efficientnet.model_cost(
      m.model_name, build["num_classes"], small_image=m.small_image,
      width_coefficient=m.width_coefficient, depth_coefficient=m.depth_coefficient).params
