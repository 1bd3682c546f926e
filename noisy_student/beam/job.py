"""`predict(...)`: the whole predict + filter step as one Beam job; the driver's part.

The driver (this process) does what is cheap and must be decided once: the fingerprint
and the output directory's checks, which shards are already complete (resume, exactly as
the in-process predict decides it), the source's work items; then it builds the graph,
runs it on --runner with --beam_options, waits, and reads back the counters and
manifests. Everything per record runs on the runner's workers.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Dict, FrozenSet, List, Optional, Sequence, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.runner import PipelineState

from noisy_student import faults
from noisy_student.beam import combiners
from noisy_student.beam import handler as handler_lib
from noisy_student.beam import inputs as inputs_lib
from noisy_student.beam import sink
from noisy_student.config import DistributeConfig, FilterConfig, PredictConfig
from noisy_student.data.source import Source
from noisy_student.predict import run
from tfrecords import format as fmt
from tfrecords import plan as plan_lib


@dataclasses.dataclass(frozen=True)
class BeamSummary:
  """What the Beam job did."""
  output_dir: str
  shard_paths: List[str]  # Every worker's shards, worker by worker.
  shards_written: int  # By this job.
  shards_reused: int  # Complete from an earlier run (resume).
  records_written: int  # By this job.
  corrupt_skipped: int  # By this job.
  plan_path: str
  totals: Dict[str, int]  # The balance report's totals.
  counters: Dict[str, int]  # Beam counters of namespace inputs.NAMESPACE (committed).
  # Its distributions (RunInference's batch latency, model load time): name -> sum, count.
  distributions: Dict[str, Dict[str, int]]
  stages: List[str]  # The job's top-level transforms, in graph order.
  seconds: float
  images_per_sec: float


@dataclasses.dataclass(frozen=True)
class _Job:
  """The driver's decisions, read by the graph builder."""
  out: str
  prefix: str
  fingerprint: Dict[str, Any]
  num_classes: int
  needed: FrozenSet[Tuple[int, int]]
  reused: Tuple[Dict[str, Any], ...]  # Manifests of the complete shards kept.
  inputs: inputs_lib.Inputs


