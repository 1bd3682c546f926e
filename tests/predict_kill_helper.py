"""Runs predict in its own process, for tests/test_predict.py's kill-and-resume test.

python tests/predict_kill_helper.py OUTPUT_DIR WEIGHTS NUM_SHARDS BATCH SLEEP_SECS
(the test kills it part-way and finishes the run in its own process with the same flags)
builds `efficientnet-test` (10 classes, 32 px), loads WEIGHTS and labels digits:unlabeled;
SLEEP_SECS per record slows the source so the test can kill it part-way.
"""
import sys
import time

from absl import logging
import tensorflow as tf

import efficientnet
from noisy_student import predict
from noisy_student.config import PredictConfig
from noisy_student.data import sources


class _SlowSource:
  """The digits source, each record delayed (the delay changes no value)."""

  def __init__(self, source, sleep_secs):
    self._source, self._sleep = source, sleep_secs

  def describe(self):
    return self._source.describe()

  def dataset(self, num_workers=1, worker_index=0):
    def slow(record):
      tf.py_function(lambda: time.sleep(self._sleep), [], [])
      return record
    ds = self._source.dataset(num_workers, worker_index)
    return ds.map(slow) if self._sleep > 0 else ds


def main(argv):
  logging.set_verbosity(logging.INFO)
  out, weights, num_shards, batch, sleep = argv[1:6]
  model = efficientnet.build_model("efficientnet-test", 10, image_size=32)
  model.load_weights(weights)
  source = sources.open_source("digits:unlabeled", digits_num_labeled=800,
                               digits_num_test=800)  # As tests/test_predict.py.
  cfg = PredictConfig(output_dir=out, num_shards=int(num_shards))
  predict.predict(model, _SlowSource(source, float(sleep)), cfg, image_size=32,
                  batch_size=int(batch),
                  num_label_classes=10, teacher_id="helper", log_every_secs=1)


if __name__ == "__main__":
  main(sys.argv)
