"""Phase orchestration: order, completion markers, resume without redoing, changed flags.

The phases are replaced by recorders here (the real ones are covered by their modules'
tests and by the slow end-to-end test in test_main.py): what is tested is the bookkeeping.
"""
import dataclasses
import json
import os

import pytest

from noisy_student import config as config_lib
from noisy_student import phases
from noisy_student import context
from noisy_student import pipeline
from noisy_student import results


class Recorder:
  """Stands in for the phase functions; records calls; can fail at a chosen phase."""

  def __init__(self, monkeypatch, fail_at=None):
    self.calls, self.fail_at = [], fail_at
    for name in ("train_teacher", "evaluate_model", "check_teacher",
                 "predict_pseudo_labels", "balance_pseudo_labels", "train_student",
                 "finetune_model", "export_model"):
      monkeypatch.setattr(pipeline, name, self._make(name))

  def _make(self, fn_name):
    def fn(ctx, *args):
      label = self._label(fn_name, args)
      if label == self.fail_at:
        raise KeyboardInterrupt(f"killed in {label}")  # As a kill, not a handled error.
      self.calls.append(label)
      return self._result(fn_name, ctx, args)
    return fn

  @staticmethod
  def _label(fn_name, args):
    if fn_name == "evaluate_model":
      return f"eval-{args[1]}"
    if fn_name == "train_student":
      return f"student-{args[0]}"
    if fn_name == "predict_pseudo_labels":
      return f"predict-{args[1].rsplit('_', 1)[1]}"
    if fn_name == "balance_pseudo_labels":
      return f"balance-{args[0].rsplit('_', 1)[1]}"
    return {"train_teacher": "teacher", "finetune_model": "finetune",
            "export_model": "export", "check_teacher": "check-teacher"}[fn_name]

  @staticmethod
  def _result(fn_name, ctx, args):
    def model(path, name):
      return results.TrainedModel(path=path, model_name=name, image_size=32,
                                  small_image=True)
    if fn_name == "train_teacher":
      return model(ctx.path("teacher"), ctx.cfg.model.model_name)
    if fn_name == "train_student":
      return model(ctx.path(f"student_{args[0]}"), args[1])
    if fn_name == "finetune_model":
      return dataclasses.replace(args[0], path=ctx.path("finetune/final.keras"),
                                 image_size=40, finetuned_from=args[0].path)
    if fn_name == "evaluate_model":
      top1 = {"teacher": 0.8}.get(args[1], 0.9)
      return results.Evaluation(top1=top1, top5=1.0, top_k=5, num_images=400, report="r")
    if fn_name == "check_teacher":
      return results.TeacherCheck(train_accuracy=1.0, train_images=100, num_classes=10,
                                  epochs=10, rise=0.0, held_out_accuracy=args[1])
    if fn_name == "predict_pseudo_labels":
      return results.PseudoLabels(output_dir=args[1], records_written=10)
    if fn_name == "balance_pseudo_labels":
      return results.BalancedPseudoLabels(output_dir=args[0], plan_path="p",
                                          report_path="r")
    return results.Exported(export_path=ctx.path("export/1"))


def _cfg(tmp_path, students=("efficientnet-b0", "efficientnet-b0"), **pipeline_changes):
  return config_lib.Config(
      train=config_lib.TrainConfig(model_dir=str(tmp_path / "run"), unlabel_ratio=2.0),
      student_model_names=tuple(students),
      pipeline=config_lib.PipelineConfig(**{"finetune": True, **pipeline_changes}))


def test_full_run_order_markers_and_results(tmp_path, monkeypatch, capsys):
  cfg = _cfg(tmp_path)
  rec = Recorder(monkeypatch)
  rows = pipeline.run_pipeline(cfg)
  assert rec.calls == pipeline.plan(cfg)
  assert rec.calls[:7] == ["teacher", "eval-teacher", "check-teacher", "predict-1",
                           "balance-1", "student-1", "eval-student-1"]
  assert sorted(phases.Markers(cfg.train.model_dir).done()) == sorted(rec.calls)
  assert [r["name"] for r in rows] == ["teacher", "student 1", "student 2", "fine-tuned"]
  with open(os.path.join(cfg.train.model_dir, "results.json")) as f:
    saved = json.load(f)
  assert [m["top1"] for m in saved["models"]] == [0.8, 0.9, 0.9, 0.9]
  assert os.path.getsize(os.path.join(cfg.train.model_dir, "results.png")) > 1000
  table = capsys.readouterr().out
  assert table.index("teacher") < table.index("student 1") and "80.00%" in table


