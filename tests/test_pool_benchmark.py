"""benchmarks/make_pool_images.py, the OOC-aware measures and compare_filters.py.

Fonts are the ones matplotlib ships (as tests/test_font_benchmark.py), so the tests are
fast, offline and never skipped.
"""
import json
import os
import sys

import matplotlib
import numpy as np
import pytest
from PIL import Image

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)

import compare_filters  # noqa: E402
import font_catalog  # noqa: E402
import make_pool_images as pool  # noqa: E402
import pseudo_label_accuracy  # noqa: E402
import run_font_benchmark  # noqa: E402
from noisy_student import phases  # noqa: E402
from tfrecords import format as fmt  # noqa: E402


@pytest.fixture(scope="module")
def font_files():
  files = font_catalog.find_font_files([os.path.join(matplotlib.get_data_path(), "fonts")])
  fonts = [f for f in (font_catalog.load_font(p, pool.CLASSES) for p in sorted(files)) if f]
  by_family = {}
  for f in fonts:
    by_family.setdefault(f.family, []).append(f.path)
  assert len(by_family) >= 2, f"need fonts of 2 families, found {sorted(by_family)}"
  return [p for paths in list(by_family.values())[:4] for p in paths[:2]]


def _generate(out, fonts, seed=0, **flags):
  argv = [f"--out={out}", f"--seed={seed}", "--no_install", "--image_size=24",
          "--test_font_fraction=0.4", "--fonts", *fonts]
  for k, v in {"num_labeled": 30, "num_unlabeled": 80, "num_test": 15, **flags}.items():
    argv.append(f"--{k}={v}")
  return pool.main(argv)


def test_pool_layout_truth_imbalance_and_out_of_class(tmp_path, font_files):
  out = tmp_path / "pool"
  manifest = _generate(str(out), font_files, ooc_fraction=0.25, imbalance=6)
  classes = sorted(os.listdir(out / "labeled"))
  assert classes == sorted(pool.CLASSES) == sorted(os.listdir(out / "test"))
  assert [len(os.listdir(out / "labeled" / c)) for c in classes] == [2] * 15  # Balanced.
  assert Image.open(next((out / "test" / "A").iterdir())).size == (24, 24)
  truth = json.loads((out / "unlabeled_truth.json").read_text())
  assert sorted(truth) == sorted(os.listdir(out / "unlabeled"))
  ooc = [v for v in truth.values() if v.startswith(pool.OOC_PREFIX)]
  assert len(ooc) == 20  # 25% of 80.
  assert {v.split(":")[1] for v in ooc} <= {"glyph", "shape", "texture"}
  assert set(truth.values()) - set(ooc) <= set(pool.CLASSES)
  counts = manifest["unlabeled_class_counts"]
  assert sum(counts.values()) == 60 and sum(manifest["unlabeled_ooc_counts"].values()) == 20
  assert max(counts.values()) >= 4 * max(1, min(counts.values()))  # Zipf, ~6x.
  glyphs = [v.split(":", 2)[2] for v in ooc if v.startswith("ooc:glyph:")]
  assert all(g and g in pool.OOC_GLYPHS for g in glyphs)


def test_pool_deterministic_from_seed(tmp_path, font_files):
  for name, seed in (("a", 3), ("b", 3), ("c", 4)):
    _generate(str(tmp_path / name), font_files[:4], seed=seed, num_unlabeled=12)
  read = lambda d: (tmp_path / d / "unlabeled" / "u_000005.png").read_bytes()
  assert read("a") == read("b") != read("c")
  with pytest.raises(SystemExit, match="not empty"):
    _generate(str(tmp_path / "a"), font_files)
  with pytest.raises(SystemExit, match="--ooc_fraction"):
    _generate(str(tmp_path / "d"), font_files, ooc_fraction=1.0)


def test_zipf_counts():
  rng = np.random.default_rng(0)
  counts = pool.zipf_counts(9750, 15, 6.0, rng)
  assert counts.sum() == 9750 and counts.max() / counts.min() == pytest.approx(6, rel=0.02)
  assert list(counts) != sorted(counts, reverse=True)  # A seeded class order.
  assert list(pool.zipf_counts(30, 3, 1.0, rng)) == [10, 10, 10]


def test_out_of_class_glyphs_never_look_like_a_class_glyph(font_files, monkeypatch):
  fonts = [font_catalog.load_font(p, pool.CLASSES) for p in font_files[:2]]
  loose, strict = pool.PoolRenderer(fonts, 24, 0.0), pool.PoolRenderer(fonts, 24, 0.08)
  for font in fonts:
    everything, kept = loose.ooc_chars(font), strict.ooc_chars(font)
    assert set(kept) <= set(everything) and len(kept) > len(pool.OOC_GLYPHS) // 2
    classes = [font_catalog.probe(font, c) for c in pool.CLASSES]
    for c in kept:
      tile = font_catalog.probe(font, c)
      assert min(np.abs(tile - k).mean() for k in classes) >= 0.08
  # A class glyph under another name (as Bebas Neue's lower case, its capitals) is dropped.
  monkeypatch.setattr(pool, "OOC_GLYPHS", "A0")
  assert pool.PoolRenderer(fonts, 24, 0.08).ooc_chars(fonts[0]) == "0"
  assert pool.PoolRenderer(fonts, 24, 1.0).ooc_chars(fonts[0]) == ""


