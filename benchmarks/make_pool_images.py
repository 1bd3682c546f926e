"""A realistic unlabeled pool: clutter, out-of-class images, class imbalance, unseen fonts.

  python benchmarks/make_pool_images.py --out data/pool/s0 --seed 0      # ~3 min

The layout of benchmarks/make_font_images.py, whose rendering it builds on:
  <out>/labeled/<class>/l_000000.png    600 labeled images, class-balanced
  <out>/unlabeled/u_000000.png          13,000 images, flat, no labels
  <out>/test/<class>/t_000000.png       4,500 test images, balanced, fonts never used above
  <out>/unlabeled_truth.json            {"u_000000.png": "K", "u_000001.png":
                                         "ooc:shape:star", ...}, kept outside unlabeled/
  <out>/images.csv, manifest.json       every image's split, file, truth, font; the options
A 15-class task (the capitals in CLASSES) at 64 px whose unlabeled pool is like a user's
own folder rather than a clean copy of the labeled classes:
* --ooc_fraction (0.25) of it is in no class (truth OOC_PREFIX + "<kind>:<what>"): half
  other glyphs of the training fonts (the other capitals, digits, lower case, symbols),
  a quarter drawn shapes, a quarter textures or bare clutter. A glyph that renders like a
  class glyph in its font (normalised pictures closer than --ooc_min_distance) is not used
  with that font, so no out-of-class image is a class image under another name;
* its in-class images follow a Zipf law over the classes in a seeded order, the most
  frequent --imbalance (6) times as many as the rarest;
* every image is cluttered (low-contrast strokes, outlines and blobs behind the object)
  on top of make_font_images' nuisances (colours, gradient, position, size, aspect,
  shear, rotation, parts of neighbouring capitals, blur, noise);
* test fonts are never training fonts (whole family groups, as make_font_images).
Everything is a function of --seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import font_catalog  # noqa: E402  (sibling modules of this script)
import make_font_images as mfi  # noqa: E402

CLASSES = "ABCDEFGHKLMNPRT"
OOC_PREFIX = "ooc:"  # Truth values of out-of-class images start with it.
OOC_GLYPHS = "IJOQSUVWXYZ0123456789abdefghnqrty#$%&@?!+=*<>/~"
SHAPES = ("ellipse", "ring", "box", "frame", "triangle", "star", "cross", "arrow",
          "polygon", "scribble")
TEXTURES = ("stripes", "checker", "dots", "noise", "clutter")
OOC_KINDS = (("glyph", 0.5), ("shape", 0.25), ("texture", 0.25))
Item = Tuple[str, str]  # (kind, what): ("class", "K"), ("glyph", ""), ("shape", "star").


def zipf_counts(n: int, num_classes: int, imbalance: float,
                rng: np.random.Generator) -> np.ndarray:
  """n split over the classes as k^-s (s so that the first is `imbalance` x the last),
  in a seeded class order; sums to n exactly."""
  s = np.log(imbalance) / np.log(num_classes) if num_classes > 1 else 0.0
  w = np.arange(1, num_classes + 1, dtype=np.float64) ** -s
  counts = np.floor(n * w / w.sum()).astype(np.int64)
  counts[:n - counts.sum()] += 1  # The remainder to the most frequent classes.
  return counts[rng.permutation(num_classes).argsort()]


def add_clutter(canvas: np.ndarray, count: int, fg, rng: np.random.Generator) -> None:
  """`count` strokes, outlines and blobs at low opacity, in random colours and (one in
  three) the object's colour `fg`."""
  big = canvas.shape[0]
  for _ in range(count):
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = rng.uniform(-0.1, 1.1, 4) * big
    box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    width = max(1, int(rng.uniform(0.01, 0.04) * big))
    kind = rng.integers(4)
    if kind == 0:
      draw.line([(x0, y0), (x1, y1)], fill=255, width=width)
    elif kind == 1:
      draw.arc(box, *sorted(rng.uniform(0, 360, 2)), fill=255, width=width)
    elif kind == 2:
      draw.rectangle(box, outline=255, width=width)
    else:
      r = rng.uniform(0.03, 0.12) * big
      draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=255)
    alpha = np.asarray(mask, np.float32)[..., None] / 255.0 * rng.uniform(0.15, 0.45)
    colour = fg if rng.random() < 1 / 3 else rng.uniform(0, 255, 3)
    canvas *= 1 - alpha
    canvas += alpha * np.asarray(colour, np.float32)


