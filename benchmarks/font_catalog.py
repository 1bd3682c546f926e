"""Fonts for the font-glyph benchmark: install, find, dedupe, group and split them.

Used by benchmarks/make_font_images.py. Debian's font packages are the only source (no
download at run time): `ensure_packages` installs the missing ones with apt-get.

A font is usable for a class set when its cmap maps every class character to a glyph that
draws ink. Near-identical styles (metric clones such as Liberation Sans / Arimo, the URW
and TeX Gyre copies of the same designs, Noto's script fonts that reuse Noto Sans' Latin
digits) are found by rendering the class glyphs and comparing the pictures: a style
closer than `dup_distance` to a kept one is dropped, and the families of the two are joined
into one group. Whole groups go to one split, so a test font is never a weight, slant or
clone of a training font.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Debian packages with Latin digits and letters in many distinct designs (bookworm names).
# One list, one place: the generator installs exactly these.
FONT_PACKAGES = (
    "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-liberation2",
    "fonts-freefont-ttf", "fonts-noto-core", "fonts-urw-base35", "fonts-cantarell",
    "fonts-lato", "fonts-open-sans", "fonts-roboto-unhinted", "fonts-crosextra-carlito",
    "fonts-crosextra-caladea", "fonts-texgyre", "fonts-croscore", "fonts-linuxlibertine",
    "fonts-inconsolata", "fonts-hack", "fonts-comic-neue", "fonts-ebgaramond", "fonts-stix",
    "fonts-sil-gentiumplus", "fonts-sil-charis", "fonts-sil-andika", "fonts-junicode",
    "fonts-inter", "fonts-cmu", "fonts-oldstandard", "fonts-dkg-handwriting",
    "fonts-humor-sans", "fonts-yanone-kaffeesatz", "fonts-quicksand", "fonts-firacode",
    "fonts-adf-accanthis", "fonts-adf-baskervald", "fonts-adf-gillius",
    "fonts-adf-universalis", "fonts-adf-berenis", "fonts-jura", "fonts-league-spartan",
    "fonts-bebas-neue", "fonts-cabin", "fonts-go", "fonts-anonymous-pro",
    "fonts-courier-prime", "fonts-sil-doulos", "fonts-gfs-didot", "fonts-gfs-artemisia",
    "fonts-gfs-neohellenic", "fonts-oflb-euterpe", "fonts-tuffy", "fonts-femkeklaver",
    "fonts-mononoki", "fonts-agave", "fonts-fantasque-sans", "fonts-isabella",
    "fonts-kristi", "fonts-dancingscript", "fonts-blankenburg",
)
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts")
FONT_EXTENSIONS = (".ttf", ".otf")
# Fonts whose code points for digits / letters draw pictures or math variants, not glyphs.
EXCLUDED_NAME_PARTS = ("dingbat", "symbol", "math", "emoji", "music", "icon", "keyboard",
                       "d050000l")
PROBE_SIZE = 20  # Side of the normalised glyph picture used to find duplicates.


@dataclasses.dataclass(frozen=True)
class Font:
  path: str
  family: str
  style: str
  group: str = ""  # The family group the split works on (set by `group_and_dedupe`).

  @property
  def name(self) -> str:
    return f"{self.family} {self.style}".strip()


def ensure_packages(packages: Sequence[str] = FONT_PACKAGES) -> List[str]:
  """Installs the missing packages with apt-get; returns the ones still missing."""
  missing = [p for p in packages if not _installed(p)]
  if not missing:
    return []
  if shutil.which("apt-get") is None:
    print(f"no apt-get: cannot install {len(missing)} font packages", file=sys.stderr)
    return missing
  cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
  env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
  print("installing:", " ".join(missing), file=sys.stderr)
  if subprocess.run(cmd, env=env, check=False).returncode != 0:
    # An empty or stale package list is the usual cause; refresh once and try again.
    subprocess.run(["apt-get", "update"], env=env, check=False)
    subprocess.run(cmd, env=env, check=False)
  return [p for p in packages if not _installed(p)]


def _installed(package: str) -> bool:
  if shutil.which("dpkg-query") is None:
    return False
  out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                       capture_output=True, text=True, check=False)
  return out.returncode == 0 and "install ok installed" in out.stdout


def find_font_files(dirs: Sequence[str] = FONT_DIRS) -> List[str]:
  """Every .ttf / .otf file under `dirs`, sorted (real paths, duplicates removed)."""
  found = set()
  for top in dirs:
    for root, _, files in os.walk(top):
      for f in files:
        if f.lower().endswith(FONT_EXTENSIONS):
          found.add(os.path.realpath(os.path.join(root, f)))
  return sorted(found)


def _names(tt) -> tuple:
  """(family, style) from the name table, typographic names first."""
  table = tt["name"]
  def get(*ids):
    for i in ids:
      rec = table.getDebugName(i)
      if rec:
        return rec.strip()
    return ""
  return get(16, 1), get(17, 2)


def load_font(path: str, chars: str) -> Optional[Font]:
  """A Font when `path` maps every char of `chars`, else None (also for unreadable files)."""
  from fontTools.ttLib import TTFont  # Installed with matplotlib; only needed here.
  try:
    with TTFont(path, lazy=True, fontNumber=0) as tt:
      cmap = tt.getBestCmap() or {}
      family, style = _names(tt)
  except Exception:  # A font file fontTools cannot parse is not usable.  # noqa: BLE001
    return None
  if not family or any(ord(c) not in cmap for c in chars):
    return None
  lowered = f"{family} {os.path.basename(path)}".lower()
  if any(part in lowered for part in EXCLUDED_NAME_PARTS):
    return None
  return Font(path=path, family=family, style=style)


def covered(path: str, chars: str) -> str:
  """The characters of `chars` that the font at `path` maps to a glyph ("" if unreadable)."""
  from fontTools.ttLib import TTFont  # Installed with matplotlib; only needed here.
  try:
    with TTFont(path, lazy=True, fontNumber=0) as tt:
      cmap = tt.getBestCmap() or {}
  except Exception:  # A font file fontTools cannot parse covers nothing.  # noqa: BLE001
    return ""
  return "".join(c for c in chars if ord(c) in cmap)


def glyph_mask(path: str, char: str, size: int) -> Optional[np.ndarray]:
  """The char's ink as a uint8 mask cropped to its bounding box, or None when blank."""
  font = _truetype(path, size)
  left, top, right, bottom = font.getbbox(char)
  w, h = right - left + 4, bottom - top + 4
  if w <= 4 or h <= 4:
    return None
  img = Image.new("L", (w, h), 0)
  ImageDraw.Draw(img).text((2 - left, 2 - top), char, fill=255, font=font)
  arr = np.asarray(img)
  ys, xs = np.nonzero(arr > 32)
  if ys.size == 0:
    return None
  return arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


