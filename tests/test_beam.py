"""The Beam job (noisy_student/beam) run by Beam runners, against the in-process predict.

Runners: the DirectRunner (here its FnApiRunner, in memory and with 2 worker processes:
--direct_num_workers=2 --direct_running_mode=multi_processing), and the
BundleBasedDirectRunner for the retry test: the FnApiRunner fails a job at a bundle's
first exception, while the BundleBasedDirectRunner retries a failed bundle up to 4
times (apache_beam/runners/direct/executor.py, TransformExecutor), as Dataflow does.
"""
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student import balance
from noisy_student import beam as beam_lib
from noisy_student import predict
from noisy_student import train as train_lib
from noisy_student.config import (DataConfig, DistributeConfig, FilterConfig, ModelConfig,
                                  PredictConfig, TrainConfig)
from noisy_student.data import sources
from noisy_student.train import checkpoints
from noisy_student.train import ema as ema_lib
import tfrecords
from tfrecords import checksum
from tfrecords import format as fmt
from tfrecords import integrity
from tfrecords import plan as plan_lib
from tfrecords import reader

NAMES = [f"class_{c}" for c in range(5)]
SIZE = 32
# The DirectRunner first tries the Prism runner, which it downloads on first use; a
# location that holds none makes it use its own FnApiRunner (the engine whose in-memory
# and multi-process modes these tests run) here and on machines with network alike.
NO_PRISM = "--prism_location=/nonexistent/prism"
MULTI_PROCESS = f"{NO_PRISM} --direct_num_workers=2 --direct_running_mode=multi_processing"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """An efficientnet-test model_dir whose EMA weights differ from its raw ones (a
  handler that skipped the EMA would disagree with the in-process predict) and whose
  logits are spread, so confidences cross the thresholds below."""
  return _write_teacher(str(tmp_path_factory.mktemp("teacher")), 30000.0)


def _write_teacher(path, spread):
  """A model_dir whose EMA classifier is the random one times `spread`."""
  keras.utils.set_random_seed(1)
  model_cfg = ModelConfig("efficientnet-test", len(NAMES), SIZE)
  model = checkpoints.build_model(model_cfg)
  dense = model.get_layer("predictions")
  dense.set_weights([w * spread for w in dense.get_weights()])
  ema = ema_lib.WeightEMA(model, 0.5)
  dense.set_weights([w * 0.5 for w in dense.get_weights()])
  manager = tf.train.CheckpointManager(checkpoints.make_checkpoint(model, ema=ema), path, 1)
  manager.save()
  checkpoints.write_build_config(path, model_cfg, NAMES, True)
  return path


