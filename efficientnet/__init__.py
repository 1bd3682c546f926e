"""EfficientNet-B0..B8 / L2 in Keras 3, faithful to the original TPU implementation.

    import efficientnet
    model = efficientnet.build_model("efficientnet-b0", num_classes=10)
    logits = model(images_0_to_255, training=False)  # float32 [batch, 10]

See docs/efficientnet.md. Importing the package registers `StochasticDepth` with Keras,
so `keras.models.load_model` reads our `.keras` files after a plain `import efficientnet`.
"""
from efficientnet.convert import from_keras_applications
from efficientnet.convert import load_keras_applications_weights
from efficientnet.layers import StochasticDepth
from efficientnet.model import build_model
from efficientnet.params import MODEL_NAMES
from efficientnet.params import ModelParams
from efficientnet.params import get_model_params
from efficientnet.params import native_resolution
from efficientnet.table import model_cost

__all__ = [
    "MODEL_NAMES", "ModelParams", "StochasticDepth", "build_model",
    "from_keras_applications", "get_model_params", "load_keras_applications_weights",
    "model_cost", "native_resolution",
]
