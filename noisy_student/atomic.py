"""Atomic text files: every phase's JSON and Markdown output, and the pseudo-label
shards' manifests, are written to a temporary name and renamed, through tf.io.gfile, so
a killed job never leaves half a file (and gs:// paths work). The temporary name is
unique per call, so several workers may write the same file side by side (each rename
is whole; the last one wins)."""
from __future__ import annotations

import os
import uuid

import tensorflow as tf

TMP_MARKER = ".tmp-"  # Temporary files are `<path>.tmp-<random hex>`.


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` (parent folders made) via a unique temporary name; returns
  path."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}{TMP_MARKER}{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write(text)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
