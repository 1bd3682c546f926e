"""The import of the original TF1 checkpoints (efficientnet/original_checkpoint.py), on
checkpoints laid out as the original writes them (tests/_original_ckpt.py: TF1 graph
variables named by TensorFlow's own tf.layers numbering, ExponentialMovingAverage
shadows drawn apart from the raw weights, RMSProp slots, a tf.compat.v1 Saver), against
the original's inference computed independently in tf.nn ops from the same arrays.

Model sizes loaded here: efficientnet-b0 (the Saver-written checkpoint), an L2-shaped
model (L2's depth 5.3, i.e. its 88 blocks, at width 0.1), and in error cases a B3
checkpoint; `pytest -m slow` adds B1..B8 and the full-size L2 (480M parameters, with its
peak memory).
"""
import os
import resource
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import _original_ckpt as oc
import efficientnet
from efficientnet import original_checkpoint as ockpt
from efficientnet import params as params_lib

SIZE = 64  # Any size works: it changes no weight. 64 keeps the 2x2 last feature map.
EMA = ockpt.EMA_SUFFIX
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build(name, width=None, depth=None, **kwargs):
  return efficientnet.build_model(name, kwargs.pop("num_classes", 1000), image_size=SIZE,
                                  width_coefficient=width, depth_coefficient=depth,
                                  **kwargs)


def _keras_weights(width, depth, num_classes=1000):
  """(layer, weight, shape) of build_model's weights, from the block specs (checked
  against built models below), so every size is covered without building it."""
  bn = lambda name, c: [(name, w, (c,)) for w in  # noqa: E731
                        ("gamma", "beta", "moving_mean", "moving_variance")]
  stem = params_lib.round_filters(32, width)
  out = [("stem_conv", "kernel", (3, 3, 3, stem))] + bn("stem_bn", stem)
  for b in params_lib.block_specs(width, depth):
    n, c = b.name, b.expanded_filters
    if b.expand_ratio != 1:
      out += [(f"{n}expand_conv", "kernel", (1, 1, b.input_filters, c))]
      out += bn(f"{n}expand_bn", c)
    out += [(f"{n}dwconv", "kernel", (b.kernel_size, b.kernel_size, c, 1))] + bn(f"{n}bn", c)
    out += [(f"{n}se_reduce", "kernel", (1, 1, c, b.se_filters)),
            (f"{n}se_reduce", "bias", (b.se_filters,)),
            (f"{n}se_expand", "kernel", (1, 1, b.se_filters, c)),
            (f"{n}se_expand", "bias", (c,)),
            (f"{n}project_conv", "kernel", (1, 1, c, b.output_filters))]
    out += bn(f"{n}project_bn", b.output_filters)
  head = params_lib.round_filters(1280, width)
  out += [("top_conv", "kernel", (1, 1, b.output_filters, head))] + bn("top_bn", head)
  return out + [("predictions", "kernel", (head, num_classes)),
                ("predictions", "bias", (num_classes,))]


def _built_weights(model):
  return [(w.path.split("/")[0], w.name, tuple(w.shape)) for w in model.weights]


def _assert_logits(model, original, use_ema=True, tolerance=2e-3):
  """Our logits on the 0..255 images equal the original's, and not those of the other
  weight set (raw vs EMA), by far more than the float32 rounding allowed."""
  ours = model(original.images, training=False).numpy()
  expected, other = original.logits(use_ema), original.logits(not use_ema)
  atol = tolerance * np.abs(expected).max()
  assert expected.std(axis=0).mean() > 10 * atol  # Logits depend on the image.
  np.testing.assert_allclose(ours, expected, rtol=0, atol=atol)
  assert np.abs(ours - other).max() > 10 * atol
  return ours


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
  """efficientnet-b0 as the original's training job saves it (graph, EMA, RMSProp)."""
  return oc.write(str(tmp_path_factory.mktemp("b0") / "model.ckpt"), "efficientnet-b0")


@pytest.fixture(scope="module")
def b0_model():
  return _build("efficientnet-b0")


