"""Teacher and student training: `train(...)` runs one training phase end to end.

Shape (the TPUEstimator's, in TF2): a tf.function runs `iterations_per_loop` steps per
call via strategy.run over a distributed dataset; a Keras 3 optimizer; a
tf.train.CheckpointManager of model, optimizer (its `iterations` is the global step) and
EMA every `save_checkpoints_steps`. A restarted job resumes from the last checkpoint and
stops at the run's last step (`schedules.total_steps`: --train_steps, else --train_epochs
of the labeled images), with the schedule a function of the global step only.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Dict, Optional, Sequence

from absl import logging
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from noisy_student import faults
from noisy_student.config import DataConfig, DistributeConfig, ModelConfig, TrainConfig
from noisy_student.train import checkpoints
from noisy_student.train import distribute
from noisy_student.train import divergence
from noisy_student.train import ema as ema_lib
from noisy_student.train import inputs as inputs_lib
from noisy_student.train import preemption
from noisy_student.train import preflight
from noisy_student.train import schedules
from noisy_student.train import steps as steps_lib


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a finished training phase reports."""
  model_dir: str
  global_step: int
  start_step: int  # > 0 when the run resumed from a checkpoint.
  checkpoint_path: str
  final_model_path: Optional[str]  # model_dir/final.keras (chief only).
  metrics: Dict[str, float]  # Means over the last loop of steps.
  images_per_second: float  # Over the run, compilation excluded.
  num_replicas: int
  targets: str  # "supervised" (a teacher), "stored" pseudo-labels or on-the-fly "teacher".
  jit_compile: bool = False  # Whether XLA compiled the step.


@dataclasses.dataclass
class _State:
  """Everything the loop touches (built under the strategy scope)."""
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  ema: Optional[ema_lib.WeightEMA]
  teacher: Optional[keras.Model]
  manager: tf.train.CheckpointManager
  schedule: keras.optimizers.schedules.LearningRateSchedule


def global_step(optimizer) -> int:
  """The optimizer's step counter as an int (works for mirrored / multi-worker ones)."""
  return int(tf.convert_to_tensor(optimizer.iterations).numpy())


def _build_state(model_cfg: ModelConfig, train_cfg: TrainConfig, teacher,
                 num_train_images: int, ckpt_dir: str) -> _State:
  """Model (initialised), optimizer, EMA, teacher and checkpoint manager; call in scope."""
  model = checkpoints.build_model(model_cfg)
  has_checkpoint = tf.train.latest_checkpoint(train_cfg.model_dir) is not None
  if train_cfg.init_model_path and not has_checkpoint:
    checkpoints.init_from(model, train_cfg.init_model_path)
    logging.info("Student initialised from %s.", train_cfg.init_model_path)
  schedule = schedules.build_schedule(train_cfg, num_train_images)
  optimizer = schedules.build_optimizer(
      train_cfg, schedule, loss_scale=model_cfg.dtype_policy == "mixed_float16")
  optimizer.build(model.trainable_variables)  # Slots exist before a restore.
  ema = (ema_lib.WeightEMA(model, train_cfg.moving_average_decay)
         if train_cfg.moving_average_decay else None)
  if teacher is None and train_cfg.teacher_model_path:
    teacher = checkpoints.load_for_inference(train_cfg.teacher_model_path,
                                             dtype_policy=model_cfg.dtype_policy)
  if teacher is not None:
    teacher.trainable = False
  ckpt = checkpoints.make_checkpoint(model, optimizer, ema)
  manager = tf.train.CheckpointManager(ckpt, ckpt_dir,
                                       max_to_keep=train_cfg.keep_checkpoint_max,
                                       step_counter=optimizer.iterations)
  # Every worker restores the chief's checkpoint (non-chief ones save to scratch dirs).
  latest = tf.train.latest_checkpoint(train_cfg.model_dir)
  if latest:
    ckpt.restore(latest).assert_existing_objects_matched()
    logging.info("Resumed from %s (step %d).", latest, global_step(optimizer))
  return _State(model, optimizer, ema, teacher, manager, schedule)


