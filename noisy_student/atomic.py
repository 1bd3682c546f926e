"""Atomic text files: every phase's JSON and Markdown output is written to a temporary
name and renamed, through tf.io.gfile, so a killed job never leaves half a file (and
gs:// paths work). Shard manifests use tfrecords.format.write_json_atomic instead, whose
unique temporary names let several workers write side by side."""
from __future__ import annotations

import os

import tensorflow as tf


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` (parent folders made) via `path + '.tmp'`; returns path."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
