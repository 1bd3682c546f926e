"""Checks a Config before any work starts: one clear line per problem.

`check(cfg)` is what the command line and the Python API (`noisy_student.modes.run`) both
call. Each message names the flag (and value) at fault and what to do instead, so a cloud
job fails in seconds rather than after an hour of teacher training. Pure Python: the
range checks come from the settings' declarations (noisy_student/config.py); TensorFlow
is imported only to look at gs:// paths, and the robustness tables only when corruption
or perturbation names are given.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import List, Optional, Tuple

import efficientnet  # The model table; importing it does not load Keras.
from noisy_student import ablation_variants
from noisy_student import config as config_lib
from noisy_student import faults
from noisy_student import settings
from noisy_student.config import Config
from noisy_student.data import source

# The flags that hold source specs ("images:DIR" reads DIR, "digits:..." reads nothing).
_SOURCE_FLAGS = ("label_data_dir", "unlabel_data_dir", "eval_data_dir")


class ConfigError(ValueError):
  """A setting, or a combination of settings, that cannot run."""


def check(cfg: Config) -> Config:
  """Returns `cfg`, or raises ConfigError whose message lists every problem, one a line."""
  errors = problems(cfg)
  if errors:
    raise ConfigError("\n".join(errors))
  return cfg


def problems(cfg: Config) -> List[str]:
  """One line per problem in `cfg` (empty when it can run)."""
  errors = settings.problems(cfg)
  for _, section in cfg.sections():
    if getattr(section, "active", lambda: True)():
      errors += settings.problems(section)
      errors += section.problems() if hasattr(section, "problems") else []
  return (errors + _models(cfg) + _ratios(cfg) + _conflicts(cfg) + _paths(cfg) +
          _init_model(cfg) + _ablation(cfg) + _robustness(cfg) + _beam(cfg))


def _models(cfg: Config) -> List[str]:
  names = efficientnet.MODEL_NAMES
  known = ", ".join(sorted(names))
  all_names = [("model_name", cfg.model.model_name)]
  all_names += [("student_model_names", n) for n in cfg.student_model_names]
  if cfg.train.teacher_model_name:
    all_names.append(("teacher_model_name", cfg.train.teacher_model_name))
  errors = [f"--{flag}: unknown model '{name}'; known: {known}"
            for flag, name in all_names if name not in names]
  if errors or cfg.mode != "pipeline" or cfg.pipeline.allow_smaller_student:
    return errors
  # The paper's student is equal or larger than its teacher (B7 -> L0 -> L1 -> L2):
  # compared by trainable parameters as this run builds them (its width / depth
  # overrides apply to every model).
  previous = cfg.model.model_name
  for i, name in enumerate(cfg.student_model_names):
    student, teacher = model_params(cfg, name), model_params(cfg, previous)
    if student < teacher:
      errors.append(
          f"--student_model_names: iteration {i + 1}'s student {name} is smaller than its "
          f"teacher {previous} ({student:,} < {teacher:,} parameters); use an equal or "
          "larger model or --allow_smaller_student")
    previous = name
  return errors


def model_params(cfg: Config, name: str) -> int:
  """Trainable parameters of model `name` as `cfg` builds it (analytic: no Keras)."""
  m = cfg.model
  return efficientnet.model_cost(
      name, m.num_label_classes or 1000, small_image=m.small_image,
      width_coefficient=m.width_coefficient, depth_coefficient=m.depth_coefficient).params


def _ratios(cfg: Config) -> List[str]:
  n, students = len(cfg.pipeline.student_unlabel_ratios), len(cfg.student_model_names)
  if n in (0, 1, students):
    return []
  return [f"--student_unlabel_ratios has {n} values for {students} "
          "--student_model_names; give one per iteration or a single value"]


def _conflicts(cfg: Config) -> List[str]:
  d, t, loop = cfg.distribute, cfg.train, cfg.mode in config_lib.LOOP_MODES
  ratio, student = t.unlabel_ratio, t.pseudo_label_dir or t.teacher_model_path
  pairs = [
      (d.use_tpu and d.strategy not in ("auto", "tpu"),
       f"--use_tpu conflicts with --strategy={d.strategy}; drop one"),
      (d.strategy == "tpu" and not d.use_tpu, "--strategy=tpu needs --use_tpu (and --tpu=NAME)"),
      (d.use_bfloat16 and cfg.model.dtype_policy not in (None, "mixed_bfloat16"),
       f"--use_bfloat16 conflicts with --dtype_policy={cfg.model.dtype_policy}"),
      (t.pseudo_label_dir and t.teacher_model_path,
       "--pseudo_label_dir and --teacher_model_path both give the student its "
       "pseudo-labels; use one"),
      (cfg.mode == "train" and (ratio or 0) > 0 and not student,
       f"--unlabel_ratio={settings.show(ratio)} trains a student: give --pseudo_label_dir "
       "(from --mode=filter) or --teacher_model_path"),
      (cfg.mode == "train" and not ratio and student,
       "--pseudo_label_dir / --teacher_model_path train a student: give --unlabel_ratio > 0 "
       "(unset, --mode=train trains a teacher)"),
      (t.teacher_model_name and not t.teacher_model_path,
       f"--teacher_model_name={t.teacher_model_name} names the on-the-fly teacher of "
       "--teacher_model_path, which is not given"),
      (loop and not cfg.pipeline.student_unlabel_ratios and ratio is not None and ratio <= 0,
       f"--unlabel_ratio={settings.show(ratio)}: the students of --mode={cfg.mode} need a "
       "ratio > 0 (or --student_unlabel_ratios)"),
      (cfg.mode == "pipeline" and not cfg.student_model_names,
       "--mode=pipeline needs --student_model_names (one model per iteration)"),
      (loop and d.multi_worker(),
       f"--mode={cfg.mode} runs on one machine (its predict and filter phases are not "
       "split across workers); on a cluster run --mode=train / predict / filter as "
       "separate jobs (docs/usage.md)"),
      (loop and (t.pseudo_label_dir or t.teacher_model_path),
       f"--mode={cfg.mode} makes its own pseudo-labels; drop --pseudo_label_dir / "
       "--teacher_model_path (they are for --mode=train)"),
  ]
  return [message for bad, message in pairs if bad] + (_tpu_paths(cfg) if d.use_tpu else [])


def _tpu_paths(cfg: Config) -> List[str]:
  """A Cloud TPU's workers read and write only Cloud Storage: every path must be gs://
  (digits: and tfds: specs are not paths; --tfds_data_dir is checked itself)."""
  t, d = cfg.train, cfg.data
  paths = [("model_dir", t.model_dir), ("label_data_dir", d.label_data_dir),
           ("unlabel_data_dir", d.unlabel_data_dir), ("eval_data_dir", d.eval_data_dir),
           ("tfds_data_dir", d.tfds_data_dir), ("pseudo_label_dir", t.pseudo_label_dir),
           ("teacher_model_path", t.teacher_model_path),
           ("init_model_path", t.init_model_path),
           ("predict_ckpt_path", cfg.predict.predict_ckpt_path),
           ("output_dir", cfg.predict.output_dir)]
  return [f"--{flag}={path}: a TPU reads and writes only gs:// paths"
          for flag, path in paths
          if path and not path.startswith(("gs://",) + source.BUILTIN_PREFIXES)]


def exists(path: str) -> bool:
  """Whether a local or gs:// path (or glob pattern) names anything."""
  pattern = any(c in path for c in "*?[")
  if "://" not in path:
    return bool(glob.glob(path)) if pattern else os.path.exists(path)
  reason = faults.gcs_unreachable_reason() if path.startswith("gs://") else None
  if reason:  # At once: TensorFlow's own call would retry for minutes.
    raise faults.unreachable(path, reason)
  import tensorflow as tf  # pylint: disable=import-outside-toplevel (only for remote paths)
  return bool(tf.io.gfile.glob(path)) if pattern else tf.io.gfile.exists(path)


