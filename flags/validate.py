"""Checks a resolved Config before any work starts: one clear line per problem.

Each message names the flag (and value) at fault and what to do instead, so a cloud job
fails in seconds rather than after an hour of teacher training.
"""
import re
from typing import List, Optional

import tensorflow as tf

from noisy_student import config as config_lib

# Total stride of EfficientNet's stem + stages; smaller inputs collapse to 1x1 maps long
# before the head, which 'same' padding hides but which cannot learn anything useful.
MIN_IMAGE_SIZE = 32
_BUILTIN_PREFIXES = ("digits:", "tfds:")
_LOOPS = ("pipeline", "ablate")  # Modes that run the whole teacher -> student loop.


class ConfigError(ValueError):
  """A flag value, or a combination of flags, that cannot run."""


def normalize_model_name(name: str) -> str:
  """'b0' / 'B0' / 'efficientnet-b0' -> 'efficientnet-b0'; other names pass through."""
  name = name.strip().lower()
  if re.fullmatch(r"b\d|l2|test", name):
    return "efficientnet-" + name
  return name


def _model_table():
  import efficientnet  # Imported late: flag parsing must not pay for building Keras.
  return efficientnet.MODEL_NAMES, efficientnet.native_resolution


def _check_models(cfg: config_lib.Config) -> List[str]:
  names, resolution = _model_table()
  errors = []
  known = ", ".join(sorted(names))
  all_names = [("model_name", cfg.model.model_name)]
  all_names += [("student_model_names", n) for n in cfg.student_model_names]
  if cfg.train.teacher_model_name:
    all_names.append(("teacher_model_name", cfg.train.teacher_model_name))
  for flag, name in all_names:
    if name not in names:
      errors.append(f"--{flag}: unknown model '{name}'; known: {known}")
  if errors or cfg.mode != "pipeline" or cfg.pipeline.allow_smaller_student:
    return errors
  # The paper's student is equal or larger than its teacher; the native resolution
  # orders the family (test < b0 < ... < b8 < l2).
  previous = cfg.model.model_name
  for i, name in enumerate(cfg.student_model_names):
    if resolution(name) < resolution(previous):
      errors.append(
          f"--student_model_names: iteration {i + 1}'s student {name} is smaller than its "
          f"teacher {previous}; use an equal or larger model or --allow_smaller_student")
    previous = name
  return errors


def _check_sizes(cfg: config_lib.Config) -> List[str]:
  errors = []
  for flag, size in (("input_image_size", cfg.model.input_image_size),
                     ("finetune_image_size", cfg.pipeline.finetune_image_size)):
    if size is not None and size < MIN_IMAGE_SIZE:
      errors.append(f"--{flag}={size}: EfficientNet takes images of at least "
                    f"{MIN_IMAGE_SIZE} pixels (its total stride is 32)")
  return errors


def _check_numbers(cfg: config_lib.Config) -> List[str]:
  t, p, f, pl = cfg.train, cfg.predict, cfg.filter, cfg.pipeline
  checks = [
      (t.train_batch_size > 0, f"--train_batch_size={t.train_batch_size}: must be > 0"),
      (t.train_steps > 0, f"--train_steps={t.train_steps}: must be > 0"),
      (pl.teacher_train_steps is None or pl.teacher_train_steps > 0,
       f"--teacher_train_steps={pl.teacher_train_steps}: must be > 0"),
      (p.eval_batch_size > 0, f"--eval_batch_size={p.eval_batch_size}: must be > 0"),
      (t.unlabel_ratio >= 0, f"--unlabel_ratio={t.unlabel_ratio}: must be >= 0"),
      (all(r > 0 for r in pl.student_unlabel_ratios),
       f"--student_unlabel_ratios={pl.student_unlabel_ratios}: each must be > 0"),
      (t.teacher_softmax_temp == -1 or t.teacher_softmax_temp > 0,
       f"--teacher_softmax_temp={t.teacher_softmax_temp}: must be > 0, or -1 for hard labels"),
      (0.0 <= f.min_threshold <= 1.0, f"--min_threshold={f.min_threshold}: must be in [0, 1]"),
      (f.num_image >= 0, f"--num_image={f.num_image}: must be >= 0"),
      (p.num_workers >= 1, f"--num_workers={p.num_workers}: must be >= 1"),
      (0 <= p.worker_index < p.num_workers,
       f"--worker_index={p.worker_index}: must be in [0, --num_workers={p.num_workers})"),
      (p.num_shards >= 1, f"--num_shards={p.num_shards}: must be >= 1"),
      (cfg.data.augment_name in (None, "v1"),
       f"--augment_name={cfg.data.augment_name}: known: v1 (RandAugment), none"),
      (cfg.data.randaug_mag >= 0, f"--randaug_mag={cfg.data.randaug_mag}: must be >= 0"),
      (0.0 <= pl.finetune_frozen_fraction < 1.0,
       f"--finetune_frozen_fraction={pl.finetune_frozen_fraction}: must be in [0, 1)"),
      (pl.finetune_epochs > 0, f"--finetune_epochs={pl.finetune_epochs}: must be > 0"),
      (cfg.export.top_k >= 1, f"--top_k={cfg.export.top_k}: must be >= 1"),
      (cfg.model.num_label_classes >= 0,
       f"--num_label_classes={cfg.model.num_label_classes}: must be > 0"),
  ]
  errors = [msg for ok, msg in checks if not ok]
  n = len(pl.student_unlabel_ratios)
  if n not in (0, 1, len(cfg.student_model_names)):
    errors.append(f"--student_unlabel_ratios has {n} values for "
                  f"{len(cfg.student_model_names)} --student_model_names; give one per "
                  "iteration or a single value")
  return errors


