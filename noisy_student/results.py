"""What the phases of a run hand each other: frozen dataclasses with a JSON form.

A phase's result is stored in its completion marker (noisy_student/phases.py) as
`to_json()` and read back with `from_json()`, so a resumed run continues from typed values,
not from dicts whose shape each caller rebuilds. Pure Python.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Type, TypeVar

T = TypeVar("T", bound="Result")


class Result:
  """JSON round trip for the result dataclasses below."""

  def to_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls: Type[T], payload: Dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in payload.items() if k in names})


@dataclasses.dataclass(frozen=True)
class TrainedModel(Result):
  """A trained (or fine-tuned) model: where it is and how to feed it.

  `path` is a model_dir (checkpoints, build_config.json), or a `.keras` file or a
  checkpoint prefix (`.../ckpt-N`) inside one; either way `directory` holds the
  build_config.json with its class names.
  """
  path: str
  model_name: str
  image_size: int
  small_image: bool
  global_step: int = 0
  finetuned_from: Optional[str] = None

  @property
  def directory(self) -> str:
    inside = self.path.endswith(".keras") or re.search(r"/ckpt-\d+$", self.path)
    return (self.path.rsplit("/", 1)[0] or "/") if inside else self.path.rstrip("/")


@dataclasses.dataclass(frozen=True)
class PseudoLabels(Result):
  """The predict phase's shards."""
  output_dir: str
  records_written: int = 0
  corrupt_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class BalancedPseudoLabels(Result):
  """The filter phase's plan over a pseudo-label directory (confidence and balance); with
  `relabel_dir`, the plan selects by `output_dir`'s labels and the student learns
  `relabel_dir`'s (another teacher's predictions over the same images)."""
  output_dir: str
  plan_path: str
  report_path: str
  totals: Dict[str, int] = dataclasses.field(default_factory=dict)
  relabel_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Evaluation(Result):
  """Top-1 / top-k of a model on the eval data, and its robustness summary when run
  (noisy_student.robustness.SUMMARY_KEYS: mce, mfr, fgsm_accuracy, the report's path)."""
  top1: float
  top5: float
  top_k: int
  num_images: int
  report: str
  robustness: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> Dict[str, Any]:
    """Flat: the robustness numbers sit beside top-1, as in the results table."""
    payload = dataclasses.asdict(self)
    return {**{k: v for k, v in payload.items() if k != "robustness"}, **self.robustness}

  @classmethod
  def from_json(cls, payload: Dict[str, Any]) -> "Evaluation":
    names = {f.name for f in dataclasses.fields(cls)} - {"robustness"}
    return cls(**{k: v for k, v in payload.items() if k in names},
               robustness={k: v for k, v in payload.items() if k not in names})


@dataclasses.dataclass(frozen=True)
class Exported(Result):
  """An export for serving: its version directory, format and what its check measured
  (noisy_student/export/check.py; per LiteRT variant for tflite; empty: unchecked)."""
  export_path: str
  export_format: str = "saved_model"
  check: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TeacherCheck(Result):
  """Whether the teacher fits its own labeled images before it teaches
  (noisy_student/teacher_check.py): warnings are empty when it does."""
  train_accuracy: float  # Un-noised, on (up to 10,000 of) its labeled images.
  train_images: int
  num_classes: int
  epochs: float  # Passes over the labeled images it trained for.
  rise: Optional[float]  # Noised training accuracy: last 10% of steps minus the 10% before.
  held_out_accuracy: Optional[float] = None  # Top-1 on the eval data, when evaluated.
  warnings: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class HeldOut(Result):
  """The labeled images held out by --iterations=auto (noisy_student/data/holdout.py)."""
  num_images: int
  num_train_images: int  # What the models train on.
  per_class: Dict[str, int] = dataclasses.field(default_factory=dict)
  digest: str = ""  # sha256 of the sorted held-out ids: a resumed run must match it.


@dataclasses.dataclass(frozen=True)
class Validation(Result):
  """A model on the held-out labeled images: which it got right, in the split's order
  ('1' right, '0' wrong), so two models compare image by image (noisy_student/iterate.py)."""
  top1: float
  num_images: int
  correct: str


@dataclasses.dataclass(frozen=True)
class Iterations(Result):
  """How --iterations=auto ended: the final model (the last student that beat its
  teacher, or the teacher) and why the loop stopped."""
  final: Dict[str, Any]  # A TrainedModel's JSON.
  final_name: str  # Its row in the results table ("teacher", "student 2").
  reason: str
  validation_images: int
  students_trained: int

  @property
  def final_model(self) -> TrainedModel:
    return TrainedModel.from_json(self.final)
