"""The `noisy-student` program (also `python -m noisy_student`): flags -> Config -> phases.

  noisy-student                                   # the embedded digits demo, end to end
  noisy-student --flagfile=flags/presets/smoke.flags
  noisy-student --mode=export --model_dir=runs/default
  noisy-student --mode=predict --runner=DataflowRunner -- --project=P --region=R ...

This module only wires: it defines the flags (flags/), turns them into one frozen
`noisy_student.config.Config`, checks it (every problem on one line, before TensorFlow
loads), writes it into --model_dir, and hands it to `noisy_student.modes.run`.
"""
import dataclasses
import shlex
import sys
from typing import Sequence

from absl import app
from absl import flags as absl_flags
from absl import logging

import flags as ns_flags
from noisy_student import checks

FLAGS = absl_flags.FLAGS
ns_flags.define_all(FLAGS)

PROGRAM = "noisy-student"


def _fail(lines: Sequence[str]) -> None:
  for line in lines:
    print(f"{PROGRAM}: error: {line}", file=sys.stderr)
  sys.exit(2)


def _with_beam_args(config, args: Sequence[str]):
  """Arguments after a bare `--` are the Beam runner's own: appended to --beam_options."""
  if not args:
    return config
  if "--" not in sys.argv or list(sys.argv[sys.argv.index("--") + 1:]) != list(args):
    _fail([f"unexpected arguments {' '.join(args)!r} (flags look like --name=value; "
           "Beam pipeline options go after a bare --)"])
  joined = " ".join(filter(None, [config.predict.beam_options, shlex.join(args)]))
  return dataclasses.replace(config, predict=dataclasses.replace(config.predict,
                                                                 beam_options=joined))


def main(argv: Sequence[str]) -> None:
  try:
    config = _with_beam_args(ns_flags.to_config(FLAGS), argv[1:])
  except checks.ConfigError as e:
    _fail([str(e)])
  errors = checks.problems(config)
  if errors:
    _fail(errors)
  # eval / export / predict / filter read a model_dir that training wrote: they keep its
  # config.json and add their own beside it.
  name = ("config.json" if config.mode in ("train", "pipeline", "ablate")
          else f"config-{config.mode}.json")
  logging.info("Configuration written to %s", config.write(config.train.model_dir, name))
  # Imported after the checks so a bad flag fails in a second, not after loading Keras.
  from noisy_student import modes  # pylint: disable=g-import-not-at-top
  try:
    modes.run(config)
  except (ValueError, FileNotFoundError) as e:  # Bad input found by a phase: one line.
    logging.debug("Stopped by:", exc_info=True)
    _fail([str(e).splitlines()[0] if str(e) else type(e).__name__])


def run() -> None:
  """The console-script entry point (setup.py: noisy-student=noisy_student.main:run)."""
  app.run(main)


if __name__ == "__main__":
  run()
