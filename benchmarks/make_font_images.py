"""A semi-supervised image set of glyphs rendered from Debian's fonts, split by font.

  python benchmarks/make_font_images.py --out data/font_digits --classes digits --seed 0
  python benchmarks/make_font_images.py --out data/font_letters --classes letters --seed 0

Writes (ImageFolder layout, as `noisy-student`'s data flags read it):
  <out>/labeled/<class>/l_000000.png    labeled images, class-balanced
  <out>/unlabeled/u_000000.png          flat, no labels (names carry no class)
  <out>/test/<class>/t_000000.png       test images, from fonts never used above
  <out>/unlabeled_truth.json            {"u_000000.png": "7", ...} kept outside unlabeled/
  <out>/images.csv                      split, file, class, font of every image
  <out>/manifest.json                   fonts per split, counts, seed, options, command

Fonts come from FONT_PACKAGES (benchmarks/font_catalog.py), installed with apt-get when
missing (`--no_install` uses what is installed). Styles that render near-identically are
deduplicated and whole family groups go to one split: the test fonts are never a weight,
slant or clone of a training font. Labeled and unlabeled images share the training fonts:
the unlabeled images are in-domain, as ImageNet and the filtered JFT are for the paper
and as a user's own unlabeled folder is for its labeled one; 600 labeled images see only
some (font, class) pairs that the unlabeled images cover, which is what self-training can
use. Each image: a font group drawn uniformly, then one of its styles (a family with 30
weights does not outweigh one with a single style); random colours with a minimum
contrast, position, size, aspect, rotation, shear, neighbour glyphs at the edges (as in
SVHN's crops), blur and noise. Everything is a function of --seed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import font_catalog  # noqa: E402  (a sibling module of this script)

CLASS_SETS = {
    "digits": "0123456789",
    "letters": "ABCDEFGHIJ",
    "letters26": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}
SUPERSAMPLE = 4  # Glyphs are drawn at 4x and downsampled: smooth edges at 32 px.


def render(mask_fn, char: str, neighbours: str, size: int, rng: np.random.Generator) -> Image.Image:
  """One RGB image of `char` (mask_fn(char) gives its ink) with random nuisances."""
  big = size * SUPERSAMPLE
  canvas, fg = background(big, rng)
  height = rng.uniform(0.55, 0.85) * big
  paste_glyph(canvas, mask_fn, char, neighbours, height, fg, rng)
  return finish(canvas, size, rng)


def background(big: int, rng: np.random.Generator):
  """(float canvas [big, big, 3], foreground colour): a random colour, half the time a
  linear gradient towards a second one."""
  bg, fg = colours(rng)
  canvas = np.empty((big, big, 3), np.float32)
  canvas[:] = bg
  if rng.random() < 0.5:  # A linear background gradient towards a second colour.
    bg2 = np.clip(bg + rng.normal(0, 40, 3), 0, 255)
    t = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]
    canvas = canvas * (1 - t) + bg2 * t
    if rng.random() < 0.5:
      canvas = canvas.transpose(1, 0, 2)
  return canvas, fg


def paste_glyph(canvas: np.ndarray, mask_fn, char: str, neighbours: str, height: float,
                fg, rng: np.random.Generator) -> None:
  """`char` near the centre of the canvas, parts of `neighbours` at its sides."""
  big = canvas.shape[0]
  glyph = fit(glyph_image(mask_fn(char), height, rng), big)
  jitter = (big - max(glyph.shape)) * 0.25
  cx, cy = big / 2 + rng.uniform(-jitter, jitter), big / 2 + rng.uniform(-jitter, jitter)
  for side, c in zip((-1, 1), neighbours):  # Parts of neighbouring glyphs, as in SVHN.
    if c:
      other = glyph_image(mask_fn(c), height, rng)
      gap = (glyph.shape[1] + other.shape[1]) / 2 * rng.uniform(1.0, 1.15)
      paste(canvas, other, fg, cx + side * gap, cy + rng.uniform(-0.05, 0.05) * big, rng)
  paste(canvas, glyph, fg, cx, cy, rng)


def fit(glyph: np.ndarray, big: int) -> np.ndarray:
  """The glyph, shrunk to 0.95 of the canvas side when larger (a wide glyph, rotated)."""
  if max(glyph.shape) <= 0.95 * big:
    return glyph
  s = 0.95 * big / max(glyph.shape)
  return np.asarray(Image.fromarray(glyph).resize(
      (max(1, int(glyph.shape[1] * s)), max(1, int(glyph.shape[0] * s))), Image.BILINEAR))


def finish(canvas: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
  """The canvas downsampled to `size`, sometimes blurred, with pixel noise."""
  img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8)).resize((size, size), Image.LANCZOS)
  blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.4 else 0.0
  if blur:
    img = img.filter(ImageFilter.GaussianBlur(blur))
  noise = rng.normal(0, rng.uniform(0, 12), (size, size, 3))
  return Image.fromarray((np.asarray(img, np.float32) + noise).clip(0, 255).astype(np.uint8))


def colours(rng: np.random.Generator):
  """Background and foreground RGB whose luminances differ by at least 70 of 255."""
  lum = np.array([0.299, 0.587, 0.114])
  while True:
    bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if abs(float((bg - fg) @ lum)) >= 70:
      return bg, fg


def glyph_image(mask: np.ndarray, height: float, rng: np.random.Generator) -> np.ndarray:
  """The mask scaled to `height` with random aspect, shear and rotation; float in [0, 1]."""
  h, w = mask.shape
  aspect = rng.uniform(0.8, 1.25)
  new_w = max(1, int(round(w * height / h * aspect)))
  img = Image.fromarray(mask).resize((new_w, max(1, int(round(height)))), Image.BILINEAR)
  shear = rng.uniform(-0.2, 0.2)
  if abs(shear) > 0.02:
    pad = int(abs(shear) * img.height) + 1
    img = img.transform((img.width + 2 * pad, img.height), Image.AFFINE,
                        (1, shear, -pad - shear * img.height / 2, 0, 1, 0), Image.BILINEAR)
  img = img.rotate(rng.uniform(-15, 15), Image.BILINEAR, expand=True)
  return np.asarray(img, np.float32) / 255.0


def paste(canvas: np.ndarray, alpha: np.ndarray, colour, cx: float, cy: float,
           rng: np.random.Generator) -> None:
  """Alpha-blends `colour` through `alpha` centred at (cx, cy), clipped to the canvas."""
  colour = np.clip(colour + rng.normal(0, 8, 3), 0, 255)
  h, w = alpha.shape
  y0, x0 = int(round(cy - h / 2)), int(round(cx - w / 2))
  ys, xs = max(0, y0), max(0, x0)
  ye, xe = min(canvas.shape[0], y0 + h), min(canvas.shape[1], x0 + w)
  if ye <= ys or xe <= xs:
    return
  a = alpha[ys - y0:ye - y0, xs - x0:xe - x0, None]
  canvas[ys:ye, xs:xe] = canvas[ys:ye, xs:xe] * (1 - a) + colour * a


class Renderer:
  """Draws images of one class set from a list of fonts, sampling group then style."""

  def __init__(self, fonts: Sequence[font_catalog.Font], chars: str, size: int):
    self.chars, self.size = chars, size
    groups: Dict[str, List[font_catalog.Font]] = {}
    for f in fonts:
      groups.setdefault(f.group, []).append(f)
    self.groups = [groups[g] for g in sorted(groups)]
    self._masks: Dict[tuple, np.ndarray] = {}

  def _mask(self, font: font_catalog.Font, char: str) -> np.ndarray:
    key = (font.path, char)
    if key not in self._masks:
      self._masks[key] = font_catalog.glyph_mask(font.path, char, self.size * SUPERSAMPLE)
    return self._masks[key]

  def draw(self, label: int, rng: np.random.Generator):
    """(image, font) for class index `label`."""
    group = self.groups[rng.integers(len(self.groups))]
    font = group[rng.integers(len(group))]
    pair = [self.chars[rng.integers(len(self.chars))] if rng.random() < 0.3 else ""
            for _ in range(2)]
    img = render(lambda c: self._mask(font, c), self.chars[label], pair, self.size, rng)
    return img, font


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
  """n labels, each class n // C or n // C + 1 times, in random order."""
  labels = np.arange(n) % num_classes
  rng.shuffle(labels)
  return labels


