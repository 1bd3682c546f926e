"""noisy_student/balance.py + tfrecords/plan.py: filter, balance, plan applied at read time."""
import json
import os

import numpy as np
import pytest

from noisy_student import balance
from noisy_student.config import FilterConfig
from tfrecords import format as fmt
from tfrecords import plan as plan_lib

C, NUM_BINS = 3, 1000


def _write_shards(directory, conf_by_class, num_shards=3, teacher="t"):
  """Shards whose records have the given per-class confidences (ids 'c<class>-<i>')."""
  fp = {"teacher": teacher, "source": "synthetic", "num_workers": 1, "num_shards": num_shards,
        "teacher_softmax_temp": 1.0, "num_classes": C, "image_size": 8, "num_bins": NUM_BINS}
  recs = [(c, x, f"c{c}-{i}".encode()) for c, xs in enumerate(conf_by_class)
          for i, x in enumerate(xs)]
  bounds = [k * len(recs) // num_shards for k in range(num_shards + 1)]
  for k in range(num_shards):
    part = recs[bounds[k]:bounds[k + 1]]
    w = fmt.ShardWriter(os.path.join(directory, fmt.shard_name("train", k, num_shards)), C,
                        fp, bounds[k:k + 2], num_bins=NUM_BINS)
    conf = np.float32([x for _, x, _ in part])
    cls = np.int64([c for c, _, _ in part])
    probs = np.full([len(part), C], 0.0, np.float32)
    probs[np.arange(len(part)), cls] = conf
    w.write_batch([b"x"] * len(part), [i for _, _, i in part], np.full([len(part)], -1),
                  probs, cls, conf)
    w.close()
  return recs


def _confidences(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.beta(5, 2, 2000).astype(np.float32),  # Surplus class.
          rng.uniform(0.2, 0.9, 120).astype(np.float32),  # Short class (some < 0.3).
          np.float32([0.1, 0.2, 0.25])]  # Nothing above the threshold.


def _read(directory, plan):
  ds = plan_lib.read_pseudo_labels(str(directory), plan).batch(1024)
  return [rec for b in ds.as_numpy_iterator()
          for rec in zip(b[fmt.CLASS_KEY].tolist(), b[fmt.CONFIDENCE_KEY].tolist(),
                         b[fmt.ID_KEY].tolist())]


@pytest.mark.parametrize("exact", [False, True])
def test_surplus_class_keeps_its_most_confident(tmp_path, exact):
  conf = _confidences()
  _write_shards(str(tmp_path), conf)
  cfg = FilterConfig(num_image=500, exact_topk=exact)
  result = balance.balance(str(tmp_path), cfg, seed=3)
  got = _read(tmp_path, result.plan_path)
  kept = np.float32(sorted((x for c, x, _ in got if c == 0), reverse=True))
  top = np.sort(conf[0])[::-1][:500]
  if exact:
    np.testing.assert_array_equal(kept, top)
  else:
    # Differs from the exact top-K only inside one bin of width 1/NUM_BINS (+ binomial
    # noise of that bin's subsample).
    assert abs(len(kept) - 500) <= 10
    assert kept.min() >= top.min() - 1.0 / NUM_BINS
    assert (conf[0] >= top.min() + 1.0 / NUM_BINS).sum() <= (kept >= top.min() + 1e-3).sum()
    overlap = len(np.intersect1d(kept, top)) / 500
    assert overlap >= 0.99
  report = json.load(open(result.report_path))
  row = report["per_class"][0]
  assert row["before"] == 2000 and row["after"] == len(kept) and row["duplicates"] == 0
  assert row["dropped"] == 2000 - len(kept)
  assert os.path.getsize(result.plot_path) > 1000


def test_short_class_is_duplicated_with_seeded_stochastic_rounding(tmp_path):
  conf = _confidences()
  _write_shards(str(tmp_path), conf)
  plan = balance.balance(str(tmp_path), FilterConfig(num_image=300), seed=1).plan_path
  got = _read(tmp_path, plan)
  assert all(x >= 0.3 for _, x, _ in got)  # Filtered by min_threshold.
  assert not [1 for c, _, _ in got if c == 2]  # Nothing of class 2 passes the filter.
  ids = [i for c, _, i in got if c == 1]
  available = int((conf[1] >= 0.3).sum())
  counts = np.unique(np.unique(ids, return_counts=True)[1])
  factor = 300 / available
  assert set(counts) <= {int(np.floor(factor)), int(np.ceil(factor))}
  assert len(set(ids)) == available
  assert abs(len(ids) - 300) <= 3 * np.sqrt(available) + 1
  assert _read(tmp_path, plan) == got  # Deterministic.
  other = balance.balance(str(tmp_path), FilterConfig(num_image=300), seed=2,
                          output_dir=str(tmp_path / "s2")).plan_path
  assert sorted(_read(tmp_path, other)) != sorted(got)  # The seed matters.
  no_up = balance.balance(str(tmp_path), FilterConfig(num_image=300, upsample=False),
                          output_dir=str(tmp_path / "noup")).plan_path
  assert len([1 for c, _, _ in _read(tmp_path, no_up) if c == 1]) == available


def test_num_image_zero_only_filters(tmp_path):
  conf = _confidences()
  _write_shards(str(tmp_path), conf)
  result = balance.balance(str(tmp_path), FilterConfig(num_image=0, min_threshold=0.5))
  got = _read(tmp_path, result.plan_path)
  assert len(got) == sum(int((x >= 0.5).sum()) for x in conf)
  assert result.report["totals"]["after"] == len(got)
  everything = plan_lib.read_pseudo_labels(str(tmp_path)).batch(1024)
  assert sum(len(b[fmt.ID_KEY]) for b in everything) == sum(len(x) for x in conf)


def test_plan_from_other_shards_is_refused(tmp_path):
  _write_shards(str(tmp_path / "a"), _confidences(), teacher="a")
  _write_shards(str(tmp_path / "b"), _confidences(), teacher="b")
  plan = balance.balance(str(tmp_path / "a"), FilterConfig(num_image=100)).plan_path
  with pytest.raises(ValueError, match="computed for other shards"):
    plan_lib.read_pseudo_labels(str(tmp_path / "b"), plan)
  with pytest.raises(ValueError, match="min_threshold=1.5"):
    balance.balance(str(tmp_path / "a"), FilterConfig(min_threshold=1.5))
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"version": 99}))
  with pytest.raises(ValueError, match="balance plan"):
    plan_lib.read_pseudo_labels(str(tmp_path / "a"), str(bad))


