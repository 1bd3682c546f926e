"""One process per model_dir (noisy_student/lock.py): real processes for the local lock, a
fake Cloud Storage with generation preconditions for the gs:// one."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

from absl import logging
from google.api_core import exceptions
import pytest

from noisy_student import faults
from noisy_student import lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
HOLDER = ("import sys, time\nfrom noisy_student import lock\n"
          "with lock.hold(sys.argv[1]):\n  print('held', flush=True)\n  time.sleep(600)\n")


def _holder(model_dir):
  """A real process holding the lock of `model_dir` (until killed)."""
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(model_dir)], env=ENV,
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
  proc = _holder(tmp_path)
  try:
    with pytest.raises(faults.Locked, match=f"in use by pid {proc.pid} on "):
      with lock.hold(str(tmp_path)):
        pass
  finally:
    proc.kill()
    proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_log_line(tmp_path, caplog):
  proc = _holder(tmp_path)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert json.loads((tmp_path / lock.LOCK_NAME).read_text())["pid"] == proc.pid
  with caplog.at_level(logging.WARNING):
    with lock.hold(str(tmp_path)):
      held = json.loads((tmp_path / lock.LOCK_NAME).read_text())
  assert held["pid"] == os.getpid() and "host" in held and "started" in held
  assert f"left by pid {proc.pid}" in caplog.text
  assert not (tmp_path / lock.LOCK_NAME).exists()  # Released: removed.


def test_the_command_line_refuses_a_second_run_in_one_line(tmp_path):
  proc = _holder(tmp_path)
  try:
    run = subprocess.run(
        [sys.executable, "-m", "noisy_student", "--mode=train", f"--model_dir={tmp_path}",
         "--model_name=efficientnet-test", "--train_steps=1"], cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=300)
  finally:
    proc.kill()
    proc.wait()
  errors = [l for l in run.stderr.splitlines() if l.startswith("noisy-student: error:")]
  assert run.returncode == faults.LOCKED, run.stderr[-2000:]
  assert len(errors) == 1 and f"in use by pid {proc.pid}" in errors[0]
  assert "Traceback" not in run.stderr
  assert not (tmp_path / "config.json").exists()  # Nothing written into the held run.


def test_hold_is_reentrant_and_off_for_other_workers(tmp_path):
  with lock.hold(str(tmp_path)):
    with lock.hold(str(tmp_path)):  # The API inside the command line: the same lock.
      assert (tmp_path / lock.LOCK_NAME).exists()
    assert (tmp_path / lock.LOCK_NAME).exists()
  with lock.hold(str(tmp_path), enabled=False):
    assert not (tmp_path / lock.LOCK_NAME).exists()
  chief = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker",
                                                                     "index": 0}})
  other = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker",
                                                                     "index": 1}})
  assert lock.is_chief(chief) and not lock.is_chief(other) and lock.is_chief("")


class FakeBlob:
  """google.cloud.storage.Blob's calls the lock makes, with real generation semantics."""

  def __init__(self, store, name):
    self.store, self.name, self.generation = store, name, None

  def upload_from_string(self, data, if_generation_match=None):
    with self.store.guard:
      current = self.store.objects.get(self.name)
      have = current[1] if current else 0
      if if_generation_match is not None and if_generation_match != have:
        raise exceptions.PreconditionFailed("generation mismatch")
      self.store.generation += 1
      self.store.objects[self.name] = (data.encode() if isinstance(data, str) else data,
                                       self.store.generation)
      self.generation = self.store.generation

  def reload(self):
    if self.name not in self.store.objects:
      raise exceptions.NotFound("no such object")
    self.generation = self.store.objects[self.name][1]

  def download_as_bytes(self, if_generation_match=None):
    data, generation = self.store.objects[self.name]
    if if_generation_match is not None and if_generation_match != generation:
      raise exceptions.PreconditionFailed("generation mismatch")
    return data

  def delete(self, if_generation_match=None):
    with self.store.guard:
      if self.name not in self.store.objects:
        raise exceptions.NotFound("no such object")
      if if_generation_match not in (None, self.store.objects[self.name][1]):
        raise exceptions.PreconditionFailed("generation mismatch")
      del self.store.objects[self.name]


class FakeClient:
  def __init__(self):
    self.objects, self.generation, self.guard = {}, 0, threading.Lock()

  def bucket(self, name):
    client = self

    class Bucket:
      def blob(self, key):
        return FakeBlob(client, f"{name}/{key}")
    return Bucket()


def _gcs_holder(client, model_dir, heartbeat, **changes):
  holder = dict(lock._me(), **changes)  # pylint: disable=protected-access
  holder["heartbeat"] = heartbeat
  FakeBlob(client, f"bucket/{model_dir}/.lock").upload_from_string(json.dumps(holder),
                                                                     if_generation_match=0)


def test_gcs_lock_refuses_a_live_holder_and_takes_over_a_stale_one(caplog):
  client = FakeClient()
  _gcs_holder(client, "run", time.time() - 30, host="other-vm", pid=7)
  with pytest.raises(faults.Locked, match="pid 7 on other-vm.*heartbeat 3\\d s ago; stale "
                     "after 600 s"):
    lock.acquire("gs://bucket/run", client=client)
  client.objects.clear()
  _gcs_holder(client, "run", time.time() - 700, host="other-vm", pid=7)
  with caplog.at_level(logging.WARNING):
    held = lock.acquire("gs://bucket/run", client=client)
  assert "stale lock gs://bucket/run/.lock of pid 7 on other-vm" in caplog.text
  assert json.loads(client.objects["bucket/run/.lock"][0])["pid"] == os.getpid()
  held.release()
  assert "bucket/run/.lock" not in client.objects


def test_gcs_lock_heartbeat_and_a_lost_race():
  client = FakeClient()
  held = lock.acquire("gs://bucket/run", client=client, heartbeat_seconds=0.05)
  first = held.generation
  time.sleep(0.3)
  assert held.generation > first and not held.lost  # Rewritten under its generation.
  with pytest.raises(faults.Locked, match=f"pid {os.getpid()}"):  # Fresh: refused.
    lock.acquire("gs://bucket/run", client=client)
  # Someone else rewrites the object (took it over): the heartbeat notices.
  FakeBlob(client, "bucket/run/.lock").upload_from_string("{}")
  time.sleep(0.3)
  assert held.lost
  held.release()
  assert "bucket/run/.lock" in client.objects  # Not ours any more: left alone.


def test_gcs_without_credentials_is_one_storage_line():
  class NoCredentials:
    def bucket(self, name):
      raise exceptions.Forbidden("Anonymous caller does not have storage.objects.create")
  with pytest.raises(faults.StorageUnreachable, match="gs://bucket/run/.lock: cannot "
                     "reach Cloud Storage"):
    lock.acquire("gs://bucket/run", client=NoCredentials())
