"""Top-1 / top-5, per-class accuracy and the confusion matrix of a classifier.

`evaluate` runs a model (load it with its EMA weights) over a batched eval dataset of
`(images, labels)` under a tf.distribute strategy, accumulating one confusion matrix and a
top-k hit count per replica, summed at the end: nothing per image stays in memory, so it
scales to any eval set. Every batch is padded to one static size with a validity mask
(`pad_batches`), so the step (XLA-compiled with --jit_compile) is traced once.
`write_report` stores the result as JSON, a PNG of the confusion matrix and TensorBoard
scalars.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from noisy_student import atomic
from noisy_student import plots
from noisy_student.train import distribute


@dataclasses.dataclass
class EvalResult:
  """What `evaluate` measured; `confusion[i][j]` counts true class i predicted as j."""
  top1: float
  top5: float
  num_images: int
  per_class_accuracy: List[Optional[float]]  # None where a class has no image.
  confusion: List[List[int]]
  class_names: List[str]
  top_k: int = 5  # min(5, classes): "top-5" of a 3-class problem is top-3.

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1)

  def summary(self) -> str:
    return (f"top-1 {100 * self.top1:.2f}%  top-{self.top_k} {100 * self.top5:.2f}%  "
            f"on {self.num_images} images")


def logits_of(model: keras.Model, images: tf.Tensor) -> tf.Tensor:
  """float32 model(images, training=False)."""
  return tf.cast(model(images, training=False), tf.float32)


def _make_step(model: keras.Model, num_classes: int, k: int):
  """One replica's batch -> {images, top-k hits, confusion matrix}; rows that are padding
  (valid False) or unlabeled (-1) count nowhere."""
  def step(images, labels, valid):
    logits = logits_of(model, images)
    keep = tf.logical_and(valid, labels >= 0)
    labels = tf.where(keep, labels, 0)  # Any class: these rows have weight 0 below.
    hits = tf.logical_and(keep, tf.math.in_top_k(labels, logits, k))
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    confusion = tf.math.confusion_matrix(labels, predicted, num_classes,
                                         weights=tf.cast(keep, tf.int32), dtype=tf.int32)
    return {"images": count(keep), "hits": count(hits), "confusion": confusion}
  return step


def count(mask: tf.Tensor) -> tf.Tensor:
  """int32 number of True entries: a step's outputs are int32 / float32, the types a
  TPU handles natively; the host adds them up in int64 / float64."""
  return tf.reduce_sum(tf.cast(mask, tf.int32))


def as_pair(batch):
  """A `{"image", "label"}` batch or an `(images, labels)` pair -> the pair."""
  if isinstance(batch, dict):
    return batch["image"], batch["label"]
  return batch


def static_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> int:
  """`batch_size` rounded up to a multiple of the replicas: every replica gets as many
  rows of every (padded) batch."""
  replicas = strategy.num_replicas_in_sync
  return -(-int(batch_size) // replicas) * replicas


def pad_batches(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Batches of at most `batch_size` -> (images, labels int32, valid bool, *extra) of
  exactly `batch_size` rows, whatever the dataset's last batch holds.

  A compiled step then sees one shape (XLA and TPUs need static shapes; a partial last
  batch would otherwise be traced and compiled again), and no replica ever gets an
  empty batch. Padding rows are black images with label -1 and valid False: steps give
  them weight 0, so the sums equal those over the unpadded batches. Elements may carry
  more per-row int tensors after `(images, labels)` (e.g. which robustness pass a row
  belongs to): they are padded with 0 and passed on after `valid`.
  """
  def pad_rows(tensor, extra, value=0):
    padded = tf.pad(tensor, [[0, extra]] + [[0, 0]] * (tensor.shape.rank - 1),
                    constant_values=value)
    return tf.ensure_shape(padded, [batch_size, *tensor.shape[1:]])

  def pad(images, labels, *more):
    rows = tf.shape(images)[0]
    extra = batch_size - rows
    with tf.control_dependencies([tf.debugging.assert_non_negative(
        extra, message=f"a batch holds more than batch_size={batch_size} rows")]):
      images = pad_rows(images, extra)
    labels = pad_rows(tf.cast(tf.reshape(labels, [-1]), tf.int32), extra, -1)
    valid = tf.range(batch_size) < rows
    return (images, labels, valid, *(pad_rows(m, extra) for m in more))

  @tf.autograph.experimental.do_not_convert  # Plain ops.
  def pad_element(*batch):
    return pad(*as_pair(batch[0] if len(batch) == 1 else batch))
  return dataset.map(pad_element)


