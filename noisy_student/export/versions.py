"""Numbered export versions, `<export_dir>/<n>/`, as TensorFlow Serving watches them.

Each version is written under a temporary name that Serving skips (`tmp-<n>-<pid>`: not
an integer) and renamed when complete, so a server never loads half an export; the
temporary folders an interrupted export left are removed by the next one.
"""
from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator, List, Optional, Tuple

from absl import logging
import tensorflow as tf


def next_version(export_dir: str) -> int:
  """The next integer version under `export_dir` (1 when empty), as TF Serving counts."""
  if not tf.io.gfile.isdir(export_dir):
    return 1
  versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir)
              if re.fullmatch(r"\d+/?", n)]
  return max(versions, default=0) + 1


def remove_leftovers(export_dir: str) -> List[str]:
  """Removes the `tmp-<version>-<pid>` folders an interrupted export left in `export_dir`
  (TF Serving skips them, but they pile up); returns their paths. Locally a folder whose
  process still runs is kept; remote ones (gs://) are all removed: the model_dir lock
  (noisy_student/lock.py) keeps a second export of the same run from running."""
  if not tf.io.gfile.isdir(export_dir):
    return []
  removed = []
  for name in tf.io.gfile.listdir(export_dir):
    match = re.fullmatch(r"tmp-\d+-(\d+)/?", name)
    if not match or int(match.group(1)) == os.getpid():
      continue
    if "://" not in export_dir and _pid_alive(int(match.group(1))):
      continue
    path = f"{export_dir.rstrip('/')}/{name.rstrip('/')}"
    tf.io.gfile.rmtree(path)
    logging.info("Removed %s, left by an interrupted export.", path)
    removed.append(path)
  return removed


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    pass
  return True


@contextlib.contextmanager
def new_version(export_dir: str, version: Optional[int] = None
                ) -> Iterator[Tuple[str, str]]:
  """Yields (temporary directory, final directory) of a new version of `export_dir`.

  The caller writes into the temporary directory (not yet created: SavedModel writers
  create it); on success it becomes `<export_dir>/<version>`, on an exception it is
  removed. `version` None: one more than the largest there. Leftovers of interrupted
  exports are removed first.
  """
  base = export_dir.rstrip("/")
  remove_leftovers(base)
  version = next_version(base) if version is None else version
  final_dir = f"{base}/{version}"
  if tf.io.gfile.exists(final_dir):
    raise FileExistsError(f"export: {final_dir} already exists; pick another version")
  tmp_dir = f"{base}/tmp-{version}-{os.getpid()}"
  tf.io.gfile.makedirs(base)
  try:
    yield tmp_dir, final_dir
  except BaseException:
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)
    raise
  tf.io.gfile.rename(tmp_dir, final_dir)
  logging.info("Wrote export version %s", final_dir)

