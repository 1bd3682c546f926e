"""`python -m _build_and_save MODEL SIZE DIR`: builds a model at SIZE px and writes its
tf.train.Checkpoint to DIR, importing nothing: the memory baseline the full-size import
test compares efficientnet-import's peak against."""
import sys

import tensorflow as tf

from noisy_student.config import ModelConfig
from noisy_student.train import checkpoints

if __name__ == "__main__":
  name, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
  model = checkpoints.build_model(ModelConfig(model_name=name, num_label_classes=1000,
                                              input_image_size=size))
  tf.train.CheckpointManager(checkpoints.make_checkpoint(model), out, max_to_keep=1).save(0)
