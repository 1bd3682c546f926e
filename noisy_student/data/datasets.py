"""Named input stages and the batched train / eval / predict datasets built from them.

Stages: `shard` (this worker's records) -> `shuffle_repeat` -> `with_seeds` (a stateless
seed per element) -> `decode_or_skip` -> `train_preprocess` / `eval_preprocess` ->
`batch_prefetch`. Images come out float32 `[B, S, S, 3]` on the 0..255 scale.

Distribution: pass the *per-replica* batch size and either `input_context` (from
`strategy.distribute_datasets_from_function`) or `num_workers` / `worker_index`; the
stream is then split with `Source.dataset(n, i)` so workers read disjoint records.
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from noisy_student.config import DataConfig
from noisy_student.data import preprocess
from noisy_student.data.sources import Source

AUTOTUNE = tf.data.AUTOTUNE
_WORKER_SEED_STRIDE = 1_000_003  # Keeps the element seeds of different workers apart.


def shard(source: Source, input_context: Optional[tf.distribute.InputContext] = None,
          num_workers: int = 1, worker_index: int = 0) -> tf.data.Dataset:
  """Stage: this input pipeline's disjoint part of the source's records."""
  if input_context is not None:
    num_workers = input_context.num_input_pipelines
    worker_index = input_context.input_pipeline_id
  return source.dataset(num_workers, worker_index)


def shuffle_repeat(ds: tf.data.Dataset, buffer_size: int, seed: int,
                   repeat: bool = True) -> tf.data.Dataset:
  """Stage: seeded shuffle, then repeat.

  Shuffle before repeat so every epoch is a full pass over the records (shuffling after
  repeat would mix epochs and let some images appear twice before others once). The
  raw encoded bytes are shuffled, which is far smaller than decoded images.
  """
  if buffer_size > 1:
    ds = ds.shuffle(buffer_size, seed=seed, reshuffle_each_iteration=True)
  return ds.repeat() if repeat else ds


def with_seeds(ds: tf.data.Dataset, seed: int, worker_index: int = 0) -> tf.data.Dataset:
  """Stage: adds "seed" (int64 [2]) unique to each element's position in the stream."""
  base = seed + _WORKER_SEED_STRIDE * worker_index
  return ds.enumerate().map(
      lambda i, r: dict(r, seed=preprocess.element_seed(base, i)))


def train_preprocess(ds: tf.data.Dataset, image_size: int, config: DataConfig,
                     small_image: bool = False) -> tf.data.Dataset:
  """Stage: decoded "image" -> float32 [S, S, 3] with the training noise; drops "seed"."""
  # RandAugment's choices are tensor ops (switch_case, where) and its Python branches are
  # static, so autograph has nothing to convert here (benchmarks/bench_tracing.py).
  @tf.autograph.experimental.do_not_convert
  def fn(record):
    record = dict(record)
    image, seed = record.pop("image"), record.pop("seed")
    kwargs = dict(random_flip=config.random_flip, augment_name=config.augment_name,
                  randaug_layer=config.randaug_layer, randaug_mag=config.randaug_mag,
                  cutout_op=config.cutout_op, randaug_variant=config.randaug_variant)
    if small_image:
      out = preprocess.preprocess_small_train(image, image_size, seed,
                                              cutout=config.small_image_cutout, **kwargs)
    else:
      out = preprocess.preprocess_train(image, image_size, seed, **kwargs)
    record["image"] = out
    return record
  return ds.map(fn, num_parallel_calls=AUTOTUNE, deterministic=True)


def eval_preprocess(ds: tf.data.Dataset, image_size: int,
                    small_image: bool = False) -> tf.data.Dataset:
  """Stage: decoded "image" -> float32 [S, S, 3], centre crop (or resize), no noise."""
  return ds.map(
      lambda r: dict(r, image=preprocess.preprocess_eval(r["image"], image_size,
                                                         small_image)),
      num_parallel_calls=AUTOTUNE, deterministic=True)


def batch_prefetch(ds: tf.data.Dataset, batch_size: Optional[int],
                   drop_remainder: bool) -> tf.data.Dataset:
  """Stage: batch and prefetch. drop_remainder keeps the batch dimension static, which
  XLA / TPU and a fixed labeled:unlabeled batch ratio need; eval keeps every image."""
  if batch_size:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE,
                  deterministic=True)
  return ds.prefetch(AUTOTUNE)


def _worker(input_context, worker_index: int) -> int:
  return input_context.input_pipeline_id if input_context is not None else worker_index


