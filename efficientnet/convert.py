"""Weight import from `keras.applications.EfficientNetB0..B7`.

Our layers carry keras.applications' names (`stem_conv`, `block2a_expand_conv`, ...) and
the same architecture, so weights copy over layer by layer, by name. What differs is the
input normalisation: keras.applications does Rescaling(1/255) -> Normalization(mean,
variance) and, only when built with `weights="imagenet"`, an extra
Rescaling(1/sqrt(stddev)) (its ImageNet file stores the standard deviations where the
variances belong; keras-team/keras and tensorflow/tensorflow#49930). We read the source
model's actual constants and build ours with the equivalent `input_mean` / `input_std`
on the 0..255 scale, so both give the same outputs.

Nothing here downloads: build the source yourself (e.g. `weights=None` and then
`load_weights(local_file)`), or give `from_keras_applications` a local weights path.
"""
from __future__ import annotations

import re
from typing import Any, List, Optional, Tuple, Union

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from efficientnet import model as model_lib
from efficientnet import params as params_lib

# The standard deviations keras.applications' ImageNet files store as "variance".
_KERAS_IMAGENET_FILE_VARIANCE = (0.229, 0.224, 0.225)
_CLASSIFIER = "predictions"
_SOURCE_NAME = re.compile(r"^efficientnet-?(b[0-7])$")


def source_normalization(source: keras.Model) -> Tuple[Tuple[float, ...],
                                                       Tuple[float, ...]]:
  """Returns the (mean, std) on the 0..255 scale that the source's input layers apply.

  Args:
    source: a keras.applications EfficientNet model.
  Returns:
    (mean, std), 3 floats each: the source maps x to (x - mean) / std before its stem.
  Raises:
    ValueError: if a layer before `stem_conv` is not Input / Rescaling / Normalization /
      padding, or the model has no `stem_conv`.
  """
  scale, shift = np.ones(3), np.zeros(3)  # The input layers compose to x*scale + shift.
  for layer in source.layers:
    if layer.name == "stem_conv":
      return tuple((0.0 - shift / scale).tolist()), tuple((1.0 / scale).tolist())
    if isinstance(layer, keras.layers.Rescaling):
      s = np.broadcast_to(np.asarray(layer.scale, np.float64).reshape(-1), 3)
      o = np.broadcast_to(np.asarray(layer.offset, np.float64).reshape(-1), 3)
      scale, shift = scale * s, shift * s + o
    elif isinstance(layer, keras.layers.Normalization):
      if layer.invert or layer.mean is None:
        raise ValueError(f"Source layer {layer.name!r}: an inverting or unbuilt "
                         "Normalization cannot be imported")
      mean = np.asarray(layer.mean, np.float64).reshape(-1)
      std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)),
                       keras.config.epsilon())
      scale, shift = scale / std, (shift - mean) / std
    elif not isinstance(layer, (keras.layers.InputLayer, keras.layers.ZeroPadding2D)):
      raise ValueError(f"Source model {source.name!r}: unexpected layer {layer.name!r} "
                       f"({type(layer).__name__}) before stem_conv")
  raise ValueError(f"Source model {source.name!r} has no 'stem_conv' layer; is it a "
                   "keras.applications EfficientNet?")


def _weighted_layers(model: keras.Model) -> dict:
  # Normalization's mean/variance are folded into input_mean/input_std, not copied.
  return {l.name: l for l in model.layers
          if l.weights and not isinstance(l, keras.layers.Normalization)}


def load_keras_applications_weights(model: keras.Model, source: keras.Model, *,
                                    check_normalization: bool = True) -> List[str]:
  """Copies a keras.applications EfficientNet's weights into `model`, by layer name.

  Args:
    model: ours, from `build_model` with the same architecture as `source` (and for
      identical outputs, the `input_mean` / `input_std` of `source_normalization`).
    source: `keras.applications.EfficientNetB0..B7(...)`, with or without its top.
    check_normalization: raise if the two models normalise their input differently
      (set False to fine-tune imported weights under our ImageNet normalisation).
  Returns:
    Names of our layers left as initialised: `["predictions"]` when the source has no
    classifier or one of another size, else `[]`.
  Raises:
    ValueError: a layer is missing from the source or its weight shapes differ (naming
      it), or the normalisation differs.
  """
  if check_normalization:
    ours, theirs = _model_normalization(model), source_normalization(source)
    if not np.allclose(np.array(ours), np.array(theirs), rtol=1e-5, atol=1e-4):
      raise ValueError(
          f"Input normalisation differs: ours (mean, std) = {ours}, source "
          f"{source.name!r} = {theirs}; build ours with input_mean/input_std from "
          "efficientnet.convert.source_normalization(source) (or use "
          "from_keras_applications), or pass check_normalization=False")
  source_layers = _weighted_layers(source)
  skipped = []
  for name, layer in _weighted_layers(model).items():
    src = source_layers.get(name)
    shapes = [tuple(w.shape) for w in layer.weights]
    src_shapes = [tuple(w.shape) for w in src.weights] if src is not None else None
    if name == _CLASSIFIER and src_shapes != shapes:
      logging.warning("Classifier not imported (source %s, ours %s); it keeps its "
                      "initial weights.", src_shapes, shapes)
      skipped.append(name)
      continue
    if src is None:
      raise ValueError(f"Layer {name!r} of {model.name!r} has no counterpart in source "
                       f"{source.name!r}; are both the same EfficientNet variant?")
    if src_shapes != shapes:
      raise ValueError(f"Layer {name!r}: weight shapes differ (ours {shapes}, source "
                       f"{src_shapes}); are both the same EfficientNet variant?")
    layer.set_weights(src.get_weights())
  logging.info("Imported %d layers from %s into %s.",
               len(_weighted_layers(model)) - len(skipped), source.name, model.name)
  return skipped


