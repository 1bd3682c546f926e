"""The ImageNet-C / ImageNet-P summary numbers, from per-condition errors (pure Python).

With E[c][s] the top-1 error under corruption c at severity s, and the same for a
baseline model (ImageNet-C uses AlexNet; here a named model, e.g. the teacher):

  CE_c          = 100 * sum_s E[c][s] / sum_s E_base[c][s]
  mCE           = mean_c CE_c
  relative CE_c = 100 * sum_s (E[c][s] - E_clean) / sum_s (E_base[c][s] - E_base_clean)
  relative mCE  = mean_c relative CE_c
  mean corruption error = mean over c and s of E[c][s] (needs no baseline)

With FP_p the flip probability under perturbation p:  FR_p = 100 * FP_p / FP_base[p],
mFR = mean_p FR_p, mean flip probability = mean_p FP_p. A ratio whose denominator is not
positive (a baseline that never errs or never flips) is None and left out of the mean.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from absl import logging


def ratio(numerator: float, denominator: float) -> Optional[float]:
  """100 * numerator / denominator, or None when the denominator is not positive."""
  return 100.0 * numerator / denominator if denominator > 0 else None


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
  """Mean of the values that are not None; None when none is."""
  known = [v for v in values if v is not None]
  return sum(known) / len(known) if known else None


def _by_severity(entry: dict, severities: Sequence[int]) -> Dict[int, float]:
  return dict(zip(severities, entry["errors"]))


def corruption_scores(result: dict, baseline: Optional[dict]) -> Dict[str, Optional[float]]:
  """Fills CE / relative CE into `result["corruptions"]` and returns the means.

  `result` and `baseline` are `evaluate_robustness` results. A corruption or severity
  the baseline lacks gives CE None (and a warning).
  """
  severities = result["settings"]["severities"]
  everything: List[float] = []
  for name, entry in result["corruptions"].items():
    everything += entry["errors"]
    entry["ce"] = entry["relative_ce"] = None
    if baseline is None:
      continue
    theirs = baseline.get("corruptions", {}).get(name)
    theirs = _by_severity(theirs, baseline["settings"]["severities"]) if theirs else {}
    if any(s not in theirs for s in severities):
      logging.warning("robustness baseline has no %s at severities %s: no CE for it",
                      name, severities)
      continue
    base = [theirs[s] for s in severities]
    entry["ce"] = ratio(sum(entry["errors"]), sum(base))
    entry["relative_ce"] = ratio(
        sum(e - result["clean_error"] for e in entry["errors"]),
        sum(b - baseline["clean_error"] for b in base))
  entries = result["corruptions"].values()
  return {"mce": mean([e["ce"] for e in entries]),
          "relative_mce": mean([e["relative_ce"] for e in entries]),
          "mean_corruption_error": (sum(everything) / len(everything)) if everything else None}


def perturbation_scores(result: dict, baseline: Optional[dict]) -> Dict[str, Optional[float]]:
  """Fills FR into `result["perturbations"]` and returns mFR and the mean flip probability."""
  for name, entry in result["perturbations"].items():
    entry["fr"] = None
    theirs = (baseline or {}).get("perturbations", {}).get(name)
    if baseline is not None and theirs is None:
      logging.warning("robustness baseline has no %s perturbation: no FR for it", name)
    if theirs is not None:
      entry["fr"] = ratio(entry["flip_probability"], theirs["flip_probability"])
  entries = result["perturbations"].values()
  return {"mfr": mean([e["fr"] for e in entries]),
          "mean_flip_probability": mean([e["flip_probability"] for e in entries])}


def _warn_if_incomparable(ours: dict, theirs: dict) -> None:
  for key in ("max_images", "seed", "perturbation_frames", "sampling_version"):
    if ours.get(key) != theirs.get(key):
      logging.warning("robustness baseline was measured with %s=%s, this model with %s: "
                      "its CE / FR compare unlike conditions", key, theirs.get(key),
                      ours.get(key))


def normalise(result: dict, baseline: Optional[dict]) -> dict:
  """(Re)computes every baseline-relative number of `result` against `baseline` (an
  `evaluate_robustness` result; None: unnormalised numbers only). Returns `result`.

  `normalise(r, r)` makes `r` its own baseline: its mCE and mFR are then 100.
  """
  if baseline is not None and baseline is not result:
    _warn_if_incomparable(result["settings"], baseline["settings"])
  result.update(corruption_scores(result, baseline))
  result.update(perturbation_scores(result, baseline))
  result["baseline"] = None if baseline is None else baseline.get("name")
  return result