def storage(cfg: Config) -> None:
  """Raises faults.StorageUnreachable at once when the run names a gs:// path and Cloud
  Storage cannot be reached (TensorFlow's own calls would retry for minutes). Run before
  any work, not by problems(): a flag's check needs no network."""
  t, d, p = cfg.train, cfg.data, cfg.predict
  named = [("model_dir", t.model_dir), ("label_data_dir", d.label_data_dir),
           ("unlabel_data_dir", d.unlabel_data_dir), ("eval_data_dir", d.eval_data_dir),
           ("tfds_data_dir", d.tfds_data_dir), ("pseudo_label_dir", t.pseudo_label_dir),
           ("teacher_model_path", t.teacher_model_path), ("output_dir", p.output_dir),
           ("init_model_path", t.init_model_path), ("export_dir", cfg.export.export_dir)]
  remote = [(flag, path) for flag, path in named
            if path and (source.path_of(path) or "").startswith("gs://")]
  reason = faults.gcs_unreachable_reason() if remote else None
  if reason:
    raise faults.unreachable(f"--{remote[0][0]}={remote[0][1]}", reason)


def _paths(cfg: Config) -> List[str]:
  """Paths this mode reads must exist (local or gs://)."""
  t, d, mode = cfg.train, cfg.data, cfg.mode
  paths = [("init_model_path", t.init_model_path),
           ("teacher_model_path", t.teacher_model_path)]
  if mode == "train":
    paths += [("label_data_dir", d.label_data_dir), ("pseudo_label_dir", t.pseudo_label_dir)]
    if t.teacher_model_path:  # The on-the-fly teacher labels these.
      paths.append(("unlabel_data_dir", d.unlabel_data_dir))
  elif mode == "predict":
    paths += [("unlabel_data_dir", d.unlabel_data_dir),
              ("predict_ckpt_path", cfg.predict.predict_ckpt_path or t.model_dir)]
  elif mode == "filter":
    paths += [("output_dir", cfg.predict.output_dir or pseudo_label_dir(cfg))]
  elif mode in ("eval", "export"):
    paths += [("model_dir", t.model_dir)]
    if mode == "eval" or cfg.export.check_images:  # The export is checked on them.
      paths.append(("eval_data_dir", d.eval_data_dir))
    if mode == "export" and cfg.export.export_format == "tflite" and cfg.export.tflite_int8:
      paths.append(("label_data_dir", d.label_data_dir))  # int8 calibration.
  elif mode in config_lib.LOOP_MODES:
    paths += [("label_data_dir", d.label_data_dir), ("unlabel_data_dir", d.unlabel_data_dir),
              ("eval_data_dir", d.eval_data_dir)]
  if cfg.robustness.enabled and cfg.robustness.baseline:
    paths.append(("robustness_baseline", cfg.robustness.baseline))
  checked = [(flag, path, source.path_of(path) if flag in _SOURCE_FLAGS else path)
             for flag, path in paths if path]
  return [problem for flag, path, on_disk in checked if on_disk
          for problem in [_missing(flag, path, on_disk)] if problem]


