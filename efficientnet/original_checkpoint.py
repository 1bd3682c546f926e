"""Weight import from the original TF1 EfficientNet checkpoints (the published Noisy Student
ones: `noisy_student_efficientnet-b0` ... `-b7`, `-l2_475`, `-l2`).

    model = efficientnet.build_model("efficientnet-l2", image_size=800)
    report = efficientnet.load_original_checkpoint(model, "noisy_student_efficientnet-l2")
    print(report.summary())

The variable names, read from the original code (tensorflow/tpu
models/official/efficientnet at 7dc921f8, "tpu" below; google-research/noisystudent at
aac52bf0, "ns"; both build the same variables):

* Everything lives under the model's name: `tf.variable_scope(model_name)` (tpu
  efficientnet_builder.py:285, ns main.py:405), e.g. `efficientnet-b0/...`.
* A TF1 layer takes its variable scope at its first call, named after its class and
  numbered in call order inside the enclosing scope (tf.layers' `variable_scope(
  default_name=...)`): `conv2d`, `conv2d_1`, `depthwise_conv2d`, `tpu_batch_normalization`
  (utils.TpuBatchNormalization, tpu utils.py:118; its eval twin utils.BatchNormalization is
  *named* `tpu_batch_normalization`, tpu utils.py:168-172, so both graphs share names).
* Stem: `stem/conv2d`, `stem/tpu_batch_normalization` (tpu efficientnet_model.py:635-637).
* Blocks: `blocks_<i>`, i counting every block of the network from 0, not per stage
  (tpu efficientnet_model.py:642-662, ns efficientnet_model.py:469-483). Call order in a
  block (tpu efficientnet_model.py:368-381, ns efficientnet_model.py:295-314): expand conv
  and bn0 only when expand_ratio != 1 (stage 1 has none), depthwise conv and bn1,
  squeeze-excite in scope `se` (reduce, expand), project conv and bn2. Hence `_BLOCK` below.
* Head: `head/conv2d`, `head/tpu_batch_normalization`, `head/dense` (tpu
  efficientnet_model.py:675-703).
* Kernels are laid out as Keras' ([kh, kw, in, out]; depthwise [k, k, c, 1], named
  `depthwise_kernel`; dense [in, classes]) and are copied as they are.
* EMA: `tf.train.ExponentialMovingAverage` over the trainable variables *and* the batch-norm
  moving statistics (tpu utils.py:339-346, main.py:426-428; ns utils.py:352-360), shadows
  named `<variable>/ExponentialMovingAverage`. Eval restores the shadows in place of the raw
  weights (tpu main.py:516-518, utils.py:418-434), as do ns's --teacher_model_path and
  --init_model_path (ns utils.py:292-324); the published accuracies are of the shadows.
  Besides them a checkpoint holds RMSProp slots (`.../RMSProp`, `.../RMSProp_1`) and
  `global_step`.
* Input: the original normalises outside its model, `(x - MEAN_RGB) / STDDEV_RGB` on
  0..255 pixels (tpu efficientnet_builder.py:31-32, main.py:372-382,
  eval_ckpt_main.py:70-73; ns task_info.py:22-32 for ImageNet). Ours normalises inside
  with the same numbers (`params.IMAGENET_MEAN_RGB`); the import checks that the model does.
* B0..B8 and L2 differ only in width / depth (tpu efficientnet_builder.py:35-50): the same
  names, more blocks. L2-475 is the L2 network at another input size (tpu README.md:80);
  the input size changes no weight.

Reading is tensor by tensor (`tf.train.load_checkpoint`'s reader, then `assign`), so an L2
import holds one copy of the weights (in the model) plus one tensor.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

EMA_SUFFIX = "/ExponentialMovingAverage"
# tpu efficientnet_builder.py:31-32 (the values of our params.IMAGENET_*_RGB).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CLASSIFIER = "predictions"
HEAD_DENSE = "head/dense"

_BN = "tpu_batch_normalization"
# Our block layer suffix -> the original's scope (in a block with an expand conv, without).
_BLOCK = {
    "expand_conv": ("conv2d", None),
    "expand_bn": (_BN, None),
    "dwconv": ("depthwise_conv2d", "depthwise_conv2d"),
    "bn": (_BN + "_1", _BN),
    "se_reduce": ("se/conv2d", "se/conv2d"),
    "se_expand": ("se/conv2d_1", "se/conv2d_1"),
    "project_conv": ("conv2d_1", "conv2d"),
    "project_bn": (_BN + "_2", _BN + "_1"),
}
_FIXED = {"stem_conv": "stem/conv2d", "stem_bn": f"stem/{_BN}", "top_conv": "head/conv2d",
          "top_bn": f"head/{_BN}", CLASSIFIER: HEAD_DENSE}
# Block prefixes are params.block_specs' names: block<stage><letter> (a number past 'z').
_BLOCK_LAYER = re.compile(r"^(block\d(?:[a-z]|\d+))_(" + "|".join(_BLOCK) + r")$")
_WEIGHTS = ("kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance")
# TF1 optimiser slots: <variable>/RMSProp, /RMSProp_1, /Momentum, /Adam_1, ...
_SLOT = re.compile(r"/(RMSProp|Momentum|Adam|Adagrad|LARS|Ftrl)(_\d+)?$")
_SHARD = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")


def original_names(layer_weights: Sequence[Tuple[str, str]]) -> List[str]:
  """The original's variable name (below the model scope) of each weight of ours.

  Args:
    layer_weights: (Keras layer name, weight name) of the weights of a `build_model`
      network, in its layer order (blocks are numbered in order of appearance).
  Returns:
    The names, in the same order: ("block2a_project_conv", "kernel") ->
    "blocks_1/conv2d_1/kernel", ("block1a_dwconv", "kernel") ->
    "blocks_0/depthwise_conv2d/depthwise_kernel".
  Raises:
    ValueError: a layer or weight the original network has no counterpart of.
  """
  index: Dict[str, int] = {}
  expanding = set()
  for layer, _ in layer_weights:
    match = _BLOCK_LAYER.match(layer)
    if match:
      index.setdefault(match.group(1), len(index))
      if match.group(2) == "expand_conv":
        expanding.add(match.group(1))
  names = []
  for layer, weight in layer_weights:
    match = _BLOCK_LAYER.match(layer)
    if match:
      block, part = match.groups()
      scope = _BLOCK[part][0 if block in expanding else 1]
      scope = scope and f"blocks_{index[block]}/{scope}"
    else:
      scope = _FIXED.get(layer)
    if scope is None or weight not in _WEIGHTS:
      raise ValueError(f"Layer {layer!r} (weight {weight!r}) has no counterpart in the "
                       "original EfficientNet; is the model from efficientnet.build_model?")
    if layer.endswith("_dwconv") and weight == "kernel":
      weight = "depthwise_kernel"
    names.append(f"{scope}/{weight}")
  return names


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What `load_original_checkpoint` did.

  Attributes:
    checkpoint: the checkpoint prefix read.
    scope: the model scope of its variables ("efficientnet-b0").
    ema: whether the ExponentialMovingAverage shadows were read.
    assigned: number of model variables assigned (each exactly once).
    values: number of scalars assigned.
    kept: model variables left as they were (a new classifier).
    leftovers: checkpoint variables not read, grouped: {group: count}.
    examples: a few names per group.
  """
  checkpoint: str
  scope: str
  ema: bool
  assigned: int
  values: int
  kept: Tuple[str, ...]
  leftovers: Dict[str, int]
  examples: Dict[str, List[str]]

  def summary(self) -> str:
    """One paragraph for logs: what was read and what was left, by group."""
    read = "EMA shadows" if self.ema else "raw weights (no EMA)"
    lines = [f"Imported {self.assigned} variables ({self.values:,} values) from "
             f"{self.checkpoint} (scope {self.scope}, {read})."]
    if self.kept:
      lines.append(f"Kept as initialised: {', '.join(self.kept)}.")
    for group, count in sorted(self.leftovers.items()):
      lines.append(f"Not read: {count} {group} (e.g. {', '.join(self.examples[group][:2])}).")
    return " ".join(lines)

  def to_json(self) -> Dict:
    return dataclasses.asdict(self)


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix, a file of one, or a folder holding one -> the prefix.

  A folder's `checkpoint` file is used when it points at an existing checkpoint (a file
  written elsewhere may hold the writer's absolute paths); else the folder's single
  `*.index` names it. Local or gs:// paths.
  """
  path = path.rstrip("/")
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest and tf.io.gfile.exists(latest + ".index"):
      return latest
    found = sorted(tf.io.gfile.glob(f"{path}/*.index"))
    if len(found) == 1:
      return found[0][:-len(".index")]
    raise FileNotFoundError(
        f"{path}: no TF1 checkpoint in this folder (no usable 'checkpoint' file and "
        f"{len(found)} *.index files: {', '.join(found[:4])}); give the prefix, e.g. "
        f"{path}/model.ckpt")
  prefix = _SHARD.sub("", path)
  if tf.io.gfile.exists(prefix + ".index"):
    return prefix
  raise FileNotFoundError(f"{path}: no such checkpoint (expected {prefix}.index, or a "
                          "folder holding one)")


def _find_scope(names, wanted: Optional[str], prefix: str) -> str:
  """The model scope of an original checkpoint: the part before `/stem/conv2d/kernel`."""
  tail = "/" + _FIXED["stem_conv"] + "/kernel"
  scopes = sorted({n[:-len(tail)] for n in names if n.endswith(tail)})
  if len(scopes) == 1:
    return scopes[0]
  if wanted in scopes:
    return wanted
  if not scopes:
    raise ValueError(f"{prefix} is not a checkpoint of the original EfficientNet code (no "
                     f"'<model>{tail}' variable); for a model_dir of this project use "
                     "noisy_student.train.load_for_inference")
  raise ValueError(f"{prefix} holds several networks ({', '.join(scopes)}); pass scope= to "
                   "choose one")


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
  """What an original checkpoint holds, from its variable names and shapes alone."""
  prefix: str
  scope: str  # e.g. "efficientnet-b0": the original's model_name.
  num_classes: Optional[int]  # The classifier's size; None without one.
  has_ema: bool  # Whether it holds ExponentialMovingAverage shadows.


def inspect_checkpoint(path: str, scope: Optional[str] = None,
                       prefer: Optional[str] = None) -> CheckpointInfo:
  """Finds the checkpoint at `path` and its network (no tensor is read).

  Args:
    path: as for `load_original_checkpoint`.
    scope: the model scope to describe; default the checkpoint's only one, else `prefer`.
    prefer: the scope to pick when the checkpoint holds several (e.g. a student trained
      with the original's on-the-fly teacher also holds `teacher_model/...`).
  """
  prefix = resolve_checkpoint(path)
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  scope = scope or _find_scope(shapes, prefer, prefix)
  head = shapes.get(f"{scope}/{HEAD_DENSE}/kernel")
  return CheckpointInfo(prefix=prefix, scope=scope,
                        num_classes=int(head[1]) if head else None,
                        has_ema=f"{scope}/stem/conv2d/kernel{EMA_SUFFIX}" in shapes)


def _check_normalization(model: keras.Model, mean_rgb, stddev_rgb) -> None:
  """Our model must normalise as the original's input pipeline did, or outputs differ."""
  try:
    layer = model.get_layer("normalization")
  except ValueError:
    raise ValueError(f"Model {model.name!r} has no 'normalization' layer; build it with "
                     "efficientnet.build_model") from None
  mean = np.asarray(layer.mean, np.float64).reshape(-1)
  std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
  if not (np.allclose(mean, mean_rgb, rtol=1e-6) and np.allclose(std, stddev_rgb,
                                                                  rtol=1e-6)):
    raise ValueError(
        f"Model {model.name!r} normalises its input with mean {mean.tolist()} and std "
        f"{std.tolist()}; the checkpoint's network expects (x - {list(mean_rgb)}) / "
        f"{list(stddev_rgb)} (the original's MEAN_RGB / STDDEV_RGB): build it with "
        "input_mean / input_std set to those")


def _model_weights(model: keras.Model) -> List[Tuple[str, keras.Variable]]:
  """(layer name, variable) of every weight, nested models flattened, in layer order."""
  out = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      out += _model_weights(layer)
    elif not isinstance(layer, keras.layers.Normalization):  # Constants, checked apart.
      out += [(layer.name, w) for w in layer.weights]
  return out


def _plan(model, shapes, scope: str, ema: bool, new_head: bool, prefix: str):
  """[(checkpoint name, variable)] for every model variable, checked before any write;
  and the names of the variables kept as initialised (a new classifier)."""
  weights = _model_weights(model)
  if len({id(v) for _, v in weights}) != len(weights):
    raise ValueError(f"Model {model.name!r} holds a variable twice (a shared layer)")
  names = original_names([(layer, v.name) for layer, v in weights])
  suffix = EMA_SUFFIX if ema else ""
  plan, kept, missing, wrong = [], [], [], []
  for (layer, var), name in zip(weights, names):
    full = f"{scope}/{name}{suffix}"
    if new_head and layer == CLASSIFIER:
      kept.append(var.path)
    elif full not in shapes:
      missing.append(full)
    elif tuple(shapes[full]) != tuple(var.shape):
      wrong.append(f"{full}: checkpoint shape {list(shapes[full])}, model's {var.path} "
                   f"{list(var.shape)}")
    else:
      plan.append((full, var))
  hint = (f" (the checkpoint is {scope}, the model {model.name})"
          if scope != model.name.replace("_", "-") else "")
  if wrong:
    more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
    head = (" For a classifier of another size pass new_head=True."
            if any(HEAD_DENSE in w for w in wrong) else "")
    raise ValueError(f"{prefix}: {wrong[0]}{more}{hint}.{head}")
  if missing:
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    no_shadows = ema and f"{scope}/{_FIXED['stem_conv']}/kernel{EMA_SUFFIX}" not in shapes
    why = (" It holds no ExponentialMovingAverage shadows (saved without EMA?): read its "
           "raw weights with ema=False (--no_ema)." if no_shadows else "")
    raise ValueError(f"{prefix} has no variable {missing[0]}{more}{hint}.{why}")
  return plan, kept


def _leftover_group(name: str, scope: str, used: set, ema: bool) -> str:
  """Why checkpoint variable `name` was not read (see ImportReport.leftovers)."""
  if name == "global_step":
    return "global_step"
  if _SLOT.search(name):
    return "optimizer slots"
  base = name[:-len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
  if not base.startswith(scope + "/"):
    return "variables of other scopes"
  if base in used:
    return "raw weights (the EMA shadows were read)" if ema else "EMA shadows (ema=False)"
  if base.startswith(f"{scope}/{HEAD_DENSE}/"):
    return "classifier variables (the model has a new or no classifier)"
  return "unmatched"


def _leftovers(shapes, plan, scope: str, ema: bool):
  read = {name for name, _ in plan}
  used = {n[:-len(EMA_SUFFIX)] if n.endswith(EMA_SUFFIX) else n for n in read}
  groups: Dict[str, List[str]] = {}
  for name in sorted(shapes):
    if name not in read:
      groups.setdefault(_leftover_group(name, scope, used, ema), []).append(name)
  return groups


def _assign(reader, plan, prefix: str) -> int:
  """Reads and assigns one tensor at a time; logs progress. Returns the values copied."""
  start, total, values = time.time(), len(plan), 0
  step = max(1, total // 10)
  for i, (name, var) in enumerate(plan, start=1):
    value = reader.get_tensor(name)
    var.assign(np.asarray(value, dtype=var.dtype))
    values += value.size
    del value  # Before the next read: one tensor at a time besides the model.
    if i % step == 0 or i == total:
      elapsed = time.time() - start
      logging.info("Imported %d/%d variables of %s (%.0f/s, ETA %.0fs)", i, total,
                   prefix, i / max(elapsed, 1e-9), elapsed / i * (total - i))
  return values


def load_original_checkpoint(model: keras.Model, path: str, ema: bool = True, *,
                             scope: Optional[str] = None, new_head: bool = False,
                             mean_rgb: Sequence[float] = MEAN_RGB,
                             stddev_rgb: Sequence[float] = STDDEV_RGB) -> ImportReport:
  """Assigns a checkpoint of the original TF1 code to `model`, variable by variable.

  Args:
    model: ours, from `build_model` with the checkpoint's architecture (any image size,
      `small_image`, dtype policy); with or without its classifier (`include_top=False`).
    path: a checkpoint prefix (`.../model.ckpt`), one of its files, or a folder holding
      one; local or gs://.
    ema: read the ExponentialMovingAverage shadows (the published accuracies are theirs);
      False reads the raw weights.
    scope: the model scope inside the checkpoint; default the one found there.
    new_head: keep the model's classifier as initialised (fine-tuning on other classes)
      instead of reading `head/dense`.
    mean_rgb, stddev_rgb: the input normalisation the checkpoint was trained with, on the
      0..255 scale (default the original's ImageNet MEAN_RGB / STDDEV_RGB); the model
      must apply the same.
  Returns:
    An `ImportReport`; the leftovers (optimizer slots, global_step, the weights not read)
    are reported by group, not an error.
  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: before anything is assigned, on a model variable missing from the
      checkpoint or of another shape (naming the variable and both shapes), a checkpoint
      variable of the network the model has no counterpart of, or another normalisation.
  """
  prefix = resolve_checkpoint(path)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  scope = scope or _find_scope(shapes, model.name.replace("_", "-"), prefix)
  _check_normalization(model, mean_rgb, stddev_rgb)
  plan, kept = _plan(model, shapes, scope, ema, new_head, prefix)
  groups = _leftovers(shapes, plan, scope, ema)
  if "unmatched" in groups:
    names = groups["unmatched"]
    raise ValueError(f"{prefix}: {len(names)} variables of {scope} have no counterpart in "
                     f"model {model.name!r} (e.g. {', '.join(names[:3])}); the checkpoint's "
                     "network is larger or another variant")
  values = _assign(reader, plan, prefix)
  report = ImportReport(
      checkpoint=prefix, scope=scope, ema=ema, assigned=len(plan), values=values,
      kept=tuple(kept), leftovers={g: len(n) for g, n in groups.items()},
      examples={g: n[:5] for g, n in groups.items()})
  logging.info("%s", report.summary())
  return report


__all__ = ["CLASSIFIER", "EMA_SUFFIX", "MEAN_RGB", "STDDEV_RGB", "CheckpointInfo",
           "ImportReport", "inspect_checkpoint", "load_original_checkpoint", "original_names",
           "resolve_checkpoint"]
