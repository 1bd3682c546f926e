"""Noisy Student Training in TensorFlow 2 / Keras 3.

Install for use:          pip install .
Install for development:  pip install -e ".[test]"
"""
import setuptools

BEAM = ["apache-beam[gcp]>=2.77,<2.78"]

setuptools.setup(
    name="noisy-student",
    version="0.1.0",
    description=(
        "Noisy Student Training (Xie et al., CVPR 2020) for semi-supervised "
        "image classification with EfficientNet, in TensorFlow 2 / Keras 3."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=[
        "efficientnet", "efficientnet.*",
        "noisy_student", "noisy_student.*",
        "tfrecords", "tfrecords.*",
        "flags", "flags.*",
    ]),
    package_data={"flags": ["presets/*.flags"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10",
        "tensorflow-datasets>=4.9",
        "absl-py>=2.0",
        "numpy>=1.26",
        # The embedded default data set (digits) ships inside scikit-learn;
        # plots of results use matplotlib.
        "scikit-learn>=1.3",
        "matplotlib>=3.7",
        "tensorboard>=2.16",
        # Registers efficientnet's Keras layers when Keras loads (a TensorFlow dependency).
        "wrapt>=1.14",
        # CRC32C of pseudo-label shards (their manifests), the checksum Cloud Storage
        # keeps for every object; a small C wheel (7 GB/s here) with a Python fallback.
        "google-crc32c>=1.5",
    ],
    extras_require={
        # Predict and filter as one Apache Beam job (--runner; noisy_student/beam). Tested
        # with 2.77, beside TensorFlow 2.21; it brings protobuf 6.x (the core install
        # gets 7.x), which TensorFlow 2.21 accepts.
        "beam": BEAM,
        # --export_format=tflite runs the written model with LiteRT before publishing it;
        # the conversion itself is TensorFlow's. Optional: only that format needs it.
        "tflite": ["ai-edge-litert>=2.3"],
        # The tests run every engine (Beam, LiteRT) and build TF Serving's PredictRequest /
        # PredictResponse protos.
        "test": ["pytest>=8", "pillow>=10", "ai-edge-litert>=2.3",
                 "tensorflow-serving-api>=2.21,<2.22"] + BEAM,
    },
    entry_points={
        "console_scripts": [
            "noisy-student=noisy_student.main:run",
            "efficientnet-table=efficientnet.table:run",
            "efficientnet-import=noisy_student.import_main:run",
        ],
    },
)
