"""Distribution flags (-> `DistributeConfig`)."""
from absl import flags

from noisy_student import config as config_lib


def define(fv: flags.FlagValues) -> None:
  """Defines the distribution flags on `fv`."""
  flags.DEFINE_enum("strategy", "auto",
                    ["auto", "default", "one_device", "mirrored", "multi_worker", "tpu"],
                    "tf.distribute strategy; auto: tpu with --use_tpu, multi_worker with "
                    "TF_CONFIG, mirrored with several GPUs, else default.", flag_values=fv)
  flags.DEFINE_bool("use_tpu", False, "Run on a Cloud TPU (needs gs:// paths).",
                    flag_values=fv)
  flags.DEFINE_string("tpu", None, "TPU name or grpc:// address ('local' on a TPU VM).",
                      flag_values=fv)
  flags.DEFINE_string("tpu_zone", None, "GCE zone of the TPU.", flag_values=fv)
  flags.DEFINE_string("gcp_project", None, "GCP project of the TPU.", flag_values=fv)
  flags.DEFINE_bool("use_bfloat16", False, "Mixed bfloat16 precision (TPU).",
                    flag_values=fv)
  flags.DEFINE_enum(
      "jit_compile", "auto", list(config_lib.JIT_COMPILE_SETTINGS),
      "XLA-compile every step (train, predict, eval, robustness). auto: on when every "
      "replica is a GPU or TPU, off on CPUs, where XLA made an EfficientNet-B0 train "
      "step at 32 px 7x to 18x slower (6.5 vs 48.3 and 2.3 vs 40.9 images/s in two "
      "side-by-side runs on 2 shared cores, 2026-12-01: benchmarks/bench_train.py "
      "--sizes 32 --compare xla). true with several CPU replicas is refused (TensorFlow "
      "compiles mirrored updates only on GPUs).", flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.DistributeConfig:
  """Reads the distribution flags."""
  return config_lib.DistributeConfig(
      strategy=fv.strategy, use_tpu=fv.use_tpu, tpu=fv.tpu, tpu_zone=fv.tpu_zone,
      gcp_project=fv.gcp_project, use_bfloat16=fv.use_bfloat16,
      jit_compile=fv.jit_compile)
