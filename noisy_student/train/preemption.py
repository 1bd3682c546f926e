"""Preemption: on SIGTERM, finish the running loop of steps, checkpoint there, and exit.

Preemptible and spot VMs (Cloud TPU VMs included) get SIGTERM and about 30 s before
the kill. Without this, a preempted job loses every step since its last periodic
checkpoint (up to --save_checkpoints_steps). With it, the trainer notices the signal
after its current call of `iterations_per_loop` steps (Python signal handlers run only
between calls of the compiled loop), saves a checkpoint at that step, and exits with
`EXIT_CODE`. The same command then resumes exactly there. Keep a loop of steps shorter
than the grace period. A second SIGTERM after the loop ended, or outside training, ends
the process as usual: predict resumes by shards, and the pipeline by phases.

Under MultiWorkerMirroredStrategy every worker must take part in a save. A signal that
reached one worker is therefore shared with the others by a one-number all-reduce after
each loop of steps, and they all save at the same step. TF's
tf.distribute.experimental.PreemptionCheckpointHandler does the same, but only for
MultiWorkerMirroredStrategy and TPUStrategy. It also counts its own `run` calls instead
of the optimizer's step, so we keep one mechanism for every strategy.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

from absl import logging
import tensorflow as tf

EXIT_CODE = 143  # 128 + SIGTERM: what a shell reports for a job that SIGTERM ended.


class Preempted(SystemExit):
  """Training stopped on SIGTERM after saving a checkpoint; exits with EXIT_CODE."""

  def __init__(self, step: int, checkpoint: str):
    super().__init__(EXIT_CODE)
    self.step, self.checkpoint = step, checkpoint

  def __str__(self) -> str:
    return (f"Preempted (SIGTERM) at step {self.step}; saved {self.checkpoint}. Run the "
            "same command again to resume from there.")


class SigtermWatch:
  """Context manager: while inside, SIGTERM is recorded in `.received` instead of killing.

  Signal handlers can only be installed from the main thread; elsewhere (a trainer run
  from a thread) SIGTERM keeps its default and only periodic checkpoints apply.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self) -> "SigtermWatch":
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    else:
      logging.info("Training outside the main thread: SIGTERM is not intercepted.")
    return self

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    if not self.received:
      logging.warning("SIGTERM received: saving a checkpoint after the current loop of "
                      "steps, then exiting with code %d.", EXIT_CODE)
    self.received = True

  def __exit__(self, *exc_info) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _num_workers(strategy: tf.distribute.Strategy) -> int:
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 1
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))


def make_agreement(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
  """A function (this worker got SIGTERM) -> (any worker did), the same on every worker.

  Every worker must call it once after each loop of steps (it is a collective op when
  there are several workers).
  """
  if _num_workers(strategy) == 1:
    return lambda received: received

  @tf.function
  def any_worker(flag: tf.Tensor) -> tf.Tensor:
    # Summed (ReduceOp has no MAX) over every replica of every worker, the way the
    # trainer reduces its metrics.
    per_replica = strategy.run(tf.identity, args=(flag,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return lambda received: bool(any_worker(tf.constant(float(received))) > 0)


def stop_if_preempted(agree: Callable[[bool], bool], watch: SigtermWatch, step: int,
                      save: Callable[[], Optional[str]]) -> None:
  """After a loop of steps: if any worker got SIGTERM, saves (every worker) and raises."""
  if not agree(watch.received):
    return
  path = save()
  logging.warning("Preempted at step %d: saved %s. Run the same command to resume.",
                  step, path)
  raise Preempted(step, path or "")
