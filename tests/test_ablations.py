"""`--mode=ablate`: which students are trained with which change, the summary, resume.

The phases are replaced by recorders (as in test_pipeline.py) for the bookkeeping;
`test_ablate_command_smoke` runs the real command end to end at smoke size.
"""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from noisy_student import ablations
from noisy_student import config as config_lib
from noisy_student import phases
from noisy_student import pipeline
from noisy_student import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Accuracy each fake model reaches; a seed adds seed / 100 to every model but the
# teacher, so the paired differences vary with the seed.
TOP1 = {"teacher": 0.80, "student-1": 0.90, "student-2": 0.91, "student-3": 0.92,
        "ablation_no_noise": 0.82, "ablation_hard_labels": 0.88, "ablation_balance": 0.89,
        "ablation_larger_student": 0.93, "ablation_no_randaugment": 0.85,
        "ablation_no_dropout": 0.89, "ablation_no_stochastic_depth": 0.895,
        "ablation_no_filter": 0.87}


class Phases:
  """Fake phase functions: record each training's directory and configuration."""

  def __init__(self, monkeypatch, fail_at=None):
    self.trained, self.balanced, self.fail_at = {}, [], fail_at
    monkeypatch.setattr(pipeline, "train_teacher", self.train_teacher)
    monkeypatch.setattr(pipeline, "train_student", self.train_student)
    monkeypatch.setattr(pipeline, "evaluate_model", self.evaluate_model)
    monkeypatch.setattr(pipeline, "predict_pseudo_labels", self.predict)
    monkeypatch.setattr(pipeline, "balance_pseudo_labels", self.balance)
    monkeypatch.setattr(pipeline, "check_teacher", lambda ctx, teacher, top1: (
        results.TeacherCheck(train_accuracy=1.0, train_images=100, num_classes=10,
                             epochs=10, rise=0.0, held_out_accuracy=top1)))

  def _model(self, ctx, directory, name):
    key = f"{ctx.cfg.data.seed}/{directory}"
    if key == self.fail_at:
      raise KeyboardInterrupt(f"killed in {key}")
    self.trained[key] = ctx.cfg
    return results.TrainedModel(path=ctx.path(directory), model_name=name, image_size=32,
                                small_image=True)

  def train_teacher(self, ctx):
    return self._model(ctx, "teacher", ctx.cfg.model.model_name)

  def train_student(self, ctx, i, name, ratio, balanced, directory=None):
    del ratio, balanced
    return self._model(ctx, directory or f"student_{i}", name)

  @staticmethod
  def evaluate_model(ctx, model, name):
    seed = ctx.cfg.data.seed
    top1 = TOP1[name] + (0 if name == "teacher" else seed / 100)
    return results.Evaluation(top1=top1, top5=1.0, top_k=5, num_images=400, report="r")

  @staticmethod
  def predict(ctx, teacher, output_dir):
    del ctx, teacher
    return results.PseudoLabels(output_dir=output_dir, records_written=1000)

  def balance(self, ctx, pseudo_dir, plan_dir=None):
    self.balanced.append((ctx.cfg.filter, plan_dir))
    return results.BalancedPseudoLabels(
        output_dir=pseudo_dir, plan_path=f"{plan_dir}/plan.json", report_path="r",
        totals={"before": 1000, "kept_unique": 905, "after": 905})


def _cfg(tmp_path, seeds=(0, 1), names=tuple(ablations.VARIANTS), iterations=2):
  return config_lib.Config(
      mode="ablate", model=config_lib.ModelConfig(model_name="efficientnet-b0",
                                                  num_label_classes=10),
      train=config_lib.TrainConfig(model_dir=str(tmp_path / "abl"), unlabel_ratio=2.0),
      student_model_names=("efficientnet-b1",),
      ablation=config_lib.AblationConfig(ablations=names, seeds=seeds,
                                         iterations=iterations))


