"""XLA: every step compiles with jit_compile=True on CPU (the stand-in for a TPU) and
computes what it computes without; shapes stay static, so no step retraces.

The student, teacher, predict, eval and robustness steps are the functions
`strategy.run` calls; `distribute.compile_step` compiles them. Parity is checked with
the noise off: under XLA, TensorFlow's stateless random ops pick their own algorithm
("auto_select"), so dropout and stochastic-depth masks are other draws of the same
distribution (`test_noise_layers_draw_under_xla` checks that distribution).
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet
from efficientnet import layers as layers_lib
from noisy_student import evaluate
from noisy_student import predict as predict_lib
from noisy_student import robustness
from noisy_student.config import PredictConfig
from noisy_student.config import RobustnessConfig, TrainConfig
from noisy_student.data import sources
from noisy_student.predict import stream
from noisy_student.train import distribute
from noisy_student.train import steps
from tfrecords import format as fmt
from tfrecords import reader

from _steps import CLASSES, assert_states_close, run_steps, tiny_model

pytestmark = pytest.mark.accelerator

MODES = [
    pytest.param("stored", 1.0, id="stored-soft"),
    pytest.param("stored", -1.0, id="stored-hard", marks=pytest.mark.slow),
    pytest.param("teacher", 1.0, id="on-the-fly-teacher", marks=pytest.mark.slow),
    pytest.param("supervised", 1.0, id="teacher-step", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("mode, temperature", MODES)
def test_train_step_compiles_and_matches_the_uncompiled_step(mode, temperature):
  # SGD: its update is proportional to the gradient, so a wrong gradient would show
  # (RMSProp normalises it away; the end-to-end XLA test runs RMSProp).
  cfg = TrainConfig(unlabel_ratio=0.0 if mode == "supervised" else 1.0,
                    teacher_softmax_temp=temperature, weight_decay=1e-4, optimizer="sgd")
  weights = tiny_model().get_weights()
  teacher = tiny_model() if mode == "teacher" else None
  # Batch norm over 16 images per step: over 4, one update moved a batch-norm shift 7%
  # apart between the compiled and the uncompiled step (rounding, amplified).
  batch = dict(batch_size=16 if mode == "supervised" else 8)
  plain = run_steps(weights, cfg, mode, False, teacher=teacher, eager=True, **batch)
  xla = run_steps(weights, cfg, mode, True, teacher=teacher, **batch)
  # Step 1, from the same weights, differs by rounding only (measured <= 7e-6). The
  # update amplifies it: at step 2 up to 1.9e-4 in 4 runs, with only 4 + 4 images.
  for step, (a, b) in enumerate(zip(plain.metrics, xla.metrics)):
    for name in steps.METRICS:
      assert b[name] == pytest.approx(a[name], rel=1e-4 if step == 0 else 2e-3,
                                      abs=1e-5), (name, step, a, b)
  assert plain.metrics[0]["loss"] != plain.metrics[1]["loss"]  # The step trained.
  assert_states_close(plain.state, xla.state)
  # One trace each: the batch shapes are static.
  assert xla.compiled.experimental_get_tracing_count() == 1
  assert xla.multi.experimental_get_tracing_count() == 1


def test_mirrored_step_with_xla_over_gpus_matches_one_device():
  """The multi-GPU path: TensorFlow compiles a replica step that updates mirrored
  variables (all-reduce without merge_call) only when every device is a GPU."""
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  if len(gpus) < 2:
    pytest.skip("needs 2 GPUs (benchmarks/device_check.sh runs it where there are)")
  cfg = TrainConfig(unlabel_ratio=1.0, weight_decay=1e-4, optimizer="sgd")
  weights = tiny_model().get_weights()
  one = run_steps(weights, cfg, "stored", False, batch_size=8, eager=True)
  two = run_steps(weights, cfg, "stored", True, batch_size=8,
                  strategy=tf.distribute.MirroredStrategy(gpus[:2]))
  for step, (a, b) in enumerate(zip(one.metrics, two.metrics)):  # As above.
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4 if step == 0 else 2e-3)
  assert_states_close(one.state, two.state)


def test_noise_layers_draw_under_xla():
  """Stochastic depth and dropout compile and keep their distribution under XLA, also
  in bfloat16; in inference mode they are the identity."""
  x = tf.ones([4000, 2, 2, 1])
  for policy in ("float32", "mixed_bfloat16"):
    depth = layers_lib.StochasticDepth(0.25, seed=1, dtype=policy)
    dropout = keras.layers.Dropout(0.5, seed=1, dtype=policy)
    for layer, survival, per_sample in ((depth, 0.75, True), (dropout, 0.5, False)):
      noised = tf.function(lambda v, layer=layer: layer(v, training=True), jit_compile=True)
      first, second = noised(x).numpy().astype(np.float32), noised(x).numpy()
      kept = first != 0
      assert abs(kept.mean() - survival) < 0.03, (policy, layer.name, kept.mean())
      np.testing.assert_allclose(first[kept], 1.0 / survival, rtol=1e-2)
      if per_sample:  # Whole samples are dropped.
        assert (kept.all(axis=(1, 2, 3)) | ~kept.any(axis=(1, 2, 3))).all()
      assert (first != second).any()  # The seed advances between calls.
      identity = tf.function(lambda v, layer=layer: layer(v, training=False),
                             jit_compile=True)
      np.testing.assert_array_equal(identity(x), tf.cast(x, identity(x).dtype))


def _eval_data(n=10, batch=4):
  """n images in batches of `batch` (a partial last one); one image unlabeled (-1)."""
  rng = np.random.default_rng(3)
  images = rng.uniform(0, 255, (n, 32, 32, 3)).astype(np.float32)
  labels = rng.integers(0, CLASSES, n)
  labels[1] = -1
  return images, labels, tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def _capture(monkeypatch, module, name):
  """Wraps module.name so the functions it returns are kept in a list."""
  made, real = [], getattr(module, name)

  def wrapper(*args, **kwargs):
    made.append(real(*args, **kwargs))
    return made[-1]
  monkeypatch.setattr(module, name, wrapper)
  return made


def test_eval_step_compiles_matches_unpadded_numbers_and_is_traced_once(monkeypatch):
  model = tiny_model()
  images, labels, ds = _eval_data()
  runs = _capture(monkeypatch, evaluate, "summed_step")
  plain = evaluate.evaluate(model, ds, jit_compile=False)
  xla = evaluate.evaluate(model, ds, jit_compile=True)
  # What the unpadded batch computes, by hand.
  logits = model(images, training=False).numpy()
  keep = labels >= 0
  assert plain.num_images == xla.num_images == 9
  assert plain.top1 == xla.top1 == np.mean(logits[keep].argmax(1) == labels[keep])
  assert plain.confusion == xla.confusion and plain.top5 == xla.top5
  # 3 batches, the last one partial: one trace of each compiled function.
  for run in runs:
    assert run.experimental_get_tracing_count() == 1


def test_robustness_passes_compile_and_match(monkeypatch):
  """Corruption, perturbation and FGSM passes with XLA give the numbers they give
  without; every pass's step is traced once (padded batches)."""
  keras.utils.set_random_seed(2)
  # A small conv net keeps the three compilations quick; efficientnet-test: slow test.
  inputs = keras.Input([32, 32, 3])
  x = keras.layers.Rescaling(1 / 255.0)(inputs)
  x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
  x = keras.layers.GlobalAveragePooling2D()(x)
  check_robustness_parity(keras.Model(inputs, keras.layers.Dense(CLASSES)(x)), monkeypatch)


