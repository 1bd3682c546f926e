"""The input pipeline: sources, decoding, preprocessing, RandAugment, datasets.

See docs/data.md. Public API:
  open_source, Source                        (sources)
  decode_image, decode_or_skip, SkipCounter  (preprocess)
  preprocess_train, preprocess_eval, preprocess_small_train
  randaugment.randaugment, randaugment.apply_op (the module)
  labeled_train_dataset, eval_dataset, predict_dataset, train_dataset_from_records
"""
from noisy_student.data.datasets import eval_dataset
from noisy_student.data.datasets import labeled_train_dataset
from noisy_student.data.datasets import predict_dataset
from noisy_student.data.datasets import train_dataset_from_records
from noisy_student.data.preprocess import decode_image
from noisy_student.data.preprocess import decode_or_skip
from noisy_student.data.preprocess import preprocess_eval
from noisy_student.data.preprocess import preprocess_small_train
from noisy_student.data.preprocess import preprocess_train
from noisy_student.data.preprocess import SkipCounter
from noisy_student.data.sources import open_source
from noisy_student.data.sources import Source
