"""Before any work: the sources of a run agree on their classes and hold images that
decode; one line naming the flag, folder or file at fault otherwise.

`check(ctx)` runs after the flags' own checks (noisy_student/checks.py, no TensorFlow)
and before the first phase, so a run that would fail after the teacher trained (an eval
folder with a class the labeled one lacks, a folder of files that are not images) fails
in seconds instead.
"""
from __future__ import annotations

import json
import re
from typing import List, Optional, Sequence

import tensorflow as tf

from noisy_student.context import Context, class_names_of, trained_model_of
from noisy_student.data import preprocess
from tfrecords import format as fmt

SAMPLE = 16  # Records of each source decoded before any work.
_FLAGS = {"label": "label_data_dir", "unlabel": "unlabel_data_dir", "eval": "eval_data_dir"}


def sources_of(ctx: Context) -> List[str]:
  """The sources ('label', 'unlabel', 'eval') this run's mode reads."""
  cfg = ctx.cfg
  if cfg.mode in ("pipeline", "ablate"):
    return ["label", "unlabel", "eval"]
  if cfg.mode == "train":
    return ["label", "unlabel"] if cfg.train.teacher_model_path else ["label"]
  if cfg.mode == "predict":
    return ["unlabel"]
  if cfg.mode == "eval":
    return ["eval"]
  return []


def check(ctx: Context) -> None:
  """Raises ValueError (one line) for the first bad input of this run."""
  which = sources_of(ctx)
  for name in which:
    check_decodable(ctx.source(name), _FLAGS[name])
  cfg = ctx.cfg
  if "label" in which and "eval" in which:
    check_same_classes(ctx.class_names, ctx.source("eval"), "--label_data_dir",
                       ctx.source("label").spec)
  if cfg.mode == "train" and cfg.train.pseudo_label_dir:
    _check_pseudo_label_classes(ctx.class_names, cfg.train.pseudo_label_dir)
  if cfg.mode == "train" and cfg.train.teacher_model_path:
    teacher = trained_model_of(cfg.train.teacher_model_path)
    _check_names(ctx.class_names, class_names_of(teacher), "--label_data_dir",
                 ctx.source("label").spec, "--teacher_model_path",
                 cfg.train.teacher_model_path)


def _op_message(e: tf.errors.OpError) -> str:
  """A TensorFlow op error's own words, without the function and op names around them."""
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", e.message.splitlines()[0])
  return re.sub(r"\s*\[Op:\w+\]\s*$", "", text)


def check_decodable(source, flag: str, sample: int = SAMPLE) -> None:
  """Refuses a source none of whose first `sample` images decodes."""
  tried, first_error = 0, None
  for record in source.dataset().take(sample):
    tried += 1
    try:
      preprocess.decode_image(record["image/encoded"])
      return
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
      if first_error is None:
        rid = record["id"].numpy().decode("utf-8", "replace")
        first_error = f"{rid}: {_op_message(e)[:80]}"
  if tried:
    raise ValueError(f"--{flag}={source.spec}: none of its first {tried} images decodes "
                     f"({tried} skipped, e.g. {first_error}); give JPEG / PNG / BMP / GIF "
                     "images")


def _check_names(want: Sequence[str], found: Optional[Sequence[str]], want_flag: str,
                 want_spec: str, found_flag: str, found_spec: str) -> None:
  if found is None or list(found) == list(want):
    return
  extra = [n for n in found if n not in want]
  missing = [n for n in want if n not in found]
  parts = ([f"{found_flag} has {_few(extra)}, which {want_flag} lacks"] if extra else [])
  parts += [f"{want_flag} has {_few(missing)}, which {found_flag} lacks"] if missing else []
  why = "; ".join(parts) or "the same names in another order"
  raise ValueError(f"{found_flag}={found_spec} and {want_flag}={want_spec} differ in their "
                   f"classes ({why}); they must have the same classes")


def _few(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:5])
  return f"{shown}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"


def check_same_classes(names: Sequence[str], source, flag: str, spec: str) -> None:
  """The eval source's classes are the labeled data's `names` (by name when it names
  them, else its labels lie in range)."""
  _check_names(names, source.class_names, flag, spec, "--eval_data_dir", source.spec)
  counts = getattr(source, "class_counts", None) or {}
  above = sorted(label for label in counts if label >= len(names))
  if source.class_names is None and above:
    raise ValueError(f"--eval_data_dir={source.spec} has labels up to {above[-1]}, but "
                     f"{flag}={spec} has {len(names)} classes (0..{len(names) - 1}); "
                     "they must have the same classes")


def _check_pseudo_label_classes(names: Sequence[str], pseudo_dir: str) -> None:
  path = f"{pseudo_dir.rstrip('/')}/{fmt.CLASS_NAMES_FILE}"
  if tf.io.gfile.isdir(pseudo_dir) and tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      found = json.load(f)["class_names"]
    _check_names(names, found, "--label_data_dir", "the labeled data",
                 "--pseudo_label_dir", pseudo_dir)