def _strategy_name(cfg: config_lib.Config) -> str:
  from noisy_student.train import distribute  # pylint: disable=g-import-not-at-top
  return distribute.resolve_strategy_name(cfg.distribute)


def _check_conflicts(cfg: config_lib.Config) -> List[str]:
  d, t = cfg.distribute, cfg.train
  errors = []
  if d.use_tpu and d.strategy not in ("auto", "tpu"):
    errors.append(f"--use_tpu conflicts with --strategy={d.strategy}; drop one")
  if d.strategy == "tpu" and not d.use_tpu:
    errors.append("--strategy=tpu needs --use_tpu (and --tpu=NAME)")
  if d.use_tpu:
    errors += _check_tpu_paths(cfg)
  if d.jit_compile not in config_lib.JIT_COMPILE_SETTINGS:
    errors.append(f"--jit_compile={d.jit_compile}: use one of "
                  f"{', '.join(config_lib.JIT_COMPILE_SETTINGS)}")
  if d.use_bfloat16 and cfg.model.dtype_policy != "mixed_bfloat16":
    errors.append(f"--use_bfloat16 conflicts with --dtype_policy={cfg.model.dtype_policy}")
  if t.pseudo_label_dir and t.teacher_model_path:
    errors.append("--pseudo_label_dir and --teacher_model_path both give the student its "
                  "pseudo-labels; use one")
  if cfg.mode == "train" and t.unlabel_ratio > 0 and not (
      t.pseudo_label_dir or t.teacher_model_path):
    errors.append(f"--unlabel_ratio={t.unlabel_ratio} trains a student: give "
                  "--pseudo_label_dir (from --mode=filter) or --teacher_model_path")
  if (cfg.mode in _LOOPS and not cfg.pipeline.student_unlabel_ratios and
      t.unlabel_ratio <= 0):
    errors.append(f"--unlabel_ratio={t.unlabel_ratio}: the students of --mode={cfg.mode} "
                  "need a ratio > 0 (or --student_unlabel_ratios)")
  if cfg.mode == "pipeline" and not cfg.student_model_names:
    errors.append("--mode=pipeline needs --student_model_names (one model per iteration)")
  if cfg.mode in _LOOPS and _strategy_name(cfg) == "multi_worker":
    errors.append(f"--mode={cfg.mode} runs on one machine (its predict and filter phases "
                  "are not split across workers); on a cluster run --mode=train / predict "
                  "/ filter as separate jobs (docs/usage.md)")
  if cfg.mode in _LOOPS and (t.pseudo_label_dir or t.teacher_model_path):
    errors.append(f"--mode={cfg.mode} makes its own pseudo-labels; drop --pseudo_label_dir / "
                  "--teacher_model_path (they are for --mode=train)")
  return errors


def _check_tpu_paths(cfg: config_lib.Config) -> List[str]:
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
          if path and not path.startswith(("gs://",) + _BUILTIN_PREFIXES)]


