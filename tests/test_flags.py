"""flags/: definitions, translation to Config, validation, presets, --flagfile."""
import dataclasses
import glob
import json
import os

from absl import flags as absl_flags
import pytest

import flags
from noisy_student import config as config_lib


def _parse(*argv):
  fv = absl_flags.FlagValues()
  flags.define_all(fv)
  fv(["prog", *argv])
  return fv


def _config(*argv):
  return flags.to_config(_parse(*argv))


def test_defaults_are_the_embedded_demo():
  cfg = _config()
  assert cfg.mode == "pipeline"
  assert cfg.data.label_data_dir == "digits:labeled"
  assert cfg.data.unlabel_data_dir == "digits:unlabeled"
  assert cfg.data.eval_data_dir == "digits:test"
  assert cfg.student_model_names and cfg.train.unlabel_ratio > 0
  assert cfg.model.input_image_size == 32 and cfg.model.small_image
  assert flags.validate(cfg) == []
  # Flags the user gives still win over the demo's.
  assert _config("--train_steps=7").train.train_steps == 7


def test_with_data_flags_the_defaults_are_the_papers(tmp_path):
  cfg = _config(f"--label_data_dir={tmp_path}")
  assert cfg.model.input_image_size is None and not cfg.model.small_image
  assert cfg.model.model_name == "efficientnet-b0" and cfg.train.optimizer == "rmsprop"
  assert cfg.data.unlabel_data_dir == "digits:unlabeled"  # Unset data flags keep theirs.


def test_every_config_field_has_a_flag():
  """A config field without a flag would be unreachable from the command line."""
  cfg = _config("--model_name=b1", "--student_model_names=b1,b2", "--unlabel_ratio=2",
                "--min_threshold=0.5", "--top_k=3", "--worker_id=1",
                "--total_replicas=4", "--cutout_op", "--augment_name=none")
  assert cfg.model.model_name == "efficientnet-b1"
  assert cfg.student_model_names == ("efficientnet-b1", "efficientnet-b2")
  assert cfg.train.unlabel_ratio == 2.0 and cfg.filter.min_threshold == 0.5
  assert cfg.export.top_k == 3 and cfg.data.cutout_op and cfg.data.augment_name is None
  # The original's names are aliases of ours.
  assert (cfg.predict.worker_index, cfg.predict.num_workers) == (1, 4)
  fv = _parse()
  for section in dataclasses.fields(config_lib.Config):
    value = getattr(cfg, section.name)
    if not dataclasses.is_dataclass(value):
      continue
    for field in dataclasses.fields(value):
      renamed = {"cutout": "small_image_cutout", "enabled": "robustness",
                 "baseline": "robustness_baseline",
                 "max_images": "robustness_max_images", "seeds": "ablation_seeds",
                 "iterations": "ablation_iterations",
                 "larger_scale": "ablation_larger_scale"}.get(field.name, field.name)
      known = renamed in fv or field.name in ("dtype_policy", "seed", "output_dir")
      assert known, f"{section.name}.{field.name} has no flag"


def test_unlabel_ratio_default_depends_on_mode():
  assert _config("--mode=train").train.unlabel_ratio == 0.0
  assert _config("--mode=pipeline").train.unlabel_ratio > 0
  assert _config("--mode=pipeline", "--unlabel_ratio=7").train.unlabel_ratio == 7.0


def test_jit_compile_flag_reaches_the_config_and_is_checked():
  assert _config().distribute.jit_compile == "auto"
  cfg = _config("--jit_compile=false")
  assert cfg.distribute.jit_compile == "false" and flags.validate(cfg) == []
  bad = dataclasses.replace(cfg, distribute=dataclasses.replace(cfg.distribute,
                                                                jit_compile="yes"))
  assert "--jit_compile=yes: use one of auto, true, false" in flags.validate(bad)


def test_bfloat16_sets_the_policy():
  assert _config("--use_bfloat16").model.dtype_policy == "mixed_bfloat16"
  assert _config().model.dtype_policy == "float32"


