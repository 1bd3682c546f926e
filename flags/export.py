"""Export flags (-> `ExportConfig`)."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the export flags on `fv`."""
  flags.DEFINE_string("export_dir", None,
                      "SavedModel destination; unset: <model_dir>/export.", flag_values=fv)
  flags.DEFINE_integer("top_k", 5, "Class names returned per image by the export.",
                       flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.ExportConfig:
  """Reads the export flags."""
  return config_lib.ExportConfig(export_dir=fv.export_dir, top_k=fv.top_k)