def test_the_checkpoint_has_the_originals_layout(b0, tmp_path):
  shapes = tf.train.load_checkpoint(b0.prefix).get_variable_to_shape_map()
  expected, _ = oc.layout(1.0, 1.0)
  assert {n: s for n, s in shapes.items() if n in expected} == expected
  assert "efficientnet-b0/blocks_15/tpu_batch_normalization_2/moving_variance" in shapes
  assert "efficientnet-b0/blocks_0/tpu_batch_normalization_2/gamma" not in shapes
  for name in expected:  # Shadows of the trainable weights and the moving statistics.
    assert name + EMA in shapes
  slots = [n for n in shapes if n.endswith(("/RMSProp", "/RMSProp_1"))]
  assert len(slots) == 2 * 213 and "global_step" in shapes  # B0: 213 trainable tensors.
  # The bundle writer the deep models use gives the same layout (and format).
  bundle = oc.write_bundle(str(tmp_path / "model.ckpt"), "efficientnet-b0",
                           calibrate_raw=False)
  same = tf.train.load_checkpoint(bundle.prefix).get_variable_to_shape_map()
  assert same == {n: s for n, s in shapes.items() if n not in slots + ["global_step"]}


def test_tensorflows_own_numbering_gives_the_l2_layout():
  """The L2-shaped test's bundle is written from `layout`: at L2's depth (stage 1's six
  blocks without an expand conv, 88 in all) it equals what tf.layers' numbering names the
  TF1 graph's variables, as B0's Saver-written checkpoint does above."""
  with tf.Graph().as_default():
    layers = oc._build_graph(0.1, 5.3, 1000, "efficientnet-l2")  # pylint: disable=protected-access
  graph = {v.op.name: v.shape.as_list() for vs in layers.values() for v in vs.values()}
  assert graph == oc.layout(0.1, 5.3, scope="efficientnet-l2")[0]
  assert "efficientnet-l2/blocks_5/tpu_batch_normalization_1/gamma" in graph
  assert "efficientnet-l2/blocks_6/tpu_batch_normalization_2/gamma" in graph


def test_b0_gives_the_originals_logits_from_its_ema_weights(b0, b0_model):
  assert _built_weights(b0_model) == _keras_weights(1.0, 1.0)
  report = efficientnet.load_original_checkpoint(b0_model, os.path.dirname(b0.prefix))
  _assert_logits(b0_model, b0, use_ema=True)
  assert report.scope == "efficientnet-b0" and report.ema
  # Every model variable exactly once; every checkpoint variable read or reported.
  assert report.assigned == len(b0_model.weights) == 311
  assert report.values == b0_model.count_params()
  assert report.leftovers == {"global_step": 1, "optimizer slots": 426,
                              "raw weights (the EMA shadows were read)": 311}
  assert "Not read: 426 optimizer slots" in report.summary()


def test_no_ema_reads_the_raw_weights(b0, b0_model):
  report = efficientnet.load_original_checkpoint(b0_model, b0.prefix, ema=False)
  _assert_logits(b0_model, b0, use_ema=False)
  assert report.leftovers["EMA shadows (ema=False)"] == 311


def test_an_l2_shaped_model_gives_the_originals_logits(tmp_path):
  # L2's depth 5.3: 88 blocks (blocks_0..blocks_87), stage 1 six blocks without an
  # expand conv, five with an identity skip; width 0.1 keeps it small.
  original = oc.write_bundle(str(tmp_path / "model.ckpt"), "efficientnet-l2", width=0.1)
  shapes = tf.train.load_checkpoint(original.prefix).get_variable_to_shape_map()
  assert "efficientnet-l2/blocks_87/conv2d_1/kernel" + EMA in shapes
  assert "efficientnet-l2/blocks_5/conv2d_1/kernel" not in shapes  # No expand conv.
  model = _build("efficientnet-l2", width=0.1)
  assert _built_weights(model) == _keras_weights(0.1, 5.3)
  report = efficientnet.load_original_checkpoint(model, original.prefix)
  # 88 blocks in float32 against a float64 reference: rounding grows to ~2e-3 of the
  # logits' scale (a float32 run of the reference itself differs by ~5e-3).
  _assert_logits(model, original, tolerance=1e-2)
  assert report.assigned == len(model.weights) == 1654


@pytest.mark.parametrize("name", sorted(set(oc.SIZES) - {"efficientnet-test"}))
def test_every_size_maps_onto_the_original_names(name):
  """B0..B8 and L2, analytically: our weights map one to one onto the original's."""
  width, depth = oc.SIZES[name]
  theirs, _ = oc.layout(width, depth, scope=name)
  ours = _keras_weights(width, depth)
  names = [f"{name}/{n}" for n in ockpt.original_names([(l, w) for l, w, _ in ours])]
  assert len(set(names)) == len(names)
  assert dict(zip(names, [list(s) for _, _, s in ours])) == theirs