@pytest.mark.parametrize("argv, expected", [
    (["--model_name=b9"], "--model_name: unknown model 'efficientnet-b9'; known:"),
    (["--student_model_names=b0,b9"], "unknown model 'efficientnet-b9'"),
    (["--model_name=b2", "--student_model_names=b2,b1"],
     "iteration 2's student efficientnet-b1 is smaller than its teacher efficientnet-b2"),
    (["--input_image_size=16"], "--input_image_size=16: EfficientNet takes images of at least"),
    (["--finetune_image_size=8"], "--finetune_image_size=8"),
    (["--mode=train", "--teacher_model_path=/no/such/teacher", "--unlabel_ratio=1"],
     "--teacher_model_path=/no/such/teacher: no such file or directory"),
    (["--label_data_dir=/no/such/folder"], "--label_data_dir=/no/such/folder: no such file"),
    (["--use_tpu", "--strategy=mirrored"], "--use_tpu conflicts with --strategy=mirrored"),
    (["--use_tpu", "--tpu=x"], "--model_dir=runs/default: a TPU reads and writes only gs://"),
    (["--use_tpu", "--model_dir=gs://b/run", "--label_data_dir=/data/train"],
     "--label_data_dir=/data/train: a TPU reads and writes only gs://"),
    (["--use_tpu", "--model_dir=gs://b/run", "--tfds_data_dir=/data/tfds",
      "--label_data_dir=tfds:mnist:train"], "--tfds_data_dir=/data/tfds: a TPU reads"),
    (["--use_bfloat16", "--dtype_policy=mixed_float16"], "--use_bfloat16 conflicts with"),
    (["--mode=train", "--unlabel_ratio=2"], "--unlabel_ratio=2.0 trains a student"),
    (["--worker_index=2", "--num_workers=2"], "--worker_index=2: must be in [0, --num_w"),
    (["--teacher_softmax_temp=0"], "--teacher_softmax_temp=0.0: must be > 0, or -1"),
    (["--min_threshold=1.5"], "--min_threshold=1.5: must be in [0, 1]"),
    (["--student_model_names=b0,b0", "--student_unlabel_ratios=1,2,3"],
     "--student_unlabel_ratios has 3 values for 2 --student_model_names"),
    (["--label_data_dir=digits:labeled", "--unlabel_ratio=0"],
     "the students of --mode=pipeline need a ratio > 0"),
    (["--mode=eval", "--model_dir=/no/such/run"], "--model_dir=/no/such/run: no such file"),
])
def test_bad_flags_fail_with_one_line_naming_the_flag(argv, expected):
  errors = flags.validate(_config(*argv))
  assert any(expected in e for e in errors), errors
  assert all("\n" not in e for e in errors)


def test_smaller_student_allowed_when_asked():
  cfg = _config("--model_name=b2", "--student_model_names=b1", "--allow_smaller_student")
  assert flags.validate(cfg) == []


def test_non_numeric_ratios_are_a_config_error():
  with pytest.raises(flags.ConfigError, match="--student_unlabel_ratios=a,b"):
    _config("--student_unlabel_ratios=a,b")


def test_flagfile_and_resolved_config_written(tmp_path):
  flagfile = tmp_path / "run.flags"
  flagfile.write_text("# noisy-student --flagfile=run.flags\n--model_name=b3\n"
                      "--student_model_names=b3,b4\n--train_batch_size=64\n")
  cfg = _config(f"--flagfile={flagfile}", "--train_batch_size=32")  # Later flags win.
  assert cfg.model.model_name == "efficientnet-b3" and cfg.train.train_batch_size == 32
  path = cfg.write(str(tmp_path / "run"))
  with open(path) as f:
    assert json.load(f)["student_model_names"] == ["efficientnet-b3", "efficientnet-b4"]


PRESETS = sorted(glob.glob(os.path.join(flags.PRESETS_DIR, "*.flags")))


def test_presets_exist():
  names = {os.path.basename(p) for p in PRESETS}
  for required in ["demo.flags", "smoke.flags", "svhn_b0.flags", "imagenet_b0.flags",
                   "imagenet_b7.flags", "imagenet_l2.flags"]:
    assert required in names


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_and_starts_with_its_command(path, monkeypatch):
  # Cloud presets name gs://YOUR_BUCKET paths; do not ask the network about them.
  real = flags.validate_module._exists
  monkeypatch.setattr(flags.validate_module, "_exists",
                      lambda p: False if p.startswith("gs://") else real(p))
  with open(path) as f:
    first = f.readline()
  name = os.path.basename(path)
  assert first.startswith("# noisy-student") and f"presets/{name}" in first
  cfg = _config(f"--flagfile={path}")
  errors = flags.validate(cfg)
  # Cloud presets point at buckets this machine cannot reach; everything else must pass.
  assert [e for e in errors if "no such file" not in e] == []


def test_ablation_flags_reach_the_config():
  cfg = _config("--mode=ablate", "--ablations=no_noise,hard_labels", "--ablation_seeds=4,7",
                "--ablation_iterations=2", "--ablation_larger_scale=2")
  assert cfg.ablation == config_lib.AblationConfig(
      ablations=("no_noise", "hard_labels"), seeds=(4, 7), iterations=2, larger_scale=2.0)
  with pytest.raises(flags.ConfigError, match="--ablation_seeds=1,x"):
    _config("--mode=ablate", "--ablation_seeds=1,x")
