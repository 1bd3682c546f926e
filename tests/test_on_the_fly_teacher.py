"""The original's own training mode from the command line: a student whose teacher runs
on the fly (noisystudent local_scripts/svhn/run.sh: --mode=train --unlabel_ratio=5
--teacher_model_name=... --teacher_model_path=... --unlabel_data_dir=...)."""
import glob
import os
import subprocess
import sys

from absl import flags as absl_flags
import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
import flags
from noisy_student import checks
from noisy_student import context
from noisy_student import pipeline
from noisy_student.config import ModelConfig
from noisy_student.data import preprocess
from noisy_student.train import checkpoints
from noisy_student.train import load_for_inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
# Tiny and fast: no input noise, 8 labeled + 8 unlabeled images per step, 4 steps.
COMMON = ["--mode=train", "--model_name=test", "--train_batch_size=8", "--train_steps=4",
          "--iterations_per_loop=2", "--save_checkpoints_steps=4", "--log_every_n_steps=2",
          "--augment_name=none", "--label_data_dir=digits:labeled", "--small_image"]


def _cli(*argv):
  proc = subprocess.run([sys.executable, "-m", "noisy_student", *COMMON, *argv], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def _scalars(model_dir, tag):
  values = []
  for path in glob.glob(os.path.join(model_dir, "train", "events.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      values += [float(tf.make_ndarray(v.tensor)) for v in event.summary.value
                 if v.tag == tag]
  return values


def _unlabeled_folder(path, n=8):
  """n PNG images: exactly one unlabeled batch, so every step sees all of them."""
  path.mkdir()
  rng = np.random.default_rng(3)
  for i in range(n):
    image = rng.integers(0, 256, [24, 20, 3], dtype=np.uint8)
    (path / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
  return sorted(str(p) for p in path.iterdir())


def _confident_init(path):
  """A .keras start for the teacher whose logits spread over several units (a fresh
  model's spread over ~0.005), so the targets below depend clearly on T and the view."""
  keras.utils.set_random_seed(2)
  model = efficientnet.build_model("efficientnet-test", 10, image_size=40, small_image=True)
  dense = model.get_layer("predictions")
  dense.set_weights([w * 2000.0 for w in dense.get_weights()])
  model.save(path)
  return path


@pytest.mark.slow
def test_student_with_an_on_the_fly_teacher_from_the_command_line(tmp_path):
  teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "student")
  files = _unlabeled_folder(tmp_path / "unlabeled")
  _cli(f"--model_dir={teacher_dir}", "--input_image_size=40",
       f"--init_model_path={_confident_init(str(tmp_path / 'init.keras'))}")
  log = _cli(f"--model_dir={student_dir}", "--input_image_size=32", "--unlabel_ratio=1",
             f"--unlabel_data_dir=images:{tmp_path / 'unlabeled'}",
             f"--teacher_model_path={teacher_dir}", "--teacher_model_name=test",
             "--teacher_softmax_temp=2")
  assert "(pseudo-labels: the on-the-fly teacher's)" in log
  # The targets: softmax(teacher logits / T) of the un-noised view at the teacher's own
  # 40 px. Every step's unlabeled batch is the 8 images, so the mean max target (the
  # original's unl/target_prob, main.py:539-540) is known exactly.
  teacher = load_for_inference(teacher_dir)
  views = tf.stack([preprocess.preprocess_eval(
      preprocess.decode_image(tf.io.read_file(f)), 40, True) for f in files])
  probs = tf.nn.softmax(teacher(views, training=False) / 2.0).numpy()
  reported = _scalars(student_dir, "target_confidence")
  assert len(reported) == 2  # Two loops of two steps.
  np.testing.assert_allclose(reported, probs.max(1).mean(), rtol=1e-5)
  # The check tells apart T applied twice, and a view made at the student's 32 px.
  logits = teacher(views, training=False)
  twice = tf.nn.softmax(logits / 4.0).numpy().max(1).mean()
  small = tf.stack([preprocess.preprocess_eval(
      preprocess.decode_image(tf.io.read_file(f)), 32, True) for f in files])
  at_32 = tf.nn.softmax(teacher(tf.image.resize(small, [40, 40]), training=False) / 2.0)
  for other in (twice, at_32.numpy().max(1).mean()):
    assert abs(other - reported[0]) > 1e-4



def _config(tmp_path, *argv):
  fv = absl_flags.FlagValues()
  flags.define_all(fv)
  fv(["prog", *COMMON, f"--model_dir={tmp_path / 'student'}", "--unlabel_ratio=1", *argv])
  return flags.to_config(fv)


def test_teacher_model_name_must_agree_with_the_teachers_own(tmp_path):
  """The teacher's build_config.json names it (the original needs the flag to rebuild
  the graph, main.py:426-442): a disagreeing --teacher_model_name is refused before any
  work, and a matching one or none passes that check."""
  teacher_dir = str(tmp_path / "teacher")
  checkpoints.write_build_config(teacher_dir, ModelConfig("efficientnet-test", 10, 40,
                                                          small_image=True), None, True)
  cfg = _config(tmp_path, f"--teacher_model_path={teacher_dir}", "--teacher_model_name=b0")
  assert checks.problems(cfg) == []
  with pytest.raises(ValueError, match="--teacher_model_name=efficientnet-b0, but "
                     ".* holds a efficientnet-test"):
    pipeline.train_with_teacher(context.Context(cfg))
  cfg = _config(tmp_path, f"--teacher_model_path={teacher_dir}", "--input_image_size=32")
  with pytest.raises(FileNotFoundError, match="No checkpoint"):  # Past the checks.
    pipeline.train_with_teacher(context.Context(cfg))