def write_split(out: str, split: str, n: int, renderer: Renderer, rng: np.random.Generator,
                class_names: Sequence[str], rows: List[list]) -> Dict[str, str]:
  """Writes one split's images; returns {file name: class} (the truth for unlabeled)."""
  truth = {}
  prefix = {"labeled": "l", "unlabeled": "u", "test": "t"}[split]
  for i, label in enumerate(balanced_labels(n, len(class_names), rng)):
    img, font = renderer.draw(int(label), rng)
    name = f"{prefix}_{i:06d}.png"
    sub = "" if split == "unlabeled" else class_names[label]
    folder = os.path.join(out, split, sub)
    os.makedirs(folder, exist_ok=True)
    img.save(os.path.join(folder, name))
    truth[name] = class_names[label]
    rows.append([split, os.path.join(split, sub, name) if sub else os.path.join(split, name),
                 class_names[label], font.name])
  return truth


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
  p.add_argument("--classes", default="digits", choices=sorted(CLASS_SETS))
  p.add_argument("--num_labeled", type=int, default=600)
  p.add_argument("--num_unlabeled", type=int, default=15960)
  p.add_argument("--num_test", type=int, default=6500)
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--seed", type=int, default=0, help="fonts' split and every image")
  p.add_argument("--test_font_fraction", type=float, default=0.3,
                 help="share of the font styles (whole family groups) kept for test")
  p.add_argument("--dup_distance", type=float, default=0.03,
                 help="styles whose normalised glyphs differ less are one style (0..1)")
  p.add_argument("--fonts", nargs="*", default=None,
                 help="font files to use instead of every installed one")
  p.add_argument("--no_install", action="store_true", help="do not apt-get install fonts")
  return p.parse_args(argv)


