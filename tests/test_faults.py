"""Faults end in one line with their exit code (noisy_student/faults.py, main.py), and bad
inputs stop a run before any work (noisy_student/input_checks.py)."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import faults
from noisy_student import modes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
NO_HOST = ("Error executing an HTTP request: libcurl code 6 meaning 'Couldn't resolve host "
           "name', error details: Could not resolve host: storage.googleapis.com")


def test_full_disk_errors_of_python_and_tensorflow_are_one_line(tmp_path):
  target = str(tmp_path / "run" / "teacher" / "ckpt-3_temp" / "part-0")
  for error in (OSError(errno.ENOSPC, "No space left on device", target),
                tf.errors.ResourceExhaustedError(
                    None, None, f"{{{{function_node SaveV2}}}} {target}; No space left on "
                    "device [Op:SaveV2]")):
    fault = faults.from_exception(error)
    assert isinstance(fault, faults.DiskFull) and fault.exit_code == faults.DISK_FULL
    assert str(fault).startswith(f"no space left on the device writing {target} (")
    assert "free there); free space" in str(fault) and "run the same command again" in str(fault)
  assert faults.from_exception(ValueError("other")) is None


def test_unreachable_storage_in_the_checks_is_one_line(monkeypatch):
  monkeypatch.setenv("STORAGE_EMULATOR_HOST", "localhost:1")  # No probe: TF's own error.
  def no_network(path):
    raise tf.errors.FailedPreconditionError(None, None, NO_HOST)
  monkeypatch.setattr(tf.io.gfile, "exists", no_network)
  cfg = config_lib.Config(data=config_lib.DataConfig(label_data_dir="gs://b/labeled"))
  with pytest.raises(faults.StorageUnreachable) as e:
    checks.problems(cfg)
  assert str(e.value).startswith("--label_data_dir=gs://b/labeled: cannot reach Cloud "
                                 "Storage (Error executing an HTTP request")
  assert "credentials" in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_dead_network_is_found_in_seconds_before_tensorflow_retries(monkeypatch):
  import socket  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(faults, "_PROBED", {})
  monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
  def no_route(address, timeout=None):
    raise OSError(101, "Network is unreachable")
  monkeypatch.setattr(socket, "create_connection", no_route)
  monkeypatch.setattr(tf.io.gfile, "exists", lambda path: pytest.fail("not reached"))
  cfg = config_lib.Config(train=config_lib.TrainConfig(model_dir="gs://b/run"))
  assert checks.problems(cfg) == []  # A flag's check needs no network...
  with pytest.raises(faults.StorageUnreachable, match=r"^--model_dir=gs://b/run: cannot "
                     r"reach Cloud Storage \(cannot connect to storage.googleapis.com:443: "
                     r"\[Errno 101\] Network is unreachable\)"):
    checks.storage(cfg)  # ...the run's first step does.
  # A gs:// path a mode reads is looked at through the same probe, naming its flag.
  cfg = config_lib.Config(mode="eval", train=config_lib.TrainConfig(model_dir="gs://b/run"))
  with pytest.raises(faults.StorageUnreachable, match=r"^--model_dir=gs://b/run: cannot "
                     r"reach Cloud Storage \(cannot connect to storage.googleapis.com:443: "
                     r"\[Errno 101\] Network is unreachable\); check the network"):
    checks.problems(cfg)


MOCKED_MAIN = f"""
import sys, tensorflow as tf
def no_network(*args, **kwargs):
  raise tf.errors.FailedPreconditionError(None, None, {NO_HOST!r})
