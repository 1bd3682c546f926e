"""Runs the robustness passes of one model over a batched eval dataset.

Every corruption at every severity is one pass over the clean eval images, and all of
them run as one tf.data pipeline: each chunk of images is tagged with its pass, corrupted
by that pass's branch of one `tf.switch_case` (a parallel `map`), and fed to one compiled
step (XLA with --jit_compile; batches padded to one static size, so it is traced once)
that counts top-1 hits per pass on every replica of a tf.distribute strategy. One
pipeline rather than one per pass, whose building and start-up cost as much as small
passes themselves: 0.70x the time on 500 images at 32 px
(`benchmarks/bench_robustness.py`). The randomness is drawn per chunk of SEED_CHUNK
images, seeded by the chunk's index within its pass, so every run sees the same
corrupted images whatever its eval batch size or strategy: a baseline report made on
another machine is comparable. Perturbation sequences are made the same way, in batches
of videos sized so that videos x frames stays near the eval batch size.
FGSM takes one gradient per batch and scores every eps from it.
"""
from __future__ import annotations

import time
import zlib
from typing import Any, Dict, Optional

from absl import logging
import keras
import tensorflow as tf

from noisy_student import config as config_lib
from noisy_student import evaluate
from noisy_student.robustness import corruptions
from noisy_student.robustness import fgsm
from noisy_student.robustness import metrics
from noisy_student.robustness import perturbations
from noisy_student.train import distribute

AUTOTUNE = tf.data.AUTOTUNE
# Clean eval images up to this size stay in memory after the first pass: every later pass
# (about 100 of them) then skips decoding and resizing, which costs more than the model
# on small images.
CACHE_BYTES = 1 << 30
# Images per seeded chunk of corruption or perturbation. Small enough to divide common
# batch sizes' work evenly over the map's parallel calls, large enough that the ops stay
# batched.
SEED_CHUNK = 16
# Part of every report's settings, so a report (or a cached baseline) made by code that
# draws other corrupted images for the same flags is not taken as comparable. Bump it on
# such a change. 2: randomness seeded per SEED_CHUNK images (1: per eval batch).
SAMPLING_VERSION = 2


def settings_of(cfg: config_lib.RobustnessConfig, seed: int = 0) -> Dict[str, Any]:
  """What a report was made with (names resolved, the run's seed); equal settings give
  comparable reports."""
  return {"corruptions": list(corruptions.resolve(cfg.corruptions)),
          "severities": [int(s) for s in cfg.severities],
          "perturbations": list(perturbations.resolve(cfg.perturbations)),
          "perturbation_frames": int(cfg.perturbation_frames),
          "fgsm_epsilons": [float(e) for e in cfg.fgsm_epsilons],
          "max_images": cfg.max_images or None, "seed": int(seed),
          "sampling_version": SAMPLING_VERSION}


def _seed_base(seed: int, what: str) -> int:
  """The first half of every stateless seed of pass `what` (stable across runs); the
  second is the chunk's index within the pass."""
  return seed * 1_000_003 + zlib.crc32(what.encode())


def _count_step(model: keras.Model, num_passes: int):
  """Batch -> {"images": labeled count, "rows": count with unlabeled rows, "pass_images"
  and "pass_correct": labeled count and top-1 hits per pass}; padding rows are skipped,
  and so are rows of label -1 but in "rows"."""
  def step(images, labels, valid, passes):
    predicted = tf.argmax(evaluate.logits_of(model, images), axis=-1, output_type=tf.int32)
    keep = tf.cast(tf.logical_and(valid, labels >= 0), tf.int32)
    correct = keep * tf.cast(tf.equal(predicted, labels), tf.int32)
    return {"images": tf.reduce_sum(keep), "rows": evaluate.count(valid),
            "pass_images": tf.math.unsorted_segment_sum(keep, passes, num_passes),
            "pass_correct": tf.math.unsorted_segment_sum(correct, passes, num_passes)}
  return step


