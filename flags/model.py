"""Model flags: which EfficientNet to build (-> `ModelConfig`)."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the model flags on `fv`."""
  flags.DEFINE_string(
      "model_name", "efficientnet-b0",
      "The teacher's model (and the student's in --mode=train): efficientnet-b0..b8, "
      "efficientnet-l2 or efficientnet-test; 'b0' is short for efficientnet-b0.",
      flag_values=fv)
  flags.DEFINE_integer(
      "num_label_classes", None,
      "Number of classes; unset: taken from the labeled data.", flag_values=fv)
  flags.DEFINE_integer(
      "input_image_size", None,
      "Training and eval resolution; unset: the model's native resolution.",
      flag_values=fv)
  flags.DEFINE_float(
      "dropout_rate", None, "Dropout before the classifier; unset: the model table's.",
      flag_values=fv)
  flags.DEFINE_float(
      "stochastic_depth_rate", 0.2,
      "Drop rate of the last block (the original's drop_connect_rate); 0 disables.",
      flag_values=fv)
  flags.DEFINE_bool(
      "small_image", False,
      "The original's 32-pixel variant: stride 1 in the 2nd and 3rd stages.",
      flag_values=fv)
  flags.DEFINE_float("width_coefficient", None, "Overrides the table's width.",
                     flag_values=fv)
  flags.DEFINE_float("depth_coefficient", None, "Overrides the table's depth.",
                     flag_values=fv)
  flags.DEFINE_bool(
      "sync_batch_norm", False, "Cross-replica batch norm (for small per-replica batches).",
      flag_values=fv)
  flags.DEFINE_enum(
      "dtype_policy", None, ["float32", "mixed_bfloat16", "mixed_float16"],
      "Keras dtype policy; unset: mixed_bfloat16 with --use_bfloat16, else float32.",
      flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.ModelConfig:
  """Reads the model flags; `num_label_classes` 0 means 'from the labeled data'."""
  policy = fv.dtype_policy or ("mixed_bfloat16" if fv.use_bfloat16 else "float32")
  return config_lib.ModelConfig(
      model_name=fv.model_name,
      num_label_classes=fv.num_label_classes or 0,
      input_image_size=fv.input_image_size,
      dropout_rate=fv.dropout_rate,
      stochastic_depth_rate=fv.stochastic_depth_rate,
      small_image=fv.small_image,
      width_coefficient=fv.width_coefficient,
      depth_coefficient=fv.depth_coefficient,
      sync_batch_norm=fv.sync_batch_norm,
      dtype_policy=policy)
