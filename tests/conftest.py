"""Shared test set-up: quiet TensorFlow, two logical CPU devices, deterministic seeds."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