def test_rerun_redoes_nothing(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  Recorder(monkeypatch)
  first = pipeline.run_pipeline(cfg)
  rec = Recorder(monkeypatch)
  assert pipeline.run_pipeline(cfg) == first
  assert rec.calls == []


@pytest.mark.parametrize("killed_in", ["predict-1", "student-2", "finetune", "export"])
def test_killed_run_resumes_at_the_phase_it_was_in(tmp_path, monkeypatch, killed_in):
  cfg = _cfg(tmp_path)
  order = pipeline.plan(cfg)
  first = Recorder(monkeypatch, fail_at=killed_in)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_pipeline(cfg)
  assert first.calls == order[:order.index(killed_in)]
  second = Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  assert second.calls == order[order.index(killed_in):]


def test_deleted_markers_redo_only_those_phases(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  markers = phases.Markers(cfg.train.model_dir)
  for name in ("student-2", "eval-student-2", "finetune", "eval-finetune", "export"):
    os.remove(markers.path(name))
  rec = Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  assert rec.calls == ["student-2", "eval-student-2", "finetune", "eval-finetune",
                       "export"]


def test_more_iterations_reuse_the_finished_ones(tmp_path, monkeypatch):
  Recorder(monkeypatch)
  pipeline.run_pipeline(_cfg(tmp_path, students=("efficientnet-b0",)))
  rec = Recorder(monkeypatch)
  pipeline.run_pipeline(_cfg(tmp_path))
  # The phases after the last student are redone on the new last student.
  assert rec.calls == ["predict-2", "balance-2", "student-2", "eval-student-2",
                       "finetune", "eval-finetune", "export"]


def test_changed_flags_of_a_finished_phase_are_refused(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  changed = dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, train_epochs=cfg.train.train_epochs + 1))
  rec = Recorder(monkeypatch)
  with pytest.raises(phases.PhaseMismatchError,
                     match=r"phase teacher .*train.train_epochs: 350.0 -> 351.0"):
    pipeline.run_pipeline(changed)
  assert rec.calls == []
  # Flags that only change speed or logging do not count as a change.
  faster = dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, log_every_n_steps=7, iterations_per_loop=9))
  pipeline.run_pipeline(faster)
  assert rec.calls == []


def test_per_iteration_ratios_reach_the_students(tmp_path, monkeypatch):
  seen = []
  Recorder(monkeypatch)
  monkeypatch.setattr(pipeline, "train_student", lambda ctx, i, name, ratio, balanced: (
      seen.append(ratio) or results.TrainedModel(path=ctx.path(f"s{i}"), model_name=name,
                                                 image_size=32, small_image=True)))
  pipeline.run_pipeline(_cfg(tmp_path, student_unlabel_ratios=(14.0, 28.0)))
  assert seen == [14.0, 28.0]


def test_eval_and_export_modes_find_the_last_model_of_a_pipeline(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  root = cfg.train.model_dir
  assert context.trained_model_of(root).path.endswith("finetune/final.keras")
  markers = phases.Markers(root)
  os.remove(markers.path("finetune"))
  assert context.trained_model_of(root).path.endswith("student_2")


def test_a_student_worse_than_its_teacher_and_a_weak_teacher_are_marked(
    tmp_path, monkeypatch, capsys):
  cfg = _cfg(tmp_path, finetune=False)
  Recorder(monkeypatch)
  top1 = {"teacher": 0.8, "student-1": 0.7, "student-2": 0.75}
  monkeypatch.setattr(pipeline, "evaluate_model", lambda ctx, model, name: (
      results.Evaluation(top1=top1[name], top5=1.0, top_k=5, num_images=400, report="r")))
  monkeypatch.setattr(pipeline, "check_teacher", lambda ctx, teacher, held_out: (
      results.TeacherCheck(train_accuracy=0.29, train_images=600, num_classes=10, epochs=27,
                           rise=0.08, held_out_accuracy=held_out,
                           warnings=["the teacher under-fits: raise --teacher_train_epochs"])))
  rows = pipeline.run_pipeline(cfg)
  # Student 2 beats student 1, its teacher, though not the first teacher.
  assert [r.get("worse_than_teacher") for r in rows] == [None, True, False]
  table = capsys.readouterr().out.splitlines()
  assert table[2].endswith("< its teacher") and not table[3].endswith("< its teacher")
  assert any("raise --teacher_train_epochs" in line for line in table)
  with open(os.path.join(cfg.train.model_dir, "results.json")) as f:
    saved = json.load(f)
  assert saved["models"][1]["worse_than_teacher"] is True
  assert saved["teacher_check"]["train_accuracy"] == 0.29
  assert saved["teacher_check"]["held_out_accuracy"] == 0.8
  assert any("student 1 (70.00%) is worse than its teacher" in n for n in saved["notes"])


def test_reassign_label_filters_once_and_later_teachers_relabel(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, finetune=False, reassign_label=True,
             students=("efficientnet-b0",) * 3)
  rec = Recorder(monkeypatch)
  seen = {}
  monkeypatch.setattr(pipeline, "train_student", lambda ctx, i, name, ratio, balanced: (
      seen.__setitem__(i, balanced) or results.TrainedModel(
          path=ctx.path(f"student_{i}"), model_name=name, image_size=32, small_image=True)))
  pipeline.run_pipeline(cfg)
  assert [c for c in rec.calls if c.startswith("balance")] == ["balance-1"]
  assert [c for c in rec.calls if c.startswith("predict")] == [
      "predict-1", "predict-2", "predict-3"]
  assert seen[1].relabel_dir is None
  for i in (2, 3):  # The first filter's plan over pseudo_1, the i-th teacher's labels.
    assert seen[i].plan_path == seen[1].plan_path
    assert seen[i].output_dir == seen[1].output_dir
    assert seen[i].relabel_dir == cfg.train.model_dir + f"/pseudo_{i}"


def test_a_students_length_does_not_retrain_the_teacher(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, finetune=False, teacher_train_epochs=100.0)
  Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, train_epochs=700.0,
                                                              train_ratio=2.0))
  with pytest.raises(phases.PhaseMismatchError, match="phase student-1 .*train_epochs"):
    pipeline.run_pipeline(longer)  # The teacher (100 epochs either way) was skipped.
  teacher_longer = dataclasses.replace(cfg, pipeline=dataclasses.replace(
      cfg.pipeline, teacher_train_epochs=200.0))
  with pytest.raises(phases.PhaseMismatchError, match="phase teacher .*train_epochs"):
    pipeline.run_pipeline(teacher_longer)
