"""The training input: labeled and pseudo-labeled streams combined, per replica.

Each replica's batch is a dict:
  image [b, S, S, 3] float32 0..255 (noised train view), label [b] int;
  student with stored pseudo-labels: + unlabeled_image [u, S, S, 3], probabilities [u, C];
  student with an on-the-fly teacher: + unlabeled_image [u, S, S, 3] and
  teacher_image [u, T, T, 3] (the un-noised eval view at the teacher's resolution).
with b = train_batch_size / replicas and u = ceil(unlabel_ratio * b).

Either stream may be given raw (a Contract-2 Source, pseudo-label TFRecords, or records
with "image/encoded"; a Source of unlabeled images feeds an on-the-fly teacher) - then
the stages of noisy_student.data.datasets decode and noise it - or as a
tf.data.Dataset of already preprocessed examples (see `train`).

Resume: each stream is a sequence of whole epochs, each shuffled with its own seed, so
a run restarted at global step s starts every pipeline exactly where the uninterrupted
run would be (same epoch, same position in it), skipping raw records before decoding.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import tensorflow as tf

from noisy_student.config import DataConfig
from noisy_student.data import datasets
from noisy_student.data import preprocess
import tfrecords
from noisy_student.train import distribute

SUPERVISED, STORED, TEACHER = "supervised", "stored", "teacher"
_EPOCH_SEED_STRIDE = 1_000_003  # Keeps the shuffle seeds of consecutive epochs apart.
EPOCH_CYCLE = 8  # Distinct epoch orders before they repeat.


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """Sizes and targets of the training input (all batch sizes per replica)."""
  targets: str  # Where the unlabeled targets come from: SUPERVISED, STORED or TEACHER.
  labeled_batch: int
  unlabeled_batch: int
  image_size: int
  teacher_image_size: Optional[int]
  num_classes: int
  small_image: bool = False


def _is_raw(ds: tf.data.Dataset) -> bool:
  """Whether a dataset holds raw records (encoded images) rather than decoded ones."""
  return isinstance(ds.element_spec, dict) and "image/encoded" in ds.element_spec


def epoch_stream(records: tf.data.Dataset, buffer_size: int, seed: int,
                 start_examples: int = 0) -> tf.data.Dataset:
  """Endless stream of whole epochs, each shuffled with its own seed, from a position.

  Epoch e is `records` shuffled with seed f(seed, e mod EPOCH_CYCLE), so the stream is a
  function of the seed alone and a resumed run starts at example `start_examples` by
  skipping whole epochs for free and at most one epoch of raw records (counted once, on
  resume only). The seeds are Python ints, EPOCH_CYCLE of them: tf.data's shuffle
  refuses a tensor seed when the global seed is 0 (random_seed.get_seed compares it).
  """
  first_epoch, offset = 0, 0
  if start_examples:
    first_epoch, offset = divmod(start_examples, count_examples(records))

  def one_epoch(epoch: int) -> tf.data.Dataset:
    if buffer_size <= 1:
      return records
    return records.shuffle(buffer_size, seed=seed * _EPOCH_SEED_STRIDE + epoch,
                           reshuffle_each_iteration=False)

  def cycle(first: int) -> tf.data.Dataset:
    epochs = [one_epoch(e) for e in range(first, EPOCH_CYCLE)]
    return functools.reduce(lambda a, b: a.concatenate(b), epochs)

  first = first_epoch % EPOCH_CYCLE
  stream = cycle(first).concatenate(cycle(0).repeat()) if first else cycle(0).repeat()
  return stream.skip(offset) if offset else stream


def _add_teacher_view(ds: tf.data.Dataset, size: int, small_image: bool) -> tf.data.Dataset:
  """Adds the un-noised eval view the on-the-fly teacher sees, at its own resolution."""
  return ds.map(lambda r: dict(r, teacher_image=preprocess.preprocess_eval(
      r["image"], size, small_image)), num_parallel_calls=tf.data.AUTOTUNE)


def _preprocess(records: tf.data.Dataset, data_cfg: DataConfig, spec: InputSpec,
                seed: int, worker: int, teacher_view: bool) -> tf.data.Dataset:
  """Raw records -> dicts with the noised "image" (the pipeline's named stages)."""
  ds = datasets.with_seeds(records, seed, worker)
  ds = preprocess.decode_or_skip(ds)
  if teacher_view:
    ds = _add_teacher_view(ds, spec.teacher_image_size, spec.small_image)
  ds = datasets.train_preprocess(ds, spec.image_size, data_cfg, spec.small_image)
  return ds.map(lambda r: {k: v for k, v in r.items() if k != "image/encoded"})


def labeled_examples(labeled, data_cfg: DataConfig, spec: InputSpec,
                     ctx: tf.distribute.InputContext, start_examples: int) -> tf.data.Dataset:
  """This pipeline's endless stream of (image, label) train examples."""
  worker = ctx.input_pipeline_id
  if isinstance(labeled, tf.data.Dataset):
    ds = labeled.shard(ctx.num_input_pipelines, worker)
    if not _is_raw(ds):  # Already preprocessed: the caller shuffled and noised it.
      return epoch_stream(ds, 0, data_cfg.seed, start_examples)
  else:  # A Contract-2 Source: each pipeline reads only its own part.
    ds = labeled.dataset(ctx.num_input_pipelines, worker)
  ds = epoch_stream(ds, data_cfg.shuffle_buffer, data_cfg.seed, start_examples)
  # Offsetting the noise seeds by the position keeps a resumed run from replaying the
  # augmentations of the run's first steps.
  ds = _preprocess(ds, data_cfg, spec, data_cfg.seed + start_examples, worker, False)
  return ds.map(lambda e: (e["image"], e["label"]))


def unlabeled_records(pseudo_labels, num_pipelines: int = 1,
                      index: int = 0) -> tf.data.Dataset:
  """Pipeline `index` of `num_pipelines`'s part of the unlabeled stream: a pseudo-label
  directory/pattern (tfrecords reader), a Contract-2 Source of raw images (for an
  on-the-fly teacher; each pipeline reads only its part) or a dataset.

  A directory is read with the balance plan the filter phase wrote into it, if any (a
  pattern has none).
  """
  if hasattr(pseudo_labels, "dataset"):
    return pseudo_labels.dataset(num_pipelines, index)
  if isinstance(pseudo_labels, str):
    pseudo_labels = tfrecords.read_pseudo_labels(pseudo_labels,
                                                 tfrecords.plan_in(pseudo_labels))
  return pseudo_labels.shard(num_pipelines, index) if num_pipelines > 1 else pseudo_labels


def unlabeled_examples(pseudo_labels, data_cfg: DataConfig, spec: InputSpec,
                       ctx: tf.distribute.InputContext, start_examples: int
                       ) -> tf.data.Dataset:
  """This pipeline's endless stream of unlabeled examples (dicts, see module doc)."""
  worker = ctx.input_pipeline_id
  ds = unlabeled_records(pseudo_labels, ctx.num_input_pipelines, worker)
  # A different seed from the labeled stream's, so the two are shuffled independently.
  seed = data_cfg.seed + 1
  if _is_raw(ds):
    ds = epoch_stream(ds, data_cfg.shuffle_buffer, seed, start_examples)
    ds = _preprocess(ds, data_cfg, spec, seed + start_examples, worker,
                     teacher_view=spec.targets == TEACHER)
  else:
    ds = epoch_stream(ds, 0, seed, start_examples)
  keep = "probabilities" if spec.targets == STORED else "teacher_image"
  return ds.map(lambda e: {"unlabeled_image": e["image"], keep: e[keep]})


def make_dataset_fn(labeled, pseudo_labels, data_cfg: DataConfig, spec: InputSpec,
                    start_step: int) -> Callable[[tf.distribute.InputContext],
                                                 tf.data.Dataset]:
  """The function strategy.distribute_datasets_from_function calls once per pipeline."""

  def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    replicas_here = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    start = start_step * replicas_here  # Per-replica batches this pipeline already fed.
    lab = labeled_examples(labeled, data_cfg, spec, ctx, start * spec.labeled_batch)
    # drop_remainder keeps shapes static (TPU needs it; XLA would retrace otherwise).
    lab = lab.batch(spec.labeled_batch, drop_remainder=True).map(
        lambda x, y: {"image": tf.cast(x, tf.float32), "label": tf.cast(y, tf.int32)})
    if spec.targets == SUPERVISED:
      ds = lab
    else:
      unl = unlabeled_examples(pseudo_labels, data_cfg, spec, ctx,
                               start * spec.unlabeled_batch)
      unl = unl.batch(spec.unlabeled_batch, drop_remainder=True).map(
          lambda e: {k: tf.cast(v, tf.float32) for k, v in e.items()})
      ds = tf.data.Dataset.zip(lab, unl).map(lambda a, b: {**a, **b})
    distribute.check_step_tensors(ds.element_spec, "the training input")
    return ds.prefetch(tf.data.AUTOTUNE)

  return dataset_fn


def count_examples(ds: tf.data.Dataset) -> int:
  """Number of elements of a finite dataset (cardinality when known, else one pass)."""
  n = int(ds.cardinality())
  if n >= 0:
    return n
  if n == int(tf.data.INFINITE_CARDINALITY):
    raise ValueError("The labeled dataset is infinite; pass a finite one (the trainer "
                     "repeats it) or set --num_train_images.")
  return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))


def first_element_or_error(ds: tf.data.Dataset, what: str) -> Dict[str, Any]:
  """Fails with a clear error when a stream has no records at all."""
  for element in ds.take(1):
    return element
  raise ValueError(f"{what} has no records; check the path/spec (and that the predict and "
                   "filter phases wrote shards there).")
