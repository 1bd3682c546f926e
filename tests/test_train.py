"""The trainer end to end on generated data through the real input pipeline."""
import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from _train_worker import make_images, make_records
from noisy_student import faults
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.data import sources
from noisy_student.train import checkpoints
from noisy_student.train import inputs
from noisy_student.train import steps as steps_lib
from noisy_student.train import load_for_inference, read_build_config, train

WORKER = os.path.join(os.path.dirname(__file__), "_train_worker.py")
MODEL = ModelConfig("efficientnet-test", 4, input_image_size=32, small_image=True)
DATA = DataConfig(augment_name=None, shuffle_buffer=64)
NAMES = ["red", "green", "blue", "yellow"]


def _cfg(model_dir, **kw):
  base = dict(model_dir=str(model_dir), train_batch_size=16, train_steps=30,
              save_checkpoints_steps=10, iterations_per_loop=5, log_every_n_steps=10,
              warmup_epochs=0.0, base_learning_rate=0.05, moving_average_decay=0.99)
  base.update(kw)
  return TrainConfig(**base)


def _scalars(model_dir, tag):
  """{step: value} of one summary tag from the run's event files."""
  out = {}
  for path in glob.glob(os.path.join(model_dir, "train", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == tag:
          out[event.step] = float(tf.make_ndarray(value.tensor))
  return out


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("teacher")
  keras.utils.set_random_seed(0)
  multi_steps = []
  with pytest.MonkeyPatch.context() as patch:  # Keeps the compiled loop of steps.
    real = steps_lib.make_multi_step
    patch.setattr(steps_lib, "make_multi_step",
                  lambda *args: multi_steps.append(real(*args)) or multi_steps[-1])
    result = train(MODEL, DATA, _cfg(model_dir), DistributeConfig(strategy="default"),
                   labeled_source=make_records(128), class_names=NAMES)
  return model_dir, result, multi_steps


def test_teacher_training_reduces_the_loss_and_writes_its_outputs(teacher_run):
  model_dir, result, multi_steps = teacher_run
  # 30 steps of 16 over 128 images: 3 epoch boundaries, one trace (static shapes).
  assert [f.experimental_get_tracing_count() for f in multi_steps] == [1]
  assert (result.global_step, result.start_step, result.targets) == (30, 0, "supervised")
  losses = _scalars(str(model_dir), "loss")  # Mean over each call of 5 steps.
  assert sorted(losses) == [5, 10, 15, 20, 25, 30]
  assert (losses[25] + losses[30]) / 2 < 0.75 * losses[5], losses
  for tag in ("labeled_loss", "learning_rate", "images_per_second", "labeled_accuracy"):
    assert len(_scalars(str(model_dir), tag)) == 6, tag
  assert result.images_per_second > 0
  assert os.path.basename(result.checkpoint_path) == "ckpt-30"
  build = read_build_config(str(model_dir))
  assert build["class_names"] == NAMES and build["model"].model_name == "efficientnet-test"


def test_inference_model_holds_the_ema_weights_and_classifies(teacher_run):
  model_dir, result, _ = teacher_run
  restored = load_for_inference(str(model_dir))
  final = load_for_inference(result.final_model_path)
  images, labels = make_images(64, seed=7)
  images = images.astype(np.float32)
  np.testing.assert_allclose(final(images), restored(images), rtol=1e-4, atol=1e-4)
  # 30 steps leave the batch-norm moving statistics (momentum 0.99) far from converged,
  # so eval-mode accuracy is modest; the training-mode accuracy shows the learning.
  assert np.mean(np.argmax(restored(images), -1) == labels) > 0.3
  assert _scalars(str(model_dir), "labeled_accuracy")[30] >= 0.6
  # The EMA weights, not the raw ones: they differ from the checkpoint's model weights.
  raw = checkpoints.build_model(read_build_config(str(model_dir))["model"])
  checkpoints.make_checkpoint(raw).read(result.checkpoint_path).expect_partial()
  assert not np.allclose(raw(images), restored(images))


def _source(num_classes, n=8, labeled=True):
  records = make_records(n)
  return sources.Source(spec="generated", labeled=labeled,
                        class_names=[f"c{i}" for i in range(num_classes)], size=n,
                        _dataset_fn=lambda nw, wi: records.shard(nw, wi))


def test_bad_inputs_fail_early_with_clear_errors(tmp_path):
  dist = DistributeConfig(strategy="default")
  with pytest.raises(ValueError, match="has 3 classes but --num_label_classes=4"):
    train(MODEL, DATA, _cfg(tmp_path / "a"), dist, labeled_source=_source(3))
  student = _cfg(tmp_path / "b", unlabel_ratio=1.0)
  with pytest.raises(ValueError, match="needs pseudo-labels"):
    train(MODEL, DATA, student, dist, labeled_source=_source(4))
  empty = make_records(4, probabilities=True).take(0)
  with pytest.raises(ValueError, match="has no records"):
    train(MODEL, DATA, student, dist, labeled_source=_source(4), pseudo_labels=empty)
  wrong = make_records(4, probabilities=True).map(
      lambda r: dict(r, probabilities=tf.concat([r["probabilities"], [0.0]], 0)))
  with pytest.raises(ValueError, match="have 5 classes but --num_label_classes=4"):
    train(MODEL, DATA, student, dist, labeled_source=_source(4), pseudo_labels=wrong)
  # The original's unlabeled SVHN records hold zero placeholders (proc_svhn.py:139-142).
  zeros = make_records(4, probabilities=True).map(
      lambda r: dict(r, probabilities=tf.zeros([4])))
  with pytest.raises(ValueError, match="summing to 0, not 1: placeholders"):
    train(MODEL, DATA, student, dist, labeled_source=_source(4), pseudo_labels=zeros)
  with pytest.raises(ValueError, match="train_batch_size=15 does not split evenly"):
    train(MODEL, DATA, _cfg(tmp_path / "c", train_batch_size=15),
          DistributeConfig(strategy="mirrored"), labeled_source=_source(4))
  with pytest.raises(ValueError, match="teacher_softmax_temp=0"):
    train(MODEL, DATA, dataclasses.replace(student, teacher_softmax_temp=0), dist,
          labeled_source=_source(4))
  assert not os.path.exists(tmp_path / "a" / "checkpoint")


def test_teacher_with_other_class_count_is_rejected(tmp_path):
  import efficientnet  # pylint: disable=import-outside-toplevel
  teacher = efficientnet.build_model("efficientnet-test", 3, image_size=32)
  with pytest.raises(ValueError, match="teacher predicts 3 classes"):
    train(MODEL, DATA, _cfg(tmp_path, unlabel_ratio=1.0), DistributeConfig("default"),
          labeled_source=_source(4), pseudo_labels=make_records(8), teacher=teacher)


def test_epoch_stream_resumes_at_the_same_position():
  records = tf.data.Dataset.range(10)
  n = 10 * (inputs.EPOCH_CYCLE + 2)
  full = list(inputs.epoch_stream(records, 10, seed=3).take(n).as_numpy_iterator())
  assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
  assert full[:10] != full[10:20]  # Each epoch has its own order.
  for start in (4, 10, 23, n - 15):  # The last one resumes past a cycle of orders.
    resumed = inputs.epoch_stream(records, 10, seed=3, start_examples=start)
    assert list(resumed.take(n - start).as_numpy_iterator()) == full[start:]


def test_dataset_fn_starts_at_the_resumed_step():
  images = tf.zeros([20, 4, 4, 3])
  labeled = tf.data.Dataset.from_tensor_slices((images, tf.range(20)))
  spec = inputs.InputSpec(inputs.SUPERVISED, 4, 0, 4, None, 20)
  ctx = tf.distribute.InputContext(1, 0, 1)

  def labels(start_step, n):
    ds = inputs.make_dataset_fn(labeled, None, DATA, spec, start_step)(ctx)
    return [b["label"].numpy().tolist() for b in ds.take(n)]

  assert labels(3, 3) == labels(0, 6)[3:]  # Step 3 of 5 per epoch, into the 2nd epoch.


@pytest.mark.slow
def test_nan_loss_stops_without_touching_the_last_checkpoint(teacher_run, tmp_path):
  model_dir = str(tmp_path / "teacher")  # A copy: the diverged record stays out of the fixture.
  shutil.copytree(teacher_run[0], model_dir)
  latest = tf.train.latest_checkpoint(model_dir)
  before = open(latest + ".index", "rb").read()
  nan_images = tf.data.Dataset.from_tensor_slices(
      (tf.fill([32, 32, 32, 3], float("nan")), tf.zeros([32], tf.int64)))
  with pytest.raises(faults.Diverged, match=r"step 31: loss nan is not finite.*\(ckpt-30\) is kept"):
    train(MODEL, DATA, _cfg(model_dir, train_steps=40), DistributeConfig("default"),
          labeled_source=nan_images)
  assert tf.train.latest_checkpoint(model_dir) == latest
  assert open(latest + ".index", "rb").read() == before


@pytest.mark.slow
def test_student_with_on_the_fly_teacher(teacher_run, tmp_path):
  teacher_dir, _, _ = teacher_run
  cfg = _cfg(tmp_path, train_steps=4, unlabel_ratio=2.0, teacher_model_path=str(teacher_dir),
             iterations_per_loop=2, save_checkpoints_steps=2, teacher_softmax_temp=-1)
  result = train(MODEL, DATA, cfg, DistributeConfig("default"),
                 labeled_source=make_records(64), pseudo_labels=make_records(64, seed=3))
  assert result.targets == "teacher" and result.global_step == 4
  # The trained teacher labels the colours it learned: the student agrees often.
  assert _scalars(str(tmp_path), "unlabeled_loss")[4] > 0


@pytest.mark.slow
def test_killed_run_resumes_and_ends_at_the_same_step_and_schedule(tmp_path):
  model_dir = str(tmp_path / "run")
  args = [sys.executable, WORKER, "--model_dir", model_dir, "--train_steps", "40",
          "--save_every", "4", "--result", str(tmp_path / "result.json")]
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while tf.train.latest_checkpoint(model_dir) is None and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint within 10 minutes"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # Preemption: no clean-up at all.
  proc.wait()
  killed_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
  assert 0 < killed_at < 40 and not os.path.exists(os.path.join(model_dir, "final.keras"))
  done = subprocess.run(args, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["start_step"] >= killed_at and result["global_step"] == 40
  assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-40")
  # The learning rate after the resume follows the schedule of the whole run.
  lrs = _scalars(model_dir, "learning_rate")
  assert lrs[40] == pytest.approx(result["last_lr"], rel=1e-6)
  epochs = _scalars(model_dir, "epoch")
  assert epochs[40] == pytest.approx(40 * 8 / 64)


def test_sigterm_checkpoints_after_the_running_loop_and_training_resumes_there(
    tmp_path, monkeypatch):
  """A real SIGTERM to this process once the trainer watches for it: the first call
  of 5 steps is compiling then, so the signal is seen after it, at step 5."""
  from noisy_student.train import preemption  # pylint: disable=import-outside-toplevel
  before = signal.getsignal(signal.SIGTERM)

  class SignalledWatch(preemption.SigtermWatch):
    def __enter__(self):
      watch = super().__enter__()
      os.kill(os.getpid(), signal.SIGTERM)
      return watch

  monkeypatch.setattr(preemption, "SigtermWatch", SignalledWatch)
  cfg = _cfg(tmp_path, train_steps=15, save_checkpoints_steps=15)
  with pytest.raises(preemption.Preempted) as stopped:
    train(MODEL, DATA, cfg, DistributeConfig("default"), labeled_source=make_records(64))
  assert stopped.value.code == preemption.EXIT_CODE and stopped.value.step == 5
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-5")
  assert signal.getsignal(signal.SIGTERM) is before  # Restored after training.
  monkeypatch.undo()
  result = train(MODEL, DATA, cfg, DistributeConfig("default"),
                 labeled_source=make_records(64))
  assert (result.start_step, result.global_step) == (5, 15)
  assert sorted(_scalars(str(tmp_path), "loss")) == [5, 10, 15]


@pytest.mark.slow
def test_sigterm_saves_where_it_stopped_and_the_rerun_ends_at_the_same_step(tmp_path):
  """Preemption with notice: SIGTERM mid-run checkpoints at the current step, not the
  last periodic save (here there is none before the end), and exits with 143."""
  from noisy_student.train import preemption  # pylint: disable=import-outside-toplevel
  model_dir = str(tmp_path / "run")
  args = [sys.executable, WORKER, "--model_dir", model_dir, "--train_steps", "60",
          "--save_every", "60", "--result", str(tmp_path / "result.json")]
  proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  log = []
  for line in proc.stderr:  # The worker logs every step: "step N/60 ...".
    log.append(line)
    if "step 3/60 " in line:
      break
  proc.send_signal(signal.SIGTERM)
  _, rest = proc.communicate(timeout=300)
  log = "".join(log) + rest
  assert proc.returncode == preemption.EXIT_CODE, log[-3000:]
  stopped_at = int(tf.train.latest_checkpoint(model_dir).rsplit("-", 1)[1])
  assert 3 <= stopped_at < 60, log[-3000:]
  assert f"Preempted at step {stopped_at}" in log
  assert not os.path.exists(os.path.join(model_dir, "final.keras"))
  done = subprocess.run(args, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((tmp_path / "result.json").read_text())
  assert result["start_step"] == stopped_at and result["global_step"] == 60
  # The summaries cover every step once: up to the save, then from the resume on.
  assert sorted(_scalars(model_dir, "loss")) == list(range(1, 61))


def test_length_in_epochs_and_a_resume_keeps_the_schedule_when_the_data_grew(tmp_path):
  """2 epochs of 64 images at batch 16 are 8 steps; started again after the labeled
  folder grew to 128 images, the run keeps its schedule (schedule.json), not 16 steps."""
  cfg = _cfg(tmp_path / "run", train_steps=None, train_epochs=2.0,
             save_checkpoints_steps=4, iterations_per_loop=4)
  dist = DistributeConfig(strategy="default")
  first = train(MODEL, DATA, cfg, dist, labeled_source=make_records(64), class_names=NAMES)
  assert first.global_step == 8
  again = train(MODEL, DATA, cfg, dist, labeled_source=make_records(128), class_names=NAMES)
  assert (again.start_step, again.global_step) == (8, 8)
  epochs = _scalars(str(tmp_path / "run"), "epoch")
  assert epochs[8] == pytest.approx(2.0)
