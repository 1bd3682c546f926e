"""The robustness report end to end: runner, files, pipeline evaluation, flags, --mode=eval."""
import dataclasses
import json
import os
import subprocess
import sys

from absl import flags as absl_flags
import keras
import numpy as np
import pytest
import tensorflow as tf

import flags
from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import evaluate
from noisy_student import phases
from noisy_student import context
from noisy_student import pipeline
from noisy_student import robustness
from noisy_student.robustness import runner
from noisy_student.train import checkpoints

SMALL = config_lib.RobustnessConfig(
    corruptions=("gaussian_noise", "contrast", "jpeg_compression"), severities=(1, 3),
    perturbations=("gaussian_noise", "translate", "brightness"), perturbation_frames=4,
    fgsm_epsilons=(0.0, 8.0))


def _conv_model(size=16, classes=10, seed=0):
  keras.utils.set_random_seed(seed)
  inputs = keras.Input([size, size, 3])
  x = keras.layers.Rescaling(1 / 255)(inputs)
  x = keras.layers.Conv2D(8, 3, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(classes)(x))


def _constant_model(size=16):
  """Always class 3, whatever the image: zero kernel, bias peaked at 3."""
  inputs = keras.Input([size, size, 3])
  dense = keras.layers.Dense(10)
  model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
  dense.set_weights([np.zeros([3, 10], np.float32), np.eye(10, dtype=np.float32)[3]])
  return model


def _data(n=20, size=16, batch=5, unlabeled=0, as_dict=False):
  rng = np.random.RandomState(1)
  images = rng.uniform(0, 255, [n, size, size, 3]).astype(np.float32)
  labels = rng.randint(0, 10, n).astype(np.int64)
  labels[:unlabeled] = -1
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  if as_dict:
    ds = ds.map(lambda x, y: {"image": x, "label": y})
  return ds.batch(batch), labels


def test_constant_model_never_flips_and_ignores_every_corruption():
  ds, labels = _data()
  result = robustness.evaluate_robustness(_constant_model(), ds, SMALL, image_size=16)
  clean = float(np.mean(labels != 3))
  assert result["clean_error"] == pytest.approx(clean) and result["num_images"] == 20
  for entry in result["corruptions"].values():
    assert entry["errors"] == pytest.approx([clean, clean])
  assert all(p["flip_probability"] == 0 for p in result["perturbations"].values())
  assert result["fgsm"]["accuracy"] == pytest.approx([1 - clean] * 2)  # Zero gradient.
  robustness.normalise(result, result)
  assert result["mce"] == pytest.approx(100.0)
  assert result["mfr"] is None  # A baseline that never flips normalises nothing.
  json.dumps(result)  # JSON-able as it is.


def test_report_is_reproducible_and_its_own_baseline(tmp_path):
  """A real model, dict batches with unlabeled images, a cap on the images; a second run
  with the first as its baseline has every CE and FR at exactly 100."""
  ds, labels = _data(n=24, unlabeled=4, as_dict=True)
  cfg = dataclasses.replace(SMALL, max_images=16)
  model = _conv_model()
  first = robustness.evaluate_robustness(model, ds, cfg, image_size=16, name="a")
  assert first["num_images"] == 12  # The first 16 images, less the 4 unlabeled.
  assert first["settings"]["corruptions"] == list(SMALL.corruptions)
  assert first["mce"] is None and first["mean_corruption_error"] > 0
  second = robustness.evaluate_robustness(model, ds, cfg, image_size=16, baseline=first,
                                          name="b")
  for c in SMALL.corruptions:
    assert second["corruptions"][c]["errors"] == first["corruptions"][c]["errors"]
    assert second["corruptions"][c]["ce"] == pytest.approx(100.0)
  assert second["mce"] == pytest.approx(100.0) and second["baseline"] == "a"
  flips = [p["fr"] for p in second["perturbations"].values() if p["fr"] is not None]
  assert all(fr == pytest.approx(100.0) for fr in flips)
  path = robustness.write_report(second, str(tmp_path), name="b", step=3)
  assert robustness.read_report(path) == json.loads(json.dumps(second))
  for suffix in ("corruptions", "perturbations", "fgsm"):
    assert os.path.getsize(tmp_path / f"b_{suffix}.png") > 5000
  assert any(n.startswith("events.") for n in os.listdir(tmp_path / "b"))
  (tmp_path / "bad.json").write_text('{"top1": 0.5}')
  with pytest.raises(ValueError, match="not a robustness report"):
    robustness.read_report(str(tmp_path / "bad.json"))