@pytest.mark.slow
def test_robustness_passes_of_the_tiny_model_compile_and_match(monkeypatch):
  check_robustness_parity(tiny_model(), monkeypatch)


def check_robustness_parity(model, monkeypatch):
  _, _, ds = _eval_data(n=10, batch=4)
  cfg = RobustnessConfig(corruptions=("gaussian_noise", "defocus_blur"), severities=(2,),
                         perturbations=("translate",), perturbation_frames=3,
                         fgsm_epsilons=(0.0, 2.0, 8.0))
  runs = _capture(monkeypatch, evaluate, "summed_step")
  plain = robustness.evaluate_robustness(model, ds, cfg, image_size=32, jit_compile=False)
  xla = robustness.evaluate_robustness(model, ds, cfg, image_size=32, jit_compile=True)
  assert plain["num_images"] == xla["num_images"] == 9
  assert xla["clean_error"] == plain["clean_error"]
  for name in cfg.corruptions:
    assert xla["corruptions"][name]["errors"] == plain["corruptions"][name]["errors"]
  assert (xla["perturbations"]["translate"]["flip_probability"] ==
          pytest.approx(plain["perturbations"]["translate"]["flip_probability"]))
  assert xla["fgsm"]["accuracy"] == plain["fgsm"]["accuracy"]
  assert xla["fgsm"]["accuracy"][0] == pytest.approx(1 - xla["clean_error"])
  # Count (clean + 2 corruptions), flips and FGSM steps, each traced once.
  assert [run.experimental_get_tracing_count() for run in runs] == [1] * 6