def test_each_variant_changes_only_its_own_setting(tmp_path, monkeypatch):
  recorded = Phases(monkeypatch)
  cfg = _cfg(tmp_path)
  ablations.run_ablations(cfg)
  seed0 = {k.split("/", 1)[1]: v for k, v in recorded.trained.items() if k.startswith("0/")}
  assert sorted(seed0) == sorted(["teacher", "student_1", "student_2"] +
                                 [f"ablation_{n}" for n in ablations.VARIANTS])
  base = seed0["student_1"]
  # The main arm's students are the teacher's size, whatever --student_model_names says.
  assert base.student_model_names == ("efficientnet-b0",) * 2

  def diff(name):
    other = seed0[f"ablation_{name}"]
    return {f"{g}.{f.name}": getattr(getattr(other, g), f.name)
            for g in ("model", "data", "train", "filter")
            for f in dataclasses.fields(getattr(base, g))
            if getattr(getattr(other, g), f.name) != getattr(getattr(base, g), f.name)}

  assert diff("no_noise") == {"model.dropout_rate": 0.0, "model.stochastic_depth_rate": 0.0,
                              "data.augment_name": None, "data.small_image_cutout": False}
  assert diff("no_randaugment") == {"data.augment_name": None, "data.small_image_cutout": False}
  assert diff("no_dropout") == {"model.dropout_rate": 0.0}
  assert diff("no_stochastic_depth") == {"model.stochastic_depth_rate": 0.0}
  assert diff("hard_labels") == {"train.teacher_softmax_temp": -1.0}
  # B0's table coefficients are 1.0 / 1.0; the default scale is 1.5.
  assert diff("larger_student") == {"model.width_coefficient": 1.5,
                                    "model.depth_coefficient": 1.5}
  # The run does not balance (num_image 0): the variant balances to the mean class count
  # of the 905 pseudo-labels that pass the threshold, in a plan of its own.
  assert diff("balance") == {"filter.num_image": 91}
  assert diff("no_filter") == {"filter.min_threshold": 0.0}
  plans = [p for f, p in recorded.balanced if p]
  assert sorted(os.path.basename(os.path.dirname(p)) for p in plans) == sorted(
      ["ablation_balance", "ablation_no_filter"] * 2)
  # Seeds reach the data split and the balancing; each seed has its own directory.
  assert recorded.trained["1/teacher"].data.seed == 1
  assert recorded.trained["1/teacher"].train.model_dir.endswith("abl/seed_1")


def test_balance_variant_switches_balancing_off_when_the_run_balances(tmp_path,
                                                                      monkeypatch):
  recorded = Phases(monkeypatch)
  cfg = _cfg(tmp_path, seeds=(0,), names=("balance",), iterations=1)
  cfg = dataclasses.replace(cfg, filter=config_lib.FilterConfig(num_image=50))
  summary = ablations.run_ablations(cfg)
  assert recorded.trained["0/ablation_balance"].filter.num_image == 0
  assert summary[-1]["description"] == "student without balancing"


def test_summary_statistics_table_json_and_plot(tmp_path, monkeypatch, capsys):
  Phases(monkeypatch)
  cfg = _cfg(tmp_path, seeds=(0, 1, 2), names=("no_noise", "larger_student"), iterations=2)
  summary = {r["name"]: r for r in ablations.run_ablations(cfg)}
  assert list(summary) == ["teacher", "iteration_1", "iteration_2", "no_noise",
                           "larger_student"]
  s1 = summary["iteration_1"]
  values = [0.90, 0.91, 0.92]
  np.testing.assert_allclose(s1["top1"]["values"], values)
  np.testing.assert_allclose(s1["top1"]["mean"], np.mean(values))
  np.testing.assert_allclose(s1["top1"]["std"], np.std(values, ddof=1))
  np.testing.assert_allclose(s1["top1_minus_teacher"]["mean"], 0.11)
  np.testing.assert_allclose(summary["no_noise"]["top1_minus_iteration_1"]["mean"], -0.08)
  # Paired with its own seed's student, no_noise's difference does not vary.
  assert summary["no_noise"]["top1_minus_iteration_1"]["std"] < 1e-9
  assert summary["teacher"]["top1"]["std"] < 1e-9
  root = cfg.train.model_dir
  with open(os.path.join(root, "ablations.json")) as f:
    saved = json.load(f)
  assert [r["name"] for r in saved["summary"]] == list(summary)
  assert saved["per_seed"]["2"]["no_noise"]["top1"] == pytest.approx(0.84)
  assert os.path.getsize(os.path.join(root, "ablations.png")) > 5000
  with open(os.path.join(root, "ablations.md")) as f:
    assert "| `no_noise` | student without noise" in f.read()
  out = capsys.readouterr().out
  assert "91.00 ± 1.00" in out and "+11.00 ± 1.00" in out and "-8.00 ± 0.00" in out


