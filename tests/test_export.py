"""The SavedModel export, used the way its hosts use it: `saved_model_cli run` (another
process), TensorFlow's TF1 session loader (the C++ hosts' path), a TF Serving REST body
decoded as TF Serving decodes it, each on real PNG / JPEG bytes, bad ones included.

One model is trained for a few steps and exported through `--mode=export` (the real load
path: EMA weights from the checkpoint); its EMA weights differ from its raw ones, and every
loader must give the EMA model's probabilities.
"""
import base64
import io
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

import efficientnet
from noisy_student import config as config_lib
from noisy_student import export
from noisy_student import modes
from noisy_student import train as train_lib
from noisy_student.data import preprocess
from noisy_student.train import checkpoints

SIZE = 32
LETTERS = ["A", "B", "C"]
TOP_K = 2


def _encode(array, fmt="PNG"):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt)
  return buf.getvalue()


def _raw_weights_model(model_dir):
  """The trained network with its raw (not EMA) weights."""
  build = checkpoints.read_build_config(model_dir)
  model = efficientnet.build_model(build["model"].model_name, build["num_classes"],
                                   image_size=SIZE, small_image=True)
  checkpoints.make_checkpoint(model).read(
      checkpoints.resolve_checkpoint(model_dir)).expect_partial()
  return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(SavedModel dir, good images, bad bytes, EMA probabilities of the good ones)."""
  root = tmp_path_factory.mktemp("export")
  for i, name in enumerate(LETTERS):
    os.makedirs(root / "letters" / name)
    for j in range(4):
      Image.fromarray(np.full((SIZE, SIZE, 3), 60 * i + 10 * j, np.uint8)).save(
          root / "letters" / name / f"{j}.png")
  model_cfg = config_lib.ModelConfig("efficientnet-test", input_image_size=SIZE,
                                     small_image=True)
  train = config_lib.TrainConfig(model_dir=str(root / "run"), train_batch_size=4,
                                 train_steps=4, iterations_per_loop=2,
                                 save_checkpoints_steps=4, warmup_epochs=0,
                                 base_learning_rate=0.5)
  data = config_lib.DataConfig(label_data_dir=str(root / "letters"),
                               eval_data_dir=str(root / "letters"), augment_name=None,
                               shuffle_buffer=16)
  modes.run(config_lib.Config(mode="train", model=model_cfg, train=train, data=data))
  result = modes.run(config_lib.Config(
      mode="export", model=model_cfg, train=train, data=data,
      export=config_lib.ExportConfig(top_k=TOP_K)))
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
            rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
            np.full((SIZE, SIZE, 3), 70, np.uint8)]
  png = _encode(images[0])
  jpeg = _encode(images[1], "JPEG")
  bad = {"truncated PNG": png[:len(png) // 2], "truncated JPEG": jpeg[:len(jpeg) // 2],
         "random bytes": rng.integers(0, 256, 300, dtype=np.uint8).tobytes(),
         "empty": b""}
  batch = np.stack([preprocess.preprocess_eval(im, SIZE, True).numpy() for im in images])
  ema = train_lib.load_for_inference(train.model_dir)
  expected = tf.nn.softmax(ema(batch, training=False)).numpy()
  raw = tf.nn.softmax(_raw_weights_model(train.model_dir)(batch, training=False)).numpy()
  return dict(path=result.export_path, check=result.check, images=images, bad=bad,
              expected=expected, raw=raw, base=str(root / "run" / "export"))


def _assert_answers(out, expected, valid):
  """Rows where `valid` hold the expected probabilities; the others the invalid row."""
  valid = np.array(valid)
  np.testing.assert_array_equal(out["valid"], valid)
  np.testing.assert_allclose(out["probabilities"][valid], expected, atol=1e-5)
  np.testing.assert_array_equal(out["classes"][valid], expected.argmax(-1))
  names = [[n.decode() if isinstance(n, bytes) else n for n in row]
           for row in out["class_names"]]
  for row, probs in zip(np.array(names)[valid], expected):
    assert list(row) == [LETTERS[i] for i in np.argsort(-probs)[:TOP_K]]
  assert (out["classes"][~valid] == -1).all()
  assert (out["probabilities"][~valid] == 0).all()
  assert (out["top_k_probabilities"][~valid] == 0).all()
  assert all(n == "" for row in np.array(names)[~valid] for n in row)


def test_ema_weights_differ_from_raw_ones(exported):
  # Otherwise the loaders' equality with the EMA model below would prove nothing.
  assert np.abs(exported["expected"] - exported["raw"]).max() > 1e-3


def test_layout_is_what_serving_watches(exported):
  path, base = exported["path"], exported["base"]
  assert path == os.path.join(base, "1")
  assert os.listdir(base) == ["1"]  # The temporary name is gone.
  assert export.next_version(base) == 2
  with open(os.path.join(path, "assets", "class_names.txt")) as f:
    assert f.read().split() == LETTERS
  with open(os.path.join(path, "assets.extra", "check.json")) as f:
    check = json.load(f)
  assert check == exported["check"]
  assert check["images"] == 12 and check["top1_agreement"] == 1.0
  assert check["max_probability_difference"] < 1e-5
  assert 0.0 <= check["top1"] <= 1.0 and check["top1"] == check["keras_top1"]


@pytest.fixture(scope="module")
def cli_outputs(exported, tmp_path_factory):
  """{signature: outputs} of `saved_model_cli run` on both signatures, as two processes
  at once (each spends most of its time importing TensorFlow): bytes of a PNG, a
  truncated PNG and another PNG; uint8 images of the second and third image."""
  root = tmp_path_factory.mktemp("cli")
  encoded = [_encode(exported["images"][0]), exported["bad"]["truncated PNG"],
             _encode(exported["images"][1])]
  np.save(root / "bytes.npy", np.array(encoded, dtype=object), allow_pickle=True)
  np.save(root / "images.npy", np.stack(exported["images"][1:]))
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  runs = {}
  for signature, inputs in [("serving_default", f"image_bytes={root / 'bytes.npy'}"),
                            ("serving_images", f"images={root / 'images.npy'}")]:
    (root / signature).mkdir()
    runs[signature] = subprocess.Popen(
        [cli, "run", "--dir", exported["path"], "--tag_set", "serve", "--signature_def",
         signature, "--inputs", inputs, "--outdir", str(root / signature), "--overwrite"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  out = {}
  for signature, proc in runs.items():
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    out[signature] = {k: np.load(root / signature / f"{k}.npy", allow_pickle=True)
                      for k in export.saved_model.OUTPUTS}
  return out


def test_saved_model_cli_runs_the_bytes_signature(exported, cli_outputs):
  _assert_answers(cli_outputs["serving_default"], exported["expected"][:2],
                  [True, False, True])


def test_saved_model_cli_runs_the_images_signature(exported, cli_outputs):
  _assert_answers(cli_outputs["serving_images"], exported["expected"][1:], [True, True])


@pytest.fixture(scope="module")
def session(exported):
  """The SavedModel loaded by the TF1 loader in a Session: (session, SignatureDefs)."""
  graph = tf.Graph()
  with graph.as_default():
    sess = tf.compat.v1.Session(graph=graph)
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], exported["path"])
  yield sess, meta.signature_def
  sess.close()


def _session_run(session, signature, feed):
  """A signature run by the tensor names its SignatureDef gives, as C++ hosts run it."""
  sess, signatures = session
  sig = signatures[signature]
  return sess.run({k: v.name for k, v in sig.outputs.items()},
                  {sig.inputs[k].name: v for k, v in feed.items()})


def test_tf1_loader_answers_every_row_and_empty_batches(exported, session):
  images, bad = exported["images"], exported["bad"]
  encoded = ([_encode(images[0])] + list(bad.values()) + [_encode(images[1], "BMP"),
                                                          _encode(images[2], "GIF")])
  out = _session_run(session, "serving_default", {"image_bytes": encoded})
  _assert_answers(out, exported["expected"], [True] + [False] * len(bad) + [True, True])
  empty = _session_run(session, "serving_default", {"image_bytes": []})
  assert empty["probabilities"].shape == (0, len(LETTERS))
  assert empty["class_names"].shape == (0, TOP_K) and empty["valid"].shape == (0,)
  out = _session_run(session, "serving_images", {"images": np.stack(images[1:])})
  _assert_answers(out, exported["expected"][1:], [True, True])
  empty = _session_run(session, "serving_images",
                       {"images": np.zeros([0, SIZE, SIZE, 3], np.uint8)})
  assert empty["classes"].shape == (0,) and empty["top_k_probabilities"].shape == (0, TOP_K)


def _predict_request_from_rest(body, signature_def):
  """A TF Serving REST body in row format ("instances") -> PredictRequest, by the rules
  of tensorflow_serving/util/json_tensor.cc: each instance is an object with one key per
  signature input; {"b64": s} is base64-decoded into a DT_STRING value; the instances are
  stacked along a new first (batch) dimension."""
  request = predict_pb2.PredictRequest()
  request.model_spec.signature_name = body.get("signature_name", "serving_default")
  instances = body["instances"]
  assert instances, "TF Serving refuses an empty 'instances' list"
  for name, info in signature_def.inputs.items():
    values = [inst[name] for inst in instances]
    assert all(set(inst) == set(signature_def.inputs) for inst in instances)
    if info.dtype == tf.string.as_datatype_enum:
      values = [base64.b64decode(v["b64"]) if isinstance(v, dict) else v.encode()
                for v in values]
      array = np.array(values, dtype=object)
    else:
      array = np.array(values, dtype=tf.as_dtype(info.dtype).as_numpy_dtype)
    request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
  return request


def _rest_response(outputs):
  """PredictResponse outputs -> TF Serving's row-format JSON ("predictions": one object
  per row; DT_STRING outputs not named *_bytes as plain strings)."""
  arrays = {k: tf.make_ndarray(v) for k, v in outputs.items()}
  n = {a.shape[0] for a in arrays.values()}
  assert len(n) == 1 and n.pop() >= 1  # Serving refuses mixed or zero batch sizes.

  def plain(x):
    if isinstance(x, np.ndarray):
      return [plain(v) for v in x]
    return x.decode() if isinstance(x, bytes) else x.item()
  rows = [{k: plain(a[i]) for k, a in arrays.items()}
          for i in range(len(next(iter(arrays.values()))))]
  return json.loads(json.dumps({"predictions": rows}))


def test_tf_serving_rest_request(exported, session):
  images = exported["images"]
  body = json.loads(json.dumps({"signature_name": "serving_default", "instances": [
      {"image_bytes": {"b64": base64.b64encode(_encode(im)).decode()}}
      for im in images[:2]] + [{"image_bytes": {"b64": base64.b64encode(
          exported["bad"]["truncated JPEG"]).decode()}}]}))
  signature = session[1][body["signature_name"]]
  request = _predict_request_from_rest(body, signature)
  # As TF Serving's predict_util: the request's tensors fed by the signature's names.
  fetched = _session_run(session, request.model_spec.signature_name,
                         {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
  response = predict_pb2.PredictResponse()
  for k, v in fetched.items():
    response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
  rows = _rest_response(response.outputs)["predictions"]
  assert [r["valid"] for r in rows] == [True, True, False]
  out = {k: np.array([r[k] for r in rows]) for k in export.saved_model.OUTPUTS}
  _assert_answers(out, exported["expected"][:2], [True, True, False])
  assert rows[2]["class_names"] == ["", ""] and rows[2]["classes"] == -1


def test_python_loader_serves_bytes(exported):
  loaded = tf.saved_model.load(exported["path"])
  out = loaded.signatures["serving_default"](
      image_bytes=tf.constant([_encode(im) for im in exported["images"]]))
  _assert_answers({k: v.numpy() for k, v in out.items()}, exported["expected"],
                  [True, True, True])


def test_class_count_mismatch_is_refused(tmp_path):
  model = efficientnet.build_model("efficientnet-test", 3, image_size=SIZE,
                                   small_image=True)
  with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
    export.export_saved_model(model, str(tmp_path), class_names=["a", "b"],
                              preprocess_fn=lambda im: preprocess.preprocess_eval(im, SIZE))