_FONT_CACHE: Dict[tuple, ImageFont.FreeTypeFont] = {}


def _truetype(path: str, size: int) -> ImageFont.FreeTypeFont:
  key = (path, size)
  if key not in _FONT_CACHE:
    _FONT_CACHE[key] = ImageFont.truetype(path, size)
  return _FONT_CACHE[key]


def probe(font: Font, chars: str) -> Optional[np.ndarray]:
  """The class glyphs, each scaled into a PROBE_SIZE square, as one float vector in [0, 1]."""
  tiles = []
  for c in chars:
    mask = glyph_mask(font.path, c, 64)
    if mask is None:
      return None
    h, w = mask.shape
    scale = PROBE_SIZE / max(h, w)
    small = Image.fromarray(mask).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                         Image.BILINEAR)
    tile = np.zeros((PROBE_SIZE, PROBE_SIZE), np.float32)
    sh, sw = small.height, small.width
    y0, x0 = (PROBE_SIZE - sh) // 2, (PROBE_SIZE - sw) // 2
    tile[y0:y0 + sh, x0:x0 + sw] = np.asarray(small, np.float32) / 255.0
    tiles.append(tile.ravel())
  return np.concatenate(tiles)


def group_and_dedupe(fonts: Sequence[Font], chars: str, dup_distance: float) -> List[Font]:
  """Drops near-identical styles and sets each kept font's `group` (see module doc).

  Two styles are near-identical when the mean absolute difference of their normalised
  class glyphs is below `dup_distance` (0.02 = 2% of full ink per pixel on average). The
  first style in path order is kept. Groups: families joined by any near-identical pair.
  """
  probes, usable = [], []
  for f in fonts:
    p = probe(f, chars)
    if p is not None and p.mean() > 0.02:  # Some ink in every glyph's box on average.
      probes.append(p)
      usable.append(f)
  if not usable:
    return []
  x = np.stack(probes)
  parent = {f.family: f.family for f in usable}

  def root(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a

  kept_idx: List[int] = []
  for i in range(len(usable)):
    dup = None
    if kept_idx:
      d = np.abs(x[kept_idx] - x[i]).mean(axis=1)
      j = int(np.argmin(d))
      dup = kept_idx[j] if d[j] < dup_distance else None
    if dup is None:
      kept_idx.append(i)
    else:
      a, b = sorted((root(usable[i].family), root(usable[dup].family)))
      parent[b] = a  # The alphabetically first family names the group.
  return [dataclasses.replace(usable[i], group=root(usable[i].family)) for i in kept_idx]


def split_groups(fonts: Sequence[Font], test_fraction: float, seed: int) -> Dict[str, List[Font]]:
  """{"train": [...], "test": [...]}: whole groups, about `test_fraction` of the styles in test.

  Groups are ordered by a seeded hash of their name, so the split is a function of the
  seed and the set of fonts alone (not of file order or Python's hash seed).
  """
  groups: Dict[str, List[Font]] = {}
  for f in fonts:
    groups.setdefault(f.group, []).append(f)
  if len(groups) < 2:
    raise ValueError(f"need fonts of at least 2 family groups to split by font; found "
                     f"{len(groups)} ({sorted(groups)})")
  def key(g):
    return hashlib.sha256(f"{seed}:{g}".encode()).hexdigest()
  order = sorted(groups, key=key)
  target = test_fraction * len(fonts)
  test, n = [], 0
  for g in order:
    if n >= target or len(test) == len(order) - 1:
      break
    test.append(g)
    n += len(groups[g])
  test = test or order[:1]
  train = [g for g in order if g not in test]
  pick = lambda names: sorted((f for g in names for f in groups[g]), key=lambda f: f.path)
  return {"train": pick(train), "test": pick(test)}