@pytest.mark.parametrize("exact", [False, True])
def test_the_originals_filter_output_is_balanced_by_one_pass(tmp_path, exact):
  """Shards without manifests (the original's filter output, keys `label` and `prob`)
  get the same plan as ours with the same confidences: one pass builds the histogram."""
  from test_tfrecords import write_original_shard  # pylint: disable=g-import-not-at-top
  conf = _confidences()
  ours = _write_shards(str(tmp_path / "ours"), conf)
  theirs = tmp_path / "theirs"
  theirs.mkdir()
  probs = np.zeros([len(ours), C], np.float32)  # As _write_shards: x at class c.
  for row, (c, x, _) in enumerate(ours):
    probs[row, c] = x
  for k in range(2):
    write_original_shard(theirs / f"train-0-{k:05d}-of-00002", probs[k::2], seed=k)
  cfg = FilterConfig(num_image=300, exact_topk=exact)
  mine = balance.balance(str(tmp_path / "ours"), cfg, seed=1).report
  result = balance.balance(str(theirs), cfg, seed=1)
  per_class = [(p["before"], p["kept_unique"]) for p in result.report["per_class"]]
  assert per_class[0] == (2000, 300) and per_class[2] == (3, 0)
  assert [p["before"] for p in mine["per_class"]] == [p[0] for p in per_class]
  got = _read(theirs, result.plan_path)  # The plan applies to them at read time.
  assert len(got) == result.report["totals"]["after"]
  assert all(x >= 0.3 for _, x, _ in got)
  # A changed file is another set of shards: the plan is refused.
  write_original_shard(theirs / "train-0-00001-of-00002", probs[:5], seed=7)
  with pytest.raises(ValueError, match="computed for other shards"):
    plan_lib.read_pseudo_labels(str(theirs), result.plan_path)


