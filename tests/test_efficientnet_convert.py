"""Weight import from keras.applications EfficientNets (random-init, nothing downloads)."""
import keras
import numpy as np
import pytest

import efficientnet
from efficientnet import convert

# Any resolution works with weights=None. 40 keeps the tests quick and makes the
# stride-2 layers see both even (40, 20, 10) and odd (5, 3) sizes, where
# keras.applications' explicit padding and our 'same' padding must agree.
SIZE = 40
# keras.applications' ImageNet files store the mean and, as "variance", the stddev.
FILE_MEAN = np.array([0.485, 0.456, 0.406])
FILE_VARIANCE = np.array([0.229, 0.224, 0.225])


def _randomise_batch_norm(model, seed, images=None):
  """Random scale/shift, then moving statistics measured on random images.

  Random-init EfficientNets give nearly input-independent logits with the initial
  statistics (0 / 1); measuring them (one training-mode pass with momentum 0) keeps the
  signal alive through the depth, so a wrongly copied or normalised layer would show.
  """
  rng = np.random.default_rng(seed)
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  for layer in norms:
    shape = layer.gamma.shape
    layer.gamma.assign(rng.uniform(0.8, 1.2, shape))
    layer.beta.assign(rng.normal(0.0, 0.1, shape))
    layer.momentum = 0.0
  # 32 images: deep layers are 2x2, and fewer samples underestimate the variances
  # enough to blow activations up on new images. Images unlike these (other scales)
  # can grow activations ~1000x through the depth, and float32 rounding with them.
  model(_images(32, seed=seed) if images is None else images, training=True)
  for layer in norms:
    layer.momentum = 0.99


def _imagenet_input(x):
  """x' such that a source without the extra Rescaling(1/sqrt(stddev)) sees x' as the
  ImageNet-built one sees x: (x'/255 - m)/sqrt(v) = (x/255 - m)/v."""
  x_prime = 255 * (FILE_MEAN + (x / 255 - FILE_MEAN) / np.sqrt(FILE_VARIANCE))
  return x_prime.astype("float32")


def _images(n=3, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


@pytest.fixture(scope="module")
def b0_imagenet_style():
  """A B0 whose Normalization holds what the ImageNet file loads (no download)."""
  source = keras.applications.EfficientNetB0(
      weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  norm = source.get_layer("normalization")
  norm.adapt_mean.assign(FILE_MEAN)
  norm.adapt_variance.assign(FILE_VARIANCE)
  norm.finalize_state()  # What load_weights does after assigning the variables.
  # Measure the statistics on both input scales the tests feed it (see _imagenet_input).
  x = _images(16, seed=1)
  _randomise_batch_norm(source, seed=1, images=np.concatenate([x, _imagenet_input(x)]))
  return source


def _assert_same_logits(ours, source_logits, x):
  ours_logits = ours(x, training=False).numpy()
  # float32 rounding differs (explicit vs 'same' padding, folded normalisation) and
  # grows with depth to ~1e-5 of the logits' scale; allow 1e-4 of it.
  tolerance = 1e-4 * np.abs(source_logits).max()
  # The logits must depend on the image far beyond the tolerance, or the test is void.
  assert source_logits.std(axis=0).mean() > 100 * tolerance
  np.testing.assert_allclose(ours_logits, source_logits, rtol=0, atol=tolerance)
  return ours_logits


def test_b0_model_outputs_match(b0_imagenet_style):
  ours = efficientnet.from_keras_applications(b0_imagenet_style)  # Size from source.
  x = _images()
  _assert_same_logits(ours, b0_imagenet_style(x, training=False).numpy(), x)
  mean, std = convert.source_normalization(b0_imagenet_style)
  np.testing.assert_allclose(mean, FILE_MEAN * 255, rtol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(FILE_VARIANCE) * 255, rtol=1e-6)


def test_b2_default_normalisation_outputs_match():
  source = keras.applications.EfficientNetB2(
      weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
  _randomise_batch_norm(source, seed=2)
  assert convert.source_normalization(source) == ((0.0,) * 3, (255.0,) * 3)
  ours = efficientnet.from_keras_applications(source, image_size=SIZE)
  assert ours.count_params() > 0 and len(ours.trainable_weights) == len(
      source.trainable_weights)
  x = _images(seed=3)
  _assert_same_logits(ours, source(x, training=False).numpy(), x)


def test_imagenet_weights_file_gets_the_extra_rescaling(b0_imagenet_style, tmp_path):
  path = str(tmp_path / "efficientnetb0.weights.h5")
  b0_imagenet_style.save_weights(path)
  ours = efficientnet.from_keras_applications("efficientnet-b0", path,
                                              image_size=SIZE)
  # With weights="imagenet" keras.applications adds Rescaling(1/sqrt(stddev)) after
  # its Normalization; our source without it, fed x', computes that model's output.
  x = _images(seed=4)
  expected = b0_imagenet_style(_imagenet_input(x), training=False).numpy()
  ours_logits = _assert_same_logits(ours, expected, x)
  # ... which is not what the source computes on x itself.
  assert not np.allclose(ours_logits, b0_imagenet_style(x, training=False).numpy(),
                         atol=0.01)
  # That is exactly the ImageNet normalisation `build_model` uses by default.
  np.testing.assert_allclose(
      np.sqrt(ours.get_layer("normalization").variance).reshape(-1),
      np.array([0.229, 0.224, 0.225]) * 255, rtol=1e-5)


def test_other_classifier_size_keeps_ours_and_mismatches_fail(b0_imagenet_style):
  mean, std = convert.source_normalization(b0_imagenet_style)
  ours = efficientnet.build_model("efficientnet-b0", 10, image_size=SIZE,
                                  input_mean=mean, input_std=std)
  assert convert.load_keras_applications_weights(ours, b0_imagenet_style) == [
      "predictions"]
  np.testing.assert_array_equal(ours.get_layer("top_conv").kernel,
                                b0_imagenet_style.get_layer("top_conv").kernel)
  other = efficientnet.build_model("efficientnet-test", image_size=SIZE)
  with pytest.raises(ValueError, match="normalisation differs"):
    convert.load_keras_applications_weights(other, b0_imagenet_style)
  with pytest.raises(ValueError, match="stem_conv.*shapes differ"):
    convert.load_keras_applications_weights(other, b0_imagenet_style,
                                            check_normalization=False)
  with pytest.raises(ValueError, match="efficientnet-b0"):
    efficientnet.from_keras_applications("efficientnet-l2")
  with pytest.raises(ValueError, match="does not exist"):
    efficientnet.from_keras_applications("efficientnet-b0", "/nonexistent/b0.h5",
                                         image_size=SIZE)