def labeled_train_dataset(source: Source, *, image_size: int, batch_size: int,
                          config: DataConfig = DataConfig(), small_image: bool = False,
                          input_context: Optional[tf.distribute.InputContext] = None,
                          num_workers: int = 1, worker_index: int = 0,
                          skip_counter: Optional[preprocess.SkipCounter] = None,
                          repeat: bool = True) -> tf.data.Dataset:
  """Endless (unless repeat=False) stream of noised labeled batches.

  Returns:
    (images float32 [B, S, S, 3] 0..255, labels int64 [B]), B static.
  """
  if not source.labeled:
    raise ValueError(f"Source {source.spec} is unlabeled; a labeled training source "
                     "is needed here.")
  ds = shard(source, input_context, num_workers, worker_index)
  ds = shuffle_repeat(ds, config.shuffle_buffer, config.seed, repeat)
  ds = with_seeds(ds, config.seed, _worker(input_context, worker_index))
  ds = preprocess.decode_or_skip(ds, skip_counter)
  ds = train_preprocess(ds, image_size, config, small_image)
  ds = ds.map(lambda r: (r["image"], r["label"]))
  return batch_prefetch(ds, batch_size, drop_remainder=True)


def train_dataset_from_records(records: tf.data.Dataset, *, image_size: int,
                               batch_size: Optional[int],
                               config: DataConfig = DataConfig(),
                               small_image: bool = False, seed_offset: int = 1,
                               worker_index: int = 0, shuffle: bool = True,
                               repeat: bool = True,
                               skip_counter: Optional[preprocess.SkipCounter] = None
                               ) -> tf.data.Dataset:
  """Training preprocessing for any record stream (e.g. pseudo-labeled records).

  Args:
    records: dicts with "image/encoded" and any other keys ("probabilities", ...),
      already split per worker by the caller.
    seed_offset: added to config.seed so this stream's noise differs from the labeled
      stream's.
    batch_size: None leaves the stream unbatched.
  Returns:
    The records with "image" (float32 [S, S, 3] per element) in place of
    "image/encoded", other keys passed through; batched with drop_remainder.
  """
  seed = config.seed + seed_offset
  ds = shuffle_repeat(records, config.shuffle_buffer if shuffle else 0, seed, repeat)
  ds = with_seeds(ds, seed, worker_index)
  ds = preprocess.decode_or_skip(ds, skip_counter)
  ds = train_preprocess(ds, image_size, config, small_image)
  ds = ds.map(lambda r: {k: v for k, v in r.items() if k != "image/encoded"})
  return batch_prefetch(ds, batch_size, drop_remainder=True)


def eval_dataset(source: Source, *, image_size: int, batch_size: int,
                 small_image: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 num_workers: int = 1, worker_index: int = 0,
                 skip_counter: Optional[preprocess.SkipCounter] = None,
                 drop_remainder: bool = False) -> tf.data.Dataset:
  """One pass, in order, at eval preprocessing: (images [B, S, S, 3], labels [B])."""
  ds = shard(source, input_context, num_workers, worker_index)
  ds = preprocess.decode_or_skip(ds, skip_counter)
  ds = eval_preprocess(ds, image_size, small_image)
  ds = ds.map(lambda r: (r["image"], r["label"]))
  return batch_prefetch(ds, batch_size, drop_remainder)


def _true_label_fn(source: Source):
  """Maps a record to its hidden true label (digits:unlabeled) or its label."""
  if not source.true_labels:
    return lambda r: r["label"]
  ids = list(source.true_labels.keys())
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
      tf.constant(ids, tf.string), tf.constant([source.true_labels[i] for i in ids],
                                               tf.int64)), default_value=-1)
  return lambda r: table.lookup(r["id"])


def predict_dataset(source: Source, image_size: int, batch_size: int, *,
                    small_image: bool = False, num_workers: int = 1, worker_index: int = 0,
                    skip_counter: Optional[preprocess.SkipCounter] = None,
                    drop_remainder: bool = False) -> tf.data.Dataset:
  """One ordered pass for the pseudo-labeler, at eval preprocessing.

  Returns:
    Batches of {"image": float32 [B, S, S, 3], "image/encoded": string [B] (the
    source's own bytes), "id": string [B], "label": int64 [B] (-1 unknown),
    "true_label": int64 [B] (the hidden label of digits:unlabeled, else = label)}.
    Undecodable images are skipped and counted in `skip_counter`.
  """
  true_label = _true_label_fn(source)
  ds = source.dataset(num_workers, worker_index)
  ds = ds.map(lambda r: dict(r, true_label=true_label(r)))
  ds = preprocess.decode_or_skip(ds, skip_counter)
  ds = eval_preprocess(ds, image_size, small_image)
  return batch_prefetch(ds, batch_size, drop_remainder)
