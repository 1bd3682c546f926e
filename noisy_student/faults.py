"""Faults that end a run in one line with their own exit code (docs/usage.md, "Exit codes").

A `Fault` is not a bug: the run stopped because of something outside the code (a
diverging learning rate, another process on the model_dir, unreachable storage, a full
disk), and what to do is in its message. `noisy_student.main` prints the message as one
line and exits with the fault's code; `from_exception` recognises the faults that
TensorFlow and the OS raise under other types. Pure Python: TensorFlow is looked at only
when it is already loaded.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from typing import Optional

BAD_INPUT = 2  # A flag, file or value at fault (ValueError, FileNotFoundError, checks).
DIVERGED = 3
LOCKED = 4
STORAGE = 5
DISK_FULL = 6
# 143 (128 + SIGTERM): preempted after saving a checkpoint (train/preemption.py).

RESUME = "run the same command again to resume"


class Fault(Exception):
  """A run stopped by a fault named in its one-line message."""
  exit_code = 1


class Diverged(Fault):
  """Training diverged: a non-finite loss, gradient norm or weight, or an exploded loss."""
  exit_code = DIVERGED


class Locked(Fault):
  """Another run holds the model_dir's lock."""
  exit_code = LOCKED


class StorageUnreachable(Fault):
  """Cloud Storage cannot be reached (network, DNS, credentials, permissions)."""
  exit_code = STORAGE


class DiskFull(Fault):
  """No space left where the run writes."""
  exit_code = DISK_FULL


def human_bytes(n: float) -> str:
  for unit in ("B", "KB", "MB", "GB", "TB"):
    if abs(n) < 1024 or unit == "TB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024.0
  return f"{n:.1f} TB"


def free_bytes(path: str) -> Optional[int]:
  """Free space of the local file system holding `path` (None for remote paths)."""
  if "://" in path:
    return None
  path = os.path.abspath(path)
  while path and not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path or "/").free
  except OSError:
    return None


def disk_full(path: str, needed: Optional[int] = None) -> DiskFull:
  """The one-line DiskFull for a write into `path` that needed about `needed` bytes."""
  free = free_bytes(path)
  need = f"needs about {human_bytes(needed)}" if needed else "needs more space"
  have = f", {human_bytes(free)} free there" if free is not None else ""
  return DiskFull(f"no space left on the device writing {path} ({need}{have}); free space "
                  f"(or move --model_dir) and {RESUME}: finished work is kept")


_NO_SPACE = ("No space left on device", "ENOSPC", "Disk quota exceeded")
_UNREACHABLE = ("Could not resolve host", "Couldn't resolve host", "resolve host name",
                "Could not connect", "Couldn't connect", "Connection refused",
                "credentials", "Credentials", "Permission denied", "Unauthorized",
                "Forbidden", "does not have storage.", "Timeout was reached", "timed out",
                "libcurl")


def is_no_space(e: BaseException) -> bool:
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
    return True
  return _is_tf_error(e) and any(s in str(e) for s in _NO_SPACE)


def is_unreachable_storage(e: BaseException, path: str = "") -> bool:
  """Whether `e` says Cloud Storage could not be reached (any gs:// call)."""
  if type(e).__name__ in ("DefaultCredentialsError", "RefreshError", "TransportError"):
    return True
  text = str(e)
  remote = "gs://" in text or "googleapis" in text or path.startswith("gs://")
  return remote and (_is_tf_error(e) or "google" in type(e).__module__) and any(
      s in text for s in _UNREACHABLE)


def unreachable(path: str, e) -> StorageUnreachable:
  """The one-line StorageUnreachable for `path` (an exception or a reason string)."""
  reason = " ".join(str(e).split())[:200]
  return StorageUnreachable(
      f"{path}: cannot reach Cloud Storage ({reason}); check the network and the "
      "credentials (gcloud auth application-default login, or GOOGLE_APPLICATION_"
      "CREDENTIALS), then run again")


GCS_HOST = "storage.googleapis.com"
_PROBED: dict = {}


def gcs_unreachable_reason(timeout: float = 5.0) -> Optional[str]:
  """Why Cloud Storage's endpoint cannot be reached from here (DNS, connect), or None.

  TensorFlow's gs:// file system retries a failing request with back-off for minutes;
  one TCP connection tells the same in at most `timeout` seconds. Skipped (None) when
  an emulator endpoint is configured. Probed once per process.
  """
  if os.environ.get("STORAGE_EMULATOR_HOST") or os.environ.get(
      "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
    return None
  if "reason" not in _PROBED:
    import socket  # pylint: disable=import-outside-toplevel
    try:
      socket.create_connection((GCS_HOST, 443), timeout=timeout).close()
      _PROBED["reason"] = None
    except OSError as e:
      _PROBED["reason"] = f"cannot connect to {GCS_HOST}:443: {e}"
  return _PROBED["reason"]


def _is_tf_error(e: BaseException) -> bool:
  tf = sys.modules.get("tensorflow")
  return tf is not None and isinstance(e, tf.errors.OpError)


def _path_in(e: BaseException) -> str:
  """The file an OSError or a TensorFlow error names, as well as it can be told."""
  if isinstance(e, OSError) and e.filename:
    return str(e.filename)
  for word in str(e).replace("'", " ").replace('"', " ").split():
    if word.startswith(("/", "gs://")):
      return word.rstrip(".,:;")
  return "the model_dir"


def from_exception(e: BaseException) -> Optional[Fault]:
  """The Fault an exception of another type stands for (disk full, unreachable
  storage), or None."""
  if isinstance(e, Fault):
    return e
  if is_no_space(e):
    return disk_full(_path_in(e))
  if is_unreachable_storage(e):
    return unreachable(_path_in(e), e)
  return None