def test_no_classifier_or_a_new_one_keeps_every_other_weight(b0):
  features = _build("efficientnet-b0", include_top=False)
  report = efficientnet.load_original_checkpoint(features, b0.prefix)
  expected = b0.logits(features=True)
  np.testing.assert_allclose(features(b0.images, training=False), expected, rtol=0,
                             atol=2e-3 * np.abs(expected).max())
  group = "classifier variables (the model has a new or no classifier)"
  assert report.leftovers[group] == 4  # head/dense kernel and bias, raw and shadow.
  new = _build("efficientnet-b0", num_classes=10)
  with pytest.raises(ValueError, match=r"head/dense/kernel/ExponentialMovingAverage: "
                     r"checkpoint shape \[1280, 1000\], model's predictions/kernel "
                     r"\[1280, 10\].*new_head=True"):
    efficientnet.load_original_checkpoint(new, b0.prefix)
  head = [w.numpy() for w in new.get_layer("predictions").weights]
  report = efficientnet.load_original_checkpoint(new, b0.prefix, new_head=True)
  assert report.kept == ("predictions/kernel", "predictions/bias")
  for before, after in zip(head, new.get_layer("predictions").weights):
    np.testing.assert_array_equal(before, after)
  tops = keras.Model(new.input, new.get_layer("top_activation").output)
  np.testing.assert_allclose(tops(b0.images), features(b0.images), rtol=0, atol=1e-5)


def test_mismatches_raise_naming_the_variable_before_any_assignment(b0, b0_model, tmp_path):
  b3 = oc.write_bundle(str(tmp_path / "b3" / "model.ckpt"), "efficientnet-b3",
                       calibrate_raw=False, size=32)
  stem = b0_model.get_layer("stem_conv").kernel.numpy()
  with pytest.raises(ValueError, match=r"efficientnet-b3/stem/conv2d/kernel/Exponential"
                     r"MovingAverage: checkpoint shape \[3, 3, 3, 40\], model's "
                     r"stem_conv/kernel \[3, 3, 3, 32\] \(and \d+ more\) \(the checkpoint "
                     r"is efficientnet-b3, the model efficientnet_b0\)"):
    efficientnet.load_original_checkpoint(b0_model, b3.prefix)
  np.testing.assert_array_equal(b0_model.get_layer("stem_conv").kernel, stem)
  with pytest.raises(ValueError, match="efficientnet-b0/.*checkpoint shape"):
    efficientnet.load_original_checkpoint(_build("efficientnet-b3"), b0.prefix)
  lost = "efficientnet-b0/blocks_3/se/conv2d_1/bias" + EMA
  damaged = oc.write_bundle(str(tmp_path / "damaged" / "model.ckpt"), "efficientnet-b0",
                            calibrate_raw=False, size=32, drop=[lost])
  with pytest.raises(ValueError, match=f"has no variable {lost}.$"):
    efficientnet.load_original_checkpoint(b0_model, damaged.prefix)
  extra = oc.write_bundle(str(tmp_path / "extra" / "model.ckpt"), "efficientnet-b0",
                          calibrate_raw=False, size=32,
                          extra={"efficientnet-b0/blocks_16/conv2d/kernel": np.ones(3)})
  with pytest.raises(ValueError, match="1 variables of efficientnet-b0 have no "
                     "counterpart.*blocks_16/conv2d/kernel"):
    efficientnet.load_original_checkpoint(b0_model, extra.prefix)
  other_input = _build("efficientnet-b0", input_mean=(0, 0, 0), input_std=(255,) * 3)
  with pytest.raises(ValueError, match="normalises its input.*MEAN_RGB"):
    efficientnet.load_original_checkpoint(other_input, b0.prefix)


def test_a_checkpoint_without_ema_needs_no_ema(b0_model, tmp_path):
  raw_only = oc.write_bundle(str(tmp_path / "model.ckpt"), "efficientnet-b0", size=32,
                             ema=False)
  with pytest.raises(ValueError, match="holds no ExponentialMovingAverage shadows.*"
                     "ema=False"):
    efficientnet.load_original_checkpoint(b0_model, raw_only.prefix)
  report = efficientnet.load_original_checkpoint(b0_model, raw_only.prefix, ema=False)
  assert report.leftovers == {}
  assert not ockpt.inspect_checkpoint(raw_only.prefix).has_ema


