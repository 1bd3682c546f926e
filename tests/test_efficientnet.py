"""Tests of the efficientnet package: table, architecture, noise, serialisation."""
import collections
import runpy
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
# TF's FLOP registry and graph freezing have no public TF2 API; only a test uses them.
from tensorflow.python.framework import convert_to_constants
from tensorflow.python.framework import ops

import efficientnet
from efficientnet import params as params_lib
from efficientnet import table

# Published trainable parameter counts with 1000 classes (REFERENCE.md).
PUBLISHED_PARAMS = {
    "efficientnet-b0": 5_288_548, "efficientnet-b1": 7_794_184,
    "efficientnet-b2": 9_109_994, "efficientnet-b3": 12_233_232,
    "efficientnet-b4": 19_341_616, "efficientnet-b5": 30_389_784,
    "efficientnet-b6": 43_040_704, "efficientnet-b7": 66_347_960,
}
TEST_MODEL = "efficientnet-test"


def _trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _images(n=2, size=32, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_table_has_every_model_and_rejects_unknown_names():
  expected = ([f"efficientnet-b{i}" for i in range(9)] + ["efficientnet-l2"] +
              [f"efficientnet-t{i}" for i in range(3)] + [TEST_MODEL])
  assert list(efficientnet.MODEL_NAMES) == expected
  row = efficientnet.get_model_params("efficientnet-b4")
  assert (row.width_coefficient, row.depth_coefficient, row.resolution,
          row.dropout_rate) == (1.4, 1.8, 380, 0.4)
  assert efficientnet.native_resolution("efficientnet-l2") == 800
  with pytest.raises(ValueError, match="efficientnet-b9.*efficientnet-b0.*efficientnet-l2"):
    efficientnet.get_model_params("efficientnet-b9")
  with pytest.raises(ValueError, match="known names"):
    efficientnet.build_model("resnet-50")


def test_rounding_follows_the_original():
  assert params_lib.round_filters(32, 2.0) == 64
  assert params_lib.round_filters(32, 4.3) == 136  # 137.6 rounds down, within 10%.
  assert params_lib.round_filters(112, 0.1) == 16  # 8 would lose > 10% of 11.2.
  assert params_lib.round_filters(16, 0.1) == 8  # Never below the divisor.
  assert params_lib.round_repeats(4, 3.1) == 13 and params_lib.round_repeats(1, 1.1) == 2


def test_squeeze_excite_width_comes_from_block_input_filters():
  blocks = {b.name: b for b in params_lib.block_specs(1.0, 1.0)}
  assert blocks["block2a_"].se_filters == 4  # int(16 * 0.25), not 16 * 6 * 0.25.
  assert blocks["block2b_"].se_filters == 6  # The repeated block's input is 24.
  assert len(blocks) == 16


@pytest.fixture(scope="module")
def b0():
  # The parameter count does not depend on the resolution; 32 pixels keeps it quick.
  return efficientnet.build_model("efficientnet-b0", image_size=32)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_analytic_parameter_counts_equal_the_published_ones(name):
  assert table.model_cost(name).params == PUBLISHED_PARAMS[name]


def test_built_b0_and_b1_have_the_published_trainable_parameters(b0):
  assert _trainable(b0) == PUBLISHED_PARAMS["efficientnet-b0"]
  b1 = efficientnet.build_model("efficientnet-b1", image_size=32)
  assert _trainable(b1) == PUBLISHED_PARAMS["efficientnet-b1"]
  test_model = efficientnet.build_model(TEST_MODEL, num_classes=10)
  assert _trainable(test_model) == table.model_cost(TEST_MODEL, 10).params


def test_the_small_sizes_grow_and_count_as_built():
  """t0 < t1 < t2, as a growing student's sizes must (checks.py compares the counts)."""
  counts = []
  for name in ("efficientnet-t0", "efficientnet-t1", "efficientnet-t2"):
    model = efficientnet.build_model(name, num_classes=10, small_image=True)
    counts.append(table.model_cost(name, 10, small_image=True).params)
    assert _trainable(model) == counts[-1], name
  assert counts == sorted(set(counts))


# Building b2..b7 costs ~30 s of CPU on this machine (Keras traces every layer); the
# analytic count above covers them in the fast suite, these builds outside it.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS)[2:])
def test_built_b2_to_b7_have_the_published_trainable_parameters(name):
  model = efficientnet.build_model(name, image_size=32)
  assert _trainable(model) == PUBLISHED_PARAMS[name]


@pytest.mark.slow
def test_l2_trainable_parameters_equal_the_published_count():
  # StatelessScope defers variable allocation: ~2 GB of weights never materialise.
  with keras.StatelessScope():
    model = efficientnet.build_model("efficientnet-l2", image_size=32)
  assert _trainable(model) == 480_309_308
  assert table.model_cost("efficientnet-l2").params == 480_309_308


def test_b0_flops_match_the_paper():
  cost = table.model_cost("efficientnet-b0")
  # The paper prints 0.39B (two digits): 0.385e9 <= x < 0.395e9.
  assert round(cost.multiply_adds / 1e9, 2) == 0.39


def test_analytic_flops_match_tensorflows_count_of_the_built_graph():
  # TF's per-op FLOP registry (2 per multiply-add) over the frozen inference graph.
  model = efficientnet.build_model(TEST_MODEL, num_classes=10, small_image=True)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec([1, 32, 32, 3], tf.float32))
  graph = convert_to_constants.convert_variables_to_constants_v2(fn).graph
  flops = collections.Counter()
  for op in graph.get_operations():
    if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
      flops[op.type] += ops.get_stats_for_node_def(graph, op.node_def, "flops").value
  assert flops["DepthwiseConv2dNative"] > 0 and flops["MatMul"] == 2 * 128 * 10
  expected = table.model_cost(TEST_MODEL, 10, small_image=True).multiply_adds
  assert sum(flops.values()) == 2 * expected