def _model_normalization(model: keras.Model):
  layer = model.get_layer("normalization")
  mean = np.asarray(layer.mean, np.float64).reshape(-1)
  std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
  return tuple(mean.tolist()), tuple(std.tolist())


def _source_variant(name_or_model: Union[str, keras.Model],
                    model_name: Optional[str]) -> str:
  """'efficientnet-b3' from 'efficientnet-b3', 'EfficientNetB3' or a model named so."""
  if model_name is not None:
    name = model_name
  else:
    name = name_or_model if isinstance(name_or_model, str) else name_or_model.name
  match = _SOURCE_NAME.match(name.lower())
  if not match:
    raise ValueError(
        f"Cannot tell the EfficientNet variant from {name!r}; keras.applications has "
        "efficientnet-b0..b7 (models named 'efficientnetb0'..'efficientnetb7'); for a "
        "model named otherwise pass model_name='efficientnet-bN'")
  return f"efficientnet-{match.group(1)}"


def from_keras_applications(name_or_model: Union[str, keras.Model],
                            weights_path: Optional[str] = None,
                            num_classes: int = 1000, *,
                            image_size: Optional[int] = None,
                            imagenet_rescaling: Optional[bool] = None,
                            model_name: Optional[str] = None,
                            **build_kwargs: Any) -> keras.Model:
  """Builds our EfficientNet with the weights of a keras.applications one.

  Args:
    name_or_model: a keras.applications EfficientNetB0..B7 model (built by you), or
      a name ('efficientnet-b0'..'efficientnet-b7'), in which case the source is built
      here with `weights=None` and then loads `weights_path`.
    weights_path: local keras.applications weights file (`efficientnetb0.h5`, or
      `efficientnetb0_notop.h5` for a source without classifier); name only.
    num_classes: our classifier; copied from the source only when the sizes match.
    image_size: input resolution of ours (and of the source built here); None: the
      source model's, else the native one.
    imagenet_rescaling: add the extra 1/sqrt(stddev) that keras.applications applies
      with `weights="imagenet"` (name only). None: when the loaded file stores the
      ImageNet standard deviations as its variance, as the official files do.
    model_name: the variant ('efficientnet-b3') of a source model whose name is not
      keras.applications' ('efficientnetb3').
    **build_kwargs: more `build_model` arguments (dropout_rate, dtype_policy, ...).
  Returns:
    Our model; in inference mode its logits equal the source's pre-softmax outputs.
  """
  model_name = _source_variant(name_or_model, model_name)
  if isinstance(name_or_model, str):
    size = image_size or params_lib.native_resolution(model_name)
    source = _build_source(model_name, weights_path, size)
  else:
    if weights_path or imagenet_rescaling:
      raise ValueError("weights_path and imagenet_rescaling apply only when the "
                       "source is given by name; load weights into your model first")
    source = name_or_model
    # Default to the source's own input size when it has a fixed one.
    size = (image_size or source.input_shape[1]
            or params_lib.native_resolution(model_name))
  mean, std = source_normalization(source)
  if isinstance(name_or_model, str):
    if imagenet_rescaling is None:
      norm = [l for l in source.layers if isinstance(l, keras.layers.Normalization)]
      imagenet_rescaling = bool(norm) and bool(np.allclose(
          np.asarray(norm[0].variance).reshape(-1), _KERAS_IMAGENET_FILE_VARIANCE))
      if imagenet_rescaling:
        logging.info("%s stores the ImageNet stddev as variance: applying the extra "
                     "1/sqrt(stddev) as keras.applications does for weights='imagenet'",
                     weights_path)
    if imagenet_rescaling:
      std = tuple((np.array(std) * np.sqrt(_KERAS_IMAGENET_FILE_VARIANCE)).tolist())
  model = model_lib.build_model(model_name, num_classes, image_size=size,
                                input_mean=mean, input_std=std, **build_kwargs)
  load_keras_applications_weights(model, source, check_normalization=False)
  return model


def _build_source(model_name: str, weights_path: Optional[str], size: int):
  """keras.applications' model for `model_name`, weights from a local file only."""
  if weights_path:
    if not weights_path.endswith(".h5"):
      raise ValueError(f"weights_path {weights_path!r}: expected a keras.applications "
                       ".h5 weights file")
    if not tf.io.gfile.exists(weights_path):
      raise ValueError(f"weights_path {weights_path!r} does not exist")
  cls = getattr(keras.applications, "EfficientNet" + model_name[-2:].upper())
  include_top = not (weights_path and "notop" in weights_path)
  source = cls(weights=None, include_top=include_top, input_shape=(size, size, 3),
               classifier_activation=None)
  if weights_path:
    source.load_weights(weights_path)
  return source
