"""A model_dir is relocatable and heals its pseudo-labels (noisy_student/phases.py,
pipeline.heal_pseudo_labels): the phases are the recorders of test_pipeline.py, the
shards real ones."""
import json
import os
import shutil

import numpy as np
import pytest

from noisy_student import context
from noisy_student import phases
from noisy_student import pipeline
from noisy_student import results
from test_pipeline import Recorder, _cfg
from tfrecords import format as fmt
from tfrecords import integrity


def _snapshot(root):
  """{path: (size, mtime)} of every file below `root`."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      out[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
  return out


def test_a_copied_run_resumes_in_place_and_never_touches_the_original(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path / "a", students=("efficientnet-b0",))
  Recorder(monkeypatch)
  pipeline.run_pipeline(cfg)
  original, copy = cfg.train.model_dir, str(tmp_path / "b" / "run")
  shutil.copytree(original, copy)
  with open(os.path.join(copy, "phases", "predict-1.json")) as f:
    stored = json.load(f)
  assert stored["result"]["output_dir"] == "<model_dir>/pseudo_1"
  assert stored["fingerprint"]["teacher"]["path"] == "<model_dir>/teacher"
  before = _snapshot(original)
  for name in ("balance-1", "student-1", "eval-student-1"):  # Go on from predict-1.
    os.remove(os.path.join(copy, "phases", f"{name}.json"))
  moved = _cfg(tmp_path / "b", students=("efficientnet-b0", "efficientnet-b0"))
  seen = []
  rec = Recorder(monkeypatch)
  real_balance = pipeline.balance_pseudo_labels
  monkeypatch.setattr(pipeline, "balance_pseudo_labels", lambda ctx, d: (
      seen.append(d) or real_balance(ctx, d)))
  pipeline.run_pipeline(moved)
  assert rec.calls[:5] == ["balance-1", "student-1", "eval-student-1", "predict-2",
                           "balance-2"]  # The teacher and predict-1 were not redone.
  assert seen == [f"{copy}/pseudo_1", f"{copy}/pseudo_2"]
  assert context.trained_model_of(copy).path == f"{copy}/finetune/final.keras"
  teacher = phases.Markers(copy).get("teacher")["result"]["path"]
  assert teacher == f"{copy}/teacher"
  assert _snapshot(original) == before


def test_markers_of_the_earlier_version_are_rebased_from_their_teacher(tmp_path):
  old, new = str(tmp_path / "old"), str(tmp_path / "new")
  markers = phases.Markers(old)
  teacher = results.TrainedModel(path=f"{old}/teacher", model_name="m", image_size=32,
                                 small_image=True)
  os.makedirs(markers.directory)
  for name, result in (("teacher", teacher.to_json()),
                       ("predict-1", {"output_dir": f"{old}/pseudo_1"})):
    with open(markers.path(name), "w") as f:  # Version 1: absolute paths, no version.
      json.dump({"phase": name, "fingerprint": {"teacher": teacher.to_json()},
                 "result": result, "finished": "x", "seconds": 1}, f)
  shutil.move(old, new)
  moved = phases.Markers(new)
  assert moved.get("predict-1")["result"]["output_dir"] == f"{new}/pseudo_1"
  assert moved.get("predict-1")["fingerprint"]["teacher"]["path"] == f"{new}/teacher"


def test_an_adopted_phase_is_skipped_and_reads_the_source_run(tmp_path):
  source, variant = phases.Markers(str(tmp_path / "a")), phases.Markers(str(tmp_path / "b"))
  trained = results.TrainedModel(path=f"{source.root}/teacher", model_name="m",
                                 image_size=32, small_image=True)
  fingerprint = {"teacher": "efficientnet-t0", "label_data_dir": "x"}
  phases.run_phase(source, "teacher", fingerprint, lambda: trained, results.TrainedModel)

  with pytest.raises(FileNotFoundError, match="eval-teacher.json is missing"):
    variant.adopt("eval-teacher", source)
  variant.adopt("teacher", source)

  def must_not_run():
    raise AssertionError("an adopted phase ran again")
  again = phases.run_phase(variant, "teacher", fingerprint, must_not_run,
                           results.TrainedModel)
  assert again.path == f"{source.root}/teacher"  # Read where it was trained.
  with pytest.raises(phases.PhaseMismatchError, match="label_data_dir"):
    phases.run_phase(variant, "teacher", dict(fingerprint, label_data_dir="y"),
                     must_not_run, results.TrainedModel)
  assert variant.get("teacher")["fingerprint"] == source.get("teacher")["fingerprint"]


def test_relative_path():
  assert phases.relative_path("/r/teacher", "/r/pseudo_1") == "../teacher"
  assert phases.relative_path("gs://b/r/teacher", "gs://b/r/pseudo_1") == "../teacher"
  assert phases.relative_path("gs://b/r/teacher", "gs://c/r/pseudo_1") == "gs://b/r/teacher"
  assert phases.relative_path("gs://b/r/teacher", "/r/pseudo_1") == "gs://b/r/teacher"


def _write_shards(output_dir, num_shards=2, n=20):
  fp = {"teacher": "../teacher", "source": "digits:unlabeled", "num_workers": 1,
        "num_shards": num_shards, "num_classes": 3, "image_size": 8, "num_bins": 100}
  written = []
  for k in range(num_shards):
    path = os.path.join(output_dir, fmt.shard_name("train", k, num_shards))
    if fmt.read_manifest(path) is not None:
      continue  # Predict's resume: complete shards are kept.
    w = fmt.ShardWriter(path, 3, fp, [k * n, (k + 1) * n], num_bins=100)
    probs = np.tile(np.array([[0.1, 0.7, 0.2]], np.float32), (n, 1))
    w.write_batch([b"x" * 50] * n, [b"id%d" % (k * n + i) for i in range(n)],
                  np.full([n], -1), probs, np.ones([n], np.int64), probs.max(1))
    w.close()
    written.append(path)
  return written


def test_a_damaged_shard_reopens_predict_for_it_alone(tmp_path, monkeypatch, caplog):
  cfg = _cfg(tmp_path, students=("efficientnet-b0",))
  made = []

  def install():
    rec = Recorder(monkeypatch)
    monkeypatch.setattr(pipeline, "predict_pseudo_labels", lambda ctx, teacher, out: (
        rec.calls.append("predict-1"), made.append(_write_shards(out)),
        results.PseudoLabels(output_dir=out, records_written=40))[-1])
    return rec

  install()
  markers = phases.Markers(cfg.train.model_dir)
  pipeline.run_pipeline(cfg)
  shard = made[0][1]
  with open(shard, "r+b") as f:  # Cut in half after predict.
    f.truncate(os.path.getsize(shard) // 2)
  for name in ("student-1", "eval-student-1", "finetune", "eval-finetune", "export"):
    os.remove(markers.path(name))
  rec = install()
  pipeline.run_pipeline(cfg)
  assert rec.calls[:2] == ["predict-1", "student-1"]  # Balance's plan still stands.
  assert made[-1] == [shard]  # Only that shard was predicted again.
  assert "1 of 2 shards missing or damaged (train-00001-of-00002" in caplog.text
  assert "re-opening predict for those shards only" in caplog.text
  assert integrity.problems(os.path.dirname(shard)) == []
