"""EfficientNet-B0..B8 / L2 in Keras 3, faithful to the original TPU implementation.

    import efficientnet
    model = efficientnet.build_model("efficientnet-b0", num_classes=10)
    logits = model(images_0_to_255, training=False)  # float32 [batch, 10]

    # The original TF1 checkpoints (the published Noisy Student B0..B7, L2):
    model = efficientnet.build_model("efficientnet-b0")
    efficientnet.load_original_checkpoint(model, "noisy_student_efficientnet-b0")

See docs/efficientnet.md. The model table (`MODEL_NAMES`, `get_model_params`,
`native_resolution`) is plain Python and loads without TensorFlow, so a command line
can check a model name in milliseconds; the Keras parts load on first use. The custom
layers (`StochasticDepth`, `LinearResize`) are registered with Keras as soon as both this
package and Keras are imported, in either order, so `import efficientnet` is all
`keras.models.load_model` needs to open our `.keras` files.
"""
import importlib

import wrapt

from efficientnet.params import MODEL_NAMES
from efficientnet.params import ModelParams
from efficientnet.params import get_model_params
from efficientnet.params import native_resolution
from efficientnet.table import model_cost

# Name -> module of the parts that import Keras (PEP 562: loaded on first access).
_KERAS_PARTS = {
    "LinearResize": "efficientnet.layers",
    "StochasticDepth": "efficientnet.layers",
    "build_model": "efficientnet.model",
    "from_keras_applications": "efficientnet.convert",
    "load_keras_applications_weights": "efficientnet.convert",
    "load_original_checkpoint": "efficientnet.original_checkpoint",
}

__all__ = ["MODEL_NAMES", "ModelParams", "get_model_params", "model_cost",
           "native_resolution", *_KERAS_PARTS]


def _register_layers(_keras) -> None:
  importlib.import_module("efficientnet.layers")  # Its decorators register the layers.


# Runs now if Keras is loaded, else right after its import: registering needs Keras, and
# importing Keras here would cost every command-line check seconds of TensorFlow start-up.
wrapt.register_post_import_hook(_register_layers, "keras")


def __getattr__(name: str):
  if name in _KERAS_PARTS:
    return getattr(importlib.import_module(_KERAS_PARTS[name]), name)
  raise AttributeError(f"module 'efficientnet' has no attribute {name!r}")


def __dir__():
  return sorted(__all__)
