"""Atomic files: every output is written under a unique temporary name and renamed over
its path, through tf.io.gfile, so a killed job never leaves half a file, several workers
can write side by side, and gs:// paths work. This is the project's one writer of whole
files (JSON, Markdown, PNG, .keras, shard manifests)."""
from __future__ import annotations

import os
from typing import Callable
import uuid

TEMPORARY = ".tmp-"  # Marks a file that is still being written (readers skip it).


def temporary_name(path: str) -> str:
  """A unique sibling of `path` that readers recognise as unfinished."""
  return f"{path}{TEMPORARY}{uuid.uuid4().hex}"


def write_with(path: str, write: Callable, mode: str = "w") -> str:
  """Calls `write(f)` on a file opened at a temporary name, then renames it over `path`
  (parent folders made); returns path."""
  # Imported here: the configuration imports this module and must load without TensorFlow.
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = temporary_name(path)
  try:
    with tf.io.gfile.GFile(tmp, mode) as f:
      write(f)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
  return path

def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically; returns path."""
  return write_with(path, lambda f: f.write(text))


def copy_file(local_path: str, path: str) -> str:
  """Copies a finished local file to `path` (any tf.io.gfile path) atomically."""
  with open(local_path, "rb") as source:
    return write_with(path, lambda f: f.write(source.read()), mode="wb")
