"""Writing matplotlib figures the way every phase writes its outputs: atomically."""
from __future__ import annotations

from noisy_student import atomic


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
  try:
    return atomic.write_with(path, lambda f: fig.savefig(f, format="png", dpi=100), "wb")
  finally:
    pyplot().close(fig)
