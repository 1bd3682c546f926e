"""The `noisy-student` program as users run it: a separate process, real flags."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "flags", "presets", "smoke.flags")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _run(*argv, timeout=300):
  return subprocess.run([sys.executable, "-m", "noisy_student", *argv], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=timeout)


def test_bad_flags_stop_before_any_work(tmp_path):
  model_dir = tmp_path / "run"
  proc = _run(f"--model_dir={model_dir}", "--model_name=b9", "--input_image_size=8",
              "--mode=train", "--teacher_model_path=/no/such/teacher", "--unlabel_ratio=1")
  errors = [line for line in proc.stderr.splitlines() if "noisy-student: error:" in line]
  assert proc.returncode == 2
  assert any("--model_name: unknown model 'efficientnet-b9'" in e for e in errors)
  assert any("--input_image_size=8" in e for e in errors)
  assert any("--teacher_model_path=/no/such/teacher: no such file" in e for e in errors)
  assert not model_dir.exists()  # Nothing was written: no work started.


def test_beam_options_after_a_bare_double_dash(tmp_path):
  """The runner's own flags after `--` join --beam_options (in the written config); a
  stray argument without `--` is refused."""
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  proc = _run("--mode=predict", f"--model_dir={model_dir}", "--runner=DirectRunner",
              "--beam_options=--direct_num_workers=2", "--",
              "--direct_running_mode=multi_processing", "--job_name=a b")
  assert proc.returncode == 2  # No teacher in model_dir: stopped in one line.
  with open(model_dir / "config-predict.json") as f:
    predict = json.load(f)["predict"]
  assert predict["beam_options"] == ("--direct_num_workers=2 "
                                     "--direct_running_mode=multi_processing '--job_name=a b'")
  stray = _run("--mode=predict", f"--model_dir={model_dir}", "stray")
  assert stray.returncode == 2 and "unexpected arguments 'stray'" in stray.stderr


def test_console_script_is_installed():
  script = shutil.which("noisy-student") or os.path.join(
      os.path.dirname(sys.executable), "noisy-student")
  proc = subprocess.run([script, "--helpfull"], env=ENV, capture_output=True, text=True,
                        timeout=300)
  # absl's help exits with 1; the listing is what counts.
  assert "--student_model_names" in proc.stdout and "--worker_id" in proc.stdout


def _wait_for(path, proc, timeout):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path):
      return True
    if proc.poll() is not None:
      return False
    time.sleep(1)
  return False


@pytest.mark.slow
def test_smoke_pipeline_killed_and_resumed(tmp_path):
  """Kill a real pipeline once the teacher is done; the restart must not redo it."""
  model_dir = str(tmp_path / "run")
  argv = [sys.executable, "-m", "noisy_student", f"--flagfile={SMOKE}",
          f"--model_dir={model_dir}"]
  proc = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  marker = os.path.join(model_dir, "phases", "eval-teacher.json")
  try:
    assert _wait_for(marker, proc, 900), "the teacher never finished"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with open(os.path.join(model_dir, "phases", "teacher.json")) as f:
    teacher_finished = json.load(f)["finished"]
  resumed = _run(f"--flagfile={SMOKE}", f"--model_dir={model_dir}", timeout=1800)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Phase teacher: finished earlier" in resumed.stderr
  assert "Phase teacher: starting" not in resumed.stderr
  with open(os.path.join(model_dir, "phases", "teacher.json")) as f:
    assert json.load(f)["finished"] == teacher_finished
  with open(os.path.join(model_dir, "results.json")) as f:
    names = [m["name"] for m in json.load(f)["models"]]
  assert names == ["teacher", "student 1", "fine-tuned"]
  assert os.path.exists(os.path.join(model_dir, "results.png"))
  assert os.path.exists(os.path.join(model_dir, "export", "1", "saved_model.pb"))
  with open(os.path.join(model_dir, "config.json")) as f:
    assert json.load(f)["model"]["model_name"] == "efficientnet-test"
  # A third run finds every phase finished and only re-prints the table.
  again = _run(f"--flagfile={SMOKE}", f"--model_dir={model_dir}", timeout=600)
  assert again.returncode == 0 and "starting" not in again.stderr
  assert "student 1" in again.stdout
