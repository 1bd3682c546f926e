"""robustness ops and formulas: corruptions, perturbation sequences, flip rate, CE, FGSM."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from noisy_student import evaluate
from noisy_student.data import datasets
from noisy_student.data import sources
from noisy_student.robustness import corruptions
from noisy_student.robustness import fgsm
from noisy_student.robustness import metrics
from noisy_student.robustness import perturbations

SEED = tf.constant([7, 11], tf.int64)


@pytest.fixture(scope="module")
def digits():
  """8 real eval images of the embedded default, float32 [8, 32, 32, 3] on 0..255."""
  ds = datasets.eval_dataset(sources.open_source("digits:test"), image_size=32,
                             batch_size=8, small_image=True)
  return next(iter(ds))[0]


def _colourful(batch=3, size=24):
  """Smooth colour images away from 0 and 255, so saturation and value can move."""
  yy, xx = np.mgrid[0:size, 0:size]
  image = np.stack([128 + 60 * np.sin(xx / 5 + k) * np.cos(yy / 7) for k in range(3)], -1)
  return tf.constant(np.repeat(image[None], batch, 0).astype(np.float32))


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_corruption_shape_range_and_severity_zero(name):
  x = _colourful()
  assert corruptions.corrupt(x, name, 0, SEED) is x
  for severity in corruptions.SEVERITIES:
    y = corruptions.corrupt(x, name, severity, SEED)
    assert y.shape == x.shape and y.dtype == tf.float32
    assert float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 255
    assert float(tf.reduce_mean(tf.abs(y - x))) > 0.05, (name, severity)


@pytest.mark.parametrize("name", corruptions.NAMES)
def test_corruption_in_tf_data_is_seeded(name):
  x = _colourful(batch=4)
  ds = tf.data.Dataset.from_tensors(x).repeat(2).enumerate().map(
      lambda i, images: corruptions.corrupt(images, name, 3, tf.stack(
          [tf.constant(7, tf.int64), i])), num_parallel_calls=2)
  first, second = [y.numpy() for y in ds]
  eager = corruptions.corrupt(x, name, 3, tf.constant([7, 0], tf.int64)).numpy()
  np.testing.assert_allclose(first, eager, atol=1e-3)  # Same seed, same corruption.
  random = name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise",
                    "motion_blur", "fog", "glass_blur", "snow", "elastic_transform")
  assert (np.abs(first - second).max() > 1) == random  # Another batch, other draws.


# Severities whose mean absolute change may fall below the one before, as it does in
# make_imagenet_c.py itself (a numpy port of it at 224 px shows the same): glass blur's
# severity 2 trades a second round of swaps for a wider window; snow's 2 and 3 are about
# equally strong; elastic transform's severities 1 and 2 are large affine warps, 3 to 5 a
# small one plus local displacement. ImageNet-C's AlexNet errors per severity fall at 3
# for snow (72 88 86 92 95%) and elastic transform (53 70 56 64 81%).
MAY_FALL = {"glass_blur": (2,), "snow": (3,), "elastic_transform": (3,)}


def test_severities_grow_in_distortion(digits):
  """Mean absolute change grows with severity on real digits. Fog is left out: its
  severities 3 and 4 share the haze thickness and differ only in its roughness."""
  for name in corruptions.NAMES:
    if name == "fog":
      continue
    diffs = [float(tf.reduce_mean(tf.abs(corruptions.corrupt(digits, name, s, SEED) -
                                         digits))) for s in range(6)]
    assert all(diffs[s] >= diffs[s - 1] - 1e-4 for s in range(1, 6)
               if s not in MAY_FALL.get(name, ())), (name, diffs)
    assert diffs[5] > diffs[1] > 0 or name in ("saturate", "elastic_transform"), (name, diffs)


def _spread(kernel):
  offsets = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
  return float(np.sqrt((kernel.sum(axis=0) * offsets ** 2).sum()))


def test_sizes_scale_with_the_image():
  """A 224-px image gets ImageNet-C's full blur, a 32-px one the same share of itself:
  the pixel kernel's spread is the Gaussian's, plus the bilinear tent's variance 1/6."""
  for sigma in (6.0, 6.0 * 32 / 224, 0.3):
    kernel = corruptions.pixel_kernel(
        lambda u, v, s=sigma: np.exp(-(u * u + v * v) / (2 * s * s)), 4 * sigma)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and np.allclose(kernel, kernel.T)
    assert _spread(kernel) == pytest.approx(np.sqrt(sigma ** 2 + 1 / 6), rel=0.05), sigma
  identity = corruptions.pixel_kernel(lambda u, v: (u * u + v * v <= 1e-9) * 1.0, 0.0)
  np.testing.assert_allclose(identity, [[1.0]])


