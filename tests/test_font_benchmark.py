"""benchmarks/make_font_images.py and its helpers: layout, truth, split by font, measuring.

The generator's normal path installs Debian's font packages with apt-get; here it gets
explicit font files (`--fonts`, `--no_install`): the ones matplotlib ships, so the test is
fast, offline and never skipped.
"""
import csv
import json
import os
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import font_catalog  # noqa: E402
import make_font_images  # noqa: E402
import pseudo_label_accuracy  # noqa: E402
import run_font_benchmark  # noqa: E402
from tfrecords import format as fmt  # noqa: E402

DIGITS = make_font_images.CLASS_SETS["digits"]


@pytest.fixture(scope="module")
def font_files():
  """Fonts of at least two family groups: the ones matplotlib (a dependency) ships, so
  the test runs the same on any machine, with or without Debian's font packages."""
  files = font_catalog.find_font_files([os.path.join(matplotlib.get_data_path(), "fonts")])
  files.sort(key=lambda p: ("dejavu" not in p.lower(), p))
  fonts = [f for f in (font_catalog.load_font(p, DIGITS) for p in files[:40]) if f]
  by_family = {}
  for f in fonts:
    by_family.setdefault(f.family, []).append(f.path)
  assert len(by_family) >= 2, f"need fonts of 2 families, found {sorted(by_family)}"
  return [p for paths in list(by_family.values())[:4] for p in paths[:2]]


def _generate(out, fonts, seed=0, **counts):
  argv = [f"--out={out}", f"--seed={seed}", "--no_install", "--image_size=24",
          "--test_font_fraction=0.4", "--fonts", *fonts]
  for k, v in {"num_labeled": 20, "num_unlabeled": 30, "num_test": 20, **counts}.items():
    argv.append(f"--{k}={v}")
  return make_font_images.main(argv)


