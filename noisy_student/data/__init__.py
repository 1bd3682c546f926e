"""The input pipeline (docs/data.md), one module per stage:

  source       the Contract-2 `Source` type and the spec grammar (no TensorFlow at import)
  sources      open_source(spec) -> Source: digits, tfds, image folders, TFRecords
  preprocess   decode_image, decode_or_skip, preprocess_train / _eval / _small_train
  randaugment  per-image RandAugment; augment_table (the op table), augment_ops,
               augment_groups
  datasets     labeled_train_dataset, eval_dataset, predict_dataset,
               train_dataset_from_records

Import the modules themselves; this package imports nothing, so that the pure ones load
without TensorFlow.
"""