def test_relabel_keeps_the_first_teachers_selection_with_the_new_teachers_labels(tmp_path):
  """The original's filter-once flow (predict_label.py --reassign_label): a later teacher
  relabels the set the first one filtered; selection and copies stay, labels change."""
  first, second = str(tmp_path / "first"), str(tmp_path / "second")
  _write_shards(first, _confidences(seed=0))
  new = _write_shards(second, _confidences(seed=5), teacher="t2")
  plan = balance.balance(first, FilterConfig(num_image=300), seed=1).plan_path
  selected = sorted(i for _, _, i in _read(first, plan))
  ds = plan_lib.read_pseudo_labels(first, plan, relabel_dir=second).batch(4096)
  got = [(c, x, i) for b in ds.as_numpy_iterator()
         for c, x, i in zip(b[fmt.CLASS_KEY].tolist(), b[fmt.CONFIDENCE_KEY].tolist(),
                            b[fmt.ID_KEY].tolist())]
  assert sorted(i for _, _, i in got) == selected  # Same images, same copies.
  by_id = {i: x for _, x, i in new}
  assert all(x == pytest.approx(by_id[i]) for _, x, i in got)  # The second's labels.
  assert any(x != pytest.approx(x0) for (_, x, _), (_, x0, _) in zip(got, _read(first, plan)))
  # Shards of other images, or in another order, are refused rather than mixed up.
  other = str(tmp_path / "other")
  _write_shards(other, [c[::-1] for c in _confidences(seed=5)][::-1])
  with pytest.raises(Exception, match="do not hold the same images in the same order"):
    list(plan_lib.read_pseudo_labels(first, plan, relabel_dir=other).take(5000))


@pytest.mark.parametrize("exact", [False, True])
def test_adaptive_mean_threshold_and_mean_class_target(tmp_path, exact):
  """adaptive_threshold='mean' raises the threshold to the pool's mean confidence (never
  below min_threshold); num_image=-1 balances to the mean count of what passes it."""
  conf = _confidences()
  _write_shards(str(tmp_path), conf)
  everything = np.concatenate(conf)
  cfg = FilterConfig(adaptive_threshold="mean", num_image=-1, exact_topk=exact)
  result = balance.balance(str(tmp_path), cfg, seed=1)
  plan = json.load(open(result.plan_path))
  assert plan["min_threshold"] == pytest.approx(everything.mean(), abs=0.5 / NUM_BINS)
  assert plan["min_threshold"] > 0.3
  got = _read(tmp_path, result.plan_path)
  assert min(x for _, x, _ in got) >= plan["min_threshold"]
  passing = [int((x >= plan["min_threshold"]).sum()) for x in conf]
  assert plan["num_image"] == int(np.ceil(sum(passing) / C)) == result.report["num_image"]
  kept = [len({i for c, _, i in got if c == k}) for k in range(C)]
  assert kept[0] == pytest.approx(plan["num_image"], abs=10)  # The surplus class, cut.
  assert kept[1] == passing[1]  # The short class, all kept and duplicated.
  assert result.report["asked"] == {"min_threshold": 0.3, "num_image": -1,
                                    "adaptive_threshold": "mean"}
  # The floor wins when the pool is less confident than it.
  high = balance.balance(str(tmp_path), FilterConfig(adaptive_threshold="mean",
                                                     min_threshold=0.9),
                         output_dir=str(tmp_path / "high"))
  assert json.load(open(high.plan_path))["min_threshold"] == pytest.approx(0.9)


def test_resolve_is_a_function_of_the_histograms():
  hist = np.zeros([2, 10], np.int64)
  hist[0, 9], hist[1, 1] = 30, 10  # Confidences ~0.95 (class 0) and ~0.15 (class 1).
  cfg = balance.resolve(hist, FilterConfig(adaptive_threshold="mean", num_image=-1))
  assert cfg.min_threshold == pytest.approx((30 * 0.95 + 10 * 0.15) / 40, abs=1e-6)
  assert cfg.num_image == 15  # 30 pass, over 2 classes.
  assert balance.resolve(hist, FilterConfig()) == FilterConfig()
  with pytest.raises(ValueError, match="adaptive_threshold"):
    balance.balance("unused", FilterConfig(adaptive_threshold="median"))
