"""The un-noised teacher labels the unlabeled source: sharded pseudo-label TFRecords.

`predict(model, source, predict_cfg, image_size=...)` runs the teacher in eval mode
(`training=False`) on eval-preprocessed images, batched, under a tf.distribute strategy,
and writes the records of `tfrecords/format.py`. Worker `worker_index` of `num_workers`
takes its disjoint part of the source (`source.dataset(num_workers, worker_index)`) and
cuts it into `num_shards` contiguous ranges: shard k holds the worker's records
[k*n//S, (k+1)*n//S). Resume is therefore exact: a restart with the same flags skips
shards whose manifest is present and valid (before decoding their images) and rewrites
the others. Batches are padded to a fixed size, so the teacher's output for an image does
not depend on where a run started.

Modules: `run` (flags, fingerprint, shard plan, `predict`), `stream` (decoded batches, the
teacher's step: a numeric part on the replicas, XLA-compiled with --jit_compile, then
serialization of the records on the host), `sink` (the writer thread routing records
into shards and manifests).
"""
from noisy_student.predict.run import (PredictSummary, default_preprocess, make_fingerprint,
                                       predict, shard_ranges)

__all__ = ["PredictSummary", "default_preprocess", "make_fingerprint", "predict",
           "shard_ranges"]
