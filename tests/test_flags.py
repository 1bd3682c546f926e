"""flags/: definitions, translation to Config, validation, presets, --flagfile."""
import dataclasses
import glob
import json
import os
import subprocess
import sys
import typing

from absl import flags as absl_flags
import pytest

import flags
from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
  assert cfg.student_model_names and cfg.pipeline.student_unlabel_ratios
  assert cfg.model.input_image_size == 32 and cfg.model.small_image
  assert checks.problems(cfg) == []
  # Flags the user gives still win over the demo's.
  assert _config("--train_steps=7").train.train_steps == 7


def test_with_data_flags_the_defaults_are_the_papers(tmp_path):
  cfg = _config(f"--label_data_dir={tmp_path}")
  assert cfg.model.input_image_size is None and not cfg.model.small_image
  assert cfg.model.model_name == "efficientnet-b0" and cfg.train.optimizer == "rmsprop"
  assert cfg.data.unlabel_data_dir == "digits:unlabeled"  # Unset data flags keep theirs.


def test_every_config_field_has_a_flag():
  """A field that is not a declared setting would be unreachable from the command line
  (or a copy of another setting)."""
  cfg = _config("--model_name=b1", "--student_model_names=b1,b2", "--unlabel_ratio=2",
                "--min_threshold=0.5", "--top_k=3", "--worker_id=1",
                "--total_replicas=4", "--nocutout_op", "--randaug_variant=scaled",
                "--augment_name=none")
  assert cfg.model.model_name == "efficientnet-b1"
  assert cfg.student_model_names == ("efficientnet-b1", "efficientnet-b2")
  assert cfg.train.unlabel_ratio == 2.0 and cfg.filter.min_threshold == 0.5
  assert cfg.export.top_k == 3 and not cfg.data.cutout_op and cfg.data.augment_name is None
  assert cfg.data.randaug_variant == "scaled"
  # The original's names are aliases of ours.
  assert (cfg.predict.worker_index, cfg.predict.num_workers) == (1, 4)
  fv = _parse()
  for _, section in settings.sections(config_lib.Config):
    declared = {f.name: f for f in settings.fields(section)}
    hints = typing.get_type_hints(section)
    for field in dataclasses.fields(section):
      if dataclasses.is_dataclass(hints[field.name]):
        continue
      assert field.name in declared, f"{section.__name__}.{field.name} is not a setting"
      assert declared[field.name].flag in fv


def test_flag_defaults_and_help_come_from_the_declaration():
  fv = _parse()
  for _, section in settings.sections(config_lib.Config):
    for f in settings.fields(section):
      flag = fv[f.flag]
      assert f.spec.help in flag.help
      if f.kind is not tuple and f.spec.choices is None:
        assert flag.default == f.default, f.flag


def test_checks_run_without_tensorflow():
  """Bad flags fail before TensorFlow loads (a fresh interpreter, the CLI's own calls)."""
  code = ("import sys; from absl import flags as F; import flags; from noisy_student import "
          "checks; fv = F.FlagValues(); flags.define_all(fv); fv(['p', '--model_name=b9', "
          "'--input_image_size=8', '--label_data_dir=/no/such']); "
          "errors = checks.problems(flags.to_config(fv)); "
          "assert len(errors) == 3, errors; "
          "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_unset_unlabel_ratio_is_a_teacher_in_train_and_3_for_pipeline_students(tmp_path):
  from noisy_student import pipeline  # pylint: disable=import-outside-toplevel
  assert _config("--mode=train").train.unlabel_ratio is None
  cfg = _config("--mode=pipeline", f"--label_data_dir={tmp_path}")
  assert pipeline.student_ratio(cfg, 1) == config_lib.DEFAULT_STUDENT_UNLABEL_RATIO
  cfg = _config("--mode=pipeline", "--unlabel_ratio=7", f"--label_data_dir={tmp_path}")
  assert pipeline.student_ratio(cfg, 1) == 7.0
def test_jit_compile_flag_reaches_the_config_and_is_checked():
  assert _config().distribute.jit_compile == "auto"
  cfg = _config("--jit_compile=false")
  assert cfg.distribute.jit_compile == "false" and checks.problems(cfg) == []
  bad = dataclasses.replace(cfg, distribute=dataclasses.replace(cfg.distribute,
                                                                jit_compile="yes"))
  assert "--jit_compile=yes: unknown yes; known: auto, true, false" in checks.problems(bad)




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
    (["--mode=train", "--unlabel_ratio=2"], "--unlabel_ratio=2 trains a student"),
    (["--mode=train", "--teacher_model_path=/no/t"], "give --unlabel_ratio > 0"),
    (["--mode=train", "--teacher_model_name=b0"],
     "--teacher_model_name=efficientnet-b0 names the on-the-fly teacher"),
    (["--mode=train", "--teacher_model_path=/no/t", "--unlabel_ratio=1",
      "--unlabel_data_dir=images:/no/imgs"], "--unlabel_data_dir=images:/no/imgs: no such"),
    (["--worker_index=2", "--num_workers=2"], "--worker_index=2: must be in [0, --num_w"),
    (["--teacher_softmax_temp=0"], "--teacher_softmax_temp=0: must be > 0, or -1"),
    (["--min_threshold=1.5"], "--min_threshold=1.5: must be in [0, 1]"),
    (["--student_model_names=b0,b0", "--student_unlabel_ratios=1,2,3"],
     "--student_unlabel_ratios has 3 values for 2 --student_model_names"),
    (["--label_data_dir=digits:labeled", "--unlabel_ratio=0"],
     "the students of --mode=pipeline need a ratio > 0"),
    (["--mode=eval", "--model_dir=/no/such/run"], "--model_dir=/no/such/run: no such file"),
    (["--runner=Spark"], "--runner=Spark: unknown Beam runner; known: DirectRunner,"),
    (["--beam_options=--project=p"], "--beam_options needs --runner"),
    (["--runner=DirectRunner", "--beam_options=--runner=FlinkRunner"],
     "--beam_options holds --runner; give the runner with --runner"),
    (["--runner=DirectRunner", "--beam_options=--job_name='a"],
     "--beam_options=--job_name='a: No closing quotation"),
    (["--mode=predict", "--runner=DirectRunner", "--worker_index=1", "--num_workers=2"],
     "--worker_index=1 with --runner=DirectRunner: one Beam job labels every worker's"),
    (["--mode=filter", "--runner=DirectRunner"],
     "--runner=DirectRunner runs predict on Beam; --mode=filter has no predict phase"),
])
def test_bad_flags_fail_with_one_line_naming_the_flag(argv, expected):
  errors = checks.problems(_config(*argv))
  assert any(expected in e for e in errors), errors
  assert all("\n" not in e for e in errors)


