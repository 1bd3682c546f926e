"""`--iterations=auto`: iterate while a student beats its teacher on held-out images.

Before the teacher trains, a stratified share of the labeled images is held out
(`--validation_fraction`, seeded by `--seed`; noisy_student/data/holdout.py): no model
trains on them, the teacher check does not see them either (it measures the fit to the
images the teacher trained on). After each student, the student and its teacher are
measured on those same images. Per image the difference d = (student right) - (teacher
right) is -1, 0 or 1; the gain is its mean and its standard error sd(d) / sqrt(n) (the
paired difference: images both get right, or both miss, add no noise). The next
iteration starts only when gain > standard error, i.e. the student fixed clearly more of
these images than it broke (with none broken, at least two fixed). Otherwise the loop
stops and that student's teacher stays the final model (fine-tuned, exported);
`--student_model_names` is the cap.

Everything the rule reads is a completion marker (`validation-split`, `validate-<model>`,
and `iterations`, how it ended), so a resumed run holds out the same images (checked by
their digest) and makes the same decision.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging

from noisy_student import config as config_lib
from noisy_student import evaluate as evaluate_lib
from noisy_student import phases
from noisy_student.context import Context
from noisy_student.data import datasets
from noisy_student.results import HeldOut, Iterations, TrainedModel, Validation


@dataclasses.dataclass(frozen=True)
class Comparison:
  """A student against its teacher on the same held-out images."""
  gain: float  # Student top-1 minus teacher top-1 (a fraction).
  standard_error: float  # Of the mean paired per-image difference.
  num_images: int
  fixed: int  # Images the student gets right and the teacher wrong.
  broken: int  # The other way round.

  @property
  def pays(self) -> bool:
    """Whether the student beat its teacher by more than the standard error."""
    return self.gain > self.standard_error


def compare(teacher_correct: Sequence[bool], student_correct: Sequence[bool]) -> Comparison:
  """Compares per-image correctness (the same images, in the same order)."""
  n = len(teacher_correct)
  if n != len(student_correct) or n == 0:
    raise ValueError(f"held-out results of {n} and {len(student_correct)} images: the two "
                     "models must be measured on the same non-empty split")
  d = [int(bool(s)) - int(bool(t)) for t, s in zip(teacher_correct, student_correct)]
  mean = sum(d) / n
  # One image has no spread to measure: never enough evidence to go on.
  se = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1) / n) if n > 1 else math.inf
  return Comparison(gain=mean, standard_error=se, num_images=n, fixed=d.count(1),
                    broken=d.count(-1))


def describe(student: str, teacher: str, c: Comparison) -> str:
  """One clause: how `student` did against `teacher` on the held-out images."""
  verb = "beat" if c.gain > 0 else ("tied with" if c.gain == 0 else "lost to")
  return (f"{student} {verb} {teacher} on the {c.num_images} held-out labeled images by "
          f"{100 * c.gain:+.2f} points (fixed {c.fixed}, broke {c.broken}; standard error "
          f"{100 * c.standard_error:.2f})")


def stop_reason(student: str, final: str, c: Optional[Comparison], cap: int) -> str:
  """Why the loop stopped, given the last student trained, the final model and the last
  student's comparison with its teacher (None: no student was compared)."""
  if c is not None and not c.pays:
    return (f"stopped after {student}: {describe(student, final, c)}, not more than the "
            f"standard error; {final} is the final model")
  return (f"stopped at the cap of {cap} iteration{'s' if cap != 1 else ''} "
          f"(--student_model_names): every student beat its teacher on the held-out "
          f"images by more than the standard error; {final} is the final model")


def hold_out(ctx: Context) -> HeldOut:
  """The labeled images held out in this run and how many are left to train on."""
  split = ctx.validation_split()
  return HeldOut(num_images=split.held_out.size, num_train_images=split.train.size,
                 per_class={str(c): n for c, n in split.per_class.items()},
                 digest=split.digest)


