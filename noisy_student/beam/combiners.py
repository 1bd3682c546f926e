"""The filter step inside the Beam job: the balance plan from Beam combiners.

What `noisy_student.balance.balance` computes on one machine, computed here by combiners
so no machine holds more than a class's share (the plan, report and plot files are then
the same, so `--mode=filter` after the job is optional):

  histogram mode  the shards' manifests' per-class confidence histograms, summed
                  (`HistogramFn`) -> `balance.histogram_plan`.
  exact mode      per class (a key), the num_image largest (confidence, id hash) pairs
                  above min_threshold and their count (`TopKFn`) -> `balance.exact_entry`.
  report          per class: records, kept and copies under the plan (`CountCopies`, the
                  reader's own `plan.make_copies_from_hash_fn`), summed (`SumFn`).

Small fields travel as chunks (classes int64, confidence float32, id hash int64) of
arrays: 20 bytes a record, never the images.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics import Metrics
import numpy as np

from noisy_student import balance as balance_lib
from noisy_student.beam.inputs import NAMESPACE
from noisy_student.config import FilterConfig
from tfrecords import plan as plan_lib

Chunk = Tuple[np.ndarray, np.ndarray, np.ndarray]  # classes, confidence, id hashes.


class HistogramFn(beam.CombineFn):
  """Manifests -> their sparse per-class histograms summed, as int64 [C, num_bins]."""

  def __init__(self, num_classes: int, num_bins: int):
    self._num_classes, self._num_bins = num_classes, num_bins

  def create_accumulator(self) -> Dict[Tuple[int, int], int]:
    return collections.Counter()

  def add_input(self, acc, manifest: Dict[str, Any]):
    for c, pairs in manifest["histogram"].items():
      for b, n in pairs:
        acc[(int(c), int(b))] += int(n)
    return acc

  def merge_accumulators(self, accs):
    out = collections.Counter()
    for acc in accs:
      out.update(acc)
    return out

  def extract_output(self, acc) -> np.ndarray:
    sparse: Dict[str, List[List[int]]] = {}
    for (c, b), n in sorted(acc.items()):
      sparse.setdefault(str(c), []).append([b, n])
    return balance_lib.merge_histograms([{"num_classes": self._num_classes,
                                          "num_bins": self._num_bins,
                                          "histogram": sparse}])


class TopKFn(beam.CombineFn):
  """One class's (confidence, id hash) arrays -> (its k largest pairs, count of all)."""

  def __init__(self, k: int):
    self._k = k

  def create_accumulator(self):
    return np.zeros([0], np.float32), np.zeros([0], np.int64), 0

  def _prune(self, x: np.ndarray, h: np.ndarray, n: int, force: bool = False):
    if len(x) > 2 * self._k or (force and len(x) > self._k):  # Amortised sorting.
      keep = np.lexsort((-h, -x))[:self._k]
      x, h = x[keep], h[keep]
    return x, h, n

  def add_input(self, acc, pairs: Tuple[np.ndarray, np.ndarray]):
    x, h = pairs
    return self._prune(np.concatenate([acc[0], x]), np.concatenate([acc[1], h]),
                       acc[2] + len(x))

  def merge_accumulators(self, accs):
    accs = list(accs)
    return self._prune(np.concatenate([a[0] for a in accs]),
                       np.concatenate([a[1] for a in accs]), sum(a[2] for a in accs))

  def extract_output(self, acc):
    return self._prune(*acc, force=True)


def by_class(chunk: Chunk, min_threshold: float) -> Iterator[Tuple[int, Tuple]]:
  """A chunk -> (class, (confidence, hash)) of its records at or above min_threshold."""
  classes, x, h = chunk
  above = x >= np.float32(min_threshold)
  for c in np.unique(classes[above]).tolist():
    rows = above & (classes == c)
    yield c, (x[rows], h[rows])


def exact_entries(top: List[Tuple[int, Tuple]], num_classes: int,
                  cfg: FilterConfig) -> List[Dict[str, Any]]:
  """TopKFn's per-class outputs -> the plan's entries, class by class."""
  found = dict(top)
  empty = (np.zeros([0], np.float32), np.zeros([0], np.int64), 0)
  return [balance_lib.exact_entry(*found.get(c, empty), cfg) for c in range(num_classes)]


class CountCopies(beam.DoFn):
  """A chunk -> int64 [3, C]: per class its records, those kept, and their copies."""

  def __init__(self, num_classes: int):
    self._num_classes = num_classes
    self._fn, self._plan_id = None, None

  def process(self, chunk: Chunk, plan: Dict[str, Any]) -> Iterator[np.ndarray]:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self._plan_id != id(plan):  # One traced function per plan, not per chunk.
      self._fn, self._plan_id = plan_lib.make_copies_from_hash_fn(plan), id(plan)
    classes, x, h = chunk
    n = self._fn(tf.constant(classes), tf.constant(x), tf.constant(h)).numpy()
    out = np.zeros([3, self._num_classes], np.int64)
    np.add.at(out[0], classes, 1)
    np.add.at(out[1], classes, (n > 0).astype(np.int64))
    np.add.at(out[2], classes, n)
    yield out


