"""One process per model_dir: an exclusive lock, `<model_dir>/.lock`, held for the run.

    with lock.hold(model_dir):      # raises faults.Locked naming the holder
      ...

Local (and mounted) directories: the file is locked with `fcntl.flock`, which the kernel
releases when the process ends however it ends, so a lock file whose flock is free is
stale by definition (a killed run) and is taken over with a log line. The file holds the
holder's host, pid and start time, for the refusal message.

gs:// directories: a lock object created with the precondition "does not exist yet"
(`if_generation_match=0`, so two runs racing for it cannot both win), rewritten every
HEARTBEAT_SECONDS by a daemon thread under a precondition on its own generation. A lock
whose heartbeat is older than STALE_SECONDS (a killed run, a lost VM) or whose holder was
on this host and is gone is taken over with a log line. It needs google-cloud-storage
(installed with the `beam` extra); without it the lock is written through tf.io.gfile
without a precondition, with a warning.

Multi-worker runs share one lock: only the chief (TF_CONFIG's chief, else worker 0; for
predict, --worker_index=0) holds it. `hold` is re-entrant within a process, so the
command line and the Python API (`modes.run`) can both ask for it.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from typing import Any, Dict, Iterator, Optional

from absl import logging

from noisy_student import faults

LOCK_NAME = ".lock"
HEARTBEAT_SECONDS = 60.0
STALE_SECONDS = 600.0  # A gs:// lock not refreshed for 10 minutes is stale.

_HELD: Dict[str, "_Lock"] = {}  # Locks this process holds, by model_dir.
_GUARD = threading.Lock()


def lock_path(model_dir: str) -> str:
  return f"{model_dir.rstrip('/')}/{LOCK_NAME}"


def _me() -> Dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "heartbeat": time.time()}


def describe(holder: Dict[str, Any]) -> str:
  return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
          f"{holder.get('started', '?')}")


def _refusal(model_dir: str, holder: Dict[str, Any], extra: str = "") -> faults.Locked:
  return faults.Locked(
      f"--model_dir={model_dir} is in use by {describe(holder)} (lock {lock_path(model_dir)}"
      f"{extra}); wait for that run to end or stop it, or use another --model_dir")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _parse(raw: bytes) -> Dict[str, Any]:
  try:
    holder = json.loads(raw.decode("utf-8") or "{}")
  except (UnicodeDecodeError, json.JSONDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}


class _Lock:
  """A held lock; `release()` gives it back."""

  def release(self) -> None:
    raise NotImplementedError


class _LocalLock(_Lock):
  """fcntl.flock on <model_dir>/.lock; the kernel frees it when the process ends."""

  def __init__(self, model_dir: str):
    import fcntl  # pylint: disable=import-outside-toplevel (POSIX only)
    self._fcntl, self.path = fcntl, lock_path(model_dir)
    os.makedirs(model_dir, exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _parse(os.pread(fd, 4096, 0))
        os.close(fd)
        raise _refusal(model_dir, holder) from None
      # The holder may have removed the file between our open and flock: then we hold
      # a lock on a file nobody else sees; start again on the current one.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    self._fd = fd
    left = _parse(os.pread(fd, 4096, 0))
    if left:
      logging.warning("Taking over the lock %s left by %s: that run ended without "
                      "releasing it (killed).", self.path, describe(left))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_me()).encode("utf-8"), 0)

  def release(self) -> None:
    try:
      os.remove(self.path)  # Removed while still locked: no one can take the old file.
    except FileNotFoundError:
      pass
    self._fcntl.flock(self._fd, self._fcntl.LOCK_UN)
    os.close(self._fd)


class _GcsLock(_Lock):
  """A gs:// lock object with generation preconditions and a heartbeat thread."""

  def __init__(self, model_dir: str, client=None, stale_seconds: float = STALE_SECONDS,
               heartbeat_seconds: float = HEARTBEAT_SECONDS):
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    self._exceptions, self.path, self.model_dir = exceptions, lock_path(model_dir), model_dir
    bucket, name = self.path[len("gs://"):].split("/", 1)
    try:
      if client is None:
        from google.cloud import storage  # pylint: disable=import-outside-toplevel
        client = storage.Client()
      self._blob = client.bucket(bucket).blob(name)
      self._acquire(stale_seconds)
    except faults.Fault:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if faults.is_unreachable_storage(e, self.path) or isinstance(
          e, (exceptions.Forbidden, exceptions.Unauthorized, exceptions.ServiceUnavailable)):
        raise faults.unreachable(self.path, e) from None
      raise
    self._stop, self.lost = threading.Event(), False
    self._thread = threading.Thread(target=self._beat, args=(heartbeat_seconds,),
                                    name="model_dir-lock-heartbeat", daemon=True)
    self._thread.start()

  def _payload(self) -> str:
    return json.dumps(dict(self._holder, heartbeat=time.time()))

  def _acquire(self, stale_seconds: float) -> None:
    self._holder = _me()
    try:
      self._blob.upload_from_string(self._payload(), if_generation_match=0)
      self.generation = self._blob.generation
      return
    except self._exceptions.PreconditionFailed:
      pass
    self._blob.reload()
    generation = self._blob.generation
    holder = _parse(self._blob.download_as_bytes(if_generation_match=generation))
    age = time.time() - float(holder.get("heartbeat", 0))
    gone = (holder.get("host") == socket.gethostname() and
            not _pid_alive(int(holder.get("pid", 0))))
    if age < stale_seconds and not gone:
      raise _refusal(self.model_dir, holder, f", heartbeat {age:.0f} s ago; stale after "
                     f"{stale_seconds:.0f} s")
    try:  # Only if nobody else took it over since we read it.
      self._blob.upload_from_string(self._payload(), if_generation_match=generation)
    except self._exceptions.PreconditionFailed:
      raise _refusal(self.model_dir, holder, ", just taken over by another run") from None
    self.generation = self._blob.generation
    logging.warning("Taking over the stale lock %s of %s (%s).", self.path,
                    describe(holder), "its process is gone" if gone else
                    f"no heartbeat for {age:.0f} s")

  def _beat(self, every: float) -> None:
    while not self._stop.wait(every):
      try:
        self._blob.upload_from_string(self._payload(), if_generation_match=self.generation)
        self.generation = self._blob.generation
      except self._exceptions.PreconditionFailed:
        self.lost = True
        logging.error("Lost the lock %s: another run took it over (this run's heartbeat "
                      "was late by more than %.0f s).", self.path, STALE_SECONDS)
        return
      except Exception as e:  # pylint: disable=broad-except  (a blip: try next beat)
        logging.warning("Lock heartbeat of %s failed (%s); retrying.", self.path, e)

  def release(self) -> None:
    self._stop.set()
    self._thread.join(timeout=10)
    if self.lost:
      return
    try:
      self._blob.delete(if_generation_match=self.generation)
    except (self._exceptions.NotFound, self._exceptions.PreconditionFailed):
      pass


