"""The `.keras` and LiteRT exports, run by the programs that deploy them: `keras.models.
load_model` in a fresh process with nothing of ours but `import efficientnet`, and the
LiteRT interpreter from PyPI (float32 and int8), on the same uint8 images as the Keras
model with the eval preprocessing."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

from ai_edge_litert.interpreter import Interpreter
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

import efficientnet
from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import export
from noisy_student.data import preprocess
from noisy_student.data import sources
from noisy_student.export import deploy
from noisy_student.export import tflite

SIZE = 32
LETTERS = ["A", "B", "C"]


def _model(size=SIZE, small_image=True):
  """efficientnet-test with a sharpened head: clear top-1 classes, so agreement counts."""
  model = efficientnet.build_model("efficientnet-test", len(LETTERS), image_size=size,
                                   small_image=small_image)
  head = model.layers[-1]
  head.kernel.assign(head.kernel * 30.0)
  return model


def _keras_probabilities(model, images, small_image=True):
  batch = np.stack([preprocess.preprocess_eval(im, model.input_shape[1], small_image)
                    for im in images])
  return tf.nn.softmax(model(batch, training=False)).numpy()


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
  """(labeled source of generated letter images, the same images as uint8 arrays)."""
  root = tmp_path_factory.mktemp("letters")
  rng = np.random.default_rng(0)
  images = []
  for name in LETTERS:
    os.makedirs(root / name)
    for j in range(6):
      images.append(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
      Image.fromarray(images[-1]).save(root / name / f"{j}.png")
  return sources.open_source(str(root)), images


@pytest.mark.parametrize("small_image, size", [(True, SIZE), (False, 40)])
def test_deployable_model_is_the_eval_preprocessing_and_the_classifier(small_image, size):
  model = _model(size, small_image)
  images = np.random.default_rng(1).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
  np.testing.assert_allclose(deploy.deployable(model, small_image)(images).numpy(),
                             _keras_probabilities(model, images, small_image), atol=1e-5)


@pytest.mark.parametrize("small_image, size", [(True, SIZE), (False, 40)])
def test_eval_preprocessing_survives_int8_quantization(small_image, size):
  """The deployable model's preprocessing alone, int8 under LiteRT vs float: within a few
  grey levels (measured 255 when LinearResize's constant was a BATCH_MATMUL's left operand,
which made the demo's int8 classifier answer at chance)."""
  deployable = deploy.deployable(_model(size, small_image), small_image)
  preprocessing = tf.keras.Model(deployable.input,
                                 deployable.get_layer("eval_clip").output)
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
  expected = preprocessing(images).numpy()
  interpreter = Interpreter(model_content=tflite.convert(preprocessing, images))
  interpreter.allocate_tensors()
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  for image, want in zip(images, expected):
    interpreter.set_tensor(inp["index"], image[None])
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])[0]
    assert np.abs(got - want).max() < 4.0, np.abs(got - want).max()  # Of 0..255.


def _export(model, fmt, base, letters_source, **settings):
  cfg = config_lib.ExportConfig(export_format=fmt, check_images=18, **settings)
  return export.export(model, cfg, base, class_names=LETTERS, small_image=True,
                       eval_source=letters_source, label_source=letters_source)


def test_keras_file_opens_with_nothing_but_import_efficientnet(letters, tmp_path):
  source, images = letters
  model = _model()
  result = _export(model, "keras", str(tmp_path / "keras"), source)
  assert result.export_path == str(tmp_path / "keras" / "1")
  assert result.check["top1_agreement"] == 1.0 and result.check["images"] == 18
  path = os.path.join(result.export_path, "model.keras")
  np.save(tmp_path / "images.npy", np.stack(images[:5]))
  script = textwrap.dedent(f"""
      import efficientnet  # Registers the custom layers; nothing else of ours.
      import keras, numpy as np
      model = keras.models.load_model({path!r})
      np.save({str(tmp_path / 'out.npy')!r}, model.predict(np.load(
          {str(tmp_path / 'images.npy')!r}), verbose=0))
      print(sorted(m for m in __import__("sys").modules if m.startswith("noisy_student")))
  """)
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=300, check=True,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert proc.stdout.strip().splitlines()[-1] == "[]"
  np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                             _keras_probabilities(model, images[:5]), atol=1e-5)
  with open(os.path.join(result.export_path, "check.json")) as f:
    assert json.load(f) == result.check


def _litert(path, images):
  """Probabilities of a .tflite file under the LiteRT interpreter, one image a call."""
  interpreter = Interpreter(model_path=path)
  interpreter.allocate_tensors()
  (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
  assert list(inp["shape"]) == [1, SIZE, SIZE, 3] and inp["dtype"] == np.uint8
  probabilities = []
  for image in images:
    interpreter.set_tensor(inp["index"], image[None])
    interpreter.invoke()
    probabilities.append(interpreter.get_tensor(out["index"])[0].copy())
  int8 = sum(t["dtype"] == np.int8 for t in interpreter.get_tensor_details())
  return np.stack(probabilities), int8


def test_tflite_float32_and_int8_run_under_litert(letters, tmp_path):
  source, images = letters
  model = _model()
  result = _export(model, "tflite", str(tmp_path / "tflite"), source,
                   calibration_images=12)
  expected = _keras_probabilities(model, images)
  float32, float_int8_tensors = _litert(
      os.path.join(result.export_path, "model.tflite"), images)
  np.testing.assert_allclose(float32, expected, atol=1e-4)
  assert float_int8_tensors == 0
  int8, int8_tensors = _litert(os.path.join(result.export_path, "model_int8.tflite"),
                               images)
  assert int8_tensors > 20  # Weights and activations quantized, not just stored.
  # Its softmax is int8 too: each probability a multiple of 1/256.
  np.testing.assert_allclose(int8.sum(-1), 1.0, atol=len(LETTERS) / 256)
  # check.json reports what LiteRT computes (its images: the 18 letters, A/0.png first).
  labels = np.repeat(np.arange(len(LETTERS)), 6)
  for kind, probabilities in [("float32", float32), ("int8", int8)]:
    report = result.check[kind]
    assert report["images"] == 18
    assert report["top1_agreement"] == pytest.approx(np.mean(
        probabilities.argmax(-1) == expected.argmax(-1)))
    assert report["top1"] == pytest.approx(np.mean(probabilities.argmax(-1) == labels))
  # int8's agreement is a property of a trained model (docs/usage.md measures the demo's);
  # this untrained one only has to run and be reported truly.
  assert result.check["float32"]["top1_agreement"] == 1.0


def test_tflite_int8_export_checks_the_labeled_data_flag(tmp_path):
  cfg = config_lib.Config(
      mode="export", train=config_lib.TrainConfig(model_dir=str(tmp_path)),
      data=config_lib.DataConfig(label_data_dir="/no/such/letters"),
      export=config_lib.ExportConfig(export_format="tflite"))
  assert "--label_data_dir=/no/such/letters: no such file or directory" in \
      checks.problems(cfg)
  float_only = dataclasses.replace(cfg, export=config_lib.ExportConfig(
      export_format="tflite", tflite_int8=False))
  assert not checks.problems(float_only)