def train(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: TrainConfig,
          dist_cfg: DistributeConfig, *, labeled_source, pseudo_labels=None,
          teacher: Optional[keras.Model] = None,
          class_names: Optional[Sequence[str]] = None,
          strategy: Optional[tf.distribute.Strategy] = None) -> TrainResult:
  """Trains a teacher (unlabel_ratio 0) or a noised student; returns a TrainResult.

  Args:
    model_cfg, data_cfg, train_cfg, dist_cfg: the run's configuration.
    labeled_source: a Contract-2 `Source`, or a finite tf.data.Dataset of raw records
      (dicts with "image/encoded", "label") or of preprocessed (image [S, S, 3] float32
      0..255, label) pairs; the trainer repeats it.
    pseudo_labels: student only: a pseudo-label directory/pattern (tfrecords reader), or a
      dataset of its records (dicts with "image/encoded", "probabilities"), or of
      preprocessed dicts {"image", "probabilities"} (or {"image", "teacher_image"} with
      an on-the-fly teacher). Defaults to train_cfg.pseudo_label_dir.
    teacher: a frozen keras.Model labelling the unlabeled images inside the step (the
      original's on-the-fly mode); else loaded from train_cfg.teacher_model_path if set.
    class_names: names of the classes, stored in build_config.json (default: the
      source's).
    strategy: the strategy to train under; default `distribute.make_strategy(dist_cfg)`.
      Multi-worker programs must create theirs at startup, before any other TF op
      (TF configures collective ops only then).
  Returns:
    TrainResult. Raises ValueError on inconsistent input, faults.Diverged when training
    diverges (train/divergence.py: the last finite checkpoint is left as it was), and
    preemption.Preempted (a SystemExit) after saving a checkpoint on SIGTERM.
  """
  train_cfg = preflight.check_train_config(train_cfg)
  strategy = strategy or distribute.make_strategy(dist_cfg)
  jit_compile = distribute.resolve_jit_compile(dist_cfg.jit_compile, strategy)
  model_cfg = distribute.resolve_model_config(model_cfg, dist_cfg, strategy)
  chief, ckpt_dir = preflight.chief_and_checkpoint_dir(strategy, train_cfg.model_dir)
  run = preflight.prepare_inputs(model_cfg, train_cfg, strategy, labeled_source,
                                 pseudo_labels, teacher, class_names, chief)
  with strategy.scope():
    state = _build_state(model_cfg, train_cfg, teacher, run.num_train_images, ckpt_dir)
  preflight.check_teacher(state.teacher, model_cfg, run.spec.targets)
  spec = dataclasses.replace(run.spec, teacher_image_size=preflight.input_size(
      state.teacher) if state.teacher is not None else None)
  if chief:
    checkpoints.write_build_config(train_cfg.model_dir, model_cfg, run.class_names,
                                   has_ema=state.ema is not None)
  start_step = global_step(state.optimizer)
  dataset_fn = inputs_lib.make_dataset_fn(run.labeled, run.unlabeled, data_cfg, spec,
                                          start_step)
  iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
  replica_step = steps_lib.make_replica_step(
      state.model, state.optimizer, train_cfg, spec.targets,
      schedules.loss_weight_decay(train_cfg), strategy.num_replicas_in_sync, state.ema,
      state.teacher)
  logging.info("Train step: XLA %s, %s.", "on" if jit_compile else "off",
               model_cfg.dtype_policy)
  multi_step = steps_lib.make_multi_step(
      strategy, distribute.compile_step(replica_step, jit_compile, strategy))
  images_per_step = strategy.num_replicas_in_sync * (spec.labeled_batch +
                                                     spec.unlabeled_batch)
  diverged = divergence.Watch(
      train_cfg.model_dir, train_cfg.divergence_factor, divergence.flags_hint(
          train_cfg.base_learning_rate, train_cfg.warmup_epochs, model_cfg.dtype_policy),
      chief)
  loop = _Loop(train_cfg, state, chief, images_per_step, run.num_train_images,
               preemption.make_agreement(strategy), diverged)
  with preemption.SigtermWatch() as watch:
    metrics, rate = loop.run(multi_step, iterator, start_step, watch)
  preflight.cleanup_worker_dir(chief, ckpt_dir)
  final_path = None
  if chief:
    final = checkpoints.load_for_inference(train_cfg.model_dir)
    if not divergence.outputs_finite(final, spec.image_size):
      diverged.stop(global_step(state.optimizer), "the trained model's outputs are not "
                    "finite", state.manager.latest_checkpoint)
    final_path = checkpoints.save_final_model(final, train_cfg.model_dir)
    logging.info("Wrote %s.", final_path)
  result = TrainResult(train_cfg.model_dir, global_step(state.optimizer), start_step,
                       state.manager.latest_checkpoint or "", final_path, metrics, rate,
                       strategy.num_replicas_in_sync, spec.targets, jit_compile)
  logging.info("Trained %s to step %d (pseudo-labels: %s).", model_cfg.model_name,
               result.global_step, _PSEUDO_LABELS[spec.targets])
  return result


_PSEUDO_LABELS = {inputs_lib.SUPERVISED: "none", inputs_lib.STORED: "stored",
                  inputs_lib.TEACHER: "the on-the-fly teacher's"}