def _flip_step(model: keras.Model):
  """Videos [b, T, H, W, 3] -> summed per-video flip probabilities, both ways of counting
  (padding videos left out)."""
  def step(videos, labels, valid):
    del labels  # ImageNet-P scores stability, not correctness.
    batch, frames = videos.shape[0], videos.shape[1]
    logits = evaluate.logits_of(model, tf.reshape(videos, [-1, *videos.shape[2:]]))
    predicted = tf.reshape(tf.argmax(logits, axis=-1, output_type=tf.int32),
                           [batch, frames])
    weight = tf.cast(valid, tf.float32)  # float32: TPUs have no float64.

    def flips(noise):
      return tf.reduce_sum(perturbations.flip_probability(predicted, noise) * weight)
    videos_used = evaluate.count(valid)
    return {"images": videos_used * frames, "videos": videos_used,
            "vs_first": flips(True), "vs_previous": flips(False)}
  return step


class _Passes:
  """The compiled steps of one model and the loop that feeds them."""

  def __init__(self, model, strategy, epsilons, num_passes: int, jit_compile: bool):
    self.strategy = strategy
    self.count = evaluate.summed_step(_count_step(model, max(num_passes, 1)), strategy,
                                      jit_compile)
    self.flips = evaluate.summed_step(_flip_step(model), strategy, jit_compile)
    self.fgsm = evaluate.summed_step(fgsm.make_step(model, epsilons), strategy, jit_compile)

  def run(self, step, dataset, what: str, batch_size: int) -> Dict[str, Any]:
    start = time.time()
    sums = evaluate.sum_over_dataset(step, dataset, self.strategy, batch_size=batch_size,
                                     what=what)
    if not sums or int(sums["images"]) == 0:
      raise ValueError("robustness: the eval data holds no labeled image")
    seconds = time.time() - start
    logging.info("robustness %s: %d images in %.1f s (%.0f images/s)", what,
                 int(sums["images"]), seconds, int(sums["images"]) / max(seconds, 1e-9))
    return sums

  def errors(self, dataset, what: str, batch_size: int) -> list:
    """Top-1 error of every pass that `dataset` (rows tagged with their pass) holds."""
    sums = self.run(self.count, dataset, what, batch_size)
    return [1.0 - float(c) / float(n) for c, n in zip(sums["pass_correct"],
                                                        sums["pass_images"])]


def _as_pairs(dataset: tf.data.Dataset) -> tf.data.Dataset:
  if isinstance(dataset.element_spec, dict):
    return dataset.map(lambda batch: (batch["image"], batch["label"]))
  return dataset


def _pairs(dataset: tf.data.Dataset, max_images: Optional[int], batch_size: int):
  ds = _as_pairs(dataset)
  if max_images:
    ds = ds.unbatch().take(max_images).batch(batch_size)
  return ds