@pytest.mark.parametrize("policy,compute", [(None, "float32"),
                                            ("mixed_bfloat16", "bfloat16"),
                                            ("mixed_float16", "float16")])
def test_output_is_float32_logits_under_every_policy(policy, compute):
  model = efficientnet.build_model(TEST_MODEL, num_classes=7, dtype_policy=policy)
  logits = model(_images(3), training=False)
  assert tuple(logits.shape) == (3, 7)
  assert keras.backend.standardize_dtype(logits.dtype) == "float32"
  assert np.all(np.isfinite(np.asarray(logits)))
  assert model.get_layer("stem_conv").compute_dtype == compute
  assert model.get_layer("stem_conv").kernel.dtype == "float32"
  # The policy is per layer: the process-wide one is untouched.
  assert keras.config.dtype_policy().name == "float32"


def _noisy_and_clean(dropout, depth):
  noisy = efficientnet.build_model(TEST_MODEL, num_classes=10, dropout_rate=dropout,
                                   stochastic_depth_rate=depth, small_image=True)
  clean = efficientnet.build_model(TEST_MODEL, num_classes=10, dropout_rate=0.0,
                                   stochastic_depth_rate=0.0, small_image=True)
  clean.set_weights(noisy.get_weights())  # Noise layers own no weights.
  return noisy, clean


def test_noise_is_active_only_in_training():
  noisy, clean = _noisy_and_clean(dropout=0.5, depth=0.5)
  assert any(isinstance(l, efficientnet.StochasticDepth) for l in noisy.layers)
  assert not any(isinstance(l, (efficientnet.StochasticDepth, keras.layers.Dropout))
                 for l in clean.layers)
  x = _images(8)
  eval_out = noisy(x, training=False).numpy()
  np.testing.assert_array_equal(eval_out, noisy(x, training=False).numpy())
  np.testing.assert_allclose(eval_out, clean(x, training=False).numpy(), atol=1e-6)
  train_a, train_b = noisy(x, training=True).numpy(), noisy(x, training=True).numpy()
  assert np.abs(train_a - train_b).max() > 1e-4
  # Without noise, training mode (batch statistics) is deterministic.
  np.testing.assert_array_equal(clean(x, training=True).numpy(),
                                clean(x, training=True).numpy())


def test_stochastic_depth_rates_grow_linearly_on_identity_skip_blocks(b0):
  rates = {l.name: l.rate for l in b0.layers
           if isinstance(l, efficientnet.StochasticDepth)}
  blocks = params_lib.block_specs(1.0, 1.0)
  expected = {b.name + "drop": 0.2 * b.index / len(blocks) for b in blocks
              if b.has_identity_skip and b.index > 0}
  assert rates.keys() == expected.keys() and len(rates) == 9
  for name, rate in expected.items():
    assert rates[name] == pytest.approx(rate)
  assert "block2a_drop" not in rates  # Stride 2: no identity skip, no drop.


def test_stochastic_depth_math():
  layer = efficientnet.StochasticDepth(0.25, seed=1)
  x = np.ones((4000, 2, 2, 3), np.float32)
  np.testing.assert_array_equal(layer(x, training=False), x)
  y = np.asarray(layer(x, training=True))
  per_sample = y.reshape(4000, -1)
  # One decision per sample: every value of a sample is the same.
  np.testing.assert_array_equal(per_sample.min(1), per_sample.max(1))
  values = np.unique(per_sample)
  np.testing.assert_allclose(values, [0.0, 1 / 0.75], rtol=1e-6)
  kept = np.mean(per_sample[:, 0] > 0)
  assert kept == pytest.approx(0.75, abs=0.03)  # ~4.4 binomial std devs.
  assert per_sample.mean() == pytest.approx(1.0, abs=0.04)  # Expectation preserved.
  with pytest.raises(ValueError, match="rate"):
    efficientnet.StochasticDepth(1.0)


