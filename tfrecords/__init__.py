"""The on-disk format of pseudo-labeled records (see tfrecords/format.py, docs/pseudo_labels.md)."""
from tfrecords.format import (CLASS_KEY, CONFIDENCE_KEY, FEATURE_KEYS, ID_KEY, IMAGE_KEY,
                              LABEL_KEY, PROBS_KEY, STORED_TEMPERATURE, ShardWriter,
                              list_manifests, read_manifest, shard_name)
from tfrecords.plan import PLAN_NAME, load_plan, plan_in, read_pseudo_labels
from tfrecords.reader import read_records

__all__ = [
    "CLASS_KEY", "CONFIDENCE_KEY", "FEATURE_KEYS", "ID_KEY", "IMAGE_KEY", "LABEL_KEY",
    "PLAN_NAME", "PROBS_KEY", "STORED_TEMPERATURE", "ShardWriter", "list_manifests",
    "load_plan", "plan_in", "read_manifest", "read_pseudo_labels", "read_records", "shard_name",
]
