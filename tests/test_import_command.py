"""`efficientnet-import` (noisy_student/import_main.py, import_original.py): an original
checkpoint becomes a model directory that eval, export, predict, --teacher_model_path and
--init_model_path read unchanged.

The checkpoints are laid out as the original writes them (tests/_original_ckpt.py) at the
efficientnet-test size (width 0.1, depth 0.3) so the commands run in seconds; the B0 and
L2-shaped imports themselves are tested in test_original_checkpoint.py.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import _original_ckpt as oc
import efficientnet
from noisy_student import checks
from noisy_student import config as config_lib
from noisy_student import context
from noisy_student import faults
from noisy_student import import_main
from noisy_student import modes
from noisy_student.data import preprocess
from noisy_student.train import checkpoints
import tfrecords

SIZE = 64
NAMES = ["cat", "dog", "fox"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def _write(tmp_path, num_classes=len(NAMES), **kwargs):
  folder = tmp_path / "original"
  return oc.write_bundle(str(folder / "model.ckpt"), "efficientnet-test",
                         num_classes=num_classes, size=SIZE, **kwargs)


def _import(tmp_path, original, *extra, names=NAMES):
  out = str(tmp_path / "imported")
  argv = [os.path.dirname(original.prefix), f"--image_size={SIZE}", f"--output={out}"]
  if names:
    (tmp_path / "labels_map.json").write_text(json.dumps(dict(enumerate(names))))
    argv.append(f"--class_names_file={tmp_path / 'labels_map.json'}")
  assert import_main.main(argv + list(extra)) == 0
  return out


def _image_folder(path, n_per_class=2, seed=0):
  """PNG images in one folder per class of NAMES."""
  rng = np.random.default_rng(seed)
  for name in NAMES:
    (path / name).mkdir(parents=True)
    for i in range(n_per_class):
      image = oc.images(n=1, size=80, seed=int(rng.integers(1 << 30)))[0].astype(np.uint8)
      (path / name / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
  return str(path)


def _eval_view(path, size=SIZE):
  return preprocess.preprocess_eval(preprocess.decode_image(tf.io.read_file(path)), size,
                                    False)


def test_the_command_writes_a_model_directory(tmp_path, capsys):
  original = _write(tmp_path, num_classes=1000)
  out = _import(tmp_path, original, names=None)
  assert "noisy-student --mode=eval --model_dir=" in capsys.readouterr().out
  build = checkpoints.read_build_config(out)
  assert build["model"].model_name == "efficientnet-test"  # The checkpoint's scope.
  assert (build["num_classes"], build["has_ema"]) == (1000, False)
  # 1000 classes: the ImageNet synsets in label order (tensorflow-datasets' labels file).
  assert build["class_names"][:2] == ["n01440764", "n01443537"]
  with open(os.path.join(out, "import.json"), encoding="utf-8") as f:
    report = json.load(f)
  assert report["report"]["ema"] and report["report"]["assigned"] == 159
  model = context.trained_model_of(out)
  assert (model.path, model.image_size, model.small_image) == (out, SIZE, False)
  logits = checkpoints.load_for_inference(out)(original.images, training=False).numpy()
  expected = original.logits()
  np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-3 * np.abs(expected).max())
  assert import_main.main([os.path.dirname(original.prefix), f"--output={out}"]) == 2
  assert "already holds a model" in capsys.readouterr().err


def test_bad_input_is_one_line_naming_it(tmp_path, capsys):
  original = _write(tmp_path)
  folder = os.path.dirname(original.prefix)
  (tmp_path / "two.txt").write_text("a\nb\n")
  cases = [
      ([folder, f"--output={tmp_path / 'a'}", f"--class_names_file={tmp_path / 'two.txt'}"],
       "--class_names_file has 2 names, the checkpoint's classifier 3 classes"),
      ([folder, f"--output={tmp_path / 'b'}", "--model_name=b0"],
       "efficientnet-test/stem/conv2d/kernel/ExponentialMovingAverage: checkpoint shape "
       "[3, 3, 3, 8], model's stem_conv/kernel [3, 3, 3, 32]"),
      ([str(tmp_path / "missing"), f"--output={tmp_path / 'c'}"], "no such checkpoint"),
      ([folder, f"--output={tmp_path / 'd'}", "--image_size=0"], "--image_size must be"),
  ]
  for argv, message in cases:
    assert import_main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("efficientnet-import: error: ") and len(err.splitlines()) == 1
    assert message in err, err
  assert not os.path.exists(tmp_path / "b" / "build_config.json")


def test_faults_are_one_line_with_their_exit_code(tmp_path, capsys, monkeypatch):
  folder = os.path.dirname(_write(tmp_path).prefix)
  monkeypatch.setattr(faults, "free_bytes", lambda path: 1 << 20)
  assert import_main.main([folder, f"--output={tmp_path / 'full'}"]) == faults.DISK_FULL
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "the weights need about" in err, err
  assert not os.path.exists(tmp_path / "full" / "ckpt-0.index")
  monkeypatch.setattr(faults, "gcs_unreachable_reason", lambda: "no route (test)")
  assert import_main.main(["gs://bucket/ns-b0", f"--output={tmp_path / 'x'}"]) == (
      faults.STORAGE)
  err = capsys.readouterr().err.strip()
  assert err.startswith("efficientnet-import: error: gs://bucket/ns-b0: cannot reach "
                        "Cloud Storage (no route (test))") and len(err.splitlines()) == 1


def test_eval_reads_the_imported_directory(tmp_path):
  out = _import(tmp_path, _write(tmp_path))
  folder = _image_folder(tmp_path / "eval")
  cfg = config_lib.Config(
      mode="eval", train=config_lib.TrainConfig(model_dir=out),
      data=config_lib.DataConfig(eval_data_dir=f"imagefolder:{folder}"),
      eval=config_lib.EvalConfig(eval_batch_size=3),
      robustness=config_lib.RobustnessConfig(enabled=False))
  result = modes.run(cfg)
  model = checkpoints.load_for_inference(out)
  files = sorted(tf.io.gfile.glob(f"{folder}/*/*.png"))
  predicted = model(tf.stack([_eval_view(f) for f in files]), training=False).numpy()
  labels = [NAMES.index(os.path.basename(os.path.dirname(f))) for f in files]
  assert result.num_images == 6
  assert result.top1 == pytest.approx(np.mean(predicted.argmax(1) == labels))


def test_init_model_path_keeps_all_but_a_new_classifier(tmp_path):
  original = _write(tmp_path)
  out = _import(tmp_path, original)
  imported = checkpoints.load_for_inference(out)
  for path in (out, original.prefix):  # Our directory, or the original's checkpoint.
    model = efficientnet.build_model("efficientnet-test", 10, image_size=32,
                                     small_image=True)
    head = [w.numpy() for w in model.get_layer("predictions").weights]
    checkpoints.init_from(model, path)
    for var, source in zip(model.weights, imported.weights):
      if var.path.startswith("predictions/"):
        continue
      np.testing.assert_allclose(var.numpy(), source.numpy(), rtol=1e-6, atol=0)
    for before, var in zip(head, model.get_layer("predictions").weights):
      np.testing.assert_array_equal(before, var)
  with pytest.raises(ValueError, match="holds a different network"):
    checkpoints.init_from(efficientnet.build_model("efficientnet-test", 3, image_size=32,
                                                   width_coefficient=0.2), out)


def test_checks_refuse_an_init_model_of_another_network(tmp_path):
  out = _import(tmp_path, _write(tmp_path))

  def problems(mode, model_name, students=("efficientnet-test",)):
    cfg = config_lib.Config(
        mode=mode, student_model_names=students,
        model=config_lib.ModelConfig(model_name=model_name),
        train=config_lib.TrainConfig(init_model_path=out, model_dir=str(tmp_path / "m")))
    return [p for p in checks.problems(cfg) if "--init_model_path" in p]

  assert problems("train", "efficientnet-test") == []
  wrong = problems("train", "efficientnet-b0")
  assert len(wrong) == 1 and wrong[0].startswith(
      "--model_name=efficientnet-b0 (width 1, depth 1) would start from --init_model_path")
  assert "--student_model_names=efficientnet-b1" in problems(
      "pipeline", "efficientnet-test", ("efficientnet-b1",))[0]


def _cli(*argv):
  proc = subprocess.run([sys.executable, "-m", "noisy_student", *argv], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


@pytest.mark.slow
def test_the_imported_model_evaluates_exports_predicts_and_teaches(tmp_path):
  """Every consumer through the command line, the import itself a subprocess too."""
  original = _write(tmp_path)
  (tmp_path / "names.txt").write_text("\n".join(NAMES))
  out = str(tmp_path / "imported")
  proc = subprocess.run([sys.executable, "-m", "noisy_student.import_main",
                         os.path.dirname(original.prefix), f"--image_size={SIZE}",
                         f"--class_names_file={tmp_path / 'names.txt'}", f"--output={out}"],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  model = checkpoints.load_for_inference(out)
  labeled = _image_folder(tmp_path / "labeled")
  unlabeled = _image_folder(tmp_path / "unlabeled", seed=1)
  # Evaluate.
  _cli("--mode=eval", f"--model_dir={out}", f"--eval_data_dir=imagefolder:{labeled}",
       "--norobustness", "--eval_batch_size=3")
  # Predict: the imported model as the teacher pseudo-labelling unlabeled images.
  _cli("--mode=predict", f"--predict_ckpt_path={out}",
       f"--unlabel_data_dir=images:{unlabeled}", f"--output_dir={tmp_path / 'pseudo'}",
       f"--model_dir={tmp_path / 'predict_run'}", "--eval_batch_size=3")
  records = list(tfrecords.read_pseudo_labels(str(tmp_path / "pseudo")))
  assert len(records) == 6
  for record in records:
    view = _eval_view(record["image/id"].numpy().decode())
    np.testing.assert_allclose(record["probabilities"], tf.nn.softmax(
        model(view[None], training=False))[0], rtol=1e-4, atol=1e-5)
  # On the fly, as the original's --teacher_model_path.
  common = ["--mode=train", "--model_name=test", "--train_batch_size=3", "--train_steps=2",
            "--iterations_per_loop=1", "--log_every_n_steps=1", "--augment_name=none",
            f"--input_image_size={SIZE}", f"--label_data_dir=imagefolder:{labeled}"]
  log = _cli(*common, f"--model_dir={tmp_path / 'student'}", "--unlabel_ratio=1",
             f"--unlabel_data_dir=images:{unlabeled}", f"--teacher_model_path={out}")
  assert "(pseudo-labels: the on-the-fly teacher's)" in log
  # Fine-tuning from it: a teacher for other classes (digits: 10) with a new head.
  log = _cli(*[a for a in common if not a.startswith("--label_data_dir")],
             "--label_data_dir=digits:labeled", f"--model_dir={tmp_path / 'digits'}",
             f"--init_model_path={out}")
  assert "a new classifier for 10 classes (its own has 3)" in log
  # Export, served by saved_model_cli (the TF1 session loader) on an image file.
  _cli("--mode=export", f"--model_dir={out}", f"--export_dir={tmp_path / 'export'}")
  exported = tf.io.gfile.glob(str(tmp_path / "export" / "*"))[0]
  signature = tf.saved_model.load(exported).signatures["serving_default"]
  key = next(iter(signature.structured_input_signature[1]))
  image = str(tmp_path / "small.png")
  pixels = oc.images(n=1, size=16, seed=7)[0].astype(np.uint8)
  tf.io.write_file(image, tf.io.encode_png(pixels))
  with open(image, "rb") as f:
    encoded = f.read()
  expected = tf.nn.softmax(model(_eval_view(image)[None], training=False)).numpy()
  served = signature(**{key: tf.constant([encoded])})
  np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-4, atol=1e-5)
  # Fixed-width bytes: an .npy saved_model_cli loads without pickle, fed as tf.string.
  np.save(tmp_path / "bytes.npy", np.array([encoded], dtype=f"S{len(encoded)}"))
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  run = subprocess.run([cli, "run", "--dir", exported, "--tag_set", "serve",
                        "--signature_def", "serving_default",
                        "--inputs", f"{key}={tmp_path / 'bytes.npy'}",
                        "--outdir", str(tmp_path / "served")],
                       env=ENV, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  # The class names are string outputs, which saved_model_cli writes as object arrays.
  served = {os.path.basename(p)[:-4]: np.load(p, allow_pickle=True)
            for p in tf.io.gfile.glob(str(tmp_path / "served" / "*.npy"))}
  np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-4, atol=1e-5)
  assert served["valid"].tolist() == [True]