def _shard(directory, ids, classes, conf, names):
  probs = np.stack([np.where(classes == c, conf, (1 - conf) / (len(names) - 1))
                    for c in range(len(names))], 1).astype(np.float32)
  fp = {"teacher": "t", "num_classes": len(names), "num_workers": 1, "num_shards": 1}
  w = fmt.ShardWriter(os.path.join(directory, fmt.shard_name("train", 0, 1)), len(names), fp,
                      [0, len(ids)], num_bins=10)
  w.write_batch([b"x"] * len(ids), ids, np.full([len(ids)], -1), probs, classes, conf)
  w.close()
  fmt.write_json_atomic(os.path.join(directory, "class_names.json"), {"class_names": names})


def test_pseudo_label_accuracy_counts_out_of_class_images(tmp_path):
  """5 records: 3 in class (2 right), 2 out of class; the plan keeps conf >= 0.6 and
  copies class b twice."""
  d = str(tmp_path / "pseudo")
  ids = [f"/x/unlabeled/u_{i}.png".encode() for i in range(5)]
  truth = {"u_0.png": "a", "u_1.png": "b", "u_2.png": "a", "u_3.png": "ooc:shape:star",
           "u_4.png": "ooc:glyph:Q"}
  classes, conf = np.int64([0, 1, 1, 1, 0]), np.float32([0.9, 0.8, 0.65, 0.7, 0.55])
  _shard(d, ids, classes, conf, ["a", "b"])
  plan = {"version": 1, "mode": "exact", "seed": 0, "num_bins": 10, "min_threshold": 0.6,
          "classes": [{"copies": 1.0, "threshold": 0.0, "tie_hash": 0},
                      {"copies": 2.0, "threshold": 0.0, "tie_hash": 0}]}
  fmt.write_json_atomic(os.path.join(d, "balance_plan.json"), plan)
  r = pseudo_label_accuracy.measure(d, truth)
  assert r["all"]["top1"] == pytest.approx(2 / 3)  # In-class records only.
  assert r["all"]["ooc"]["records"] == 2
  assert r["all"]["ooc"]["mean_confidence"] == pytest.approx(0.625)
  assert r["selected"]["records"] == 4 and r["selected"]["top1"] == pytest.approx(2 / 3)
  assert r["selected"]["ooc"] == {"records": 1, "share": 0.25, "of_all": 0.5}
  # Seen: u_0 once, u_1, u_2, u_3 twice each: 7 records, 2 of them out of class.
  assert r["seen"]["records"] == 7 and r["seen"]["ooc"]["share"] == pytest.approx(2 / 7)


def test_compare_filters_rows_and_aurocs():
  """A teacher whose out-of-class images get low, view-unstable confidence: every
  defence keeps fewer of them than confidence >= 0.3, and the rows add up."""
  rng = np.random.default_rng(0)
  n, c = 600, 3
  true = np.where(rng.random(n) < 0.25, -1, rng.integers(0, c, n))
  logits = rng.normal(0, 0.3, (n, c))
  inside = true >= 0
  logits[inside, true[inside]] += 3.0
  logits[~inside, rng.integers(0, c, (~inside).sum())] += 2.0  # Confidently wrong.
  zoom = logits + rng.normal(0, 0.3, (n, c))
  zoom[~inside] = rng.normal(0, 1.0, ((~inside).sum(), c))  # Unstable under a new view.
  report = compare_filters.compare({"plain": logits, "zoom": zoom}, true, (0, 100))
  assert report["ooc"] == int((~inside).sum())
  assert report["auroc"]["confidence"]["in_vs_ooc"] > 0.8
  assert report["auroc"]["zoom_min"]["in_vs_ooc"] > report["auroc"]["confidence"]["in_vs_ooc"]
  rows = {(r["candidate"], r["num_image"]): r for r in report["rows"]}
  base = rows[("confidence >= 0.3 (today)", 0)]
  assert base["seen"] == base["kept"]
  assert rows[("confidence >= 0.9", 0)]["ooc_kept_of_all"] < base["ooc_kept_of_all"]
  balanced = rows[("confidence >= 0.3 (today)", 100)]
  assert balanced["class_max"] == pytest.approx(100) and balanced["seen"] == pytest.approx(300)
  assert "| confidence >= 0.3 (today) | - |" in compare_filters.table(report)


def test_a_variant_run_reads_the_teacher_where_it_was_trained(tmp_path):
  """--teacher_from copies the teacher's markers; their stored <model_dir> paths must
  then still lead to the source run's teacher (compare_filters reads it the same way),
  while the fingerprints follow the new run."""
  source, variant = str(tmp_path / "a"), str(tmp_path / "b")
  for name in run_font_benchmark.TEACHER_PHASES:
    phases.Markers(source).put(name, {"model_dir": source, "teacher": f"{source}/teacher"},
                               {"path": f"{source}/teacher", "image_size": 32}, 1.0)
  run_font_benchmark.start_from_teacher(variant, source)
  marker = phases.Markers(variant).get("teacher")
  assert marker["result"]["path"] == f"{source}/teacher"
  assert marker["fingerprint"] == {"model_dir": variant, "teacher": f"{variant}/teacher"}
  assert compare_filters.teacher_of(variant)["path"] == f"{source}/teacher"
  assert compare_filters.teacher_of(source)["path"] == f"{source}/teacher"
