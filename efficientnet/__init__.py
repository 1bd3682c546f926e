"""EfficientNet-B0..B8 / L2 in Keras 3, faithful to the original TPU implementation.

    import efficientnet
    model = efficientnet.build_model("efficientnet-b0", num_classes=10)
    logits = model(images_0_to_255, training=False)  # float32 [batch, 10]

    # The original TF1 checkpoints (the published Noisy Student B0..B7, L2):
    model = efficientnet.build_model("efficientnet-b0")
    efficientnet.load_original_checkpoint(model, "noisy_student_efficientnet-b0")

See docs/efficientnet.md. The model table (`MODEL_NAMES`, `get_model_params`,
`native_resolution`) is plain Python and loads without TensorFlow, so a command line
can check a model name in milliseconds; the Keras parts load on first use. Any of them
(e.g. `efficientnet.build_model`, or `import efficientnet.layers`) registers
`StochasticDepth` with Keras, which `keras.models.load_model` needs for our `.keras` files.
"""
import importlib

from efficientnet.params import MODEL_NAMES
from efficientnet.params import ModelParams
from efficientnet.params import get_model_params
from efficientnet.params import native_resolution
from efficientnet.table import model_cost

# Name -> module of the parts that import Keras (PEP 562: loaded on first access).
_KERAS_PARTS = {
    "StochasticDepth": "efficientnet.layers",
    "build_model": "efficientnet.model",
    "from_keras_applications": "efficientnet.convert",
    "load_keras_applications_weights": "efficientnet.convert",
    "load_original_checkpoint": "efficientnet.original_checkpoint",
}

__all__ = ["MODEL_NAMES", "ModelParams", "get_model_params", "model_cost",
           "native_resolution", *_KERAS_PARTS]


def __getattr__(name: str):
  if name in _KERAS_PARTS:
    return getattr(importlib.import_module(_KERAS_PARTS[name]), name)
  raise AttributeError(f"module 'efficientnet' has no attribute {name!r}")


def __dir__():
  return sorted(__all__)