def test_checkpoint_paths(b0, tmp_path):
  folder = os.path.dirname(b0.prefix)
  for path in (folder, b0.prefix, b0.prefix + ".index",
               b0.prefix + ".data-00000-of-00001"):
    assert ockpt.resolve_checkpoint(path) == b0.prefix
  # An unpacked download: its `checkpoint` file names the writer's absolute path.
  moved = tmp_path / "moved"
  shutil.copytree(folder, moved)
  (moved / "checkpoint").write_text('model_checkpoint_path: "/somewhere/else/model.ckpt"\n')
  assert ockpt.resolve_checkpoint(str(moved)) == str(moved / "model.ckpt")
  info = ockpt.inspect_checkpoint(str(moved))
  assert (info.scope, info.num_classes, info.has_ema) == ("efficientnet-b0", 1000, True)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no TF1 checkpoint in this folder"):
    ockpt.resolve_checkpoint(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="no such checkpoint"):
    ockpt.resolve_checkpoint(str(tmp_path / "nothing" / "model.ckpt"))
  ours = tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "tf2" / "ckpt"))
  with pytest.raises(ValueError, match="not a checkpoint of the original EfficientNet"):
    ockpt.inspect_checkpoint(ours)


@pytest.mark.slow
@pytest.mark.parametrize("name", [f"efficientnet-b{i}" for i in range(1, 9)])
def test_b1_to_b8_give_the_originals_logits(name, tmp_path):
  original = oc.write_bundle(str(tmp_path / "model.ckpt"), name, size=SIZE)
  model = efficientnet.build_model(name, image_size=SIZE)
  assert _built_weights(model) == _keras_weights(*oc.SIZES[name])
  efficientnet.load_original_checkpoint(model, original.prefix)
  _assert_logits(model, original, tolerance=1e-2)


def _peak_rss_of(argv):
  """Runs a Python child; returns (its peak resident set in bytes, its stderr)."""
  script = ("import resource, runpy, sys; sys.argv = sys.argv[1:]; "
            "exit_code = 0\ntry:\n  runpy.run_module(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n  exit_code = e.code or 0\n"
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr)\nsys.exit(exit_code)")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
  proc = subprocess.run([sys.executable, "-c", script, *argv], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=7200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  peak = [l for l in proc.stderr.splitlines() if l.startswith("PEAK_RSS_KB")][-1]
  return int(peak.split()[1]) * 1024, proc.stderr


@pytest.mark.slow
def test_full_size_l2_imports_with_one_copy_of_its_weights(tmp_path):
  """The real L2 (480,309,308 trainable parameters): efficientnet-import's peak memory
  against that of building the same model and saving it without any import."""
  # 6 images at 64 px: the batch norms are calibrated on 6 x 2 x 2 values in the last
  # stages; on 2 images at 32 px (1 x 1 maps) the calibrated variances are so small that
  # float32 rounding grows to inf over L2's 88 blocks while the float64 reference stays
  # finite (measured: NaN logits at 32 px, 3.9e-3 of the logits' scale at 64 px).
  original = oc.write_bundle(str(tmp_path / "l2" / "model.ckpt"), "efficientnet-l2",
                             size=SIZE, n=6, calibrate_raw=False)
  expected = original.logits()
  del original  # Frees the arrays (~2 GB) before the children run.
  out = str(tmp_path / "imported")
  peak, log = _peak_rss_of(["noisy_student.import_main", str(tmp_path / "l2"),
                            f"--image_size={SIZE}", f"--output={out}"])
  baseline, _ = _peak_rss_of(["_build_and_save", "efficientnet-l2", str(SIZE),
                              str(tmp_path / "baseline")])
  weights = 4 * sum(int(np.prod(s)) for _, _, s in _keras_weights(4.3, 5.3))  # float32
  print(f"peak RSS: import {peak / 2**30:.2f} GiB, build+save {baseline / 2**30:.2f} GiB, "
        f"weights {weights / 2**30:.2f} GiB")
  assert peak < baseline + 0.25 * weights, log[-2000:]
  from noisy_student.train import checkpoints  # pylint: disable=import-outside-toplevel
  model = checkpoints.load_for_inference(out)
  logits = model(oc.images(n=6, size=SIZE, seed=100), training=False).numpy()
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-2 * np.abs(expected).max())