def first_batch_size(dataset: tf.data.Dataset) -> Optional[int]:
  """Rows of the dataset's first batch (its static batch size when it has one); None
  when the dataset is empty."""
  images, _ = as_pair(dataset.element_spec)
  if images.shape[0] is not None:
    return int(images.shape[0])
  for batch in dataset.take(1):
    return int(as_pair(batch)[0].shape[0])
  return None


def summed_step(step: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]],
                strategy: tf.distribute.Strategy, jit_compile: bool = False):
  """Compiles `step(images, labels, valid) -> {name: tensor}` to run on every replica of
  `strategy` and return each output summed over the replicas.

  `jit_compile`: the replica step is compiled by XLA (see
  `noisy_student.train.distribute.compile_step`). Compile once and feed it any number of
  datasets with the same element shapes (as the robustness report does, one per
  corruption): each new compiled function costs a trace of the model.
  """
  compiled = distribute.compile_step(step, jit_compile, strategy)

  def replica_step(*batch):
    outputs = compiled(*batch)
    distribute.check_step_tensors(
        {k: tf.TensorSpec(v.shape, v.dtype) for k, v in outputs.items()},
        "a summed step's outputs")
    return outputs

  # No autograph: the steps are tensor ops without Python control flow, and converting
  # them only costs tracing time (and once resolved `count` to a converted step: an
  # AutoGraph cache mix-up seen in a long test session).
  @tf.function(autograph=False)
  def run(batch):
    outputs = strategy.run(replica_step, args=batch)
    return {name: strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
            for name, value in outputs.items()}
  return run


def sum_over_dataset(run, dataset: tf.data.Dataset, strategy: tf.distribute.Strategy, *,
                     batch_size: Optional[int] = None, what: str = "eval",
                     log_every_n_batches: int = 50) -> Dict[str, np.ndarray]:
  """Feeds every batch of `dataset` to `run` (from `summed_step`) and adds up its outputs.

  Batches are padded to `batch_size` rows (None: the first batch's size; rounded up to
  a multiple of the replicas) by `pad_batches`, so `run` is traced once. The step's
  "images" output counts the images it used; progress lines report them per second.
  Returns {} for an empty dataset.
  """
  batch_size = batch_size or first_batch_size(dataset)
  if batch_size is None:
    return {}
  padded = pad_batches(dataset, static_batch_size(batch_size, strategy))
  distribute.check_step_tensors(padded.element_spec, what)
  totals: Dict[str, np.ndarray] = {}
  start = time.time()
  for i, batch in enumerate(strategy.experimental_distribute_dataset(padded)):
    for name, value in run(batch).items():
      value = value.numpy()  # Widened here: a step's int32 / float32 would overflow.
      value = value.astype(np.float64 if value.dtype.kind == "f" else np.int64)
      totals[name] = totals.get(name, 0) + value
    if log_every_n_batches and (i + 1) % log_every_n_batches == 0:
      seen = int(totals.get("images", 0))
      logging.info("%s: %d images, %.1f images/s", what, seen, seen / (time.time() - start))
  return totals