def test_initializers_follow_the_original(b0):
  model = b0
  top = np.asarray(model.get_layer("top_conv").kernel)  # 1x1, 320 -> 1280.
  assert top.std() == pytest.approx(np.sqrt(2.0 / 1280), rel=0.02)
  assert abs(top.mean()) < 1e-3
  # Untruncated: a normal sample this size has values beyond 2 std.
  assert np.abs(top).max() > 3 * np.sqrt(2.0 / 1280)
  dw = np.asarray(model.get_layer("block6a_dwconv").kernel)  # 5x5 depthwise.
  assert dw.std() == pytest.approx(np.sqrt(2.0 / 25), rel=0.05)
  dense = np.asarray(model.get_layer("predictions").kernel)
  bound = 1 / np.sqrt(1000)
  assert np.abs(dense).max() <= bound and np.abs(dense).max() > 0.99 * bound
  bn = model.get_layer("stem_bn")
  assert (bn.momentum, bn.epsilon) == (0.99, 1e-3)
  assert not model.get_layer("stem_conv").use_bias


def test_sync_batch_norm_and_input_normalisation():
  model = efficientnet.build_model(TEST_MODEL, sync_batch_norm=True,
                                   input_mean=(10, 20, 30), input_std=(2, 4, 8))
  assert model.get_layer("block1a_bn").synchronized
  norm = model.get_layer("normalization")
  out = norm(np.array([[[[12.0, 24.0, 46.0]]]], np.float32))
  np.testing.assert_allclose(out, [[[[1.0, 1.0, 2.0]]]], rtol=1e-6)
  default = efficientnet.build_model(TEST_MODEL).get_layer("normalization")
  np.testing.assert_allclose(default(np.full((1, 1, 1, 3), 255 * 0.485, np.float32))
                             [..., 0], [[[0.0]]], atol=1e-6)
  with pytest.raises(ValueError, match="input_std"):
    efficientnet.build_model(TEST_MODEL, input_std=(1, 0, 1))
  with pytest.raises(ValueError, match="dtype_policy"):
    efficientnet.build_model(TEST_MODEL, dtype_policy="float8")
  with pytest.raises(ValueError, match="stochastic_depth_rate"):
    efficientnet.build_model(TEST_MODEL, stochastic_depth_rate=1.5)


def test_small_image_variant_keeps_resolution_in_stages_2_and_3():
  regular = efficientnet.build_model(TEST_MODEL, image_size=32)
  small = efficientnet.build_model(TEST_MODEL, image_size=32, small_image=True)
  assert regular.get_layer("top_conv").output.shape[1:3] == (1, 1)
  assert small.get_layer("top_conv").output.shape[1:3] == (4, 4)
  assert small.get_layer("block3a_dwconv").output.shape[1:3] == (16, 16)
  assert small.output.shape[-1] == 1000


def test_get_config_round_trip():
  layer = efficientnet.StochasticDepth(0.3, seed=4, name="sd")
  clone = efficientnet.StochasticDepth.from_config(layer.get_config())
  assert (clone.rate, clone.seed, clone.name) == (0.3, 4, "sd")
  model = efficientnet.build_model(TEST_MODEL, num_classes=5, small_image=True)
  rebuilt = keras.Model.from_config(model.get_config())
  rebuilt.set_weights(model.get_weights())
  x = _images(2)
  np.testing.assert_array_equal(model(x, training=False), rebuilt(x, training=False))


def test_keras_and_weights_files_reload_identical_outputs(tmp_path):
  model = efficientnet.build_model(TEST_MODEL, num_classes=5, small_image=True,
                                   input_mean=(1, 2, 3), input_std=(50, 60, 70))
  x = _images(2)
  model(x, training=True)  # Moves the batch-norm statistics off their initial values.
  expected = model(x, training=False).numpy()
  model.save(tmp_path / "m.keras")
  loaded = keras.models.load_model(tmp_path / "m.keras")
  np.testing.assert_array_equal(loaded(x, training=False), expected)
  assert isinstance(loaded.get_layer("block6b_drop"), efficientnet.StochasticDepth)
  model.save_weights(tmp_path / "m.weights.h5")
  fresh = efficientnet.build_model(TEST_MODEL, num_classes=5, small_image=True,
                                   input_mean=(1, 2, 3), input_std=(50, 60, 70))
  fresh.load_weights(tmp_path / "m.weights.h5")
  np.testing.assert_array_equal(fresh(x, training=False), expected)


def test_table_command_prints_every_model(capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["python -m efficientnet"])
  with pytest.raises(SystemExit) as exit_info:
    runpy.run_module("efficientnet", run_name="__main__")
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  for name in efficientnet.MODEL_NAMES:
    assert name in out
  assert "5,288,548" in out and "480,309,308" in out
  with pytest.raises(SystemExit) as exit_info:
    table.main(["--names", "efficientnet-b0,efficientnet-x"])
  assert exit_info.value.code == 2
  assert "efficientnet-x" in capsys.readouterr().err