@pytest.fixture(scope="module")
def image_source(tmp_path_factory):
  """40 PNGs of varied sizes in nested folders, and one corrupt file."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for i in range(40):
    folder = root / f"part{i % 3}" / ("deep" if i % 4 == 0 else "")
    folder.mkdir(parents=True, exist_ok=True)
    image = rng.integers(0, 256, [20 + i % 7, 24 + i % 5, 3], dtype=np.uint8)
    (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(image).numpy())
  (root / "part1" / "broken.png").write_bytes(b"not an image")
  return sources.open_source(f"images:{root}", labeled=False)


@pytest.fixture(scope="module")
def record_source(tmp_path_factory):
  """Three TFRecord files of 9, 0 and 14 labeled JPEGs (an empty file on purpose)."""
  root = tmp_path_factory.mktemp("records")
  rng = np.random.default_rng(1)
  for f, n in enumerate([9, 0, 14]):
    with tf.io.TFRecordWriter(str(root / f"train-{f:05d}-of-00003")) as writer:
      for _ in range(n):
        image = rng.integers(0, 256, [30, 30, 3], dtype=np.uint8)
        example = tf.train.Example(features=tf.train.Features(feature={
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[tf.io.encode_jpeg(image).numpy()])),
            "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[int(rng.integers(0, 5))]))}))
        writer.write(example.SerializeToString())
  return sources.open_source(str(root), split="unlabeled")


def _in_process(teacher, source, out, filter_cfg, num_workers, num_shards, seed=0):
  """What the in-process predict (every worker) and the filter step write."""
  model = checkpoints.load_for_inference(teacher)
  for w in range(num_workers):
    cfg = PredictConfig(output_dir=str(out), num_shards=num_shards, worker_index=w,
                        num_workers=num_workers)
    predict.predict(model, source, cfg, image_size=SIZE, batch_size=8, class_names=NAMES,
                    teacher_id=teacher)
  balance.balance(str(out), filter_cfg, seed=seed)


def _beam(teacher, source, out, filter_cfg, num_workers, num_shards, runner="DirectRunner",
          options=NO_PRISM, seed=0):
  cfg = PredictConfig(output_dir=str(out), num_shards=num_shards, num_workers=num_workers,
                      runner=runner, beam_options=options)
  return beam_lib.predict(teacher, source, cfg, filter_cfg=filter_cfg, image_size=SIZE,
                          batch_size=8, class_names=NAMES, teacher_id=teacher, seed=seed)


def _shard_records(path):
  return list(reader.read_records(path, require_complete=False).as_numpy_iterator())


def _json(path):
  with open(path) as f:
    return json.load(f)


def assert_same_output(expected, got):
  """Same files; per shard the same records in the same order (probabilities within
  float tolerance), the same manifests, count files and balance plan."""
  names = sorted(n for n in os.listdir(expected) if not n.startswith("_beam"))
  assert sorted(n for n in os.listdir(got) if n != "_beam") == names
  for name in names:
    a, b = os.path.join(expected, name), os.path.join(got, name)
    if name.endswith(".json"):
      x, y = _json(a), _json(b)
      if name.endswith(fmt.MANIFEST_SUFFIX):  # Probabilities may differ in the last bit.
        for key in ("size_bytes", "crc32c"):
          x.pop(key), y.pop(key)
      assert x == y, name
    elif name.startswith("train"):
      first, second = _shard_records(a), _shard_records(b)
      assert [r[fmt.ID_KEY] for r in first] == [r[fmt.ID_KEY] for r in second], name
      for r, s in zip(first, second):
        for key in (fmt.IMAGE_KEY, fmt.LABEL_KEY, fmt.CLASS_KEY):
          assert r[key] == s[key]
        np.testing.assert_allclose(r[fmt.PROBS_KEY], s[fmt.PROBS_KEY], atol=1e-6)


@pytest.fixture(scope="module")
def multi_process(teacher, image_source, tmp_path_factory):
  """Two in-process workers' predict + the filter step, and one Beam job on 2 processes."""
  root = tmp_path_factory.mktemp("multi_process")
  filter_cfg = FilterConfig(min_threshold=0.3, num_image=6)
  _in_process(teacher, image_source, root / "in_process", filter_cfg, 2, 3)
  summary = _beam(teacher, image_source, root / "beam", filter_cfg, 2, 3,
                  options=MULTI_PROCESS)
  return root, summary


def test_multi_process_direct_runner_writes_the_in_process_output(multi_process):
  root, summary = multi_process
  assert_same_output(str(root / "in_process"), str(root / "beam"))
  assert summary.records_written == 40 and summary.corrupt_skipped == 1
  report = _json(root / "beam" / "balance_report.json")
  kept = {f"kept_{p['name']}": p["kept_unique"] for p in report["per_class"]}
  assert 0 < sum(kept.values()) < 40  # The threshold and num_image both bit.
  assert summary.counters == {"images_read": 41, "images_labelled": 40, "images_skipped": 1,
                              "num_inferences": 41, "shards_written": 6, **kept}
  plan = _json(summary.plan_path)
  assert plan == _json(root / "in_process" / plan_lib.PLAN_NAME)
  assert not any(".tmp-" in n for n in os.listdir(root / "beam"))
  assert not os.listdir(root / "beam" / "_beam")  # The work files, removed at the end.
  assert summary.stages[:5] == ["Layout", "ReadWorkFiles", "SpreadImages", "ReadImages",
                                "Label"]
  assert {"Label", "GroupByShard", "WriteShards", "WriteBalancePlan"} <= set(summary.stages)