def select_fonts(args: argparse.Namespace, chars: str) -> Dict[str, List[font_catalog.Font]]:
  paths = args.fonts if args.fonts else font_catalog.find_font_files()
  fonts = [f for f in (font_catalog.load_font(p, chars) for p in paths) if f]
  kept = font_catalog.group_and_dedupe(fonts, chars, args.dup_distance)
  if not kept:
    raise SystemExit(f"no usable font for {args.classes!r} among {len(paths)} font files")
  return font_catalog.split_groups(kept, args.test_font_fraction, args.seed)


def main(argv=None) -> Dict:
  args = parse_args(argv)
  start = time.time()
  if os.path.exists(args.out) and os.listdir(args.out):
    raise SystemExit(f"--out {args.out} is not empty; choose a new folder")
  missing = [] if args.no_install or args.fonts else font_catalog.ensure_packages()
  chars = CLASS_SETS[args.classes]
  class_names = list(chars)
  splits = select_fonts(args, chars)
  rng = np.random.default_rng(args.seed)
  rows: List[list] = []
  train = Renderer(splits["train"], chars, args.image_size)
  test = Renderer(splits["test"], chars, args.image_size)
  write_split(args.out, "labeled", args.num_labeled, train, rng, class_names, rows)
  truth = write_split(args.out, "unlabeled", args.num_unlabeled, train, rng, class_names, rows)
  write_split(args.out, "test", args.num_test, test, rng, class_names, rows)
  with open(os.path.join(args.out, "unlabeled_truth.json"), "w") as f:
    json.dump(truth, f, indent=0, sort_keys=True)
  with open(os.path.join(args.out, "images.csv"), "w", newline="") as f:
    csv.writer(f).writerows([["split", "file", "class", "font"]] + rows)
  manifest = {
      "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
      "options": vars(args), "classes": class_names,
      "counts": {"labeled": args.num_labeled, "unlabeled": args.num_unlabeled,
                 "test": args.num_test},
      "fonts": {s: [{"name": f.name, "group": f.group, "path": f.path} for f in fs]
                for s, fs in splits.items()},
      "font_groups": {s: sorted({f.group for f in fs}) for s, fs in splits.items()},
      "missing_packages": missing, "seconds": round(time.time() - start, 1),
  }
  with open(os.path.join(args.out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  print(f"{args.out}: {args.num_labeled} labeled, {args.num_unlabeled} unlabeled, "
        f"{args.num_test} test; fonts train {len(splits['train'])} styles / "
        f"{len(manifest['font_groups']['train'])} groups, test {len(splits['test'])} / "
        f"{len(manifest['font_groups']['test'])}; {manifest['seconds']} s")
  return manifest


if __name__ == "__main__":
  main()