def _plan_job(source: Source, cfg: PredictConfig, fingerprint: Dict[str, Any],
              num_classes: int, class_names: Sequence[str], prefix: str,
              teacher_aliases: Sequence[str]) -> _Job:
  """Output directory checks, the shards to write (missing, incomplete or damaged, as
  the in-process predict decides), and the source's work items."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = cfg.output_dir.rstrip("/")
  tf.io.gfile.makedirs(out)
  names = set(tf.io.gfile.listdir(out))
  fingerprint = run.adopt_alias(out, names, fingerprint, teacher_aliases)
  run.check_output_dir(out, names, fmt.fingerprint_digest(fingerprint))
  fmt.write_json_atomic(f"{out}/{fmt.CLASS_NAMES_FILE}", {"class_names": list(class_names)})
  needed, reused = set(), []
  for w in range(cfg.num_workers):
    paths, mask = run.needed_shards(out, names, prefix, cfg.num_shards, w, cfg.num_workers)
    needed.update((w, k) for k in range(cfg.num_shards) if mask[k])
    reused += [dict(fmt.read_manifest(p), path=p) for p, m in zip(paths, mask) if not m]
  inputs = inputs_lib.plan_inputs(source, cfg.num_workers, out)
  logging.info("Beam predict: %d workers' parts x %d shards; %d complete, %d to write; "
               "source read as %s", cfg.num_workers, cfg.num_shards, len(reused),
               len(needed), inputs.kind)
  return _Job(out, prefix, fingerprint, num_classes, frozenset(needed), tuple(reused),
              inputs)


def _layout(p: beam.Pipeline, job: _Job, cfg: PredictConfig, source: Source):
  """The Layout: computed here for images and in-memory sources (their work files
  written), by a counting pass of the job for TFRecords. Returns (value for the
  readers, side input for the writers)."""
  if job.inputs.kind == "tfrecords":
    pc = (inputs_lib.layout_of_tfrecords(p, job.inputs, cfg.num_workers, cfg.num_shards)
          | "CheckCounts" >> beam.Map(inputs_lib.check_counts, job.out, job.prefix,
                                      job.fingerprint))
    view = beam.pvalue.AsSingleton(pc)
    return view, view
  layout = inputs_lib.check_counts(inputs_lib.Layout.of(job.inputs.order, cfg.num_shards),
                                   job.out, job.prefix, job.fingerprint)
  if job.inputs.kind == "images":
    n = inputs_lib.write_work_files(source, layout, job.needed, job.inputs.work_pattern)
    logging.info("Beam predict: %d images to label listed in %s", n, job.inputs.work_pattern)
  return layout, beam.pvalue.AsSingleton(p | "Layout" >> beam.Create([layout]))


def build(p: beam.Pipeline, job: _Job, cfg: PredictConfig, source: Source,
          handler: handler_lib.TeacherHandler, filter_cfg: FilterConfig,
          class_names: Sequence[str], seed: int) -> beam.PCollection:
  """The job's graph on `p`; returns the PCollection of the balance report's totals."""
  manifests, small = [], []
  if job.needed:  # Else every shard is complete: only the filter step runs.
    layout, layout_view = _layout(p, job, cfg, source)
    raw = inputs_lib.read(p, job.inputs, layout, job.needed)
    labelled = raw | "Label" >> RunInference(handler)
    written, written_small = sink.write(labelled, sorted(job.needed), layout_view, job.out,
                                        job.prefix, job.num_classes, job.fingerprint)
    manifests.append(written)
    small.append(written_small)
  kept = list(job.reused)
  manifests.append(p | "KeptManifests" >> beam.Create(kept))
  small.append(p | "KeptShards" >> beam.Create([m["path"] for m in kept])
               | "ReadKeptShards" >> beam.ParDo(combiners.ReadSmallFields(seed)))
  manifests = tuple(manifests) | "AllManifests" >> beam.Flatten()
  small = tuple(small) | "AllSmallFields" >> beam.Flatten()
  fp = job.fingerprint
  plan = combiners.balance_plan(manifests, small, filter_cfg, num_classes=job.num_classes,
                                num_bins=fp["num_bins"], seed=seed,
                                digest=fmt.fingerprint_digest(fp))
  counts = combiners.counted(small, beam.pvalue.AsSingleton(plan), job.num_classes)
  shards = manifests | "ShardSummaries" >> beam.Map(combiners.shard_summary)
  return plan | "WriteBalancePlan" >> beam.Map(
      _finish, beam.pvalue.AsSingleton(counts), beam.pvalue.AsList(shards), job=job,
      filter_cfg=filter_cfg, class_names=list(class_names))


def _finish(plan, counts, shards, *, job: _Job, filter_cfg: FilterConfig,
            class_names: List[str]) -> Dict[str, int]:
  totals = combiners.finish(plan, counts, shards, out=job.out, cfg=filter_cfg,
                            class_names=class_names)
  fp = job.fingerprint
  names = [fmt.shard_name(job.prefix, k, fp["num_shards"], w, fp["num_workers"])
           for w, k in job.needed]
  sink.remove_temporaries(job.out, names)
  return totals


class _TopLevel(PipelineVisitor):
  """Collects the labels of the transforms applied to the pipeline itself."""

  def __init__(self):
    self.labels: List[str] = []

  def _visit(self, node) -> None:
    if node.parent is not None and node.parent.parent is None:
      self.labels.append(node.full_label)

  def enter_composite_transform(self, transform_node) -> None:
    self._visit(transform_node)

  def visit_transform(self, transform_node) -> None:
    self._visit(transform_node)


def stages(p: beam.Pipeline) -> List[str]:
  """The top-level transforms of `p` (the boxes of Dataflow's job graph)."""
  visitor = _TopLevel()
  p.visit(visitor)
  return visitor.labels


def _metrics(result: Any) -> Tuple[Dict[str, int], Dict[str, Dict[str, int]]]:
  """(counters, distributions' sum and count) of namespace inputs.NAMESPACE, committed
  values where the runner has them."""
  counters, distributions = {}, {}
  query = result.metrics().query(MetricsFilter().with_namespace(inputs_lib.NAMESPACE))
  for counter in query["counters"]:
    value = counter.committed if counter.committed is not None else counter.attempted
    counters[counter.key.metric.name] = (counters.get(counter.key.metric.name, 0)
                                         + int(value or 0))
  for dist in query["distributions"]:
    value = dist.committed if dist.committed is not None else dist.attempted
    if value is None:
      continue
    acc = distributions.setdefault(dist.key.metric.name, {"sum": 0, "count": 0})
    acc["sum"] += int(value.sum)
    acc["count"] += int(value.count)
  return counters, distributions


def predict(teacher_path: str, source: Source, predict_cfg: PredictConfig, *,
            filter_cfg: FilterConfig, image_size: int, batch_size: int,
            class_names: Sequence[str], teacher_id: str, seed: int = 0,
            small_image: bool = False,
            distribute_cfg: Optional[DistributeConfig] = None,
            source_id: Optional[str] = None, prefix: str = "train",
            num_bins: int = fmt.DEFAULT_NUM_BINS,
            teacher_aliases: Sequence[str] = ()) -> BeamSummary:
  """Labels `source` with the teacher in `teacher_path` as one Beam job on
  `predict_cfg.runner`: the shards, manifests and count files of all
  `predict_cfg.num_workers` in-process workers, and the filter step's balance plan,
  report and plot (settings `filter_cfg`, `seed`) in `predict_cfg.output_dir`.

  Args mean what they mean for `noisy_student.predict.predict` (the teacher given by
  its path: each worker loads it; `teacher_id` and `teacher_aliases` as there, so the
  in-process predict and a Beam job resume each other's shards); `distribute_cfg`:
  --strategy / --jit_compile, resolved on each worker. Returns a BeamSummary. Raises ValueError on an output_dir written with
  other flags or a source the job cannot split; RuntimeError when the job fails.
  """
  cfg = predict_cfg
  fingerprint = run.make_fingerprint(cfg, teacher_id=teacher_id,
                                     source_id=str(source_id or source.describe()),
                                     num_classes=len(class_names), image_size=image_size,
                                     num_bins=num_bins)
  job = _plan_job(source, cfg, fingerprint, len(class_names), class_names, prefix,
                  teacher_aliases)
  handler = handler_lib.TeacherHandler(
      teacher_path, image_size=image_size, small_image=small_image, batch_size=batch_size,
      seed=seed, distribute_cfg=distribute_cfg or DistributeConfig(),
      num_classes=len(class_names))
  start = time.time()
  p = beam.Pipeline(options=PipelineOptions(cfg.beam_args()))
  build(p, job, cfg, source, handler, filter_cfg, class_names, seed)
  graph = stages(p)
  logging.info("Beam predict on %s: stages %s", cfg.runner, " -> ".join(graph))
  try:
    result = p.run()
    state = result.wait_until_finish()
  except Exception as e:  # pylint: disable=broad-except  (re-raised)
    fault = _fault_of(e)
    if fault is None:
      raise
    raise fault from None
  if state != PipelineState.DONE:
    raise RuntimeError(f"Beam job on {cfg.runner} ended {state}; see the runner's logs")
  seconds = time.time() - start
  if job.inputs.work_pattern:  # The image listing served its purpose.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    for path in tf.io.gfile.glob(job.inputs.work_pattern):
      tf.io.gfile.remove(path)
  return _summary(job, cfg, result, graph, seconds)


def _fault_of(error: Exception) -> Optional[faults.Fault]:
  """The one-line Fault a worker raised, found in the runner's error (which wraps it in
  its own traceback text, in-process or from a remote worker), or None."""
  for line in str(error).splitlines():
    if handler_lib.NOT_FINITE in line:
      message = line[line.index(handler_lib.NOT_FINITE):]
      return faults.Diverged(message.split(" [while running")[0].strip())
  return None


def _summary(job: _Job, cfg: PredictConfig, result: Any, graph: List[str],
             seconds: float) -> BeamSummary:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  counters, distributions = _metrics(result)
  logging.info("Beam counters: %s", ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
  keys = [(w, k) for w in range(cfg.num_workers) for k in range(cfg.num_shards)]
  paths = [f"{job.out}/{fmt.shard_name(job.prefix, k, cfg.num_shards, w, cfg.num_workers)}"
           for w, k in keys]
  fresh = [fmt.read_manifest(p) for p, key in zip(paths, keys) if key in job.needed]
  if any(m is None for m in fresh):
    raise RuntimeError(f"Beam job on {cfg.runner} finished but left shards of "
                       f"{job.out} incomplete")
  records = sum(m["record_count"] for m in fresh)
  with tf.io.gfile.GFile(f"{job.out}/balance_report.json") as f:
    totals = json.load(f)["totals"]
  return BeamSummary(
      output_dir=job.out, shard_paths=paths, shards_written=len(fresh),
      shards_reused=len(job.reused), records_written=records,
      corrupt_skipped=sum(m["skipped_count"] for m in fresh),
      plan_path=f"{job.out}/{plan_lib.PLAN_NAME}", totals=totals, counters=counters,
      distributions=distributions,
      stages=graph, seconds=seconds, images_per_sec=records / max(seconds, 1e-9))