def validate_model(ctx: Context, model: TrainedModel) -> Validation:
  """`model` (un-noised, EMA weights) on the held-out labeled images: which it gets right."""
  ds = datasets.eval_dataset(ctx.source("validation"), image_size=model.image_size,
                             batch_size=ctx.cfg.eval.eval_batch_size,
                             small_image=model.small_image)
  correct = evaluate_lib.correct_per_image(ctx.load(model), ds)
  return Validation(top1=float(correct.mean()), num_images=int(correct.size),
                    correct="".join("1" if c else "0" for c in correct))


class AutoIterations:
  """The rule in one run: the held-out split (the one the run started with), each model's
  held-out result (a phase each), the comparisons and the final model.

  `phase(name, fingerprint, fn, kind, last=False)` is the pipeline's phase runner.
  """

  def __init__(self, ctx: Context, phase: Callable[..., Any]):
    self.ctx, self.phase = ctx, phase
    held = hold_out(ctx)
    saved = phase("validation-split", {"fraction": ctx.validation_fraction,
                                       "seed": ctx.cfg.data.seed}, lambda: held, HeldOut)
    if saved.digest != held.digest:
      raise ValueError(
          f"--label_data_dir={ctx.cfg.data.label_data_dir}: its held-out split differs "
          "from the one this run started with "
          f"({phases.Markers(ctx.root).path('validation-split')}): the labeled images "
          "changed since; use a new --model_dir")
    counts = list(held.per_class.values()) or [0]
    logging.info("--iterations=auto: %d labeled images held out to decide on iterating "
                 "(%d to %d per class), %d to train on.", held.num_images, min(counts),
                 max(counts), held.num_train_images)
    self.held, self.last, self.comparison = held, None, None
    self.final, self.final_name, self.student_name, self.trained = None, "", "", 0

  def _validated(self, model: TrainedModel, name: str) -> Validation:
    return self.phase(f"validate-{name}", {"model": model, "split": self.held.digest},
                      lambda: validate_model(self.ctx, model), Validation, last=True)

  def start(self, teacher: TrainedModel, row: Dict[str, Any]) -> None:
    """The teacher's held-out result, into its row."""
    self.last = self._validated(teacher, "teacher")
    self.final, self.final_name = teacher, row["name"]
    row["validation_top1"] = self.last.top1

  def judge(self, i: int, student: TrainedModel, row: Dict[str, Any]) -> bool:
    """Student i against its teacher on the held-out images, recorded in its row;
    returns whether to start the next iteration."""
    result = self._validated(student, f"student-{i}")
    c = compare([x == "1" for x in self.last.correct], [x == "1" for x in result.correct])
    row.update(validation_top1=result.top1, validation_gain=c.gain,
               validation_se=c.standard_error, kept=c.pays)
    logging.info("--iterations=auto: %s.", describe(row["name"], self.final_name, c))
    self.comparison, self.student_name, self.trained = c, row["name"], i
    if c.pays:
      self.final, self.final_name, self.last = student, row["name"], result
    return c.pays

  def finish(self) -> Iterations:
    """The final model and why the loop stopped, as the `iterations` marker (which
    `--mode=eval` / `export` of this model_dir read to find the same model)."""
    reason = stop_reason(self.student_name, self.final_name, self.comparison,
                         len(self.ctx.cfg.student_model_names))
    outcome = Iterations(final=self.final.to_json(), final_name=self.final_name,
                         reason=reason, validation_images=self.held.num_images,
                         students_trained=self.trained)
    logging.info("--iterations=auto: %s.", reason)
    return self.phase("iterations", {"final": self.final, "reason": reason},
                      lambda: outcome, Iterations, last=True)


def summary(cfg: config_lib.Config, rows: List[Dict[str, Any]],
            auto: Optional[Iterations]) -> Dict[str, Any]:
  """results.json's account of the iterations: the rule, how many ran and why."""
  if auto:
    return {"rule": "auto", **auto.to_json()}
  trained = sum(1 for r in rows if r["name"].startswith("student "))
  return {"rule": "all", "students_trained": trained,
          "reason": f"--iterations=all: every one of the {len(cfg.student_model_names)} "
                    "--student_model_names"}