class _Loop:
  """The host loop: run chunks of steps, check, summarise, log, checkpoint."""

  def __init__(self, cfg: TrainConfig, state: _State, chief: bool, images_per_step: int,
               num_train_images: int, agree_preempted, diverged: divergence.Watch):
    self.cfg, self.state, self.chief, self.diverged = cfg, state, chief, diverged
    variables = list(state.model.variables) + (list(state.ema.shadows) if state.ema else [])
    self.weights_finite = divergence.weights_finite_fn(variables)
    self.checkpoint_bytes = sum(  # What one more checkpoint needs on disk, about.
        int(np_prod(v.shape)) * tf.as_dtype(v.dtype).size
        for v in variables + list(state.optimizer.variables))
    self.agree_preempted = agree_preempted
    self.images_per_step = images_per_step
    self.steps_per_epoch = schedules.steps_per_epoch(cfg, num_train_images)
    self.train_steps = schedules.total_steps(cfg, num_train_images)
    logdir = f"{cfg.model_dir.rstrip('/')}/train"
    self.writer = (tf.summary.create_file_writer(logdir) if chief
                   else tf.summary.create_noop_writer())

  def _chunk(self, step: int) -> int:
    """Steps in the next call: never past a checkpoint boundary or the end."""
    to_save = self.cfg.save_checkpoints_steps - step % self.cfg.save_checkpoints_steps
    return min(self.cfg.iterations_per_loop, to_save, self.train_steps - step)

  def run(self, multi_step, iterator, step: int, watch: preemption.SigtermWatch):
    """Trains from `step` to train_steps; returns (last metrics, images/s)."""
    metrics, timed_steps, timed_secs, last_log, calls = {}, 0, 0.0, step, 0
    if step >= self.train_steps:
      logging.info("Already at step %d of %d; nothing to train.", step, self.train_steps)
    while step < self.train_steps:
      n = self._chunk(step)
      start = time.perf_counter()
      sums, worst = multi_step(iterator, tf.constant(n, tf.int32))
      # float() waits for the steps.
      metrics = {k: float(v) / (1 if k in steps_lib.SUMMED else n) for k, v in sums.items()}
      secs = time.perf_counter() - start
      self.diverged.check({k: float(v) for k, v in worst.items()}, step,
                          self.state.manager.latest_checkpoint)
      if calls or n == self.train_steps - step:  # The first call compiles: left out.
        timed_steps, timed_secs = timed_steps + n, timed_secs + secs
      calls += 1
      step += n
      rate = self.images_per_step * n / max(secs, 1e-9)
      self._summaries(step, metrics, rate)
      if step - last_log >= self.cfg.log_every_n_steps or step == self.train_steps:
        self._progress(step, metrics, rate, n / max(secs, 1e-9))
        last_log = step
      saved = None
      if step % self.cfg.save_checkpoints_steps == 0 or step == self.train_steps:
        saved = self._save(step)
      if step < self.train_steps:  # Every worker asks, after every loop of steps.
        preemption.stop_if_preempted(self.agree_preempted, watch, step,
                                     lambda: saved or self._save(step))
    self.writer.flush()
    overall = self.images_per_step * timed_steps / timed_secs if timed_secs else 0.0
    return metrics, overall

  def _save(self, step: int) -> str:
    if not bool(self.weights_finite()):  # Never a checkpoint of non-finite weights.
      self.diverged.stop(step, "a weight (or EMA shadow) is not finite",
                         self.state.manager.latest_checkpoint)
    self.writer.flush()  # The summaries up to the checkpoint survive a preemption.
    try:
      path = self.state.manager.save(checkpoint_number=step)
    except Exception as e:  # pylint: disable=broad-except
      if not faults.is_no_space(e):
        raise
      partial = f"{self.state.manager.directory.rstrip('/')}/ckpt-{step}_temp"
      if tf.io.gfile.exists(partial):  # Frees what the failed save took.
        tf.io.gfile.rmtree(partial)
      raise faults.disk_full(self.state.manager.directory, self.checkpoint_bytes) from None
    logging.info("Saved %s.", path)
    return path

  def _summaries(self, step: int, metrics: Dict[str, float], rate: float) -> None:
    values = dict(metrics, learning_rate=float(self.state.schedule(step - 1)),
                  images_per_second=rate, epoch=step / self.steps_per_epoch)
    with self.writer.as_default(step=step):
      for name, value in values.items():
        _scalar_summary(name, value)

  def _progress(self, step: int, metrics: Dict[str, float], rate: float,
                steps_per_sec: float) -> None:
    eta = (self.train_steps - step) / max(steps_per_sec, 1e-9)
    student = (f", unlabeled {metrics['unlabeled_loss']:.4f}, pseudo-acc "
               f"{metrics['pseudo_accuracy']:.3f}, target-conf "
               f"{metrics['target_confidence']:.3f}" if self.cfg.unlabel_ratio else "")
    skips = (f", {metrics['loss_scale_skips']:.0f} loss-scale skips"
             if metrics.get("loss_scale_skips") else "")
    logging.info("step %d/%d (epoch %.2f) loss %.4f (labeled %.4f, acc %.3f%s) lr %.3g, "
                 "grad-norm %.3g%s | %.1f images/s, ETA %s", step, self.train_steps,
                 step / self.steps_per_epoch, metrics["loss"], metrics["labeled_loss"],
                 metrics["labeled_accuracy"], student, float(self.state.schedule(step - 1)),
                 metrics["grad_norm"], skips, rate, _hms(eta))


# TensorBoard's scalar plugin metadata, written with TF core's tf.summary.write so that
# training does not need the tensorboard package installed (TF 2.21 does not pull it in).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


def _scalar_summary(name: str, value: float) -> None:
  tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)


def np_prod(shape) -> int:
  return math.prod(int(d) for d in shape)


def _hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