def test_runner_and_beam_options_reach_the_config(tmp_path):
  cfg = _config("--mode=predict", "--runner=DataflowRunner", f"--model_dir={tmp_path}",
                "--beam_options=--project=p --job_name='a b'")
  assert cfg.predict.beam_args() == ["--runner=DataflowRunner", "--project=p",
                                     "--job_name=a b"]
  assert checks.problems(cfg) == []
  assert _config("--runner=apache_beam.runners.DirectRunner").predict.problems() == []
  assert not _config().predict.runner  # Empty: the in-process predict.


def test_randaug_variant_is_checked():
  assert _config().data.randaug_variant == "original" and _config().data.cutout_op
  with pytest.raises(absl_flags.IllegalFlagValueError, match="original|scaled"):
    _parse("--randaug_variant=saturating")
  cfg = _config()
  bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, randaug_variant="x"))
  assert any("--randaug_variant=x: unknown x; known: original, scaled" in e
             for e in checks.problems(bad))


def test_smaller_student_allowed_when_asked():
  cfg = _config("--model_name=b2", "--student_model_names=b1", "--allow_smaller_student")
  assert checks.problems(cfg) == []


def test_students_are_compared_by_their_parameters():
  # The demo's students grow: t0 -> t1 -> t2, by the one model table.
  demo = _config()
  sizes = [checks.model_params(demo, n)
           for n in (demo.model.model_name, *demo.student_model_names)]
  assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)
  assert checks.problems(_config("--model_name=t0", "--student_model_names=t0,t2")) == []
  errors = checks.problems(_config("--model_name=t0", "--student_model_names=t2,t1"))
  assert len(errors) == 1 and errors[0].startswith(
      "--student_model_names: iteration 2's student efficientnet-t1 is smaller than its "
      "teacher efficientnet-t2 (")
  # --width_coefficient and --depth_coefficient apply to every model: equal sizes pass.
  same = _config("--model_name=b2", "--student_model_names=b1", "--width_coefficient=1",
                 "--depth_coefficient=1")
  assert checks.problems(same) == []


def test_iterations_flags():
  cfg = _config("--iterations=auto", "--validation_fraction=0.2")
  assert (cfg.pipeline.iterations, cfg.pipeline.validation_fraction) == ("auto", 0.2)
  with pytest.raises(absl_flags.IllegalFlagValueError, match="all|auto"):
    _parse("--iterations=3")
  for bad in ("0", "1"):
    assert any(f"--validation_fraction={bad}" in e
               for e in checks.problems(_config(f"--validation_fraction={bad}")))


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
  for required in ["demo.flags", "smoke.flags", "small_images.flags", "svhn_b0.flags",
                   "imagenet_b0.flags", "imagenet_b7.flags", "imagenet_l2.flags"]:
    assert required in names


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses_and_starts_with_its_command(path, monkeypatch):
  # Cloud presets name gs://YOUR_BUCKET paths; do not ask the network about them.
  real = checks.exists
  monkeypatch.setattr(checks, "exists", lambda p: False if p.startswith("gs://") else real(p))
  with open(path) as f:
    first = f.readline()
  name = os.path.basename(path)
  assert first.startswith("# noisy-student") and f"presets/{name}" in first
  cfg = _config(f"--flagfile={path}")
  errors = checks.problems(cfg)
  # Cloud presets point at buckets this machine cannot reach; everything else must pass.
  assert [e for e in errors if "no such file" not in e] == []


def test_ablation_flags_reach_the_config():
  cfg = _config("--mode=ablate", "--ablations=no_noise,hard_labels", "--ablation_seeds=4,7",
                "--ablation_iterations=2", "--ablation_larger_scale=2")
  assert cfg.ablation == config_lib.AblationConfig(
      ablations=("no_noise", "hard_labels"), seeds=(4, 7), iterations=2, larger_scale=2.0)
  with pytest.raises(flags.ConfigError, match="--ablation_seeds=1,x"):
    _config("--mode=ablate", "--ablation_seeds=1,x")
