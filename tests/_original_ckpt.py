"""Checkpoints laid out as the original TF1 EfficientNet code writes them, and its
inference graph, so the importer is tested without the published files.

`network(width, depth)` is the original's graph in its call order (tensorflow/tpu
models/official/efficientnet at 7dc921f8: efficientnet_builder.py's block strings and
rounding, efficientnet_model.py's Model.call and MBConvBlock.call). `write` creates it as
TF1 variables the way tf.layers do (`variable_scope(None, default_name=<layer class in
snake case>)` at a layer's first call), so TensorFlow's own numbering names them
(conv2d, conv2d_1, tpu_batch_normalization_2, ...), adds ExponentialMovingAverage shadows
of the trainable variables and the batch-norm moving statistics (utils.get_ema_vars),
RMSProp slots and global_step, and saves with tf.compat.v1.train.Saver. Raw weights and
shadows are drawn independently, so reading the wrong ones gives other logits.
`forward` runs the original's inference (input normalised outside the network, 'SAME'
convs, batch norm with epsilon 1e-3, swish, squeeze-excite, identity skips) in tf.nn ops
on a dict of the same arrays: it shares no code with the importer or our Keras model.
"""
import dataclasses
import math
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1
MEAN_RGB = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255])  # efficientnet_builder.py:31
STDDEV_RGB = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255])
EPSILON = 1e-3  # efficientnet_builder.py:188
BLOCKS_ARGS = (  # efficientnet_builder.py:172-177
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25", "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25")
BN = "tpu_batch_normalization"  # utils.TpuBatchNormalization's scope name.
SIZES = {  # efficientnet_builder.py:35-50 (width, depth).
    "efficientnet-b0": (1.0, 1.0), "efficientnet-b1": (1.0, 1.1),
    "efficientnet-b2": (1.1, 1.2), "efficientnet-b3": (1.2, 1.4),
    "efficientnet-b4": (1.4, 1.8), "efficientnet-b5": (1.6, 2.2),
    "efficientnet-b6": (1.8, 2.6), "efficientnet-b7": (2.0, 3.1),
    "efficientnet-b8": (2.2, 3.6), "efficientnet-l2": (4.3, 5.3),
    "efficientnet-test": (0.1, 0.3)}


@dataclasses.dataclass(frozen=True)
class Block:
  kernel: int
  stride: int
  expand: int
  cin: int
  cout: int
  se: int

  @property
  def skip(self) -> bool:  # efficientnet_model.py:387-394 (id_skip is on for all).
    return self.stride == 1 and self.cin == self.cout


def round_filters(filters, width):  # efficientnet_model.py:106-122
  filters *= width
  new = max(8, int(filters + 4) // 8 * 8)
  return int(new + 8 if new < 0.9 * filters else new)


def blocks(width, depth) -> List[Block]:
  """The blocks of Model._build (efficientnet_model.py:532-583), without space2depth."""
  out = []
  for string in BLOCKS_ARGS:
    o = dict(re.split(r"(\d.*)", op)[:2] for op in string.split("_"))
    cin, cout = round_filters(int(o["i"]), width), round_filters(int(o["o"]), width)
    for j in range(int(math.ceil(depth * int(o["r"])))):
      c = cin if j == 0 else cout
      out.append(Block(int(o["k"]), int(o["s"][0]) if j == 0 else 1, int(o["e"]), c, cout,
                       max(1, int(c * float(o["se"])))))
  return out


def _conv(role, k, cin, cout, bias=False):
  shapes = {"kernel": [k, k, cin, cout]}
  if bias:
    shapes["bias"] = [cout]
  return ("conv2d", role, shapes)


def _bn(role, c):
  return (BN, role, {n: [c] for n in ("gamma", "beta", "moving_mean", "moving_variance")})


def network(width, depth, num_classes=1000):
  """[(scope, entries)] in call order; an entry is a layer (class, role, {variable:
  shape}) or a nested scope (name, entries). Roles name what forward() does with it."""
  stem = round_filters(32, width)
  groups = [("stem", [_conv("conv", 3, 3, stem), _bn("bn", stem)])]
  last = stem
  for i, b in enumerate(blocks(width, depth)):
    mid, layers = b.cin * b.expand, []
    if b.expand != 1:  # MBConvBlock.call: efficientnet_model.py:367-381.
      layers += [_conv("expand", 1, b.cin, mid), _bn("expand_bn", mid)]
    layers += [("depthwise_conv2d", "dw", {"depthwise_kernel": [b.kernel, b.kernel, mid, 1]}),
               _bn("dw_bn", mid),
               ("se", [_conv("se_reduce", 1, mid, b.se, True),
                       _conv("se_expand", 1, b.se, mid, True)]),
               _conv("project", 1, mid, b.cout), _bn("project_bn", b.cout)]
    groups.append((f"blocks_{i}", layers))
    last = b.cout
  head = round_filters(1280, width)
  groups.append(("head", [_conv("conv", 1, last, head), _bn("bn", head),
                          ("dense", "dense", {"kernel": [head, num_classes],
                                              "bias": [num_classes]})]))
  return groups


def layout(width, depth, num_classes=1000, scope="efficientnet-b0"):
  """({variable name: shape}, {(group, role): variable scope}) by tf.layers' numbering
  rule, without a graph (tests check it equals what TensorFlow gives `write`)."""
  shapes, scopes = {}, {}

  def walk(group, prefix, entries):
    counts = {}
    for entry in entries:
      if len(entry) == 2:
        walk(group, f"{prefix}/{entry[0]}", entry[1])
        continue
      cls, role, variables = entry
      n = counts[cls] = counts.get(cls, -1) + 1
      scopes[(group, role)] = f"{prefix}/{cls}{f'_{n}' if n else ''}"
      for var, shape in variables.items():
        shapes[f"{scopes[(group, role)]}/{var}"] = list(shape)

  for group, entries in network(width, depth, num_classes):
    walk(group, f"{scope}/{group}", entries)
  return shapes, scopes


def _build_graph(width, depth, num_classes, scope):
  """The TF1 variables in call order; returns {(group, role): {var: tf.Variable}}."""
  layers = {}

  def walk(group, entries):
    for entry in entries:
      if len(entry) == 2:
        with v1.variable_scope(entry[0]):
          walk(group, entry[1])
        continue
      cls, role, shapes = entry
      with v1.variable_scope(None, default_name=cls):
        layers[(group, role)] = {
            var: v1.get_variable(var, shape, initializer=v1.zeros_initializer(),
                                 trainable=not var.startswith("moving_"))
            for var, shape in shapes.items()}

  with v1.variable_scope(scope):
    for group, entries in network(width, depth, num_classes):
      with v1.variable_scope(group):
        walk(group, entries)
  return layers


def scopes_of(layers) -> Dict[tuple, str]:
  """{(group, role): the variable scope TensorFlow gave that layer}."""
  return {key: next(iter(v.values())).op.name.rsplit("/", 1)[0] for key, v in layers.items()}


def _random_value(name, shape, rng) -> np.ndarray:
  """At the original's initial scales (conv_kernel_initializer); batch-norm scale and
  shift and biases random; the dense layer 10x so logits spread. float32."""
  var = name.rsplit("/", 1)[1]
  if var in ("kernel", "depthwise_kernel") and len(shape) == 4:
    value = rng.normal(0, math.sqrt(2.0 / (shape[0] * shape[1] * shape[3])), shape)
  elif var == "kernel":
    value = 10 * rng.uniform(-1, 1, shape) / math.sqrt(shape[1])
  elif var == "gamma":
    value = rng.uniform(0.5, 1.5, shape)
  elif var in ("beta", "bias"):
    value = rng.normal(0, 0.2, shape)
  else:
    value = np.zeros(shape) if var == "moving_mean" else np.ones(shape)
  return value.astype(np.float32)


def _calibrated(shapes, scopes, block_list, x, seed) -> Dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  values = {name: _random_value(name, shape, rng) for name, shape in shapes.items()}
  forward(values, scopes, block_list, x, calibrate=True)
  return values


def forward(values, scopes, block_list, images, calibrate=False, features=False):
  """The original's inference on 0..255 images [n, s, s, 3] in float64 tf.nn ops.

  values: {variable name: float32 array}; scopes: {(group, role): variable scope}. With
  `calibrate`, each batch norm's moving statistics are first set (in `values`) to its
  input's batch statistics, so random weights keep activations of unit scale.
  """
  def get(group, role, var):
    return tf.constant(values[f"{scopes[(group, role)]}/{var}"], tf.float64)

  def conv(x, group, role, stride=1):
    y = tf.nn.conv2d(x, get(group, role, "kernel"), stride, "SAME")
    name = f"{scopes[(group, role)]}/bias"
    return y + get(group, role, "bias") if name in values else y

  def bn(x, group, role):
    name = scopes[(group, role)]
    if calibrate:  # Stored in float32, as the checkpoint holds them.
      values[f"{name}/moving_mean"] = tf.reduce_mean(x, [0, 1, 2]).numpy().astype("f4")
      values[f"{name}/moving_variance"] = (
          tf.math.reduce_variance(x, [0, 1, 2]).numpy().astype("f4"))
    return ((x - get(group, role, "moving_mean")) /
            tf.sqrt(get(group, role, "moving_variance") + EPSILON) *
            get(group, role, "gamma") + get(group, role, "beta"))

  def swish(x):
    return x * tf.sigmoid(x)

  x = (tf.constant(images, tf.float64) - MEAN_RGB) / STDDEV_RGB  # main.py:372-382
  x = swish(bn(conv(x, "stem", "conv", 2), "stem", "bn"))
  for i, b in enumerate(block_list):
    g, inputs = f"blocks_{i}", x
    if b.expand != 1:
      x = swish(bn(conv(x, g, "expand"), g, "expand_bn"))
    x = tf.nn.depthwise_conv2d(x, get(g, "dw", "depthwise_kernel"), [1, b.stride, b.stride, 1],
                               "SAME")
    x = swish(bn(x, g, "dw_bn"))
    s = swish(conv(tf.reduce_mean(x, [1, 2], keepdims=True), g, "se_reduce"))
    x = tf.sigmoid(conv(s, g, "se_expand")) * x
    x = bn(conv(x, g, "project"), g, "project_bn")
    if b.skip:
      x = x + inputs
  x = swish(bn(conv(x, "head", "conv"), "head", "bn"))
  if features:
    return x.numpy()
  x = tf.reduce_mean(x, [1, 2])
  return (x @ get("head", "dense", "kernel") + get("head", "dense", "bias")).numpy()


# Graph rewrites only cost time for these one-off runs.
_FAST = v1.ConfigProto(graph_options=v1.GraphOptions(
    optimizer_options=v1.OptimizerOptions(opt_level=v1.OptimizerOptions.L0),
    rewrite_options=None))
_FAST.graph_options.rewrite_options.disable_meta_optimizer = True


@dataclasses.dataclass
class Original:
  """A written checkpoint: its prefix, the raw and EMA arrays, and how to run them."""
  prefix: str
  scope: str
  raw: Dict[str, np.ndarray]
  ema: Dict[str, np.ndarray]
  scopes: Dict[tuple, str]
  blocks: List[Block]
  images: np.ndarray

  def logits(self, use_ema=True, images=None, features=False):
    return forward(self.ema if use_ema else self.raw, self.scopes, self.blocks,
                   self.images if images is None else images, features=features)


def images(n=6, size=64, seed=0):
  """Smooth random 0..255 images (low-frequency patterns, so deep features differ)."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (n, 4, 4, 3))
  x = tf.image.resize(small, [size, size], "bicubic").numpy()
  return np.clip(x + rng.normal(0, 8, x.shape), 0, 255).astype(np.float32)


def write(prefix, model_name="efficientnet-b0", *, width=None, depth=None,
          num_classes=1000, seed=0, size=64, n=6, ema=True, slots=True,
          drop: Sequence[str] = (), scope: Optional[str] = None) -> Original:
  """Writes `<prefix>.index/.data/.meta` as the original's training job does: TF1 graph
  variables, tf.compat.v1.train.ExponentialMovingAverage, RMSProp, Saver.

  Args:
    prefix: checkpoint prefix (its folder gets the Saver's `checkpoint` file).
    model_name: the model scope and, unless width / depth are given, its scaling.
    ema: add the ExponentialMovingAverage shadows (drawn apart from the raw weights).
    slots: add RMSProp slots and global_step, as a training checkpoint holds.
    drop: variable names to leave out (a damaged checkpoint).
  """
  width, depth = width or SIZES[model_name][0], depth or SIZES[model_name][1]
  scope = scope or model_name
  block_list, x = blocks(width, depth), images(n=n, size=size, seed=seed + 100)
  graph = tf.Graph()
  with graph.as_default():
    layers = _build_graph(width, depth, num_classes, scope)
  scopes = scopes_of(layers)
  shapes = {v.op.name: v.shape.as_list() for vs in layers.values() for v in vs.values()}
  values = {kind: _calibrated(shapes, scopes, block_list, x, seed * 2 + offset)
            for kind, offset in (("raw", 0), ("ema", 1))}  # Eagerly, outside the graph.
  with graph.as_default():
    model_vars = [v for variables in layers.values() for v in variables.values()]
    step = v1.train.get_or_create_global_step() if slots else None
    averager = v1.train.ExponentialMovingAverage(0.9999, num_updates=step)
    if ema:
      averager.apply(model_vars)  # utils.get_ema_vars: trainable + moving statistics.
    if slots:
      loss = tf.add_n([tf.reduce_sum(v) for v in v1.trainable_variables()
                       if "ExponentialMovingAverage" not in v.op.name])
      v1.train.RMSPropOptimizer(0.1, 0.9, 0.9, 1e-3).minimize(loss, global_step=step)
    kept = [v for v in v1.global_variables() if v.op.name not in set(drop)]
    saver = v1.train.Saver({v.op.name: v for v in kept})
    # One feed of every value (Variable.load per variable re-plans the graph each time).
    targets = [(var, values["raw"][var.op.name]) for var in model_vars]
    if ema:
      targets += [(averager.average(var), values["ema"][var.op.name]) for var in model_vars]
    feeds, assigns = {}, []
    for var, value in targets:
      holder = v1.placeholder(tf.float32, value.shape)
      feeds[holder] = value
      assigns.append(var.assign(holder).op)
    with v1.Session(graph=graph, config=_FAST) as sess:
      sess.run(v1.global_variables_initializer())
      sess.run(assigns, feeds)
      saver.save(sess, prefix)
  return Original(prefix, scope, values["raw"], values["ema"], scopes, block_list, x)


def write_bundle(prefix, model_name="efficientnet-l2", *, width=None, depth=None,
                 num_classes=1000, seed=0, size=64, n=6, ema=True, calibrate_raw=True,
                 drop: Sequence[str] = (), extra: Optional[Dict[str, np.ndarray]] = None,
                 group_bytes=256 << 20) -> Original:
  """The same layout as `write` (model variables and their `/ExponentialMovingAverage`
  shadows, as tests check on B0) in the same tensor-bundle format, written by the op the
  Saver runs (SaveV2, in groups merged by MergeV2Checkpoints as a sharded Saver does):
  seconds instead of minutes for deep models, and no graph holding a second copy of
  large ones.

  Args (besides `write`'s):
    n: number of test images (`Original.images`).
    calibrate_raw: False draws the raw weights group by group and keeps none (their
      logits are then not available).
    drop: variable names to leave out; extra: {name: array} to add.
  """
  width, depth = width or SIZES[model_name][0], depth or SIZES[model_name][1]
  block_list, x = blocks(width, depth), images(n=n, size=size, seed=seed + 100)
  shapes, scopes = layout(width, depth, num_classes, model_name)
  averages = _calibrated(shapes, scopes, block_list, x, seed * 2 + 1)
  raw = _calibrated(shapes, scopes, block_list, x, seed * 2) if calibrate_raw else {}
  rng = np.random.default_rng(seed * 2)
  items = [(n_, lambda n_=n_: raw[n_] if raw else _random_value(n_, shapes[n_], rng))
           for n_ in shapes]
  if ema:
    items += [(n_ + "/ExponentialMovingAverage", lambda n_=n_: averages[n_])
              for n_ in shapes]
  items += [(n_, lambda v=v: v) for n_, v in (extra or {}).items()]
  items = [(n_, fn) for n_, fn in items if n_ not in set(drop)]
  tf.io.gfile.makedirs(f"{prefix}_temp")
  parts, group, size_now = [], [], 0
  for i, (name, value_fn) in enumerate(items):
    value = value_fn()
    group.append((name, value))
    size_now += value.nbytes
    if size_now >= group_bytes or i == len(items) - 1:
      part = f"{prefix}_temp/part-{len(parts):05d}"
      tf.raw_ops.SaveV2(prefix=part, tensor_names=[n_ for n_, _ in group],
                        shape_and_slices=[""] * len(group),
                        tensors=[tf.constant(v) for _, v in group])
      parts.append(part)
      group, size_now = [], 0
  # Deletes the parts and their folder, as the sharded Saver's merge does.
  tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=parts, destination_prefix=prefix)
  return Original(prefix, model_name, raw, averages, scopes, block_list, x)


if __name__ == "__main__":
  # python tests/_original_ckpt.py MODEL PREFIX: a checkpoint of MODEL's full size in the
  # original layout (random raw weights, calibrated EMA shadows), for measuring an import
  # (docs/efficientnet.md, "Memory and time").
  import sys
  import time
  start = time.time()
  written = write_bundle(sys.argv[2], sys.argv[1], size=32, n=2, calibrate_raw=False)
  print(f"wrote {written.prefix} ({sum(v.size for v in written.ema.values()):,} values "
        f"per weight set) in {time.time() - start:.0f}s")
