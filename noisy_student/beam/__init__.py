"""Predict and filter at scale: one Apache Beam job on any runner (`--runner`).

`predict(teacher_path, source, predict_cfg, filter_cfg=..., ...)` is the in-process
predict (`noisy_student.predict`) plus the filter step (`noisy_student.balance`) as one
Beam pipeline that runs here on the DirectRunner and elsewhere on Dataflow, Flink or
Spark. It writes what those two write: the records, shards, manifests and count files
of `--num_workers` in-process workers (`tfrecords/format.py` is the one place the format
lives), and the balance plan, report and plot, so `--mode=filter` after it is optional
and the student reads the output unchanged.

The job's stages (`job.stages` lists them; docs/usage.md shows Dataflow's graph):
  read       the source split into retryable work items (`inputs`: work files of image
             paths, TFRecord files after a counting pass, or in-memory records)
  Label      RunInference with our ModelHandler (`handler`): the EMA teacher loaded once
             per worker process, BatchElements batches of --eval_batch_size, the
             in-process predict's own step
  write      GroupByKey per shard, one idempotent writer per shard (`sink`)
  balance    combiners: summed histograms or per-class top-K, the plan, the per-class
             counts under it, and the plan / report / plot files (`combiners`)

Modules import apache_beam at their top; only this package does, and the rest of the
project imports it only when --runner is set (the core install stays Beam-free).
"""
from noisy_student.beam.job import BeamSummary, predict, stages

__all__ = ["BeamSummary", "predict", "stages"]