def evaluate(model: keras.Model, dataset: tf.data.Dataset, *,
             class_names: Optional[Sequence[str]] = None,
             strategy: Optional[tf.distribute.Strategy] = None,
             jit_compile: Optional[bool] = None, batch_size: Optional[int] = None,
             log_every_n_batches: int = 50) -> EvalResult:
  """Measures `model` on `dataset`.

  Args:
    model: logits model on float32 [batch, S, S, 3] 0..255 images (built, under
      `strategy.scope()` when a strategy is given).
    dataset: batched `(images, labels)` tuples or `{"image", "label"}` dicts; labels int,
      -1 for unknown (skipped). Batches are the global batch size; a smaller last batch
      is padded (`pad_batches`).
    class_names: names of the model's classes; default "0", "1", ...
    strategy: tf.distribute strategy to run under; default: the current one.
    jit_compile: compile the step with XLA; None: `--jit_compile=auto` for `strategy`.
    batch_size: the dataset's batch size; None reads it from the first batch.
    log_every_n_batches: progress line period (images per second).

  Returns:
    An `EvalResult`. Raises ValueError when the dataset has no labeled image.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if jit_compile is None:
    jit_compile = distribute.resolve_jit_compile("auto", strategy)
  num_classes = int(model.output_shape[-1])
  names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
  if len(names) != num_classes:
    raise ValueError(f"evaluate: {len(names)} class names for {num_classes} model outputs")
  k = min(5, num_classes)
  run = summed_step(_make_step(model, num_classes, k), strategy, jit_compile)
  sums = sum_over_dataset(run, dataset, strategy, batch_size=batch_size,
                          log_every_n_batches=log_every_n_batches)
  total = int(sums.get("images", 0))
  if total == 0:
    raise ValueError("evaluate: the eval data holds no labeled image")
  confusion = sums["confusion"]
  per_class = confusion.sum(axis=1)
  accuracy = [float(confusion[c, c] / n) if n else None
              for c, n in enumerate(per_class)]
  return EvalResult(top1=float(np.trace(confusion) / total), top5=int(sums["hits"]) / total,
                    num_images=total, per_class_accuracy=accuracy,
                    confusion=confusion.tolist(), class_names=names, top_k=k)


def correct_per_image(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
  """bool [N]: whether `model`'s top-1 is right on each image of a batched `(images,
  labels)` dataset, in its order. Keeps one value per image, so it is for small sets (the
  held-out labeled images of --iterations=auto); Keras' predict runs the batches."""
  labels = [y.numpy() for _, y in dataset]
  if not labels:
    return np.zeros([0], bool)
  logits = model.predict(dataset.map(lambda x, y: x), verbose=0)
  return np.argmax(logits, axis=-1) == np.concatenate(labels)


def plot_confusion(result: EvalResult, path: str, title: str = "") -> None:
  """Saves the row-normalised confusion matrix as a PNG (any tf.io.gfile path)."""
  plt = plots.pyplot()
  confusion = np.array(result.confusion, np.float64)
  rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  n = len(result.class_names)
  fig, ax = plt.subplots(figsize=(min(4 + 0.3 * n, 16),) * 2)
  image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(image, ax=ax, fraction=0.046)
  if n <= 40:  # Beyond that the tick labels are unreadable anyway.
    ax.set_xticks(range(n), result.class_names, rotation=90)
    ax.set_yticks(range(n), result.class_names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title or result.summary())
  fig.tight_layout()
  plots.save_figure(fig, path)


def write_scalars(logdir: str, scalars: dict, step: int) -> None:
  """Writes TensorBoard scalars with TF core only.

  `tf.summary.scalar` needs the tensorboard package, which TF 2.21 no longer installs;
  `tf.summary.write` with the scalars plugin's metadata writes the same event records.
  """
  metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
      data_class=summary_pb2.DATA_CLASS_SCALAR)
  writer = tf.summary.create_file_writer(logdir)
  with writer.as_default():
    for tag, value in scalars.items():
      tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)
  writer.close()


def write_report(result: EvalResult, output_dir: str, *, name: str = "eval",
                 step: int = 0) -> str:
  """Writes `<name>.json`, `<name>_confusion.png` and TensorBoard scalars; returns the JSON."""
  tf.io.gfile.makedirs(output_dir)
  json_path = f"{output_dir.rstrip('/')}/{name}.json"
  atomic.write_text(json_path, result.to_json())
  plot_confusion(result, f"{output_dir.rstrip('/')}/{name}_confusion.png",
                 title=f"{name}: {result.summary()}")
  write_scalars(f"{output_dir.rstrip('/')}/{name}",
                {"eval/top1": result.top1, f"eval/top{result.top_k}": result.top5}, step)
  logging.info("%s: %s (%s)", name, result.summary(), json_path)
  return json_path


# Robustness columns (noisy_student/robustness): (header, row key, scale, unit).
_ROBUSTNESS_COLUMNS = (("corr.err", "corruption_error", 100, "%"), ("mCE", "mce", 1, ""),
                       ("mFR", "mfr", 1, ""), ("FGSM", "fgsm_accuracy", 100, "%"))


def _robustness_cells(row: dict) -> str:
  cells = []
  for _, key, scale, unit in _ROBUSTNESS_COLUMNS:
    value = row.get(key)
    cells.append(f"{'-':>9}" if value is None else f"{scale * value:>8.1f}{unit or ' '}")
  return "".join(cells)


def _held_out_cell(row: dict) -> str:
  value = row.get("validation_top1")
  return f"{'-':>9}" if value is None else f"{100 * value:>8.2f}%"


def format_table(rows: Sequence[dict]) -> str:
  """The results table: one line per model (teacher first), its trainable parameters,
  top-1 and top-k in %; with --iterations=auto its top-1 on the held-out labeled images
  ("not kept": a student that did not beat its teacher there); with
  robustness reports also the mean corruption error, mCE, mFR and FGSM accuracy at the
  largest eps (mCE and mFR relative to the teacher or --robustness_baseline: 100 = as
  robust as it, lower is better)."""
  k = rows[0]["top_k"] if rows else 5
  robust = any("mce" in r for r in rows)
  held = any(r.get("validation_top1") is not None for r in rows)
  header = (f"{'model':<14}{'network':<20}{'size':>5}{'params':>10}{'top-1':>9}"
            f"{f'top-{k}':>9}{'images':>8}" + (f"{'held-out':>9}" if held else ""))
  if robust:
    eps = next((r["fgsm_epsilon"] for r in rows if r.get("fgsm_epsilon") is not None), None)
    header += "".join(f"{h if h != 'FGSM' or eps is None else f'FGSM@{eps:g}':>9}"
                      for h, *_ in _ROBUSTNESS_COLUMNS)
  lines = [header]
  for r in rows:
    params = f"{r['params']:>10,}" if r.get("params") else f"{'-':>10}"
    lines.append(f"{r['name']:<14}{r['model']:<20}{r['image_size']:>5}{params}"
                 f"{100 * r['top1']:>8.2f}%{100 * r['top5']:>8.2f}%{r['num_images']:>8}"
                 + (_held_out_cell(r) if held else "")
                 + (_robustness_cells(r) if robust else "")
                 + ("  < its teacher" if r.get("worse_than_teacher") else "")
                 + ("  not kept" if r.get("kept") is False else ""))
  return "\n".join(lines)


def _plot_robustness(ax, rows: Sequence[dict]) -> None:
  """mCE and mFR per iteration (100 = the baseline), on the given axes."""
  x = list(range(len(rows)))
  for key, style, label in (("mce", "o-", "mCE"), ("mfr", "s--", "mFR")):
    points = [(xi, r[key]) for xi, r in zip(x, rows) if r.get(key) is not None]
    if points:
      ax.plot(*zip(*points), style, label=label)
  ax.axhline(100, color="grey", lw=0.8)
  ax.set_ylabel("relative to the baseline (lower is more robust)")
  ax.set_title("robustness per iteration")
  ax.grid(alpha=0.3)
  ax.legend()


def plot_results(rows: Sequence[dict], path: str) -> None:
  """PNG of top-1 and top-k per iteration (teacher = iteration 0), with a second panel
  of mCE and mFR when the rows have them."""
  plt = plots.pyplot()
  x = list(range(len(rows)))
  robust = any(r.get("mce") is not None or r.get("mfr") is not None for r in rows)
  width = max(5, 1.2 * len(rows) + 2)
  fig, axes = plt.subplots(1, 2 if robust else 1, figsize=(width * (2 if robust else 1), 4),
                           squeeze=False)
  ax = axes[0][0]
  k = rows[0]["top_k"]
  ax.plot(x, [100 * r["top1"] for r in rows], "o-", label="top-1")
  ax.plot(x, [100 * r["top5"] for r in rows], "s--", label=f"top-{k}")
  for xi, r in zip(x, rows):
    ax.annotate(f"{100 * r['top1']:.1f}", (xi, 100 * r["top1"]),
                textcoords="offset points", xytext=(0, -14), ha="center", fontsize=8)
  labels = [f"{r['name']}\n{r['model'].replace('efficientnet-', '')}" for r in rows]
  ax.set_xticks(x, labels, fontsize=8)
  ax.set_ylabel("accuracy on the eval data (%)")
  ax.set_title("Noisy Student: accuracy per iteration")
  ax.grid(alpha=0.3)
  ax.legend()
  if robust:
    _plot_robustness(axes[0][1], rows)
    axes[0][1].set_xticks(x, labels, fontsize=8)
  fig.tight_layout()
  plots.save_figure(fig, path)


def write_results(rows: Sequence[dict], output_dir: str, notes: Sequence[str] = (),
                  **extra) -> str:
  """Prints the table and the `notes` under it (warnings), and writes `results.json`
  (with `extra` entries, e.g. the teacher check) and `results.png`; returns the JSON path."""
  table = "\n".join([format_table(rows), *notes])
  print(table, flush=True)
  path = f"{output_dir.rstrip('/')}/results.json"
  atomic.write_text(path, json.dumps({"models": list(rows), "table": table.splitlines(),
                                      "notes": list(notes), **extra}, indent=1))
  plot_results(rows, f"{output_dir.rstrip('/')}/results.png")
  logging.info("Results: %s and results.png", path)
  return path