tf.io.gfile.exists = tf.io.gfile.glob = no_network
from noisy_student import main
sys.argv = ["noisy-student"] + sys.argv[1:]
main.run()
"""


def test_the_command_line_with_unreachable_gcs_ends_in_one_line_and_code_5(tmp_path):
  proc = subprocess.run([sys.executable, "-c", MOCKED_MAIN, f"--model_dir={tmp_path}/run",
                         "--label_data_dir=gs://bucket/labeled"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("noisy-student: error:")]
  assert proc.returncode == faults.STORAGE, proc.stderr[-2000:]
  assert len(lines) == 1 and "--label_data_dir=gs://bucket/labeled: cannot reach" in lines[0]
  assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def _png(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tf.io.write_file(path, tf.io.encode_png(np.full([8, 8, 3], value, np.uint8)))


def _folders(tmp_path, eval_classes=("a", "b"), unlabeled_ok=True):
  for c, name in enumerate(("a", "b")):
    for i in range(3):
      _png(f"{tmp_path}/L/{name}/{i}.png", 80 * c)
  for c, name in enumerate(eval_classes):
    _png(f"{tmp_path}/T/{name}/0.png", 80 * c)
  os.makedirs(f"{tmp_path}/U")
  for i in range(4):
    if unlabeled_ok:
      _png(f"{tmp_path}/U/{i}.png", 40 * i)
    else:
      with open(f"{tmp_path}/U/{i}.png", "wb") as f:
        f.write(b"\x89PNG but not really %d" % i)
  return config_lib.Config(
      mode="pipeline", student_model_names=("efficientnet-test",),
      model=config_lib.ModelConfig(model_name="efficientnet-test"),
      train=config_lib.TrainConfig(model_dir=f"{tmp_path}/run"),
      data=config_lib.DataConfig(label_data_dir=f"{tmp_path}/L",
                                 unlabel_data_dir=f"{tmp_path}/U",
                                 eval_data_dir=f"{tmp_path}/T"))


def test_an_eval_class_the_labeled_data_lacks_stops_before_the_teacher(tmp_path):
  cfg = _folders(tmp_path, eval_classes=("a", "b", "c"))
  with pytest.raises(ValueError, match=f"--eval_data_dir={tmp_path}/T and --label_data_dir="
                     f"{tmp_path}/L differ in their classes \\(--eval_data_dir has 'c', "
                     "which --label_data_dir lacks\\)"):
    modes.run(cfg)
  assert not os.path.exists(f"{tmp_path}/run/teacher")


def test_a_folder_with_no_decodable_image_stops_before_the_teacher(tmp_path):
  cfg = _folders(tmp_path, unlabeled_ok=False)
  with pytest.raises(ValueError, match=f"--unlabel_data_dir={tmp_path}/U: none of its first "
                     f"4 images decodes \\(4 skipped, e.g. {tmp_path}/U/0.png: Unknown image "
                     "file format\\.") as e:
    modes.run(cfg)
  assert "function_node" not in str(e.value) and "[Op:" not in str(e.value)
  assert not os.path.exists(f"{tmp_path}/run/teacher")


def test_leftover_tmp_exports_of_dead_processes_are_removed_at_the_next_export(tmp_path):
  from noisy_student import export  # pylint: disable=import-outside-toplevel
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    for name in (f"tmp-1-{dead.pid}", f"tmp-2-{alive.pid}", "1"):
      os.makedirs(tmp_path / name / "variables")
    assert export.remove_leftovers(str(tmp_path)) == [f"{tmp_path}/tmp-1-{dead.pid}"]
    assert sorted(os.listdir(tmp_path)) == ["1", f"tmp-2-{alive.pid}"]
  finally:
    alive.kill()
    alive.wait()


@pytest.mark.slow
def test_a_real_full_disk_while_checkpointing_ends_in_one_line(tmp_path):
  """The smoke pipeline in a 600 KB tmpfs: the teacher's first checkpoint (about 830 KB)
  does not fit."""
  if os.geteuid() != 0:
    pytest.skip("mounting a small tmpfs needs root")
  mount = tmp_path / "small"
  mount.mkdir()
  subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)],
                 check=True)
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "noisy_student", f"--flagfile={REPO}/flags/presets/smoke.flags",
         "--norobustness", f"--model_dir={mount}/run"], cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=1800)
    left = os.listdir(mount / "run" / "teacher")
  finally:
    subprocess.run(["umount", str(mount)], check=True)
  lines = [l for l in proc.stderr.splitlines() if l.startswith("noisy-student: error:")]
  assert proc.returncode == faults.DISK_FULL, proc.stderr[-3000:]
  assert len(lines) == 1 and "no space left on the device writing" in lines[0]
  assert "needs about" in lines[0] and "Traceback" not in proc.stderr
  assert not [n for n in left if n.endswith("_temp")]