class SumFn(beam.CombineFn):
  """int64 arrays of one shape, summed (zeros of `shape` for no input)."""

  def __init__(self, shape: Sequence[int]):
    self._shape = tuple(shape)

  def create_accumulator(self):
    return np.zeros(self._shape, np.int64)

  def add_input(self, acc, value):
    return acc + value

  def merge_accumulators(self, accs):
    return sum(accs, self.create_accumulator())

  def extract_output(self, acc):
    return acc


class ReadSmallFields(beam.DoFn):
  """A complete shard kept from an earlier run -> its records' small-field chunks."""

  def __init__(self, seed: int):
    self._seed = seed

  def process(self, path: str) -> Iterator[Chunk]:
    # pylint: disable=g-import-not-at-top
    from tfrecords import format as fmt
    from tfrecords import reader
    # pylint: enable=g-import-not-at-top
    for f in reader.read_small_fields([path]):
      yield (f[fmt.CLASS_KEY].numpy(), f[fmt.CONFIDENCE_KEY].numpy(),
             plan_lib.id_hash(f[fmt.ID_KEY], self._seed).numpy())


def balance_plan(manifests: beam.PCollection, small: beam.PCollection, cfg: FilterConfig,
                 *, num_classes: int, num_bins: int, seed: int, digest: str
                 ) -> beam.PCollection:
  """The one-element PCollection of the balance plan of every shard."""
  hist = manifests | "SumHistograms" >> beam.CombineGlobally(
      HistogramFn(num_classes, num_bins))
  if not cfg.exact_topk:  # The adaptive settings resolved from the same histograms.
    return hist | "Plan" >> beam.Map(balance_lib.resolved_plan, cfg, seed, num_bins, digest)
  if cfg.resolved_from_pool():  # checks.py refuses the flags; this guards the API.
    raise ValueError("--exact_topk with --runner takes a fixed --min_threshold and "
                     "--num_image >= 0 (not --adaptive_threshold / --num_image=-1)")
  entries = (small | "AboveThreshold" >> beam.FlatMap(by_class, cfg.min_threshold)
             | "TopKPerClass" >> beam.CombinePerKey(TopKFn(cfg.num_image))
             | "AllClasses" >> beam.combiners.ToList()
             | "ExactEntries" >> beam.Map(exact_entries, num_classes, cfg))
  return entries | "Plan" >> beam.Map(_exact_plan, cfg, seed, num_bins, digest,
                                      beam.pvalue.AsSingleton(hist))


def _exact_plan(entries, cfg, seed, num_bins, digest, hist):
  return balance_lib.make_plan("exact", entries, cfg, seed, num_bins, digest, asked=cfg,
                               pool_mean=balance_lib.mean_confidence(hist))


def counted(small: beam.PCollection, plan_view: Any, num_classes: int) -> beam.PCollection:
  """The one-element PCollection of int64 [3, C] per-class sums under the plan."""
  return (small | "CountCopies" >> beam.ParDo(CountCopies(num_classes), plan_view)
          | "SumCopies" >> beam.CombineGlobally(SumFn([3, num_classes])))


def finish(plan: Dict[str, Any], counts: np.ndarray, shards: Iterable[Dict[str, Any]], *,
           out: str, cfg: FilterConfig, class_names: Sequence[str]) -> Dict[str, Any]:
  """Writes the balance plan, report and plot (as `balance.balance` does); counts the
  kept records per class. Returns the report's totals."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from tfrecords import format as fmt
  # pylint: enable=g-import-not-at-top
  shards = list(shards)
  tf.io.gfile.makedirs(out)
  fmt.write_json_atomic(f"{out}/{plan_lib.PLAN_NAME}", plan)
  before = np.sum([s["class_counts"] for s in shards], axis=0)
  counted_ = {"records": counts[0], "kept": counts[1], "copies": counts[2]}
  resolved = dataclasses.replace(cfg, min_threshold=plan["min_threshold"],
                                 num_image=plan["num_image"])
  report, _, _ = balance_lib.write_report(out, plan, resolved, class_names, before, counted_,
                                          sum(s["skipped_count"] for s in shards))
  for c, name in enumerate(class_names):
    Metrics.counter(NAMESPACE, f"kept_{name}").inc(int(counts[1][c]))
  return report["totals"]


def shard_summary(manifest: Dict[str, Any]) -> Dict[str, Any]:
  """What `finish` needs of a manifest (not its histogram)."""
  return {k: manifest[k] for k in ("shard", "class_counts", "skipped_count",
                                   "record_count")}

