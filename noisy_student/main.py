"""The `noisy-student` program (also `python -m noisy_student`): flags -> Config -> phases.

  noisy-student                                   # the embedded digits demo, end to end
  noisy-student --flagfile=flags/presets/smoke.flags
  noisy-student --mode=export --model_dir=runs/default

This module only wires: it defines the flags (flags/), turns them into one frozen
`noisy_student.config.Config`, checks it (every problem on one line, before TensorFlow
loads), writes it into --model_dir, and hands it to `noisy_student.modes.run`.
"""
import sys
from typing import Sequence

from absl import app
from absl import flags as absl_flags
from absl import logging

import flags as ns_flags
from noisy_student import checks
from noisy_student import faults
from noisy_student import lock

FLAGS = absl_flags.FLAGS
ns_flags.define_all(FLAGS)

PROGRAM = "noisy-student"


def _fail(lines: Sequence[str], code: int = faults.BAD_INPUT) -> None:
  for line in lines:
    print(f"{PROGRAM}: error: {line}", file=sys.stderr)
  sys.exit(code)


def _one_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail([f"unexpected arguments {' '.join(argv[1:])!r} (flags look like --name=value)"])
  try:
    config = ns_flags.to_config(FLAGS)
  except checks.ConfigError as e:
    _fail([str(e)])
  try:
    errors = checks.problems(config)
    if not errors:
      checks.storage(config)
  except faults.Fault as e:  # Unreachable storage: no point in checking further.
    _fail([_one_line(e)], e.exit_code)
  if errors:
    _fail(errors)
  # eval / export / predict / filter read a model_dir that training wrote: they keep its
  # config.json and add their own beside it.
  name = ("config.json" if config.mode in ("train", "pipeline", "ablate")
          else f"config-{config.mode}.json")
  try:
    # One process per model_dir, before anything is written into it (noisy_student/lock.py).
    with lock.hold(config.train.model_dir, enabled=lock.holds_lock(config)):
      logging.info("Configuration written to %s", config.write(config.train.model_dir, name))
      # Imported after the checks so a bad flag fails in a second, not after loading Keras.
      from noisy_student import modes  # pylint: disable=g-import-not-at-top
      modes.run(config)
  except Exception as e:  # pylint: disable=broad-except
    # A fault (divergence, the lock, storage, a full disk) or bad input found by a phase:
    # one line and its exit code (docs/usage.md); anything else is a bug: the traceback.
    fault = faults.from_exception(e)
    if fault is None and not isinstance(e, (ValueError, FileNotFoundError)):
      raise
    logging.debug("Stopped by:", exc_info=True)
    _fail([_one_line(fault or e)], fault.exit_code if fault else faults.BAD_INPUT)


def run() -> None:
  """The console-script entry point (setup.py: noisy-student=noisy_student.main:run)."""
  app.run(main)


if __name__ == "__main__":
  run()
