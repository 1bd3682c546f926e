"""Robustness of a classifier in the style of ImageNet-C, ImageNet-P and FGSM.

  result = evaluate_robustness(model, eval_dataset, cfg.robustness, image_size=32,
                               baseline=teacher_result)
  write_report(result, "runs/default/eval", name="student-1")

`corruptions.CORRUPTIONS` and `perturbations.PERTURBATIONS` are the tables of what is
applied; `metrics` holds the formulas (CE, mCE, FR, mFR); docs/robustness.md describes all
of it and how it differs from the published benchmarks.
"""
from noisy_student.robustness.corruptions import CORRUPTIONS, corrupt
from noisy_student.robustness.metrics import normalise
from noisy_student.robustness.perturbations import PERTURBATIONS, flip_probability, sequences
from noisy_student.robustness.report import (SUMMARY_KEYS, read_report, summary_fields,
                                             write_report)
from noisy_student.robustness.runner import evaluate_robustness, settings_of, summary

__all__ = ["CORRUPTIONS", "PERTURBATIONS", "SUMMARY_KEYS", "corrupt", "evaluate_robustness",
           "flip_probability", "normalise", "read_report", "sequences", "settings_of",
           "summary", "summary_fields", "write_report"]
