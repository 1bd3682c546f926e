"""EfficientNet building blocks: stochastic depth and the MBConv block.

The MBConv block is assembled from standard Keras layers in the functional API, with the
same layer names as keras.applications (`block2b_expand_conv`, ...): the model then saves
and loads with plain Keras, shallow layers can be frozen by name for the final fine-tune,
and keras.applications weights map over by name. The custom layers are `StochasticDepth`
and `LinearResize` (the eval resize of a deployable model, see noisy_student/export).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import keras
from keras import ops

from efficientnet import params as params_lib

# The original's initialisers. Conv: untruncated normal, std sqrt(2 / (kh*kw*out)) (for a
# depthwise kernel [kh, kw, c, 1] Keras' fan_out is kh*kw*1, as the original's).
# Dense: uniform(+-1/sqrt(num_classes)) = variance scaling 1/3, fan_out, uniform.
CONV_INITIALIZER = {"class_name": "VarianceScaling", "config": {
    "scale": 2.0, "mode": "fan_out", "distribution": "untruncated_normal"}}
DENSE_INITIALIZER = {"class_name": "VarianceScaling", "config": {
    "scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"}}


@keras.saving.register_keras_serializable(package="efficientnet")
class StochasticDepth(keras.layers.Layer):
  """Drops the whole residual branch per sample (Huang et al. 2016), as the original.

  With `training=True`, each sample's input is multiplied by floor(survival + U[0, 1))
  (1 with probability `survival = 1 - rate`, else 0) and divided by `survival`, so the
  expectation is unchanged. With `training=False` (or rate 0) it is the identity.

  Input: a tensor [batch, ...]; output: same shape and dtype.
  """

  def __init__(self, rate: float, seed: Optional[int] = None, **kwargs: Any):
    super().__init__(**kwargs)
    if not 0.0 <= rate < 1.0:
      raise ValueError(f"StochasticDepth rate must be in [0, 1), got {rate}")
    self.rate = float(rate)
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.supports_masking = True

  def call(self, inputs, training=False):
    if not training or self.rate == 0.0:
      return inputs
    survival = 1.0 - self.rate
    batch = ops.shape(inputs)[0]
    mask_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
    # Draw and floor in float32: in bfloat16, survival + u rounds (0.99 -> 0.98828).
    uniform = keras.random.uniform(mask_shape, dtype="float32",
                                   seed=self.seed_generator)
    mask = ops.floor(survival + uniform) / survival
    return inputs * ops.cast(mask, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({"rate": self.rate, "seed": self.seed})
    return config


@keras.saving.register_keras_serializable(package="efficientnet")
class LinearResize(keras.layers.Layer):
  """Resizes images to `size x size` as two matrix products (rows, then columns).

  A resize without antialiasing is linear and separable: `out = R x C^T` per channel,
  where `R` is the resize of the identity matrix. Written so, a deployed model needs
  only transposes and matmuls (TFLite builtins, int8-quantizable), not the bicubic
  kernel LiteRT lacks, and computes what `tf.image.resize(x, [size, size],
  interpolation)` computes (to float rounding). The matrices follow from the config.
  Each is the constant right-hand operand of its matmul, which the TFLite converter
  turns into a FULLY_CONNECTED layer with per-channel int8 weights; a constant left
  operand stays a BATCH_MATMUL, whose int8 version collapsed the demo's classifier to
  chance (measured: 11% top-1 agreement with Keras, against 99.5% this way).

  Input: [batch, h, w, c] of any real or integer dtype; output: float [batch, size,
  size, c] in the layer's compute dtype (not clipped).
  """

  def __init__(self, size: int, interpolation: str = "bicubic", **kwargs: Any):
    super().__init__(**kwargs)
    self.size = int(size)
    self.interpolation = interpolation

  def _matrix(self, n: int):
    """[n, size]: column j is the resize's output pixel j as weights of the n inputs."""
    eye = ops.reshape(ops.eye(n, dtype="float32"), [n, n, 1, 1])
    resized = ops.image.resize(eye, (self.size, 1), interpolation=self.interpolation)
    return ops.cast(ops.reshape(resized, [n, self.size]), self.compute_dtype)

  def build(self, input_shape):
    self._rows_t = self._matrix(int(input_shape[1]))  # R^T: [h, size].
    self._cols_t = self._matrix(int(input_shape[2]))  # C^T: [w, size].

  def call(self, inputs):
    x = ops.transpose(ops.cast(inputs, self.compute_dtype), [0, 2, 3, 1])  # [b, w, c, h]
    x = ops.matmul(x, self._rows_t)  # [b, w, c, size]: the rows resized.
    x = ops.matmul(ops.transpose(x, [0, 3, 2, 1]), self._cols_t)  # [b, size, c, size]
    return ops.transpose(x, [0, 1, 3, 2])

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.size, self.size, input_shape[3])

  def get_config(self) -> Dict[str, Any]:
    config = super().get_config()
    config.update({"size": self.size, "interpolation": self.interpolation})
    return config