def test_predict_step_compiles_matches_and_is_traced_once(tmp_path, monkeypatch):
  keras.utils.set_random_seed(1)
  model = efficientnet.build_model("efficientnet-test", 10, image_size=32)
  # 197 images in batches of 64: the last batch holds 5.
  source = sources.open_source("digits:unlabeled", digits_num_labeled=800,
                               digits_num_test=800)
  made = _capture(monkeypatch, stream, "make_step")
  records = {}
  for jit in (False, True):
    out = tmp_path / f"jit{jit}"
    predict_lib.predict(model, source, PredictConfig(output_dir=str(out), num_shards=2),
                        image_size=32, batch_size=64, teacher_id="t", jit_compile=jit)
    records[jit] = {r[fmt.ID_KEY]: r for r in reader.read_records(str(out)).as_numpy_iterator()}
  assert sorted(records[True]) == sorted(records[False]) and len(records[True]) == 197
  for key, plain in records[False].items():
    xla = records[True][key]
    np.testing.assert_allclose(xla[fmt.PROBS_KEY], plain[fmt.PROBS_KEY], atol=1e-5)
    top2 = np.sort(plain[fmt.PROBS_KEY])[-2:]
    if top2[1] - top2[0] > 1e-4:  # Not a near tie: the class must agree.
      assert xla[fmt.CLASS_KEY] == plain[fmt.CLASS_KEY]
    assert xla[fmt.IMAGE_KEY] == plain[fmt.IMAGE_KEY]
  for step in made:
    assert step.experimental_get_tracing_count() == 1


def test_jit_setting_resolves_per_device(monkeypatch):
  default = tf.distribute.get_strategy()
  on_gpu = bool(tf.config.list_logical_devices("GPU"))
  assert distribute.resolve_jit_compile("auto", default) == on_gpu
  assert distribute.resolve_jit_compile("true", default)
  assert not distribute.resolve_jit_compile("false", default)
  with pytest.raises(ValueError, match="--jit_compile='yes' is unknown"):
    distribute.resolve_jit_compile("yes", default)
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
  if len(cpus) > 1 and not on_gpu:
    mirrored = tf.distribute.MirroredStrategy(cpus)
    assert not distribute.resolve_jit_compile("auto", mirrored)
    with pytest.raises(ValueError, match="--jit_compile=true with 2 CPU replicas"):
      distribute.resolve_jit_compile("true", mirrored)
  fn = lambda x: x  # noqa: E731
  assert distribute.compile_step(fn, False, default) is fn
  assert distribute.compile_step(fn, True, default).experimental_get_tracing_count() == 0
  monkeypatch.setattr(distribute, "device_types", lambda strategy: {"GPU"})
  assert distribute.resolve_jit_compile("auto", default)
  monkeypatch.setattr(distribute, "is_tpu", lambda strategy: True)
  # On a TPU, TPUStrategy compiles what strategy.run calls: no second XLA wrapper.
  assert distribute.compile_step(fn, True, default) is fn
