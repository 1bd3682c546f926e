"""Exports of a trained classifier for where users deploy it (docs/usage.md "Serving").

* `export_saved_model`: a SavedModel for TensorFlow Serving and every SavedModel host
  (saved_model.py: image-bytes and uint8 signatures, a `valid` flag per row);
* `deploy.export_keras`: a `.keras` file of the deployable classifier (deploy.py);
* `tflite.export_tflite`: LiteRT files, float32 and int8 (tflite.py);
* `export`: `--export_format`'s dispatch, each export run on real images by the program
  that deploys it before it is published (formats.py, check.py).

Versions are numbered `<export_dir>/<n>/`, written atomically; an interrupted export's
leftovers are removed by the next (versions.py).
"""
from noisy_student.export.formats import DEFAULT_DIRS
from noisy_student.export.formats import export
from noisy_student.export.formats import needs_labeled_images
from noisy_student.export.saved_model import SIGNATURE_BYTES
from noisy_student.export.saved_model import SIGNATURE_IMAGES
from noisy_student.export.saved_model import export_saved_model
from noisy_student.export.versions import next_version
from noisy_student.export.versions import remove_leftovers

__all__ = ["DEFAULT_DIRS", "SIGNATURE_BYTES", "SIGNATURE_IMAGES", "export",
           "export_saved_model", "needs_labeled_images", "next_version",
           "remove_leftovers"]