def test_layout_truth_and_font_split(tmp_path, font_files):
  out = tmp_path / "set"
  manifest = _generate(str(out), font_files)
  classes = sorted(os.listdir(out / "labeled"))
  assert classes == list(DIGITS) == manifest["classes"]
  assert sorted(os.listdir(out / "test")) == classes
  labeled = [p for c in classes for p in (out / "labeled" / c).iterdir()]
  tests = [p for c in classes for p in (out / "test" / c).iterdir()]
  unlabeled = sorted(os.listdir(out / "unlabeled"))
  assert (len(labeled), len(unlabeled), len(tests)) == (20, 30, 20)
  assert all((out / "unlabeled" / n).is_file() and n.endswith(".png") for n in unlabeled)
  assert [len(os.listdir(out / "labeled" / c)) for c in classes] == [2] * 10  # Balanced.
  img = Image.open(labeled[0])
  assert (img.size, img.mode) == ((24, 24), "RGB")
  # The truth names exactly the unlabeled files, lives outside that folder, and no
  # unlabeled file name carries its class.
  truth = json.loads((out / "unlabeled_truth.json").read_text())
  assert sorted(truth) == unlabeled and set(truth.values()) <= set(classes)
  assert len(set(truth.values())) == 10
  assert all(n.startswith("u_") for n in unlabeled)
  # Split by font: no test font (nor any font of a test group) in labeled or unlabeled.
  train_fonts = {f["name"] for f in manifest["fonts"]["train"]}
  test_fonts = {f["name"] for f in manifest["fonts"]["test"]}
  assert train_fonts and test_fonts and not train_fonts & test_fonts
  assert not set(manifest["font_groups"]["train"]) & set(manifest["font_groups"]["test"])
  with open(out / "images.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 70
  for r in rows:
    assert r["font"] in (test_fonts if r["split"] == "test" else train_fonts), r
    assert (out / r["file"]).is_file()
    if r["split"] == "unlabeled":
      assert truth[os.path.basename(r["file"])] == r["class"]


def test_deterministic_from_seed(tmp_path, font_files):
  _generate(str(tmp_path / "a"), font_files, seed=3, num_unlabeled=10)
  _generate(str(tmp_path / "b"), font_files, seed=3, num_unlabeled=10)
  _generate(str(tmp_path / "c"), font_files, seed=4, num_unlabeled=10)
  read = lambda d: (d / "unlabeled" / "u_000004.png").read_bytes()
  assert read(tmp_path / "a") == read(tmp_path / "b") != read(tmp_path / "c")
  with pytest.raises(SystemExit, match="not empty"):
    _generate(str(tmp_path / "a"), font_files)


def test_near_identical_styles_deduped_and_grouped(font_files):
  """The same file under two family names is one style; the two families become one group."""
  a, b = font_files[0], next(p for p in font_files if font_catalog.load_font(p, DIGITS).family
                             != font_catalog.load_font(font_files[0], DIGITS).family)
  fonts = [font_catalog.Font(a, "Clone One", "Regular"), font_catalog.Font(a, "Clone Two", "Bold"),
           font_catalog.Font(b, "Other", "Regular")]
  kept = font_catalog.group_and_dedupe(fonts, DIGITS, dup_distance=0.03)
  assert [(f.family, f.group) for f in kept] == [("Clone One", "Clone One"), ("Other", "Other")]
  split = font_catalog.split_groups(kept + [font_catalog.Font("x", "Clone Two", "B", "Clone One")],
                                    0.3, seed=0)
  groups = {s: {f.group for f in fs} for s, fs in split.items()}
  assert groups["train"].isdisjoint(groups["test"]) and len(groups["test"]) == 1
  with pytest.raises(ValueError, match="at least 2 family groups"):
    font_catalog.split_groups(kept[:1], 0.3, seed=0)


def test_pseudo_label_accuracy_before_and_after_the_plan(tmp_path):
  """4 records (3 right); the plan drops the low-confidence wrong one and copies one twice."""
  d = str(tmp_path / "pseudo")
  names = ["a", "b"]
  ids = [f"/data/unlabeled/u_{i}.png".encode() for i in range(4)]
  truth = {"u_0.png": "a", "u_1.png": "b", "u_2.png": "a", "u_3.png": "a"}
  classes = np.int64([0, 1, 0, 1])  # The last is wrong.
  conf = np.float32([0.9, 0.8, 0.7, 0.4])
  probs = np.stack([np.where(classes == c, conf, 1 - conf) for c in (0, 1)], 1)
  fp = {"teacher": "t", "num_classes": 2, "num_workers": 1, "num_shards": 1}
  w = fmt.ShardWriter(os.path.join(d, fmt.shard_name("train", 0, 1)), 2, fp, [0, 4], num_bins=10)
  w.write_batch([b"x"] * 4, ids, np.full([4], -1), probs.astype(np.float32), classes, conf)
  w.close()
  fmt.write_json_atomic(os.path.join(d, "class_names.json"), {"class_names": names})
  plan = {"version": 1, "mode": "exact", "seed": 0, "num_bins": 10, "min_threshold": 0.5,
          "classes": [{"copies": 1.0, "threshold": 0.0, "tie_hash": 0},
                      {"copies": 2.0, "threshold": 0.0, "tie_hash": 0}]}
  fmt.write_json_atomic(os.path.join(d, "balance_plan.json"), plan)
  r = pseudo_label_accuracy.measure(d, truth)
  assert r["records"] == 4 and r["all"]["top1"] == pytest.approx(0.75)
  assert r["all"]["true_class_probability"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
  assert r["selected"] == {"records": 3, "top1": 1.0}
  assert r["seen"] == {"records": 4, "top1": 1.0}  # Class b's record twice.
  with pytest.raises(KeyError, match="u_3.png"):
    pseudo_label_accuracy.measure(d, {k: v for k, v in truth.items() if k != "u_3.png"})


def test_driver_summary():
  recs = [{"seed": s, "models": {"teacher": t, "student_1": st}, "final_error_ratio": e,
           "pseudo_all_top1": [p], "pseudo_seen_top1": [p], "pipeline_seconds": 60,
           "pipeline_cpu_seconds": 240, "cnn_top1": c}
          for s, t, st, e, p, c in [(0, 0.9, 0.94, 0.6, 0.9, 0.8), (1, 0.8, 0.86, 0.7, 0.8, 0.7)]]
  table = run_font_benchmark.summarize(recs, "digits")
  assert "| teacher top-1 % | 90.00 | 80.00 | 85.00 ± 7.07 |" in table
  assert "| final / teacher error | 0.60 | 0.70 | 0.65 ± 0.07 |" in table
  assert "| pipeline CPU minutes / 2 | 2.00 | 2.00 | 2.00 ± 0.00 |" in table


def test_summary_plot_from_saved_summaries(tmp_path):
  recs = [{"seed": s, "models": {"teacher": t, "student 1": st}, "cnn_top1": 0.9}
          for s, t, st in [(0, 0.97, 0.98), (1, 0.96, 0.975)]]
  paths = []
  for name in ("digits", "letters"):
    path = tmp_path / name / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"title": name, "records": recs}))
    paths.append(str(path))
  out = tmp_path / "both.png"
  assert run_font_benchmark.main([f"--plot={out}", *paths]) is None
  img = Image.open(out)
  assert img.format == "PNG" and img.size[0] > img.size[1]  # Two panels side by side.
