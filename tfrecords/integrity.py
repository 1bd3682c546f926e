"""Is a predict output directory whole? Every expected shard present, with the size and
CRC32C its manifest recorded; the damaged or missing ones named, with the command that
re-makes them.

Expected shards follow from the fingerprint (num_workers x num_shards) and the shard
prefix of any manifest or worker count file in the directory. Manifests older than
version 3 have no checksum: their sizes are verified and a warning says so. A checksum
is computed once per file version in a process (keyed by path, size and the file's
version: inode and times locally, mtime on gs://), so the
pipeline's check and the student's reader do not read the bytes twice.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from tfrecords import checksum
from tfrecords import format as fmt

_SHARD_RE = re.compile(r"^(?P<prefix>.+?)-(?:w(?P<w>\d{5})-of-\d{5}-)?\d{5}-of-\d{5}$")
_COUNT_RE = re.compile(r"^_(?P<prefix>.+)-worker-(?P<w>\d{5})-of-(?P<n>\d{5})"
                       + re.escape(fmt.COUNT_SUFFIX) + "$")
# (path, size, version) -> crc32c hex; the version is the inode and ctime of a local file
# (a shard re-made by rename is a new inode, even within one tick of the clock, which
# mtime alone does not tell at the same size) and the mtime of a gs:// object.
_CHECKED: Dict[Tuple[str, int, Tuple[int, ...]], str] = {}


class DamagedShards(ValueError):
  """Shards of a predict output directory are missing or damaged (names them)."""

  def __init__(self, message: str, directory: str, problems: List[Tuple[str, str]]):
    super().__init__(message)
    self.directory, self.problems = directory, problems


def _raw_manifests(directory: str) -> Dict[str, Dict[str, Any]]:
  """{shard path: manifest JSON} of every manifest file in `directory`, intact or not."""
  out = {}
  # Version-1 manifests sat beside their shards without the leading "_": both are read.
  for mpath in sorted(tf.io.gfile.glob(f"{directory}/*{fmt.MANIFEST_SUFFIX}")):
    try:
      with tf.io.gfile.GFile(mpath) as f:
        manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
      continue
    if isinstance(manifest, dict) and "shard" in manifest:
      out[f"{directory}/{manifest['shard']}"] = manifest
  return out


def _layout(directory: str, manifests: Dict[str, Dict[str, Any]]
            ) -> Optional[Tuple[str, Dict[str, Any]]]:
  """(shard prefix, fingerprint) of the directory's predict run, or None if none is found."""
  for manifest in manifests.values():
    match = _SHARD_RE.match(manifest["shard"])
    if match and "fingerprint" in manifest:
      return match.group("prefix"), manifest["fingerprint"]
  for path in tf.io.gfile.glob(f"{directory}/*{fmt.COUNT_SUFFIX}"):
    match = _COUNT_RE.match(os.path.basename(path))
    if match:
      with tf.io.gfile.GFile(path) as f:
        return match.group("prefix"), json.load(f)["fingerprint"]
  return None


def expected_shards(directory: str, prefix: str, fingerprint: Mapping[str, Any]) -> List[str]:
  workers, shards = int(fingerprint["num_workers"]), int(fingerprint["num_shards"])
  return [f"{directory}/{fmt.shard_name(prefix, k, shards, w, workers)}"
          for w in range(workers) for k in range(shards)]


def _version(path: str) -> Tuple[int, ...]:
  if "://" not in path:
    st = os.stat(path)
    return (st.st_ino, st.st_ctime_ns, st.st_mtime_ns)
  return (int(getattr(tf.io.gfile.stat(path), "mtime_nsec", 0)),)


def _crc_of(path: str, size: int) -> str:
  key = (path, size, _version(path))
  if key not in _CHECKED:
    _CHECKED[key] = checksum.of_file(path)[1]
  return _CHECKED[key]


def shard_problem(path: str, manifest: Optional[Mapping[str, Any]]) -> Optional[str]:
  """What is wrong with one expected shard, or None when it is intact."""
  exists = tf.io.gfile.exists(path)
  if manifest is None:
    return "incomplete (no manifest)" if exists else "missing"
  if not exists:
    return "missing (its manifest is there)"
  size = tf.io.gfile.stat(path).length
  if size != manifest.get("size_bytes"):
    return f"{size} bytes, its manifest says {manifest.get('size_bytes')} (cut or grown)"
  want = manifest.get("crc32c")
  if want is not None and _crc_of(path, size) != want:
    return f"crc32c {_crc_of(path, size)}, its manifest says {want} (damaged)"
  return None


def problems(directory: str) -> List[Tuple[str, str]]:
  """[(shard path, what is wrong)] of every expected shard of a predict output
  directory that is missing or damaged; [] when whole (or when it holds no predict
  output at all)."""
  directory = directory.rstrip("/")
  manifests = _raw_manifests(directory)
  layout = _layout(directory, manifests)
  if layout is None:
    return []
  found = []
  for path in expected_shards(directory, *layout):
    problem = shard_problem(path, manifests.get(path))
    if problem:
      found.append((path, problem))
  unchecked = [p for p, m in manifests.items() if "crc32c" not in m]
  if unchecked:
    logging.warning("%d shard manifests in %s predate checksums: only their sizes are "
                    "verified.", len(unchecked), directory)
  return found


def remake_command(directory: str, fingerprint: Mapping[str, Any],
                   workers: Sequence[int]) -> str:
  """The command that re-makes the missing or damaged shards of `directory`."""
  teacher = str(fingerprint.get("teacher", "TEACHER"))
  if "://" not in teacher and not os.path.isabs(teacher):  # Stored relative to the dir.
    teacher = os.path.normpath(os.path.join(directory, teacher))
  source = str(fingerprint.get("source", "UNLABELED")).split(";")[0]
  ranks = ",".join(str(w) for w in workers)
  return (f"noisy-student --mode=predict --model_dir={teacher} --output_dir={directory} "
          f"--unlabel_data_dir={source} --num_shards={fingerprint.get('num_shards')} "
          f"--num_workers={fingerprint.get('num_workers')} --worker_index="
          f"{ranks if len(workers) == 1 else '{' + ranks + '}'} (with the data flags of "
          "the run that wrote them; only those shards are predicted again)")


def describe(found: Sequence[Tuple[str, str]], total: int) -> str:
  shown = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in found[:3])
  more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
  return f"{len(found)} of {total} shards missing or damaged ({shown}{more})"


def check_complete(manifests: Sequence[Mapping[str, Any]], where: str) -> None:
  """Raises DamagedShards (a ValueError) unless every worker's every shard of `where` is
  present and intact, naming the bad files and the command that re-makes them."""
  if not manifests:
    raise ValueError(f"no complete pseudo-label shards (*{fmt.MANIFEST_SUFFIX}) in {where}")
  fmt.check_one_fingerprint(manifests, where)
  fp = manifests[0]["fingerprint"]
  directory = where.rstrip("/")
  found = problems(directory)
  if not found:
    return
  workers = sorted({_worker_of(p) for p, _ in found})
  total = int(fp["num_workers"]) * int(fp["num_shards"])
  raise DamagedShards(
      f"pseudo-labels in {directory}: {describe(found, total)}; re-make them: "
      f"{remake_command(directory, fp, workers)}", directory, found)


def _worker_of(path: str) -> int:
  match = _SHARD_RE.match(os.path.basename(path))
  return int(match.group("w")) if match and match.group("w") else 0