def batch_norm(name: str, dtype: Any, synchronized: bool) -> keras.layers.Layer:
  """Batch norm with the original's momentum 0.99 and epsilon 1e-3."""
  return keras.layers.BatchNormalization(
      momentum=params_lib.BATCH_NORM_MOMENTUM, epsilon=params_lib.BATCH_NORM_EPSILON,
      synchronized=synchronized, name=name, dtype=dtype)


def conv_bn_act(x, filters: int, kernel_size: int, strides: int, name: str,
                dtype: Any, synchronized: bool, activation: bool = True):
  """Conv ('same', no bias) -> batch norm -> swish. Layers named `{name}conv/bn/activation`.

  `name` is a prefix such as "stem_" or "block2a_expand_"; the batch-norm and activation
  names follow keras.applications ("stem_bn", "block2a_expand_bn").
  """
  x = keras.layers.Conv2D(
      filters, kernel_size, strides=strides, padding="same", use_bias=False,
      kernel_initializer=CONV_INITIALIZER, name=f"{name}conv", dtype=dtype)(x)
  x = batch_norm(f"{name}bn", dtype, synchronized)(x)
  if activation:
    x = keras.layers.Activation("swish", name=f"{name}activation", dtype=dtype)(x)
  return x


def squeeze_excite(x, se_filters: int, name: str, dtype: Any):
  """Channel gating: mean over space -> 1x1 conv + swish -> 1x1 conv + sigmoid -> scale.

  The 1x1 convs have biases (as the original). Input / output: [batch, h, w, c].
  """
  channels = x.shape[-1]
  se = keras.layers.GlobalAveragePooling2D(
      keepdims=True, name=f"{name}se_squeeze", dtype=dtype)(x)
  se = keras.layers.Conv2D(
      se_filters, 1, padding="same", activation="swish",
      kernel_initializer=CONV_INITIALIZER, name=f"{name}se_reduce", dtype=dtype)(se)
  se = keras.layers.Conv2D(
      channels, 1, padding="same", activation="sigmoid",
      kernel_initializer=CONV_INITIALIZER, name=f"{name}se_expand", dtype=dtype)(se)
  return keras.layers.Multiply(name=f"{name}se_excite", dtype=dtype)([x, se])


def mbconv_block(inputs, spec: params_lib.BlockSpec, drop_rate: float, dtype: Any,
                 synchronized: bool):
  """One mobile inverted bottleneck block (expand, depthwise, squeeze-excite, project).

  Args:
    inputs: [batch, h, w, spec.input_filters] tensor.
    spec: the block's concrete shape (see `params.block_specs`).
    drop_rate: stochastic-depth rate; used only if the block has an identity skip,
      and 0 adds no layer at all.
    dtype: Keras dtype policy (name or object) for every layer of the block.
    synchronized: cross-replica batch norm.

  Returns:
    [batch, ceil(h / stride), ceil(w / stride), spec.output_filters] tensor.
  """
  name = spec.name
  x = inputs
  if spec.expand_ratio != 1:
    x = conv_bn_act(x, spec.expanded_filters, 1, 1, f"{name}expand_", dtype,
                    synchronized)
  x = keras.layers.DepthwiseConv2D(
      spec.kernel_size, strides=spec.stride, padding="same", use_bias=False,
      depthwise_initializer=CONV_INITIALIZER, name=f"{name}dwconv", dtype=dtype)(x)
  x = batch_norm(f"{name}bn", dtype, synchronized)(x)
  x = keras.layers.Activation("swish", name=f"{name}activation", dtype=dtype)(x)
  if spec.se_filters:
    x = squeeze_excite(x, spec.se_filters, name, dtype)
  x = conv_bn_act(x, spec.output_filters, 1, 1, f"{name}project_", dtype, synchronized,
                  activation=False)
  if spec.has_identity_skip:
    if drop_rate > 0:
      x = StochasticDepth(drop_rate, name=f"{name}drop", dtype=dtype)(x)
    x = keras.layers.Add(name=f"{name}add", dtype=dtype)([x, inputs])
  return x