def test_unknown_names_and_severities_fail_clearly():
  with pytest.raises(ValueError, match="unknown corruption frost; known: gaussian_noise"):
    corruptions.resolve(["gaussian_noise", "frost"])
  with pytest.raises(ValueError, match="severity 6"):
    corruptions.corrupt(_colourful(), "contrast", 6, SEED)
  with pytest.raises(ValueError, match="unknown perturbation tilt"):
    perturbations.resolve(["tilt"])
  assert corruptions.resolve([]) == corruptions.DEFAULT_NAMES
  assert set(corruptions.resolve(["all"])) == set(corruptions.NAMES)
  assert "saturate" not in corruptions.DEFAULT_NAMES


NEW = ("glass_blur", "snow", "elastic_transform")


def _textured(batch=4, size=32, seed=0):
  """Random detail at several scales over 0..255, like a photo's: blurs, swaps and warps
  all change it."""
  rng = np.random.RandomState(seed)
  coarse = tf.image.resize(rng.uniform(0, 255, [batch, size // 4, size // 4, 3]),
                           [size, size])
  return tf.cast(0.6 * coarse + 0.4 * rng.uniform(0, 255, [batch, size, size, 3]),
                 tf.float32)


@pytest.mark.parametrize("name", NEW)
def test_new_corruptions_are_seeded_and_in_the_benchmark(name):
  x = _textured()
  assert name in corruptions.DEFAULT_NAMES
  assert corruptions.corrupt(x, name, 0, SEED) is x
  for severity in corruptions.SEVERITIES:
    y = corruptions.corrupt(x, name, severity, SEED)
    assert y.shape == x.shape and y.dtype == tf.float32
    assert 0 <= float(tf.reduce_min(y)) and float(tf.reduce_max(y)) <= 255
    np.testing.assert_array_equal(y, corruptions.corrupt(x, name, severity, SEED))
    other = corruptions.corrupt(x, name, severity, tf.constant([7, 12], tf.int64))
    assert float(tf.reduce_max(tf.abs(other - y))) > 1, (name, severity)


@pytest.mark.parametrize("name", NEW)
def test_new_corruptions_grow_with_severity(name):
  """Severity 5 changes a textured image more than severity 1; for elastic transform,
  whose severities 1 and 2 are large affine warps (ImageNet-C's too: see MAY_FALL), the
  local distortion grows: severity 5 over 3, which share the affine shift."""
  x = _textured()
  change = lambda s: float(tf.reduce_mean(tf.abs(corruptions.corrupt(x, name, s, SEED) - x)))
  low = 3 if name == "elastic_transform" else 1
  assert change(5) > change(low) > 0, (name, change(low), change(5))


@pytest.mark.parametrize("name", NEW)
def test_new_corruptions_in_tf_function_keep_static_shapes(name):
  x = _textured(batch=3)
  corruption = corruptions.CORRUPTIONS[name]
  inner_shapes = []

  @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
  def run(images):
    inner = corruption.fn(images / 255.0, corruption.severities[2], SEED, 32 / 224)
    inner_shapes.append(inner.shape.as_list())
    return corruptions.corrupt(images, name, 3, SEED)

  assert run.get_concrete_function().structured_outputs.shape.as_list() == [None, 32, 32, 3]
  assert inner_shapes == [[None, 32, 32, 3]]
  np.testing.assert_allclose(run(x), corruptions.corrupt(x, name, 3, SEED), atol=1e-3)


def test_glass_blur_keeps_a_constant_image_and_the_mean():
  """Blurs and local swaps move values, they do not make them: a constant stays that
  constant and a textured image keeps its mean brightness."""
  flat = tf.fill([2, 32, 32, 3], 77.0)
  x = _textured()
  for severity in corruptions.SEVERITIES:
    np.testing.assert_allclose(corruptions.corrupt(flat, "glass_blur", severity, SEED), flat,
                               atol=1e-3)
    y = corruptions.corrupt(x, "glass_blur", severity, SEED)
    assert float(tf.reduce_mean(y)) == pytest.approx(float(tf.reduce_mean(x)), abs=1.0)


def test_snow_brightens_the_same_at_every_size():
  """Snow lifts a dark image (the brightened grey mix, plus flakes), and by the same
  amount at 32 and 224 px: flakes and streaks are sized by image size / 224."""
  means = {}
  for size in (32, 224):
    dark = tf.fill([4, size, size, 3], 30.0)
    means[size] = [float(tf.reduce_mean(corruptions.corrupt(dark, "snow", s, SEED)))
                   for s in corruptions.SEVERITIES]
  assert all(m > 30 + 20 for m in means[32]), means
  np.testing.assert_allclose(means[32], means[224], rtol=0.1)


def test_elastic_transform_keeps_a_constant_image():
  flat = tf.fill([2, 32, 32, 3], 200.0)
  for severity in corruptions.SEVERITIES:
    np.testing.assert_allclose(corruptions.corrupt(flat, "elastic_transform", severity, SEED),
                               flat, atol=1e-3)


def test_elastic_transform_matches_scipy_and_scales():
  """The displacement smoothing is scipy's gaussian_filter (reflect, truncate 3) even for a
  kernel wider than the image (severity 1: sigma 171 px); the bilinear read with mirrored
  edges is map_coordinates(order=1, mode="reflect"); the field's RMS scales with the size."""
  ndimage = pytest.importorskip("scipy.ndimage")
  rng = np.random.RandomState(0)
  for n, sigma in ((224, 244 * 0.7), (224, 244 * 0.01), (32, 244 * 0.01 * 32 / 224)):
    noise = rng.uniform(-1, 1, [n, n])
    matrix = corruptions.smoothing_matrix(n, sigma)
    np.testing.assert_allclose(matrix @ noise @ matrix.T, ndimage.gaussian_filter(
        noise, sigma, mode="reflect", truncate=3), atol=1e-6)
  image = rng.uniform(0, 1, [9, 7, 2]).astype(np.float32)
  rows, cols = rng.uniform(-20, 30, [2, 1, 9, 7]).astype(np.float32)
  ours = corruptions.sample(image[None], corruptions._reflect_coordinate(rows, 9),
                            corruptions._reflect_coordinate(cols, 7))[0]
  theirs = np.stack([ndimage.map_coordinates(image[..., k], [rows[0], cols[0]], order=1,
                                             mode="reflect") for k in range(2)], axis=-1)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)
  alpha, sigma, _ = corruptions.CORRUPTIONS["elastic_transform"].severities[4]
  rms = {n: float(tf.sqrt(tf.reduce_mean(tf.square(corruptions.displacement(
      SEED, 16, n, n, alpha, sigma, n / 224))))) for n in (32, 224)}
  assert rms[32] == pytest.approx(rms[224] * 32 / 224, rel=0.1), rms
  assert rms[224] == pytest.approx(244 * 0.12 / np.sqrt(3 * 4 * np.pi) / sigma, rel=0.1)


@pytest.mark.parametrize("name", perturbations.NAMES)
def test_perturbation_sequences(name):
  x = _colourful(batch=2)
  frames = 5
  videos = perturbations.sequences(x, name, frames, SEED)
  assert videos.shape == (2, frames, 24, 24, 3) and videos.dtype == tf.float32
  assert float(tf.reduce_min(videos)) >= 0 and float(tf.reduce_max(videos)) <= 255
  clean = 0 if perturbations.PERTURBATIONS[name].noise else frames // 2
  np.testing.assert_allclose(videos[:, clean], x, atol=1e-3)
  change = [float(tf.reduce_mean(tf.abs(videos[:, i] - x))) for i in range(frames)]
  assert sum(c > 0.1 for c in change) == frames - 1, change
  again = tf.data.Dataset.from_tensors(x).map(
      lambda images: perturbations.sequences(images, name, frames, SEED))
  np.testing.assert_allclose(next(iter(again)), videos, atol=1e-3)


def test_flip_probability():
  predictions = tf.constant([[3, 3, 3, 3, 3],    # constant
                             [0, 1, 0, 1, 0],    # flips on every frame
                             [0, 1, 1, 1, 1]])   # one change, then stable
  np.testing.assert_allclose(perturbations.flip_probability(predictions, False),
                             [0, 1, 0.25])
  # Noise sequences compare every frame with the clean first one.
  np.testing.assert_allclose(perturbations.flip_probability(predictions, True),
                             [0, 0.5, 1])


def _result(errors, clean, flips):
  return {"name": "m", "settings": {"severities": [1, 2, 3], "max_images": None,
                                    "seed": 0, "perturbation_frames": 10},
          "clean_error": clean,
          "corruptions": {c: {"errors": e} for c, e in errors.items()},
          "perturbations": {p: {"flip_probability": f} for p, f in flips.items()}}


def test_ce_and_fr_formulas():
  base = _result({"fog": [0.2, 0.4, 0.6], "contrast": [0.1, 0.1, 0.1]}, 0.1,
                 {"rotate": 0.2, "scale": 0.0})
  model = _result({"fog": [0.1, 0.2, 0.3], "contrast": [0.2, 0.2, 0.2]}, 0.05,
                  {"rotate": 0.1, "scale": 0.3})
  metrics.normalise(model, base)
  assert model["corruptions"]["fog"]["ce"] == pytest.approx(50.0)
  assert model["corruptions"]["contrast"]["ce"] == pytest.approx(200.0)
  assert model["mce"] == pytest.approx(125.0)
  # (0.05 + 0.15 + 0.25) / (0.1 + 0.3 + 0.5); the baseline's contrast is at its clean error.
  assert model["corruptions"]["fog"]["relative_ce"] == pytest.approx(50.0)
  assert model["corruptions"]["contrast"]["relative_ce"] is None
  assert model["relative_mce"] == pytest.approx(50.0)
  assert model["mean_corruption_error"] == pytest.approx(1.2 / 6)
  # A baseline that never flips gives no FR for that perturbation.
  assert model["perturbations"]["rotate"]["fr"] == pytest.approx(50.0)
  assert model["perturbations"]["scale"]["fr"] is None
  assert model["mfr"] == pytest.approx(50.0)
  assert model["mean_flip_probability"] == pytest.approx(0.2)
  metrics.normalise(model, None)
  assert model["mce"] is None and model["mfr"] is None and model["baseline"] is None


def test_baseline_against_itself_is_100():
  r = _result({"fog": [0.2, 0.4, 0.6], "jpeg_compression": [0.3, 0.3, 0.5]}, 0.1,
              {"rotate": 0.2, "translate": 0.1})
  metrics.normalise(r, r)
  assert r["mce"] == pytest.approx(100.0) and r["mfr"] == pytest.approx(100.0)
  assert r["relative_mce"] == pytest.approx(100.0)


def test_missing_baseline_conditions_give_no_ce():
  base = _result({"fog": [0.2, 0.4, 0.6]}, 0.1, {})
  base["settings"]["severities"] = [1, 2, 4]
  model = _result({"fog": [0.1, 0.2, 0.3], "contrast": [0.2, 0.2, 0.2]}, 0.05, {})
  metrics.normalise(model, base)
  assert model["corruptions"]["fog"]["ce"] is None  # Severity 3 missing in the baseline.
  assert model["mce"] is None


def _linear_model():
  """2 classes, logit 1 - logit 0 = (mean pixel - 127.5) / 50: brighter is class 1, and
  the gradient sign is known everywhere (small logits keep the softmax off saturation)."""
  inputs = keras.Input([6, 6, 3])
  pooled = keras.layers.GlobalAveragePooling2D()(inputs)
  total = keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")(pooled)
  dense = keras.layers.Dense(2)
  model = keras.Model(inputs, dense(total))
  dense.set_weights([np.array([[-1.0, 1.0]], np.float32) / 300,
                     np.array([127.5, -127.5], np.float32) / 100])
  return model


def test_fgsm_is_clean_at_zero_and_never_helps():
  rng = np.random.RandomState(0)
  images = rng.uniform(100, 155, [40, 6, 6, 3]).astype(np.float32)
  labels = (images.mean(axis=(1, 2, 3)) > 127.5).astype(np.int64)  # The model is right...
  labels[:6] = 1 - labels[:6]  # ...except on 6 images.
  model = _linear_model()
  ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
  clean = evaluate.evaluate(model, ds).top1
  epsilons = [0, 0.5, 1, 2, 4, 8, 16, 32]
  run = evaluate.summed_step(fgsm.make_step(model, epsilons), tf.distribute.get_strategy())
  sums = evaluate.sum_over_dataset(run, ds, tf.distribute.get_strategy())
  accuracy = sums["correct"] / sums["images"]
  assert accuracy[0] == pytest.approx(clean) == pytest.approx(34 / 40)
  assert all(b <= a for a, b in zip(accuracy, accuracy[1:])), accuracy
  assert accuracy[-1] == 0  # A 32-pixel step crosses every margin of this model.
  sign = fgsm.gradient_sign(model, tf.constant(images), tf.constant(labels, tf.int32))
  # Moving away from the true class: darker for class 1 (bright), brighter for class 0.
  expected = np.where(labels == 1, -1.0, 1.0)[:, None, None, None]
  np.testing.assert_array_equal(sign.numpy(), np.broadcast_to(expected, images.shape))
  outside = tf.constant([[[[300.0, -5.0, 10.0]]]])
  np.testing.assert_array_equal(fgsm.attack(outside, tf.ones_like(outside), 0.0), outside)
  np.testing.assert_array_equal(fgsm.attack(outside, tf.ones_like(outside), 4.0),
                                [[[[255.0, 0.0, 14.0]]]])
