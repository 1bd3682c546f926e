"""--iterations=auto: the held-out split, the rule, and the loop that follows it.

The rule and the split are tested on their own; the loop with the phases replaced by
recorders (tests/test_pipeline.py's), the held-out results chosen per model, and the
embedded digits as the labeled data (the split is real).
"""
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student import config as config_lib
from noisy_student import context
from noisy_student import evaluate
from noisy_student import iterations
from noisy_student import phases
from noisy_student import pipeline
from noisy_student import results
from noisy_student.data import holdout
from noisy_student.data import sources
from tests.test_pipeline import Recorder


def test_the_standard_error_is_the_paired_differences():
  teacher = [1, 1, 0, 0, 0, 1, 0, 1, 0, 0]
  student = [1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
  c = iterations.compare(teacher, student)
  d = np.array(student) - np.array(teacher)
  assert c.gain == pytest.approx(d.mean()) and (c.fixed, c.broken) == (4, 1)
  assert c.standard_error == pytest.approx(d.std(ddof=1) / math.sqrt(d.size))
  assert c.pays  # +0.3, standard error 0.21.


@pytest.mark.parametrize("student, pays", [
    ([1, 1, 1, 0, 0, 0, 0, 0], False),  # Equal: gain 0, standard error 0.
    ([1, 1, 1, 1, 0, 0, 0, 0], False),  # One fixed, none broken: gain = standard error.
    ([1, 1, 1, 1, 1, 0, 0, 0], True),  # Two fixed, none broken.
    ([1, 1, 0, 1, 1, 0, 0, 0], False),  # Two fixed, one broken, of 8: 0.125 < 0.23.
    ([0, 0, 0, 0, 0, 0, 0, 0], False),
])
def test_a_student_must_beat_its_teacher_by_more_than_the_standard_error(student, pays):
  assert iterations.compare([1, 1, 1, 0, 0, 0, 0, 0], student).pays is pays


def test_comparisons_need_the_same_images():
  with pytest.raises(ValueError, match="same non-empty split"):
    iterations.compare([1, 0], [1])
  assert not iterations.compare([0], [1]).pays  # One image: no spread, never enough.


def _ids(source):
  return [r["id"] for r in source.dataset().as_numpy_iterator()]


def test_the_split_is_stratified_seeded_and_disjoint():
  labeled = sources.open_source("digits:labeled")  # 500 images, 49 to 51 per class.
  split = holdout.split(labeled, 0.1, seed=3)
  held, train = _ids(split.held_out), _ids(split.train)
  assert split.per_class == {c: 5 for c in range(10)} and split.held_out.size == 50
  assert len(held) == 50 and len(train) == split.train.size == 450
  assert not set(held) & set(train) and set(held) | set(train) == set(_ids(labeled))
  assert split.train.class_counts == {c: n - 5 for c, n in labeled.class_counts.items()}
  # The same seed and records: the same split, from a freshly opened source too.
  again = holdout.split(sources.open_source("digits:labeled"), 0.1, seed=3)
  assert _ids(again.held_out) == held and again.digest == split.digest
  assert holdout.split(labeled, 0.1, seed=4).digest != split.digest
  # Workers split the training part as any source: disjoint, everything.
  parts = [_ids_of(split.train, 3, i) for i in range(3)]
  assert sorted(x for p in parts for x in p) == sorted(train)


def _ids_of(source, n, i):
  return [r["id"] for r in source.dataset(n, i).as_numpy_iterator()]


def test_every_class_keeps_an_image_to_train_on():
  ids = [b"a", b"b", b"c", b"d", b"e"]
  held = holdout.choose(ids, np.array([0, 0, 1, 1, 1]), 0.9, seed=0)
  assert len([i for i in held if i in (b"a", b"b")]) == 1 and len(held) == 3
  with pytest.raises(ValueError, match="class 7 has 1 labeled image"):
    holdout.choose([b"x", b"y", b"z"], np.array([0, 0, 7]), 0.5, seed=0)


def test_correct_per_image_follows_the_dataset_order():
  model = keras.Sequential([keras.Input([2]), keras.layers.Dense(3)])
  model.set_weights([np.array([[1, 0, 0], [0, 1, 0]], np.float32), np.zeros(3, np.float32)])
  x = np.array([[5, 0], [0, 5], [5, 0], [0, 5], [1, 9]], np.float32)
  y = np.array([0, 1, 1, 0, 1])
  ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
  assert evaluate.correct_per_image(model, ds).tolist() == [True, True, False, False, True]


class Validator:
  """Stands in for validate_model: per model name, which held-out images it gets right."""

  def __init__(self, monkeypatch, scores):
    self.scores, self.calls = scores, []
    monkeypatch.setattr(iterations, "validate_model", self)

  def __call__(self, ctx, model):
    name = os.path.basename(model.path)
    self.calls.append(name)
    n = ctx.source("validation").size
    right = min(n, self.scores[name])
    return results.Validation(top1=right / n, num_images=n,
                              correct="1" * right + "0" * (n - right))


def _cfg(tmp_path, students=3, finetune=False):
  return config_lib.Config(
      train=config_lib.TrainConfig(model_dir=str(tmp_path / "run"), unlabel_ratio=2.0),
      data=config_lib.DataConfig(digits_num_labeled=100),  # 10 held out: 1 per class.
      student_model_names=("efficientnet-b0",) * students,
      pipeline=config_lib.PipelineConfig(iterations="auto", finetune=finetune))


def test_the_loop_stops_when_a_student_does_not_pay(tmp_path, monkeypatch, capsys):
  cfg = _cfg(tmp_path)
  rec = Recorder(monkeypatch)
  Validator(monkeypatch, {"teacher": 5, "student_1": 8, "student_2": 9})
  rows = pipeline.run_pipeline(cfg)
  # Student 2 fixed 1 of 10 images: gain 0.1 = its standard error; no third student.
  assert [r["name"] for r in rows] == ["teacher", "student 1", "student 2"]
  assert "student-3" not in rec.calls and "export" in rec.calls
  assert [r.get("kept") for r in rows] == [None, True, False]
  assert rows[2]["validation_gain"] == pytest.approx(0.1)
  assert rows[2]["validation_se"] == pytest.approx(0.1)
  root = cfg.train.model_dir
  with open(os.path.join(root, "results.json")) as f:
    saved = json.load(f)
  assert saved["iterations"]["final_name"] == "student 1"
  assert saved["iterations"]["validation_images"] == 10
  assert saved["iterations"]["reason"].startswith("stopped after student 2: student 2 beat "
                                                  "student 1 on the 10 held-out")
  table = capsys.readouterr().out
  assert "held-out" in table and "not kept" in table and "Iterations: stopped after" in table
  # The last student that paid is the final model: exported, and what eval/export find.
  assert context.trained_model_of(root).path.endswith("student_1")


def test_the_loop_stops_at_the_cap_and_fine_tunes_the_last(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, students=2, finetune=True)
  rec = Recorder(monkeypatch)
  Validator(monkeypatch, {"teacher": 3, "student_1": 6, "student_2": 9})
  rows = pipeline.run_pipeline(cfg)
  assert rec.calls.count("eval-finetune") == 1 and rows[-1]["name"] == "fine-tuned"
  outcome = results.Iterations.from_json(
      phases.Markers(cfg.train.model_dir).get("iterations")["result"])
  assert outcome.final_name == "student 2" and outcome.students_trained == 2
  assert outcome.reason.startswith("stopped at the cap of 2 iterations")
  assert phases.Markers(cfg.train.model_dir).done() == sorted(pipeline.plan(cfg))


def test_no_model_trains_on_the_held_out_images(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, students=1)
  Recorder(monkeypatch)
  Validator(monkeypatch, {"teacher": 3, "student_1": 3})
  seen = {}
  real = pipeline.train_teacher

  def teacher(ctx):
    seen["train"], seen["held"] = _ids(ctx.source("label")), _ids(ctx.source("validation"))
    seen["size"], seen["names"] = ctx.source("label").size, ctx.class_names
    return real(ctx)
  monkeypatch.setattr(pipeline, "train_teacher", teacher)
  pipeline.run_pipeline(cfg)
  assert len(seen["train"]) == seen["size"] == 90 and len(seen["held"]) == 10
  assert not set(seen["train"]) & set(seen["held"]) and len(seen["names"]) == 10
  split = phases.Markers(cfg.train.model_dir).get("validation-split")["result"]
  assert split["num_images"] == 10 and split["num_train_images"] == 90


def test_a_resumed_run_holds_out_the_same_images_and_decides_the_same(
    tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  scores = {"teacher": 5, "student_1": 8, "student_2": 9}
  Recorder(monkeypatch, fail_at="student-2")
  Validator(monkeypatch, scores)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_pipeline(cfg)
  rec = Recorder(monkeypatch)
  validator = Validator(monkeypatch, scores)
  rows = pipeline.run_pipeline(cfg)
  assert rec.calls[0] == "student-2" and validator.calls == ["student_2"]
  assert [r["name"] for r in rows] == ["teacher", "student 1", "student 2"]
  # Run again: nothing is redone, and the loop stops at the same student.
  rec = Recorder(monkeypatch)
  again = Validator(monkeypatch, scores)
  assert pipeline.run_pipeline(cfg) == rows and rec.calls == again.calls == []
  # Other labeled images under the same flags: refused, not mixed with the old split.
  monkeypatch.setattr(holdout, "digest", lambda ids: "another")
  with pytest.raises(ValueError, match="held-out split differs from the one this run"):
    pipeline.run_pipeline(cfg)


def test_switching_to_auto_retrains_nothing_silently(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  all_cfg = config_lib.Config(
      train=cfg.train, data=cfg.data, student_model_names=cfg.student_model_names,
      pipeline=config_lib.PipelineConfig(finetune=False))
  Recorder(monkeypatch)
  pipeline.run_pipeline(all_cfg)
  Validator(monkeypatch, {"teacher": 5, "student_1": 8})
  # The teacher trained on every labeled image; auto's would not have.
  with pytest.raises(phases.PhaseMismatchError, match="phase teacher .*holdout"):
    pipeline.run_pipeline(cfg)