def test_rerun_redoes_nothing_and_a_killed_run_resumes(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, seeds=(0, 1), names=("no_noise", "hard_labels"), iterations=1)
  first = Phases(monkeypatch, fail_at="1/ablation_no_noise")
  with pytest.raises(KeyboardInterrupt):
    ablations.run_ablations(cfg)
  assert "0/ablation_hard_labels" in first.trained
  second = Phases(monkeypatch)
  summary = ablations.run_ablations(cfg)
  assert sorted(second.trained) == ["1/ablation_hard_labels", "1/ablation_no_noise"]
  third = Phases(monkeypatch)
  assert ablations.run_ablations(cfg) == summary
  assert third.trained == {}
  # A seed or an ablation added later reuses everything finished.
  more = dataclasses.replace(cfg, ablation=dataclasses.replace(
      cfg.ablation, seeds=(0, 1, 2), ablations=("no_noise", "hard_labels", "no_dropout")))
  fourth = Phases(monkeypatch)
  ablations.run_ablations(more)
  assert sorted(fourth.trained) == sorted(
      ["0/ablation_no_dropout", "1/ablation_no_dropout", "2/teacher", "2/student_1",
       "2/ablation_no_noise", "2/ablation_hard_labels", "2/ablation_no_dropout"])


def test_bad_ablation_flags_are_named(tmp_path):
  from noisy_student import checks  # pylint: disable=import-outside-toplevel
  cfg = _cfg(tmp_path, seeds=(1, 1), names=("no_noise", "no_teacher"), iterations=0)
  cfg = dataclasses.replace(cfg, ablation=dataclasses.replace(cfg.ablation,
                                                              larger_scale=1.0),
                            data=config_lib.DataConfig())
  errors = "\n".join(checks.problems(cfg))
  assert "--ablations: unknown no_teacher" in errors
  assert "--ablation_seeds=1,1" in errors
  assert "--ablation_iterations=0" in errors
  ok = _cfg(tmp_path, names=("larger_student",))
  ok = dataclasses.replace(ok, ablation=dataclasses.replace(ok.ablation, larger_scale=1.0))
  assert any("--ablation_larger_scale=1:" in e for e in checks.problems(ok))


def test_ablate_command_smoke(tmp_path):
  """The real command, smoke size: one seed, one iteration, one variant (the seeds'
  bookkeeping is tested above)."""
  out = tmp_path / "abl"
  argv = [sys.executable, "-m", "noisy_student",
          "--flagfile=" + os.path.join(REPO, "flags", "presets", "smoke.flags"),
          "--mode=ablate", f"--model_dir={out}", "--nofinetune", "--train_steps=2", "--teacher_train_steps=2",
          "--ablation_seeds=3", "--ablation_iterations=1", "--ablations=no_noise",
          "--digits_num_labeled=50", "--digits_num_test=50", "--norobustness"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / "ablations.json") as f:
    saved = json.load(f)
  assert [r["name"] for r in saved["summary"]] == ["teacher", "iteration_1", "no_noise"]
  assert all(r["seeds"] == [3] for r in saved["summary"])
  done = phases.Markers(str(out / "seed_3")).done()
  assert {"teacher", "student-1", "ablation_no_noise", "eval-ablation_no_noise"} <= set(done)
  with open(out / "seed_3" / "ablation_no_noise" / "build_config.json") as f:
    built = json.load(f)["model"]
  assert built["dropout_rate"] == 0.0 and built["stochastic_depth_rate"] == 0.0
  assert "no_noise" in proc.stdout and "±" in proc.stdout
