"""Writing matplotlib figures the way every phase writes its outputs: atomically."""
from __future__ import annotations

import tensorflow as tf


def pyplot():
  """matplotlib.pyplot on the Agg backend: phases draw PNGs on machines with no screen.

  Imported on first use, so the phases that draw nothing do not pay for matplotlib.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, path: str) -> str:
  """Saves `fig` as a PNG at `path` (any tf.io.gfile path) via a temp name; closes it."""
  plt = pyplot()
  tmp = f"{path}.tmp.png"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path
