"""Shared test set-up: quiet TensorFlow, two logical CPU devices, deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's LLVM backend at its lowest optimisation level: the same HLO (what decides whether
# a step compiles for a TPU) and float semantics, half the compile time on this CPU (a
# train step of efficientnet-test: 22 -> 10 CPU seconds); only the speed of the compiled
# code changes, which no test measures.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import tensorflow as tf  # noqa: E402

# Two logical CPUs let MirroredStrategy tests run on this machine; it must be set before
# any op runs, so it lives here, once, for the whole session.
_cpus = tf.config.list_physical_devices("CPU")
if _cpus:
  try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
  except RuntimeError:
    pass  # Already initialised by an earlier import; the tests that need 2 devices check.

# The float32 tolerances assume float32 arithmetic: Ampere and newer GPUs would run
# float32 matmuls and convolutions in TensorFloat-32 (10-bit mantissa) by default.
tf.config.experimental.enable_tensor_float_32_execution(False)