def chunk_map(passes, seed: int, num_rows: int):
  """The map (chunk index, (images, labels)) -> (fn's output, labels, pass index) that
  runs chunk i of the passes [(what, fn(images, seed))], laid end to end, with the
  stateless seed (_seed_base(seed, what), i within its pass). The passes are branches of
  one `tf.switch_case`, so the map is traced once for all of them."""
  chunks_per_pass = -(-num_rows // SEED_CHUNK)
  bases = tf.constant([_seed_base(seed, what) for what, _ in passes], tf.int64)
  fns = [fn for _, fn in passes]

  # Every branch is tensor ops with static Python choices; converting the 70 branches
  # with autograph took half the time this map took to build (benchmarks/bench_tracing.py).
  @tf.autograph.experimental.do_not_convert
  def apply(index, chunk):
    images, labels = chunk
    pass_index = tf.cast(index // chunks_per_pass, tf.int32)
    seed_pair = tf.stack([tf.gather(bases, pass_index), index % chunks_per_pass])
    out = tf.switch_case(pass_index, [lambda fn=fn: fn(images, seed_pair) for fn in fns])
    return out, labels, tf.fill(tf.shape(labels), pass_index)
  return apply


def _seeded_chunks(ds, passes, seed: int, num_rows: int, out_batch: int):
  """Passes [(what, fn(images, seed))] over the images of `ds` (num_rows of them), one
  after the other, as one dataset of (fn's output, labels, pass index) batches of
  out_batch rows.

  fn sees chunks of SEED_CHUNK images, each seeded by its index within its pass
  (`chunk_map`), as a pipeline of its own per pass would: the same output whatever the
  batch size.
  """
  return (ds.unbatch().batch(SEED_CHUNK).repeat(len(passes)).enumerate()
          .map(chunk_map(passes, seed, num_rows), num_parallel_calls=AUTOTUNE)
          .unbatch().batch(out_batch).prefetch(AUTOTUNE))


def _tagged(ds):
  """(images, labels) -> (images, labels, pass 0 on every row): the clean pass."""
  return ds.map(lambda images, labels: (images, labels, tf.zeros_like(labels, tf.int32)))


def corruption_passes(passes):
  """[(corruption, severity)] -> the [(what, fn(images, seed))] that chunk_map runs."""
  return [(f"{name}/{severity}",
           lambda images, s, n=name, v=severity: corruptions.corrupt(images, n, v, s))
          for name, severity in passes]


def _corrupted(ds, passes, num_rows: int, seed: int, batch_size: int):
  """Every (corruption, severity) of `passes` applied to the images of `ds`, as one
  dataset of (images, labels, pass index) batches."""
  return _seeded_chunks(ds, corruption_passes(passes), seed, num_rows, batch_size)


def _videos_per_batch(frames: int, batch_size: int) -> int:
  return max(1, batch_size // frames)


def _videos(ds, name: str, frames: int, batch_size: int, seed: int, num_rows: int):
  videos = _seeded_chunks(
      ds, [(name, lambda images, s: perturbations.sequences(images, name, frames, s))],
      seed, num_rows, _videos_per_batch(frames, batch_size))
  return videos.map(lambda videos, labels, _: (videos, labels))


def evaluate_robustness(model: keras.Model, dataset: tf.data.Dataset,
                        cfg: config_lib.RobustnessConfig, *, image_size: int,
                        baseline: Optional[dict] = None,
                        strategy: Optional[tf.distribute.Strategy] = None,
                        batch_size: Optional[int] = None, name: str = "model",
                        seed: int = 0, jit_compile: Optional[bool] = None
                        ) -> Dict[str, Any]:
  """Corruption errors, perturbation flip rates and FGSM accuracy of `model`.

  Args:
    model: logits model on float32 [B, S, S, 3] 0..255 images (under `strategy.scope()`).
    dataset: batched eval `(images, labels)` or `{"image", "label"}`, as
      `noisy_student.data.datasets.eval_dataset` yields; label -1 (unknown) is skipped.
    cfg: which corruptions, severities, perturbations, frames, eps; `max_images` caps
      the images used (the first ones, for speed).
    image_size: S (recorded; corruption sizes scale with the images' own size).
    baseline: an earlier result (e.g. the teacher's) that CE and FR are relative to.
    strategy: tf.distribute strategy; default: the current one.
    batch_size: the dataset's batch size; None reads it from the first batch.
    name: the model's name in the report.
    seed: of the corruptions' and perturbations' randomness (the run's --seed).
    jit_compile: compile the passes' steps with XLA; None: `--jit_compile=auto` for
      `strategy`.

  Returns:
    A JSON-able dict: clean_error; corruptions[c] = {category, errors per severity (in
    settings.severities order), mean_error, ce, relative_ce}; perturbations[p] =
    {flip_probability, fr}; fgsm = {epsilons, accuracy}; mce, relative_mce, mfr (None
    without a baseline), mean_corruption_error, mean_flip_probability. Errors,
    probabilities and accuracies are fractions; CE, FR and their means percentages.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if jit_compile is None:
    jit_compile = distribute.resolve_jit_compile("auto", strategy)
  settings = settings_of(cfg, seed)
  start = time.time()
  batch_size = batch_size or evaluate.first_batch_size(dataset)
  if batch_size is None:
    raise ValueError("robustness: the eval data holds no labeled image")
  if cfg.max_images:  # Padding 200 images to a batch of 500 would waste 60% of every pass.
    batch_size = min(batch_size, int(cfg.max_images))
  ds = _pairs(dataset, cfg.max_images, batch_size)
  passes = [(c, s) for c in settings["corruptions"] for s in settings["severities"]]
  steps = _Passes(model, strategy, settings["fgsm_epsilons"], len(passes), jit_compile)
  clean = steps.run(steps.count, _tagged(ds), "clean", batch_size)
  num_images, rows = int(clean["images"]), int(clean["rows"])
  if num_images * image_size * image_size * 3 * 4 <= CACHE_BYTES:
    ds = ds.cache()
  result = {"name": name, "image_size": int(image_size), "settings": settings,
            "num_images": num_images,
            "clean_error": 1.0 - float(clean["pass_correct"][0]) / num_images,
            "corruptions": {}, "perturbations": {}}
  if passes:
    errors = steps.errors(_corrupted(ds, passes, rows, seed, batch_size),
                          f"{len(passes)} corruption passes", batch_size)
    for c in settings["corruptions"]:
      mine = [e for (corruption, _), e in zip(passes, errors) if corruption == c]
      result["corruptions"][c] = {"category": corruptions.CORRUPTIONS[c].category,
                                  "errors": mine, "mean_error": sum(mine) / len(mine)}
  frames = settings["perturbation_frames"]
  for p in settings["perturbations"]:
    sums = steps.run(steps.flips, _videos(ds, p, frames, batch_size, seed, rows), p,
                     _videos_per_batch(frames, batch_size))
    key = "vs_first" if perturbations.PERTURBATIONS[p].noise else "vs_previous"
    result["perturbations"][p] = {"flip_probability": float(sums[key]) / int(sums["videos"])}
  result["fgsm"] = {"epsilons": settings["fgsm_epsilons"], "accuracy": []}
  if settings["fgsm_epsilons"]:
    sums = steps.run(steps.fgsm, ds, "fgsm", batch_size)
    result["fgsm"]["accuracy"] = [float(c) / int(sums["images"]) for c in sums["correct"]]
  result["seconds"] = round(time.time() - start, 1)
  metrics.normalise(result, baseline)
  logging.info("robustness of %s: %s", name, summary(result))
  return result


def summary(result: Dict[str, Any]) -> str:
  """One line: clean error, mCE / mean corruption error, mFR / flip probability, FGSM."""
  def pct(v, scale=100.0):
    return "-" if v is None else f"{scale * v:.1f}"
  parts = [f"clean error {pct(result['clean_error'])}%"]
  if result["corruptions"]:
    parts.append(f"mCE {pct(result['mce'], 1)} (mean corruption error "
                 f"{pct(result['mean_corruption_error'])}%)")
  if result["perturbations"]:
    parts.append(f"mFR {pct(result['mfr'], 1)} (mean flip probability "
                 f"{pct(result['mean_flip_probability'])}%)")
  eps, acc = fgsm_at_largest_epsilon(result)
  if eps is not None:
    parts.append(f"FGSM eps {eps:g}: accuracy {pct(acc)}%")
  return f"{', '.join(parts)} on {result['num_images']} images in {result['seconds']} s"


def fgsm_at_largest_epsilon(result: Dict[str, Any]):
  """(largest eps, accuracy under it), or (None, None) without FGSM."""
  fgsm = result["fgsm"]
  if not fgsm["accuracy"]:
    return None, None
  i = max(range(len(fgsm["epsilons"])), key=lambda j: fgsm["epsilons"][j])
  return fgsm["epsilons"][i], fgsm["accuracy"][i]
