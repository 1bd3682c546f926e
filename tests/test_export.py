"""The SavedModel export, used the way a server uses it: another process, real PNG bytes."""
import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from noisy_student import export
from noisy_student.data import preprocess

SIZE = 32
CLASSES = ["zero", "one", "two"]


def _preprocess(image):
  # The real eval preprocessing (centre crop + bicubic resize), run inside the graph.
  return preprocess.preprocess_eval(image, SIZE)


def _tiny_model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input([SIZE, SIZE, 3])
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  return keras.Model(inputs, keras.layers.Dense(len(CLASSES))(x))


def _png(array):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  model = _tiny_model()
  base = str(tmp_path_factory.mktemp("export"))
  path = export.export_saved_model(model, base, class_names=CLASSES,
                                   preprocess_fn=_preprocess, top_k=2)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
            rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)]
  expected = [tf.nn.softmax(model(_preprocess(im)[None], training=False))[0].numpy()
              for im in images]
  return base, path, images, expected


def test_layout_is_what_serving_watches(exported):
  base, path, _, _ = exported
  assert path == os.path.join(base, "1")
  assert os.listdir(base) == ["1"]  # The temporary name is gone.
  assert export.next_version(base) == 2
  with open(os.path.join(path, "assets", "class_names.txt")) as f:
    assert f.read().split() == CLASSES


def test_fresh_process_serves_png_bytes(exported, tmp_path):
  _, path, images, expected = exported
  png_files = []
  for i, image in enumerate(images):
    png_files.append(str(tmp_path / f"{i}.png"))
    with open(png_files[-1], "wb") as f:
      f.write(_png(image))
  script = textwrap.dedent(f"""
      import json, sys
      import tensorflow as tf
      loaded = tf.saved_model.load({path!r})
      data = [open(p, "rb").read() for p in {png_files!r}]
      out = loaded.signatures["serving_default"](image_bytes=tf.constant(data))
      print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()
                        if k != "class_names"}} |
                       {{"class_names": [[n.decode() for n in row]
                                         for row in out["class_names"].numpy()]}}))
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=env, timeout=120, check=True)
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  probs = np.array(out["probabilities"])
  np.testing.assert_allclose(probs, np.stack(expected), atol=1e-5)
  assert out["classes"] == probs.argmax(-1).tolist()
  for row, names in zip(probs, out["class_names"]):
    assert names == [CLASSES[i] for i in np.argsort(-row)[:2]]


def test_uint8_signature_matches_bytes_signature(exported):
  _, path, images, expected = exported
  loaded = tf.saved_model.load(path)
  out = loaded.signatures["serving_images"](images=tf.constant(images[1][None]))
  np.testing.assert_allclose(out["probabilities"].numpy()[0], expected[1], atol=1e-5)
  assert out["top_k_probabilities"].shape == (1, 2)


def test_saved_model_cli_lists_both_signatures(exported):
  _, path, _, _ = exported
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  proc = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True,
                        text=True, timeout=120, check=True)
  assert "signature_def['serving_default']" in proc.stdout
  assert "signature_def['serving_images']" in proc.stdout
  assert "image_bytes" in proc.stdout and "probabilities" in proc.stdout


def test_class_count_mismatch_is_refused(tmp_path):
  with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
    export.export_saved_model(_tiny_model(), str(tmp_path), class_names=["a", "b"],
                              preprocess_fn=_preprocess)


def test_export_mode_takes_class_names_from_the_trained_model(tmp_path):
  """A model trained on letters, exported as docs/usage.md says (--mode=export with only
  --model_dir): its SavedModel names the letters, not the default data's digits."""
  from noisy_student import config as config_lib  # pylint: disable=import-outside-toplevel
  from noisy_student import modes  # pylint: disable=import-outside-toplevel
  letters = ["A", "B", "C"]
  for i, name in enumerate(letters):
    os.makedirs(tmp_path / "letters" / name)
    for j in range(4):
      Image.fromarray(np.full((SIZE, SIZE, 3), 60 * i + j, np.uint8)).save(
          tmp_path / "letters" / name / f"{j}.png")
  model_dir = str(tmp_path / "run")
  model = config_lib.ModelConfig("efficientnet-test", input_image_size=SIZE,
                                 small_image=True)
  train = config_lib.TrainConfig(model_dir=model_dir, train_batch_size=4, train_steps=2,
                                 iterations_per_loop=2, save_checkpoints_steps=2,
                                 warmup_epochs=0)
  modes.run(config_lib.Config(
      mode="train", model=model, train=train,
      data=config_lib.DataConfig(label_data_dir=str(tmp_path / "letters"),
                                 augment_name=None, shuffle_buffer=16)))
  exported = modes.run(config_lib.Config(mode="export", model=model, train=train))
  with open(os.path.join(exported.export_path, "assets", "class_names.txt")) as f:
    assert f.read().split() == letters
  loaded = tf.saved_model.load(exported.export_path)
  out = loaded.signatures["serving_images"](images=tf.zeros([1, SIZE, SIZE, 3], tf.uint8))
  assert {n.decode() for n in out["class_names"].numpy()[0]} <= set(letters)
