"""`build_model`: the one builder for efficientnet-b0..b8, l2 and efficientnet-test."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import keras
import numpy as np

from efficientnet import layers as layers_lib
from efficientnet import params as params_lib


def _dtype_policy(dtype_policy: Optional[Any]) -> keras.DTypePolicy:
  """Resolves a policy name / object; None means float32 (never the global policy).

  Taking the policy per layer, instead of setting the process-wide one, keeps building a
  mixed-precision model from changing how unrelated models are built afterwards.
  """
  if dtype_policy is None:
    return keras.DTypePolicy("float32")
  if isinstance(dtype_policy, keras.DTypePolicy):
    return dtype_policy
  try:
    return keras.DTypePolicy(str(dtype_policy))
  except ValueError as e:
    raise ValueError(
        f"Unknown dtype_policy {dtype_policy!r}; use 'float32', 'mixed_bfloat16' or "
        f"'mixed_float16' ({e})") from None


def _normalization(mean: Optional[Sequence[float]], std: Optional[Sequence[float]]):
  """The input normalisation layer: (x - mean) / std per channel, in float32."""
  mean = params_lib.IMAGENET_MEAN_RGB if mean is None else tuple(map(float, mean))
  std = params_lib.IMAGENET_STDDEV_RGB if std is None else tuple(map(float, std))
  if len(mean) != 3 or len(std) != 3:
    raise ValueError(
        f"input_mean and input_std need 3 values (RGB), got {mean} and {std}")
  if min(std) <= 0:
    raise ValueError(f"input_std must be > 0, got {std}")
  # Normalization divides by sqrt(variance); float64 squaring keeps std exact to float32.
  variance = (np.asarray(std, np.float64) ** 2).tolist()
  # float32 even under a mixed policy: pixels up to 255 lose whole units in bfloat16.
  return keras.layers.Normalization(mean=list(mean), variance=variance,
                                    name="normalization", dtype="float32")


def build_model(model_name: str, num_classes: int = 1000, *,
                image_size: Optional[int] = None,
                dropout_rate: Optional[float] = None,
                stochastic_depth_rate: float = 0.2,
                width_coefficient: Optional[float] = None,
                depth_coefficient: Optional[float] = None,
                small_image: bool = False,
                dtype_policy: Optional[Any] = None,
                sync_batch_norm: bool = False,
                input_mean: Optional[Sequence[float]] = None,
                input_std: Optional[Sequence[float]] = None,
                include_top: bool = True,
                name: Optional[str] = None) -> keras.Model:
  """Builds an EfficientNet as a Keras functional model.

  Args:
    model_name: one of `MODEL_NAMES` (efficientnet-b0..b8, efficientnet-l2,
      efficientnet-test).
    num_classes: size of the classifier.
    image_size: input resolution S; None uses the table's native resolution.
    dropout_rate: dropout before the classifier; None uses the table's; 0 removes it.
    stochastic_depth_rate: drop rate of the last block (block i of N drops with rate
      `stochastic_depth_rate * i / N`, identity-skip blocks only); 0 removes it.
    width_coefficient, depth_coefficient: override the table's scaling.
    small_image: the original's 32-pixel variant (stride 1 in the 2nd and 3rd stages).
    dtype_policy: None / "float32", "mixed_bfloat16" or "mixed_float16", set per layer.
    sync_batch_norm: synchronised (cross-replica) batch norm.
    input_mean, input_std: per-channel RGB statistics on the 0..255 scale; default the
      ImageNet ones. Imported weights may need their source's values (see convert.py).
    include_top: False ends the model at the head's activation (`top_activation`, as
      keras.applications with `include_top=False`): no pooling, dropout or classifier,
      so `num_classes` is unused; for features or a classifier of your own.
    name: the Keras model name; default the model name with '-' as '_'.

  Returns:
    A `keras.Model` mapping float images [batch, S, S, 3] with pixels on the 0..255
    scale to float32 logits [batch, num_classes] (with `include_top=False`: the feature
    map [batch, ceil(S / 32), ceil(S / 32), head filters] in the policy's compute dtype).
    Dropout and stochastic depth are active only when it is called with `training=True`.
  """
  row = params_lib.resolve(model_name, image_size, dropout_rate, width_coefficient,
                           depth_coefficient)
  if int(num_classes) < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}")
  policy = _dtype_policy(dtype_policy)
  blocks = params_lib.block_specs(row.width_coefficient, row.depth_coefficient,
                                  small_image)
  drop_rates = params_lib.stochastic_depth_rates(blocks, stochastic_depth_rate)

  inputs = keras.Input((row.resolution, row.resolution, 3), name="images")
  x = _normalization(input_mean, input_std)(inputs)
  x = layers_lib.conv_bn_act(
      x, params_lib.round_filters(params_lib.STEM_FILTERS, row.width_coefficient), 3, 2,
      "stem_", policy, sync_batch_norm)
  for spec, rate in zip(blocks, drop_rates):
    x = layers_lib.mbconv_block(x, spec, rate, policy, sync_batch_norm)
  x = layers_lib.conv_bn_act(
      x, params_lib.round_filters(params_lib.HEAD_FILTERS, row.width_coefficient), 1, 1,
      "top_", policy, sync_batch_norm)
  name = name or model_name.replace("-", "_")
  if not include_top:
    return keras.Model(inputs, x, name=name)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype=policy)(x)
  if row.dropout_rate > 0:
    x = keras.layers.Dropout(row.dropout_rate, name="top_dropout", dtype=policy)(x)
  # The classifier runs in float32 under every policy: logits feed soft pseudo-labels
  # and temperatures, where bfloat16's 3 significant digits would show; it is tiny.
  logits = keras.layers.Dense(
      int(num_classes), kernel_initializer=layers_lib.DENSE_INITIALIZER,
      name="predictions", dtype="float32")(x)
  return keras.Model(inputs, logits, name=name)