def shape_mask(name: str, rng: np.random.Generator, side: int = 160) -> np.ndarray:
  """A uint8 ink mask of a drawn shape, cropped to its ink."""
  img = Image.new("L", (side, side), 0)
  draw = ImageDraw.Draw(img)
  m, w = side * 0.05, max(2, int(side * rng.uniform(0.06, 0.14)))
  box = [m, m + rng.uniform(0, 0.3) * side, side - m, side - m]
  c, r = side / 2, side / 2 - m
  angles = lambda n, start: start + np.arange(n) * 2 * np.pi / n
  ring = lambda n, radius, start: [(c + radius * np.cos(a), c + radius * np.sin(a))
                                   for a in angles(n, start)]
  if name == "ellipse":
    draw.ellipse(box, fill=255)
  elif name == "ring":
    draw.ellipse(box, outline=255, width=w)
  elif name == "box":
    draw.rectangle(box, fill=255)
  elif name == "frame":
    draw.rectangle(box, outline=255, width=w)
  elif name == "triangle":
    draw.polygon(ring(3, r, rng.uniform(0, 2 * np.pi)), fill=255)
  elif name == "star":
    n = int(rng.integers(5, 9))
    outer, inner = ring(n, r, 0.0), ring(n, r * rng.uniform(0.35, 0.55), np.pi / n)
    draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=255)
  elif name == "cross":
    draw.rectangle([c - w, m, c + w, side - m], fill=255)
    draw.rectangle([m, c - w, side - m, c + w], fill=255)
  elif name == "arrow":
    draw.polygon([(m, c - w), (c, c - w), (c, m + w), (side - m, c), (c, side - m - w),
                  (c, c + w), (m, c + w)], fill=255)
  elif name == "polygon":
    n = int(rng.integers(5, 8))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = r * rng.uniform(0.6, 1.0, n)
    draw.polygon([(c + q * np.cos(t), c + q * np.sin(t)) for q, t in zip(rad, a)], fill=255)
  elif name == "scribble":
    draw.line([tuple(p) for p in rng.uniform(m, side - m, (int(rng.integers(3, 7)), 2))],
              fill=255, width=w, joint="curve")
  else:
    raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
  arr = np.asarray(img)
  ys, xs = np.nonzero(arr)
  return arr[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def paint_texture(canvas: np.ndarray, name: str, fg, rng: np.random.Generator) -> None:
  """Covers the canvas with a pattern in colour `fg` (or, for "clutter", more clutter)."""
  big = canvas.shape[0]
  if name == "clutter":
    add_clutter(canvas, int(rng.integers(4, 10)), fg, rng)
    return
  y, x = np.mgrid[0:big, 0:big].astype(np.float32) / big
  t = rng.uniform(0, np.pi)
  u, v = x * np.cos(t) + y * np.sin(t), -x * np.sin(t) + y * np.cos(t)
  period = rng.uniform(0.08, 0.3)
  if name == "stripes":
    alpha = (np.sin(2 * np.pi * u / period) > rng.uniform(-0.5, 0.5)).astype(np.float32)
  elif name == "checker":
    alpha = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
  elif name == "dots":
    du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
    alpha = (du ** 2 + dv ** 2 < rng.uniform(0.05, 0.2)).astype(np.float32)
  elif name == "noise":
    cells = int(rng.integers(3, 10))
    field = Image.fromarray((rng.uniform(0, 255, (cells, cells))).astype(np.uint8))
    alpha = np.asarray(field.resize((big, big), Image.BICUBIC), np.float32) / 255.0
  else:
    raise ValueError(f"unknown texture {name!r}; known: {TEXTURES}")
  alpha = alpha[..., None] * rng.uniform(0.6, 1.0)
  canvas *= 1 - alpha
  canvas += alpha * np.clip(np.asarray(fg, np.float32) + rng.normal(0, 8, 3), 0, 255)


class PoolRenderer(mfi.Renderer):
  """Draws class images, out-of-class glyphs, shapes and textures, all cluttered."""

  def __init__(self, fonts: Sequence[font_catalog.Font], size: int, min_distance: float):
    super().__init__(fonts, CLASSES, size)
    self.min_distance = min_distance
    self._ooc_chars: Dict[str, str] = {}

  def ooc_chars(self, font: font_catalog.Font) -> str:
    """The OOC_GLYPHS this font has that render unlike each of its class glyphs."""
    if font.path not in self._ooc_chars:
      tile = lambda c: font_catalog.probe(font, c)
      classes = [t for t in map(tile, CLASSES) if t is not None]
      ok = []
      for c in font_catalog.covered(font.path, OOC_GLYPHS):
        t = tile(c)
        if t is not None and t.mean() > 0.02 and min(
            np.abs(t - k).mean() for k in classes) >= self.min_distance:
          ok.append(c)
      self._ooc_chars[font.path] = "".join(ok)
    return self._ooc_chars[font.path]

  def _font(self, rng: np.random.Generator) -> font_catalog.Font:
    group = self.groups[rng.integers(len(self.groups))]
    return group[rng.integers(len(group))]

  def draw_item(self, item: Item, rng: np.random.Generator) -> Tuple[Image.Image, str, str]:
    """(image, font name or "-", truth) of one item."""
    big = self.size * mfi.SUPERSAMPLE
    canvas, fg = mfi.background(big, rng)
    add_clutter(canvas, int(rng.integers(2, 7)), fg, rng)
    kind, what = item
    font_name = "-"
    if kind in ("class", "glyph"):
      font = self._font(rng)
      if kind == "glyph":
        for _ in range(100):  # A font with no usable out-of-class glyph: another font.
          if self.ooc_chars(font):
            break
          font = self._font(rng)
        chars = self.ooc_chars(font)
        what = chars[rng.integers(len(chars))]
      pair = [CLASSES[rng.integers(len(CLASSES))] if rng.random() < 0.3 else ""
              for _ in range(2)]
      height = rng.uniform(0.5, 0.8) * big
      mfi.paste_glyph(canvas, lambda c: self._mask(font, c), what, pair, height, fg, rng)
      font_name = font.name
    elif kind == "shape":
      glyph = mfi.fit(mfi.glyph_image(shape_mask(what, rng), rng.uniform(0.35, 0.8) * big, rng),
                      big)
      jitter = (big - max(glyph.shape)) * 0.25
      mfi.paste(canvas, glyph, fg, big / 2 + rng.uniform(-jitter, jitter),
                big / 2 + rng.uniform(-jitter, jitter), rng)
    else:
      paint_texture(canvas, what, fg, rng)
    truth = what if kind == "class" else f"{OOC_PREFIX}{kind}:{what}"
    return mfi.finish(canvas, self.size, rng), font_name, truth


def pool_items(n: int, ooc_fraction: float, imbalance: float,
               rng: np.random.Generator) -> List[Item]:
  """The unlabeled pool's items in random order: Zipf in-class ones and out-of-class ones."""
  n_ooc = int(round(n * ooc_fraction))
  counts = zipf_counts(n - n_ooc, len(CLASSES), imbalance, rng)
  items = [("class", c) for c, k in zip(CLASSES, counts) for _ in range(k)]
  kinds, shares = zip(*OOC_KINDS)
  choices = {"glyph": ("",), "shape": SHAPES, "texture": TEXTURES}
  for kind in rng.choice(kinds, n_ooc, p=shares):
    items.append((str(kind), str(rng.choice(choices[str(kind)]))))
  order = rng.permutation(len(items))
  return [items[i] for i in order]


def write_items(out: str, split: str, items: Sequence[Item], renderer: PoolRenderer,
                rng: np.random.Generator, rows: List[list]) -> Dict[str, str]:
  """Writes one split's images; returns {file name: truth}."""
  truth = {}
  prefix = {"labeled": "l", "unlabeled": "u", "test": "t"}[split]
  for i, item in enumerate(items):
    img, font, value = renderer.draw_item(item, rng)
    name = f"{prefix}_{i:06d}.png"
    rel = os.path.join(split, name) if split == "unlabeled" else os.path.join(split, value, name)
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    img.save(os.path.join(out, rel))
    truth[name] = value
    rows.append([split, rel, value, font])
  return truth


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
  p.add_argument("--num_labeled", type=int, default=600)
  p.add_argument("--num_unlabeled", type=int, default=13000)
  p.add_argument("--num_test", type=int, default=4500)
  p.add_argument("--image_size", type=int, default=64)
  p.add_argument("--ooc_fraction", type=float, default=0.25,
                 help="share of the unlabeled images that are in no class")
  p.add_argument("--imbalance", type=float, default=6.0,
                 help="most / least frequent class in the unlabeled pool (Zipf)")
  p.add_argument("--ooc_min_distance", type=float, default=0.08,
                 help="an out-of-class glyph closer than this to a class glyph of its font "
                      "(mean absolute difference of normalised pictures) is not used")
  p.add_argument("--seed", type=int, default=0, help="fonts' split and every image")
  p.add_argument("--test_font_fraction", type=float, default=0.3)
  p.add_argument("--dup_distance", type=float, default=0.03)
  p.add_argument("--fonts", nargs="*", default=None,
                 help="font files to use instead of every installed one")
  p.add_argument("--no_install", action="store_true", help="do not apt-get install fonts")
  return p.parse_args(argv)


def main(argv=None) -> Dict:
  args = parse_args(argv)
  if not 0 <= args.ooc_fraction < 1 or args.imbalance < 1:
    raise SystemExit(f"--ooc_fraction must be in [0, 1) (got {args.ooc_fraction}) and "
                     f"--imbalance at least 1 (got {args.imbalance})")
  start = time.time()
  if os.path.exists(args.out) and os.listdir(args.out):
    raise SystemExit(f"--out {args.out} is not empty; choose a new folder")
  missing = [] if args.no_install or args.fonts else font_catalog.ensure_packages()
  args.classes = "pool"  # For select_fonts' message.
  splits = mfi.select_fonts(args, CLASSES)
  rng = np.random.default_rng(args.seed)
  rows: List[list] = []
  train = PoolRenderer(splits["train"], args.image_size, args.ooc_min_distance)
  test = PoolRenderer(splits["test"], args.image_size, args.ooc_min_distance)
  balanced = lambda n: [("class", CLASSES[k]) for k in mfi.balanced_labels(n, len(CLASSES), rng)]
  write_items(args.out, "labeled", balanced(args.num_labeled), train, rng, rows)
  pool = pool_items(args.num_unlabeled, args.ooc_fraction, args.imbalance, rng)
  truth = write_items(args.out, "unlabeled", pool, train, rng, rows)
  write_items(args.out, "test", balanced(args.num_test), test, rng, rows)
  with open(os.path.join(args.out, "unlabeled_truth.json"), "w") as f:
    json.dump(truth, f, indent=0, sort_keys=True)
  with open(os.path.join(args.out, "images.csv"), "w", newline="") as f:
    csv.writer(f).writerows([["split", "file", "class", "font"]] + rows)
  values = list(truth.values())
  manifest = {
      "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
      "options": vars(args), "classes": list(CLASSES), "ooc_prefix": OOC_PREFIX,
      "counts": {"labeled": args.num_labeled, "unlabeled": args.num_unlabeled,
                 "test": args.num_test},
      "unlabeled_class_counts": {c: values.count(c) for c in CLASSES},
      "unlabeled_ooc_counts": {k: sum(v.startswith(f"{OOC_PREFIX}{k}:") for v in values)
                               for k, _ in OOC_KINDS},
      "fonts": {s: [{"name": f.name, "group": f.group, "path": f.path} for f in fs]
                for s, fs in splits.items()},
      "font_groups": {s: sorted({f.group for f in fs}) for s, fs in splits.items()},
      "missing_packages": missing, "seconds": round(time.time() - start, 1),
  }
  with open(os.path.join(args.out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  ooc = sum(manifest["unlabeled_ooc_counts"].values())
  print(f"{args.out}: {args.num_labeled} labeled, {args.num_unlabeled} unlabeled ({ooc} out "
        f"of class), {args.num_test} test; fonts train {len(splits['train'])} styles, test "
        f"{len(splits['test'])}; {manifest['seconds']} s")
  return manifest


if __name__ == "__main__":
  main()
