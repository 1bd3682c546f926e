"""Completion markers of resumable phases: run a phase once, skip it when finished.

A phase's marker `<root>/phases/<name>.json` is written atomically when the phase has
finished, with the fingerprint of the flags it depended on and its (JSON) result. A
finished phase is skipped when its fingerprint is unchanged; with other flags it is
refused (listing the flags that differ) or, for cheap phases whose input legitimately
changes, redone.

Markers are relocatable: every path inside the model_dir is stored as `<model_dir>/...`
and read back under the directory the markers are in now, so a copied or moved run
resumes in place and never reads or writes its old location. (Markers written before
this, version 1, held absolute paths: they are rebased from the directory their teacher
was trained in.)
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import time
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from absl import logging
import tensorflow as tf

from noisy_student import atomic
from noisy_student import lock
from noisy_student import results

Fingerprint = Dict[str, Any]
R = TypeVar("R", bound=results.Result)
MODEL_DIR = "<model_dir>"  # Stands for the markers' model_dir in stored paths.
MARKER_VERSION = 2


def relative_path(path: str, base: str) -> str:
  """`path` relative to the directory `base` when both are on one file system (local,
  or one gs:// bucket), else `path` as given."""
  def split(p):
    if "://" not in p:
      return "", os.path.abspath(p)
    scheme, rest = p.split("://", 1)
    bucket, _, key = rest.partition("/")
    return f"{scheme}://{bucket}", "/" + key
  (fs, p), (base_fs, b) = split(path.rstrip("/") or "/"), split(base.rstrip("/") or "/")
  return posixpath.relpath(p, b) if fs == base_fs else path


def rebase(value: Any, old: str, new: str) -> Any:
  """`value` with every string equal to or below `old` moved to `new` (recursively)."""
  if isinstance(value, str):
    if value == old or value.startswith(old + "/"):
      return new + value[len(old):]
    return value
  if isinstance(value, dict):
    return {k: rebase(v, old, new) for k, v in value.items()}
  if isinstance(value, list):
    return [rebase(v, old, new) for v in value]
  return value


class PhaseMismatchError(ValueError):
  """A finished phase in model_dir was produced with other flags than this run's."""


def _plain(value: Any) -> Any:
  """JSON round trip: tuples -> lists, dataclasses -> dicts, as stored in a marker."""
  def default(obj):
    if isinstance(obj, results.Result):
      return obj.to_json()
    if dataclasses.is_dataclass(obj):
      return dataclasses.asdict(obj)
    raise TypeError(f"{type(obj).__name__} cannot go into a phase marker")
  return json.loads(json.dumps(value, sort_keys=True, default=default))


def _differences(old: Any, new: Any, prefix: str = "") -> List[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return out
  return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


class Markers:
  """Completion markers of one pipeline: `<root>/phases/<name>.json`."""

  def __init__(self, root: str):
    self.root = root.rstrip("/")
    self.directory = f"{self.root}/phases"
    self._legacy_root: Optional[str] = None

  def path(self, name: str) -> str:
    return f"{self.directory}/{name}.json"

  def _read(self, name: str) -> Optional[Dict[str, Any]]:
    if not tf.io.gfile.exists(self.path(name)):
      return None
    with tf.io.gfile.GFile(self.path(name)) as f:
      return json.load(f)

  def get(self, name: str) -> Optional[Dict[str, Any]]:
    """The marker of `name` with its paths under this model_dir, or None."""
    marker = self._read(name)
    if marker is None:
      return None
    if marker.get("version", 1) >= 2:
      return rebase(marker, MODEL_DIR, self.root)
    old = self._old_root()
    return rebase(marker, old, self.root) if old and old != self.root else marker

  def _old_root(self) -> Optional[str]:
    """Where a version-1 run was: its teacher marker's path is <root>/teacher."""
    if self._legacy_root is None:
      path = ((self._read("teacher") or {}).get("result") or {}).get("path", "")
      self._legacy_root = path[:-len("/teacher")] if path.endswith("/teacher") else ""
    return self._legacy_root

  def put(self, name: str, fingerprint: Fingerprint, result: Dict[str, Any],
          seconds: float) -> None:
    payload = {"phase": name, "fingerprint": _plain(fingerprint), "result": _plain(result),
               "seconds": round(seconds, 1), "finished": time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    payload = dict(rebase(payload, self.root, MODEL_DIR), version=MARKER_VERSION)
    atomic.write_text(self.path(name), json.dumps(payload, indent=1, sort_keys=True))

  def adopt(self, name: str, source: "Markers") -> None:
    """Marks `name` finished here with `source`'s result, whose paths stay in `source`'s
    run (read from there, never written; e.g. one teacher shared by variant runs). The
    fingerprint keeps its <model_dir> token, so it matches the one this run computes."""
    marker = source._read(name)
    if marker is None:
      raise FileNotFoundError(f"{source.path(name)} is missing; finish that phase there "
                              "first.")
    if marker.get("version", 1) < 2:
      raise ValueError(f"{source.path(name)} is a version-1 marker (its paths are absolute); "
                       "resume that run once to rewrite it.")
    marker["result"] = rebase(marker["result"], MODEL_DIR, source.root)
    atomic.write_text(self.path(name), json.dumps(marker, indent=1, sort_keys=True))

  def done(self) -> List[str]:
    if not tf.io.gfile.isdir(self.directory):
      return []
    return sorted(n[:-5] for n in tf.io.gfile.listdir(self.directory) if n.endswith(".json"))


def run_phase(markers: Markers, name: str, fingerprint: Fingerprint,
              fn: Callable[[], results.Result], kind: Type[R],
              redo_if_changed: bool = False) -> R:
  """Runs `fn` unless `name` finished earlier with the same fingerprint; returns its result
  (a `kind`, read back from the marker when the phase was skipped).

  A finished phase with another fingerprint is refused, or redone when `redo_if_changed`
  (the phases after the last student, whose input changes when iterations are added).
  """
  marker = markers.get(name)
  if marker is not None:
    changed = _differences(marker["fingerprint"], _plain(fingerprint))
    if changed and redo_if_changed:
      logging.info("Phase %s: its input changed (%s); redoing it.", name, changed[0])
      marker = None
  if marker is not None:
    if changed:
      raise PhaseMismatchError(
          f"phase {name} in {markers.directory} was run with other flags ("
          f"{'; '.join(changed[:5])}); use a new --model_dir, or delete "
          f"{markers.path(name)} and the phases after it to redo them")
    logging.info("Phase %s: finished earlier (%s), skipped.", name, marker["finished"])
    return kind.from_json(marker["result"])
  logging.info("Phase %s: starting.", name)
  start = time.time()
  result = fn()
  lock.check_held(markers.root)  # A run whose gs:// lock was taken over records nothing.
  markers.put(name, fingerprint, result.to_json(), time.time() - start)
  logging.info("Phase %s: done in %.0f s.", name, time.time() - start)
  return result