def test_corrupted_images_do_not_depend_on_the_batch_size():
  """Randomness is seeded per chunk of images, not per batch: a report at another
  --eval_batch_size (or on a TPU's global batch) sees the same corrupted images."""
  cfg = dataclasses.replace(SMALL, corruptions=("gaussian_noise", "impulse_noise"),
                            severities=(5,), perturbations=("gaussian_noise", "rotate"),
                            fgsm_epsilons=())
  model = _conv_model()
  reports = [robustness.evaluate_robustness(model, _data(n=37, batch=b)[0], cfg,
                                            image_size=16) for b in (5, 16, 37)]
  for other in reports[1:]:
    assert other["corruptions"] == reports[0]["corruptions"]
    for p in cfg.perturbations:
      assert other["perturbations"][p]["flip_probability"] == pytest.approx(
          reports[0]["perturbations"][p]["flip_probability"], abs=1e-9)
  # The noise is real: it changes the predictions of some images.
  assert reports[0]["corruptions"]["gaussian_noise"]["errors"] != [reports[0]["clean_error"]]


def test_fused_corruption_passes_match_each_pass_on_its_own():
  """All corruption passes run as one pipeline; each pass's error equals that of the
  pass computed on its own, chunk by chunk with that pass's seeds (37 images: a partial
  last chunk; unlabeled rows count in the chunking but not in the errors)."""
  cfg = dataclasses.replace(SMALL, corruptions=("gaussian_noise", "contrast", "zoom_blur"),
                            severities=(2, 5), perturbations=(), fgsm_epsilons=())
  model = _conv_model()
  ds, labels = _data(n=37, batch=8, unlabeled=3)
  report = robustness.evaluate_robustness(model, ds, cfg, image_size=16, seed=4)
  images = np.concatenate([x.numpy() for x, _ in ds])
  chunk = runner.SEED_CHUNK
  for c in cfg.corruptions:
    expected = []
    for severity in cfg.severities:
      base = runner._seed_base(4, f"{c}/{severity}")
      corrupted = np.concatenate([robustness.corrupt(
          tf.constant(images[i:i + chunk]), c, severity,
          tf.constant([base, i // chunk], tf.int64)).numpy()
          for i in range(0, len(images), chunk)])
      predicted = np.argmax(model.predict(corrupted, verbose=0), axis=-1)
      keep = labels >= 0
      expected.append(1.0 - np.mean(predicted[keep] == labels[keep]))
    assert report["corruptions"][c]["errors"] == pytest.approx(expected, abs=1e-9), c
  assert len(set(report["corruptions"]["gaussian_noise"]["errors"])) > 1


def test_two_replicas_match_one_device():
  devices = tf.config.list_logical_devices("CPU")
  if len(devices) < 2:
    pytest.skip("needs the two logical CPUs of conftest.py")
  ds, _ = _data(n=15, batch=6)
  cfg = dataclasses.replace(SMALL, corruptions=("contrast",), severities=(2,),
                            perturbations=("rotate",))
  one = robustness.evaluate_robustness(_conv_model(), ds, cfg, image_size=16)
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
  with strategy.scope():
    model = _conv_model()
  two = robustness.evaluate_robustness(model, ds, cfg, image_size=16, strategy=strategy)
  assert two["clean_error"] == pytest.approx(one["clean_error"])
  assert two["corruptions"]["contrast"]["errors"] == one["corruptions"]["contrast"]["errors"]
  assert two["perturbations"]["rotate"]["flip_probability"] == pytest.approx(
      one["perturbations"]["rotate"]["flip_probability"])
  assert two["fgsm"]["accuracy"] == pytest.approx(one["fgsm"]["accuracy"])


def _model_dir(path, seed):
  """A model_dir as training leaves it, with a small conv net as its final.keras."""
  os.makedirs(path)
  _conv_model(size=32, seed=seed).save(os.path.join(path, "final.keras"))
  checkpoints.write_build_config(
      str(path), config_lib.ModelConfig("efficientnet-test", 10, input_image_size=32,
                                        small_image=True), None, False)
  return os.path.join(path, "final.keras")


def _pipeline_cfg(root, mode="pipeline", **robust):
  return config_lib.Config(
      mode=mode, model=config_lib.ModelConfig("efficientnet-test", 10,
                                              input_image_size=32, small_image=True),
      train=config_lib.TrainConfig(model_dir=str(root)),
      eval=config_lib.EvalConfig(eval_batch_size=16),
      robustness=config_lib.RobustnessConfig(
          corruptions=("contrast", "pixelate"), severities=(2,), perturbations=("rotate",),
          perturbation_frames=3, fgsm_epsilons=(), max_images=32, **robust))


def test_pipeline_evaluations_are_relative_to_the_teacher(tmp_path, monkeypatch):
  teacher = context.trained_model_of(_model_dir(tmp_path / "teacher", seed=0))
  student = context.trained_model_of(_model_dir(tmp_path / "student", seed=1))
  ctx = context.Context(_pipeline_cfg(tmp_path / "run"))
  t = pipeline.evaluate_model(ctx, teacher, "teacher")
  assert t.robustness["mce"] == pytest.approx(100.0)  # The teacher is its own baseline.
  assert os.path.exists(t.robustness["robustness_report"])
  phases.Markers(ctx.root).put("eval-teacher", {}, t.to_json(), 1.0)
  s = pipeline.evaluate_model(ctx, student, "student-1")
  theirs = robustness.read_report(t.robustness["robustness_report"])
  ours = robustness.read_report(s.robustness["robustness_report"])
  ce = [100 * sum(ours["corruptions"][c]["errors"]) / sum(theirs["corruptions"][c]["errors"])
        for c in ("contrast", "pixelate")]
  assert s.robustness["mce"] == pytest.approx(np.mean(ce)) and ours["baseline"] == "teacher"
  rows = [pipeline.result_row("teacher", teacher, t), pipeline.result_row("s", student, s)]
  assert rows[1]["mce"] == s.robustness["mce"] and rows[1]["fgsm_accuracy"] is None  # No eps given.
  table = evaluate.format_table(rows).splitlines()
  assert table[0].split()[-4:] == ["corr.err", "mCE", "mFR", "FGSM"]
  teacher_cells = table[1].split()[-4:]  # corr.err, mCE, mFR, FGSM of the teacher.
  assert teacher_cells[0] == f"{100 * t.robustness['corruption_error']:.1f}%"
  assert teacher_cells[1] == "100.0" and teacher_cells[3] == "-"
  assert teacher_cells[2] == ("-" if t.robustness["mfr"] is None else "100.0")  # None: never flips.
  assert table[2].split()[-3] == f"{s.robustness['mce']:.1f}"
  evaluate.plot_results(rows, str(tmp_path / "results.png"))

  # --mode=eval with --robustness_baseline: the baseline model is evaluated once.
  calls = []
  real = robustness.evaluate_robustness
  monkeypatch.setattr(robustness, "evaluate_robustness",
                      lambda *a, **k: calls.append(k["name"]) or real(*a, **k))
  baseline = str(tmp_path / "teacher" / "final.keras")
  eval_ctx = context.Context(_pipeline_cfg(tmp_path / "eval", "eval", baseline=baseline))
  first = pipeline.evaluate_model(eval_ctx, student, "eval")
  assert first.robustness["mce"] == pytest.approx(s.robustness["mce"])  # Same baseline model, same images.
  again = pipeline.evaluate_model(eval_ctx, student, "eval")
  assert again.robustness["mce"] == first.robustness["mce"] and calls == ["baseline", "eval", "eval"]
  # A cached baseline from code that drew other corrupted images is measured again.
  cached = str(tmp_path / "eval" / "eval" / "baseline_robustness.json")
  old = robustness.read_report(cached)
  old["settings"]["sampling_version"] = 1
  with open(cached, "w") as f:
    json.dump(old, f)
  pipeline.evaluate_model(eval_ctx, student, "eval")
  assert calls[3:] == ["baseline", "eval"]
  assert robustness.read_report(cached)["settings"] == robustness.settings_of(
      eval_ctx.cfg.robustness, eval_ctx.cfg.data.seed)
  with_report = context.Context(_pipeline_cfg(tmp_path / "eval2", "eval",
                                               baseline=t.robustness["robustness_report"]))
  assert pipeline.evaluate_model(with_report, student, "eval").robustness["mce"] == pytest.approx(
      s.robustness["mce"])


def _flags(*argv):
  fv = absl_flags.FlagValues()
  flags.define_all(fv)
  fv(["prog", *argv])
  return fv


def test_flags_reach_the_config(tmp_path):
  cfg = flags.to_config(_flags("--eval_data_dir=digits:test")).robustness
  assert cfg == config_lib.RobustnessConfig()
  # With no data flag the demo preset fills the unset flags: reports on 200 test images.
  assert flags.to_config(_flags()).robustness == config_lib.RobustnessConfig(max_images=200)
  cfg = flags.to_config(_flags(
      "--norobustness", "--corruptions=fog,pixelate", "--severities=2,5",
      "--perturbations=rotate", "--perturbation_frames=7", "--fgsm_epsilons=0,0.5,3",
      f"--robustness_baseline={tmp_path}", "--robustness_max_images=100",
      "--seed=4")).robustness
  assert cfg == config_lib.RobustnessConfig(
      enabled=False, corruptions=("fog", "pixelate"), severities=(2, 5),
      perturbations=("rotate",), perturbation_frames=7, fgsm_epsilons=(0.0, 0.5, 3.0),
      baseline=str(tmp_path), max_images=100)
  assert checks.problems(flags.to_config(_flags("--corruptions=all"))) == []


@pytest.mark.parametrize("argv, expected", [
    (["--corruptions=fog,frost"], "--corruptions: unknown corruption frost; known: "),
    (["--perturbations=tilt"], "--perturbations: unknown perturbation tilt"),
    (["--severities=0,6"], "--severities=0,6: each must be in [1, 5]"),
    (["--perturbation_frames=1"], "--perturbation_frames=1: must be >= 2"),
    (["--fgsm_epsilons=-1"], "--fgsm_epsilons=-1: each must be in [0, 255]"),
    (["--robustness_max_images=0"], "--robustness_max_images=0: must be > 0"),
    (["--robustness_baseline=/no/such/dir"],
     "--robustness_baseline=/no/such/dir: no such file or directory"),
])
def test_bad_robustness_flags_fail_with_one_line(argv, expected):
  errors = checks.problems(flags.to_config(_flags(*argv)))
  assert len(errors) == 1 and errors[0].startswith(expected), errors
  # The same values are fine when the report is off.
  assert checks.problems(flags.to_config(_flags("--norobustness", *argv))) == []


def test_non_numeric_lists_are_config_errors():
  with pytest.raises(checks.ConfigError, match="--severities=1,high: expected"):
    flags.to_config(_flags("--severities=1,high"))
  with pytest.raises(checks.ConfigError, match="--fgsm_epsilons=small: expected"):
    flags.to_config(_flags("--fgsm_epsilons=small"))


@pytest.mark.slow
def test_eval_mode_end_to_end(tmp_path):
  """`noisy-student --mode=eval` on a model_dir with a checkpoint, digits eval data."""
  model_dir = tmp_path / "model"
  model_cfg = config_lib.ModelConfig("efficientnet-test", 10, input_image_size=32,
                                     small_image=True)
  model = checkpoints.build_model(model_cfg)
  checkpoints.make_checkpoint(model).save(str(model_dir / "ckpt"))
  checkpoints.write_build_config(str(model_dir), model_cfg, None, False)
  proc = subprocess.run(
      [sys.executable, "-m", "noisy_student", "--mode=eval", f"--model_dir={model_dir}",
       "--robustness_max_images=64", "--perturbation_frames=4", "--severities=1,5",
       "--eval_batch_size=64"], capture_output=True, text=True, timeout=900,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = robustness.read_report(str(model_dir / "eval" / "eval_robustness.json"))
  assert report["num_images"] == 64 and report["settings"]["severities"] == [1, 5]
  assert len(report["corruptions"]) == 14 and len(report["perturbations"]) == 6
  assert report["mce"] is None  # No baseline given, no teacher in this model_dir.
  for suffix in ("corruptions", "perturbations", "fgsm"):
    assert (model_dir / "eval" / f"eval_{suffix}.png").exists()