def _missing(flag: str, path: str, on_disk: str):
  """A line when `on_disk` does not exist (or cannot be looked at), else None.
  Unreachable Cloud Storage (no network, no credentials) raises
  faults.StorageUnreachable at once: every other gs:// check would only repeat it."""
  try:
    return None if exists(on_disk) else f"--{flag}={path}: no such file or directory"
  except faults.StorageUnreachable:  # Found by the probe: the same line, naming the flag.
    raise faults.unreachable(f"--{flag}={path}", faults.gcs_unreachable_reason()) from None
  except Exception as e:  # pylint: disable=broad-except
    if on_disk.startswith("gs://") or faults.is_unreachable_storage(e, on_disk):
      raise faults.unreachable(f"--{flag}={path}", e) from None
    if "://" in on_disk:
      return f"--{flag}={path}: cannot be read ({' '.join(str(e).split())[:200]})"
    raise


def _network(name: str, width: Optional[float], depth: Optional[float]
             ) -> Tuple[float, float]:
  row = efficientnet.get_model_params(name)
  return (width or row.width_coefficient, depth or row.depth_coefficient)


def _init_model(cfg: Config) -> List[str]:
  """Every model a training mode builds starts from --init_model_path, so each must be its
  network; read from the build_config.json of a local model_dir (others are checked when
  loaded)."""
  path, m = cfg.train.init_model_path, cfg.model
  if not path or cfg.mode not in ("train",) + config_lib.LOOP_MODES or "://" in path:
    return []
  build = os.path.join(path if os.path.isdir(path) else os.path.dirname(path),
                       "build_config.json")
  try:
    with open(build, encoding="utf-8") as f:
      theirs = json.load(f)["model"]
    init_net = _network(theirs["model_name"], theirs.get("width_coefficient"),
                        theirs.get("depth_coefficient"))
  except (OSError, ValueError, KeyError):
    return []
  names = [("model_name", m.model_name)]
  if cfg.mode in config_lib.LOOP_MODES:
    names += [("student_model_names", n) for n in cfg.student_model_names]
  return [f"--{flag}={name} (width {w:g}, depth {d:g}) would start from --init_model_path="
          f"{path}, a {theirs['model_name']} (width {init_net[0]:g}, depth {init_net[1]:g}); "
          "every model this run trains starts from it: use that network (set "
          "--width_coefficient / --depth_coefficient to match) or drop the flag"
          for flag, name in names if name in efficientnet.MODEL_NAMES
          for w, d in [_network(name, m.width_coefficient, m.depth_coefficient)]
          if (w, d) != init_net]


