"""Completion markers of resumable phases: run a phase once, skip it when finished.

A phase's marker `<root>/phases/<name>.json` is written atomically when the phase has
finished, with the fingerprint of the flags it depended on and its (JSON) result. A
finished phase is skipped when its fingerprint is unchanged; with other flags it is
refused (listing the flags that differ) or, for cheap phases whose input legitimately
changes, redone.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar

from absl import logging
import tensorflow as tf

from noisy_student import atomic
from noisy_student import results

Fingerprint = Dict[str, Any]
R = TypeVar("R", bound=results.Result)


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
    self.directory = f"{root.rstrip('/')}/phases"

  def path(self, name: str) -> str:
    return f"{self.directory}/{name}.json"

  def get(self, name: str) -> Optional[Dict[str, Any]]:
    if not tf.io.gfile.exists(self.path(name)):
      return None
    with tf.io.gfile.GFile(self.path(name)) as f:
      return json.load(f)

  def put(self, name: str, fingerprint: Fingerprint, result: Dict[str, Any],
          seconds: float) -> None:
    payload = {"phase": name, "fingerprint": _plain(fingerprint), "result": _plain(result),
               "seconds": round(seconds, 1), "finished": time.strftime(
                   "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic.write_text(self.path(name), json.dumps(payload, indent=1, sort_keys=True))

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
  markers.put(name, fingerprint, result.to_json(), time.time() - start)
  logging.info("Phase %s: done in %.0f s.", name, time.time() - start)
  return result