def _exists(path: str) -> bool:
  if any(c in path for c in "*?["):
    return bool(tf.io.gfile.glob(path))
  return tf.io.gfile.exists(path)


def _check_paths(cfg: config_lib.Config) -> List[str]:
  """Paths this mode reads must exist (local or gs://)."""
  t, d, mode = cfg.train, cfg.data, cfg.mode
  paths = [("init_model_path", t.init_model_path),
           ("teacher_model_path", t.teacher_model_path)]
  if mode == "train":
    paths += [("label_data_dir", d.label_data_dir), ("pseudo_label_dir", t.pseudo_label_dir)]
  elif mode == "predict":
    paths += [("unlabel_data_dir", d.unlabel_data_dir),
              ("predict_ckpt_path", cfg.predict.predict_ckpt_path or t.model_dir)]
  elif mode == "filter":
    paths += [("output_dir", cfg.predict.output_dir)]
  elif mode in ("eval", "export"):
    paths += [("model_dir", t.model_dir)]
    if mode == "eval":
      paths.append(("eval_data_dir", d.eval_data_dir))
  elif mode in _LOOPS:
    paths += [("label_data_dir", d.label_data_dir), ("unlabel_data_dir", d.unlabel_data_dir),
              ("eval_data_dir", d.eval_data_dir)]
  return [f"--{flag}={path}: no such file or directory"
          for flag, path in paths
          if path and not path.startswith(_BUILTIN_PREFIXES) and not _exists(path)]


def _check_ablation(cfg: config_lib.Config) -> List[str]:
  if cfg.mode != "ablate":
    return []
  from noisy_student import ablations  # pylint: disable=g-import-not-at-top
  a, errors = cfg.ablation, []
  unknown = [n for n in a.ablations if n not in ablations.VARIANTS]
  if unknown:
    errors.append(f"--ablations: unknown {','.join(unknown)}; known: "
                  f"{', '.join(ablations.VARIANTS)}")
  if not a.seeds or len(set(a.seeds)) != len(a.seeds):
    errors.append(f"--ablation_seeds={','.join(map(str, a.seeds))}: give distinct seeds")
  if a.iterations < 1:
    errors.append(f"--ablation_iterations={a.iterations}: must be >= 1")
  if "larger_student" in a.ablations and a.larger_scale <= 1.0:
    errors.append(f"--ablation_larger_scale={a.larger_scale}: must be > 1 (a larger student)")
  return errors


def _check_robustness(cfg: config_lib.Config) -> List[str]:
  r = cfg.robustness
  if not r.enabled:
    return []
  # pylint: disable=g-import-not-at-top
  from noisy_student.robustness import corruptions
  from noisy_student.robustness import perturbations
  # pylint: enable=g-import-not-at-top
  errors = []
  for flag, resolve, names in (("corruptions", corruptions.resolve, r.corruptions),
                               ("perturbations", perturbations.resolve, r.perturbations)):
    try:
      resolve(names)
    except ValueError as e:
      errors.append(f"--{flag}: {e}")
  checks = [
      (r.severities and all(1 <= s <= 5 for s in r.severities),
       f"--severities={','.join(map(str, r.severities))}: each must be in 1..5"),
      (r.perturbation_frames >= 2,
       f"--perturbation_frames={r.perturbation_frames}: must be >= 2"),
      (all(0 <= e <= 255 for e in r.fgsm_epsilons),
       f"--fgsm_epsilons={','.join(f'{e:g}' for e in r.fgsm_epsilons)}: each must be in "
       "0..255 (pixel units)"),
      (r.max_images is None or r.max_images > 0,
       f"--robustness_max_images={r.max_images}: must be > 0 (unset: all images)"),
      (not r.baseline or _exists(r.baseline),
       f"--robustness_baseline={r.baseline}: no such file or directory"),
  ]
  return errors + [msg for ok, msg in checks if not ok]


def validate(cfg: config_lib.Config) -> List[str]:
  """Returns one line per problem in `cfg` (empty when it can run)."""
  return (_check_models(cfg) + _check_sizes(cfg) + _check_numbers(cfg) +
          _check_conflicts(cfg) + _check_paths(cfg) + _check_ablation(cfg) +
          _check_robustness(cfg))


def validate_or_raise(cfg: config_lib.Config) -> None:
  """Raises `ConfigError` whose message holds every problem, one per line."""
  errors = validate(cfg)
  if errors:
    raise ConfigError("\n".join(errors))