def pseudo_label_dir(cfg: Config) -> str:
  """Where --mode=predict writes and --mode=filter reads: --output_dir, else
  <model_dir>/pseudo."""
  return cfg.predict.output_dir or f"{cfg.train.model_dir.rstrip('/')}/pseudo"


def _beam(cfg: Config) -> List[str]:
  """--runner: a mode with a predict phase, and Apache Beam installed."""
  runner = cfg.predict.runner
  if not runner:
    return []
  if cfg.mode not in ("predict",) + config_lib.LOOP_MODES:
    return [f"--runner={runner} runs predict on Beam; --mode={cfg.mode} has no predict "
            "phase (use --mode=predict or --mode=pipeline)"]
  if cfg.filter.exact_topk and cfg.filter.resolved_from_pool():
    return [f"--runner={runner} with --exact_topk takes a fixed --min_threshold and "
            "--num_image >= 0 (not --adaptive_threshold / --num_image=-1); drop "
            "--exact_topk (the histogram plan resolves them)"]
  if importlib.util.find_spec("apache_beam") is None:
    return [f"--runner={runner} needs Apache Beam: pip install \"noisy-student[beam]\" "
            "(or pip install -e \".[beam]\" in a checkout)"]
  return []


def _ablation(cfg: Config) -> List[str]:
  if cfg.mode != "ablate":
    return []
  a, errors = cfg.ablation, []
  unknown = [n for n in a.ablations if n not in ablation_variants.VARIANTS]
  if unknown:
    errors.append(f"--ablations: unknown {','.join(unknown)}; known: "
                  f"{', '.join(ablation_variants.VARIANTS)}")
  return errors


def _robustness(cfg: Config) -> List[str]:
  r = cfg.robustness
  if not r.enabled or not (r.corruptions or r.perturbations):
    return []
  # The tables hold TensorFlow functions: loaded only when names are given.
  # pylint: disable=import-outside-toplevel
  from noisy_student.robustness import corruptions
  from noisy_student.robustness import perturbations
  # pylint: enable=import-outside-toplevel
  errors = []
  for flag, resolve, names in (("corruptions", corruptions.resolve, r.corruptions),
                               ("perturbations", perturbations.resolve, r.perturbations)):
    try:
      resolve(names)
    except ValueError as e:
      errors.append(f"--{flag}: {e}")
  return errors
