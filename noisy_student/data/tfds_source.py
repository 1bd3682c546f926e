"""The "tfds:NAME:SPLIT" source: a tensorflow-datasets split from a prepared data_dir.

Nothing downloads: a data_dir that does not hold the prepared dataset is an error that
says how to prepare it. Image bytes are read undecoded (`tfds.decode.SkipDecoding`), so
records carry the encoded bytes tfds stored; ids are tfds ids (`<file>__<index>`).
"""
from __future__ import annotations

import collections
from typing import Optional

import tensorflow as tf

from noisy_student.data.source import Source

_MAX_BYTES_TO_COUNT = 256 << 20  # Counting classes reads every record; skip if larger.


def _prepare_hint(name: str, data_dir: str) -> str:
  return (f"Nothing is downloaded at run time. Prepare it once on a machine with network "
          f"access: `tfds build {name} --data_dir={data_dir}` (or `python -c \"import "
          f"tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{data_dir}')"
          f".download_and_prepare()\"`); for manual-download datasets such as imagenet2012 "
          f"place the archives in {data_dir}/downloads/manual first.")


def _load_builder(name: str, data_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  except Exception as e:  # pylint: disable=broad-except
    # Unregistered names fail here unless prepared files exist in data_dir.
    raise FileNotFoundError(
        f"tfds dataset '{name}' is not known or not prepared in {data_dir} "
        f"({type(e).__name__}: {e}). {_prepare_hint(name, data_dir)}") from e
  if not builder.is_prepared():
    raise FileNotFoundError(f"tfds dataset '{name}' is not prepared in {data_dir}. "
                            f"{_prepare_hint(name, data_dir)}")
  return builder


def _feature_keys(name: str, info):
  """(image key, label key or None) of a tfds FeaturesDict."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if not images:
    raise ValueError(f"tfds dataset '{name}' has no Image feature "
                     f"(features: {sorted(features.keys())}).")
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  label_key = "label" if "label" in labels else (labels[0] if labels else None)
  return images[0], label_key


def open_tfds(spec: str, data_dir: Optional[str]) -> Source:
  """Opens "tfds:NAME:SPLIT" from `data_dir` (see the module docstring)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  parts = spec.split(":", 2)
  if len(parts) != 3 or not parts[1] or not parts[2]:
    raise ValueError(f"Bad tfds spec {spec!r}: expected tfds:NAME:SPLIT, e.g. "
                     "tfds:imagenet2012:train.")
  _, name, split = parts
  if not data_dir:
    raise ValueError(f"Source {spec} needs --tfds_data_dir (the data_dir where "
                     f"'{name}' was prepared).")
  builder = _load_builder(name, data_dir)
  image_key, label_key = _feature_keys(name, builder.info)
  try:
    size = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(f"Source {spec}: no split '{split}' in {data_dir} (splits: "
                     f"{sorted(builder.info.splits.keys())}).") from e
  if size == 0:
    raise ValueError(f"Source {spec}: split '{split}' in {data_dir} is empty.")

  def make(num_workers: int, worker_index: int) -> tf.data.Dataset:
    # even_splits gives disjoint sub-splits covering the split for any worker count.
    sub = split if num_workers == 1 else tfds.even_splits(split, num_workers)[worker_index]
    ds = builder.as_dataset(
        split=sub, shuffle_files=False,
        decoders={image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(add_tfds_id=True, try_autocache=False))
    def to_record(ex):
      label = (tf.cast(ex[label_key], tf.int64) if label_key
               else tf.constant(-1, tf.int64))
      return {"image/encoded": ex[image_key], "id": ex["tfds_id"], "label": label}
    return ds.map(to_record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  class_names = list(builder.info.features[label_key].names) if label_key else None
  counts = None
  if label_key and (builder.info.dataset_size or 0) <= _MAX_BYTES_TO_COUNT:
    counts = dict(collections.Counter(
        int(y) for y in make(1, 0).map(lambda r: r["label"]).as_numpy_iterator()))
  return Source(spec, label_key is not None, class_names, size, make,
                        class_counts=counts)