class _GfileLock(_Lock):
  """Fallback for remote paths without google-cloud-storage: no precondition."""

  def __init__(self, model_dir: str, stale_seconds: float = STALE_SECONDS):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self._gfile, self.path = tf.io.gfile, lock_path(model_dir)
    logging.warning("google-cloud-storage is not installed: the lock %s is written "
                    "without a precondition (pip install google-cloud-storage).", self.path)
    if self._gfile.exists(self.path):
      with self._gfile.GFile(self.path, "rb") as f:
        holder = _parse(f.read())
      if time.time() - float(holder.get("heartbeat", 0)) < stale_seconds:
        raise _refusal(model_dir, holder)
    self._gfile.makedirs(model_dir)
    with self._gfile.GFile(self.path, "w") as f:
      f.write(json.dumps(_me()))

  def release(self) -> None:
    if self._gfile.exists(self.path):
      self._gfile.remove(self.path)


def acquire(model_dir: str, **gcs_options) -> _Lock:
  """Takes the lock of `model_dir` (raises faults.Locked naming the holder)."""
  if model_dir.startswith("gs://"):
    try:
      import google.cloud.storage  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      return _GfileLock(model_dir)
    return _GcsLock(model_dir, **gcs_options)
  if "://" in model_dir:
    return _GfileLock(model_dir)
  return _LocalLock(model_dir)


def is_chief(tf_config: Optional[str] = None) -> bool:
  """Whether this process is the one of a multi-worker TF_CONFIG that holds the lock."""
  raw = tf_config if tf_config is not None else os.environ.get("TF_CONFIG")
  if not raw:
    return True
  try:
    config = json.loads(raw)
  except json.JSONDecodeError:
    return True  # The strategy reports a bad TF_CONFIG itself.
  task, cluster = config.get("task", {}), config.get("cluster", {})
  kind, index = task.get("type"), int(task.get("index", 0) or 0)
  if kind in (None, "chief"):
    return True
  return kind == "worker" and index == 0 and "chief" not in cluster


def holds_lock(cfg) -> bool:
  """Whether this process of a run (a Config) takes its model_dir's lock: not the
  non-chief workers of a multi-worker run, nor predict workers other than worker 0."""
  if cfg.mode == "predict" and cfg.predict.worker_index != 0:
    return False
  return is_chief()


@contextlib.contextmanager
def hold(model_dir: str, enabled: bool = True, **gcs_options) -> Iterator[None]:
  """Holds the lock of `model_dir` inside the block (a no-op when this process holds it
  already, or when `enabled` is False: a non-chief worker)."""
  key = model_dir.rstrip("/")
  with _GUARD:
    mine = enabled and key not in _HELD
    if mine:
      _HELD[key] = acquire(key, **gcs_options)
  try:
    yield
  finally:
    if mine:
      with _GUARD:
        _HELD.pop(key).release()


def check_held(model_dir: str) -> None:
  """Raises faults.Locked when this process's gs:// lock on `model_dir` was taken over."""
  held = _HELD.get(model_dir.rstrip("/"))
  if held is not None and getattr(held, "lost", False):
    raise faults.Locked(f"the lock {lock_path(model_dir)} was taken over by another run "
                        "while this one ran; stopping before writing more results")