def _flip_a_bit(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 1
  path.write_bytes(bytes(data))


def test_beam_shards_pass_the_integrity_check_and_a_damaged_one_is_found(multi_process,
                                                                          tmp_path):
  """The Beam job's manifests come from the one manifest writer (fmt.shard_manifest):
  version 3 with the size and CRC32C of the file as written, so tfrecords/integrity
  verifies a Beam directory as it does an in-process one, and finds a damaged shard."""
  root, _ = multi_process
  out = str(root / "beam")
  manifests = fmt.list_manifests(out)
  assert len(manifests) == 6 and integrity.problems(out) == []
  integrity.check_complete(manifests, out)
  for m in manifests:
    assert m["version"] == fmt.MANIFEST_VERSION == 3
    assert (m["size_bytes"], m["crc32c"]) == checksum.compute(m["path"])
  copy = tmp_path / "copy"
  shutil.copytree(out, copy)
  damaged = copy / fmt.shard_name("train", 1, 3, 1, 2)
  _flip_a_bit(damaged)
  found = integrity.problems(str(copy))
  assert [os.path.basename(p) for p, _ in found] == [damaged.name]
  assert "crc32c" in found[0][1] and "damaged" in found[0][1]
  with pytest.raises(integrity.DamagedShards, match=damaged.name):
    reader.resolve_shards(str(copy))  # What the student's reader calls first.


def test_a_student_trains_on_the_beam_output_with_its_plan(multi_process, tmp_path):
  root, summary = multi_process
  pseudo_dir = str(root / "beam")
  assert len(reader.resolve_shards(pseudo_dir)) == 6  # The reader's integrity check.
  kept = reader_count(tfrecords.read_pseudo_labels(pseudo_dir, plan_lib.plan_in(pseudo_dir)))
  assert kept == summary.totals["after"] < summary.records_written  # The plan applies.
  rng = np.random.default_rng(2)
  labeled = tf.data.Dataset.from_tensor_slices({
      "image/encoded": [tf.io.encode_png(rng.integers(0, 256, [32, 32, 3], dtype=np.uint8)
                                         ).numpy() for _ in range(20)],
      "id": [f"l:{i}" for i in range(20)], "label": np.arange(20) % 5})
  result = train_lib.train(
      ModelConfig("efficientnet-test", len(NAMES), SIZE), DataConfig(augment_name=None,
                                                                     shuffle_buffer=16),
      TrainConfig(model_dir=str(tmp_path), train_batch_size=4, train_steps=2,
                  unlabel_ratio=1.0, iterations_per_loop=1, warmup_epochs=0.0,
                  save_checkpoints_steps=2, log_every_n_steps=1),
      DistributeConfig(strategy="default"), labeled_source=labeled,
      pseudo_labels=pseudo_dir, class_names=NAMES)
  assert result.global_step == 2


def reader_count(ds):
  return sum(1 for _ in ds)


def test_tfrecords_exact_top_k_and_resume(teacher, record_source, tmp_path):
  """TFRecords (positions from the files' counts) on the in-memory DirectRunner, with the
  exact per-class top-K; then a Beam job finishes the in-process directory after a shard
  was lost and one damaged, rewriting those alone. Two workers' parts: the
  second holds only the empty file, so its shards are written empty (as in-process).
  Other worker counts: tests/test_record_order.py checks the positions against tf.data."""
  num_workers = 2
  filter_cfg = FilterConfig(min_threshold=0.25, num_image=3, exact_topk=True)
  _in_process(teacher, record_source, tmp_path / "in_process", filter_cfg, num_workers, 2,
              seed=7)
  out = tmp_path / "beam"
  summary = _beam(teacher, record_source, out, filter_cfg, num_workers, 2, seed=7)
  assert_same_output(str(tmp_path / "in_process"), str(out))
  assert summary.shards_written == 2 * num_workers and summary.records_written == 23
  assert _json(summary.plan_path)["mode"] == "exact"
  # The in-process workers' directory, one shard lost and one damaged, finished by a
  # Beam job: only those two are labelled again.
  mixed = tmp_path / "in_process"
  lost, damaged = (fmt.shard_name("train", k, 2, 0, num_workers) for k in (1, 0))
  os.remove(mixed / lost)
  (mixed / f"{lost}.tmp-0123").write_bytes(b"half a shard")  # A killed writer's.
  _flip_a_bit(mixed / damaged)  # Found by its CRC32C, as the in-process predict finds it.
  again = _beam(teacher, record_source, mixed, filter_cfg, num_workers, 2, seed=7)
  assert (again.shards_written, again.shards_reused) == (2, 2 * num_workers - 2)
  assert again.counters["images_labelled"] == sum(
      _json(mixed / fmt.manifest_name(s))["record_count"] for s in (lost, damaged)) == 23
  assert integrity.problems(str(mixed)) == []
  assert_same_output(str(out), str(mixed))
  os.remove(out / plan_lib.PLAN_NAME)  # Every shard complete: only the filter step runs.
  done = _beam(teacher, record_source, out, filter_cfg, num_workers, 2, seed=7)
  assert (done.shards_written, done.records_written) == (0, 0)
  assert "Label" not in done.stages
  assert_same_output(str(mixed), str(out))


def test_a_teacher_with_non_finite_outputs_stops_the_job_in_one_line(image_source,
                                                                      tmp_path):
  """As the in-process predict (faults.Diverged, exit code 3): found on the worker
  before any shard is written, and raised by the driver as one line."""
  from noisy_student import faults  # pylint: disable=g-import-not-at-top
  nan_teacher = _write_teacher(str(tmp_path / "teacher"), float("nan"))
  with pytest.raises(faults.Diverged) as e:
    _beam(nan_teacher, image_source, tmp_path / "beam", FilterConfig(), 1, 2)
  message = str(e.value)
  assert len(message.splitlines()) == 1, message
  assert message.startswith("the teacher's outputs are not finite (image ")
  assert message.endswith("train it again with a lower --base_learning_rate")
  assert not fmt.list_manifests(str(tmp_path / "beam"))


def _fail_once(monkeypatch, cls, name, marker):
  """`cls.name` does its work, then raises the first time it is called (marker file)."""
  original = getattr(cls, name)

  def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    if not os.path.exists(marker):
      open(marker, "w").close()
      raise RuntimeError(f"{name} fails once, after its work (test)")
    return result
  monkeypatch.setattr(cls, name, wrapped)


def test_a_failed_bundle_is_retried_without_duplicates(teacher, image_source, tmp_path,
                                                       monkeypatch):
  """The BundleBasedDirectRunner retries bundles: a writer that dies after writing a
  shard's records, and a labelling batch that dies after the teacher ran, are each redone
  once; the shards hold every record once and no temporary file is left."""
  from noisy_student.beam import handler as handler_lib  # pylint: disable=g-import-not-at-top
  filter_cfg = FilterConfig(min_threshold=0.3)
  _in_process(teacher, image_source, tmp_path / "in_process", filter_cfg, 1, 2)
  markers = [str(tmp_path / "writer_failed"), str(tmp_path / "labeller_failed")]
  _fail_once(monkeypatch, fmt.ShardWriter, "write_serialized", markers[0])
  _fail_once(monkeypatch, handler_lib.TeacherHandler, "run_inference", markers[1])
  summary = _beam(teacher, image_source, tmp_path / "beam", filter_cfg, 1, 2,
                  runner="BundleBasedDirectRunner", options="")
  assert all(os.path.exists(m) for m in markers)  # Both failures happened.
  assert_same_output(str(tmp_path / "in_process"), str(tmp_path / "beam"))
  ids = [r[fmt.ID_KEY] for r in reader.read_records(str(tmp_path / "beam")).as_numpy_iterator()]
  assert len(ids) == len(set(ids)) == 40
  assert not any(".tmp-" in n for n in os.listdir(tmp_path / "beam"))
  assert summary.records_written == 40 and summary.counters["shards_written"] == 2
  # This runner commits a failed attempt's counter increments too (Dataflow does not):
  # the retried batch of 8 shows up twice.
  assert summary.counters["images_labelled"] == 40 + 8


def test_the_pipelines_predict_phase_runs_on_the_runner(teacher, image_source, tmp_path):
  """--mode=pipeline's predict phase with --runner: the Beam job; the balance phase after
  it (as today) computes the very plan the job wrote, the adaptive threshold and the
  mean-count target resolved alike from the same histograms."""
  from noisy_student import config as config_lib  # pylint: disable=g-import-not-at-top
  from noisy_student import context, pipeline  # pylint: disable=g-import-not-at-top
  cfg = config_lib.Config(
      train=TrainConfig(model_dir=str(tmp_path / "run")),
      data=DataConfig(unlabel_data_dir=image_source.spec, seed=3),
      eval=config_lib.EvalConfig(eval_batch_size=8),
      predict=PredictConfig(num_shards=2, runner="DirectRunner", beam_options=NO_PRISM),
      filter=FilterConfig(min_threshold=0.25, num_image=-1, adaptive_threshold="mean"))
  ctx = context.Context(cfg)
  out = ctx.path("pseudo_1")
  pseudo = pipeline.predict_pseudo_labels(ctx, context.trained_model_of(teacher), out)
  assert (pseudo.records_written, pseudo.corrupt_skipped) == (40, 1)
  written_by_beam = _json(f"{out}/{plan_lib.PLAN_NAME}")
  balanced = pipeline.balance_pseudo_labels(ctx, out)
  assert _json(balanced.plan_path) == written_by_beam
  assert written_by_beam["seed"] == 3 and written_by_beam["num_image"] >= 1
  assert written_by_beam["asked"] == {"min_threshold": 0.25, "num_image": -1,
                                      "adaptive_threshold": "mean"}
  assert written_by_beam["min_threshold"] == pytest.approx(
      max(0.25, written_by_beam["pool_mean_confidence"]), abs=1e-6)


@pytest.mark.slow
def test_smoke_pipeline_with_its_predict_phases_on_the_direct_runner(tmp_path):
  """`--mode=pipeline --runner=DirectRunner` as a user runs it: the smoke preset, every
  iteration's predict a Beam job, the rest as before, to the results table."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  model_dir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "-m", "noisy_student", "--flagfile=flags/presets/smoke.flags",
       f"--model_dir={model_dir}", "--norobustness", "--nofinetune",
       "--noexport_at_end", "--runner=DirectRunner", "--", NO_PRISM],
      cwd=repo, capture_output=True, text=True, timeout=3600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Beam predict on DirectRunner: stages" in proc.stderr
  assert os.path.exists(model_dir / "pseudo_1" / plan_lib.PLAN_NAME)
  assert [m["name"] for m in _json(model_dir / "results.json")["models"]] == [
      "teacher", "student 1"]
