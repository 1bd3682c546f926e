"""`efficientnet-import`: an original TF1 EfficientNet checkpoint -> a model directory.

  efficientnet-import noisy_student_efficientnet-b0 --output=models/ns-b0
  efficientnet-import noisy_student_efficientnet-l2_475 --model_name=efficientnet-l2 \\
      --image_size=475 --output=models/ns-l2-475
  noisy-student --mode=eval --model_dir=models/ns-b0 --eval_data_dir=tfds:imagenet2012 ...

This module only parses the command line and calls noisy_student/import_original.py;
docs/efficientnet.md lists the published checkpoints and the command for each.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from absl import logging

from noisy_student import faults

PROGRAM = "efficientnet-import"


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROGRAM, description="Import a checkpoint of the original TF1 EfficientNet code "
      "(tensorflow/tpu, google-research/noisystudent; e.g. the published Noisy Student "
      "B0..B7 and L2) as a model directory noisy-student reads (eval, export, predict, "
      "--teacher_model_path, --init_model_path).")
  parser.add_argument("checkpoint", help="checkpoint prefix (.../model.ckpt), one of its "
                      "files, or the unpacked folder holding it (local or gs://)")
  parser.add_argument("--output", required=True, help="model directory to write")
  parser.add_argument("--model_name", default=None, help="efficientnet-b0..b8 or "
                      "efficientnet-l2 ('b0' for short); default: the checkpoint's own")
  parser.add_argument("--image_size", type=int, default=None, help="resolution the model "
                      "runs at; default its native one (L2: 800; the L2-475 checkpoint: 475)")
  parser.add_argument("--no_ema", action="store_true", help="read the raw weights instead "
                      "of their ExponentialMovingAverage shadows (the published "
                      "accuracies are the shadows')")
  parser.add_argument("--class_names_file", default=None, help="class names by label: "
                      "tensorflow/tpu's labels_map.json, a JSON list or one per line; "
                      "default for 1000 classes: the ImageNet synsets (tensorflow-datasets' "
                      "order, the original's labels)")
  parser.add_argument("--scope", default=None, help="the network's scope inside the "
                      "checkpoint, when it holds several (e.g. efficientnet-b7 beside "
                      "teacher_model/...)")
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default sys.argv[1:]) and imports; returns the exit code."""
  args = _parser().parse_args(argv)
  if args.image_size is not None and args.image_size < 1:
    return _fail(f"--image_size must be >= 1, got {args.image_size}")
  logging.set_verbosity(logging.INFO)
  try:
    _probe_storage(args)
    # Imported after parsing: --help and bad flags answer before TensorFlow loads.
    from noisy_student import import_original  # pylint: disable=import-outside-toplevel
    names = (import_original.read_class_names(args.class_names_file)
             if args.class_names_file else None)
    model = import_original.import_original(
        args.checkpoint, args.output, model_name=args.model_name,
        image_size=args.image_size, ema=not args.no_ema, class_names=names,
        scope=args.scope)
  except Exception as e:  # pylint: disable=broad-except
    # A fault (unreachable storage, a full disk) or bad input: one line and its exit code,
    # as noisy-student's (docs/usage.md, "Exit codes"); anything else is a bug.
    fault = faults.from_exception(e)
    if fault is None and not isinstance(e, (ValueError, FileNotFoundError)):
      raise
    return _fail(_one_line(fault or e), fault.exit_code if fault else faults.BAD_INPUT)
  print(f"{model.path}: {model.model_name} at {model.image_size} px. Use it with\n"
        f"  noisy-student --mode=eval --model_dir={model.path} --eval_data_dir=...\n"
        f"  noisy-student --mode=predict --predict_ckpt_path={model.path} "
        "--unlabel_data_dir=... --output_dir=...\n"
        f"  noisy-student --mode=train --init_model_path={model.path} --label_data_dir=...")
  return 0


def _probe_storage(args: argparse.Namespace) -> None:
  """Unreachable Cloud Storage in seconds (TensorFlow's gs:// calls retry for minutes)."""
  named = [("checkpoint", args.checkpoint), ("--output", args.output),
           ("--class_names_file", args.class_names_file)]
  remote = [(flag, path) for flag, path in named if path and path.startswith("gs://")]
  reason = faults.gcs_unreachable_reason() if remote else None
  if reason:
    flag, path = remote[0]
    raise faults.unreachable(path if flag == "checkpoint" else f"{flag}={path}", reason)


def _one_line(e: BaseException) -> str:
  return str(e).splitlines()[0] if str(e) else type(e).__name__


def _fail(message: str, code: int = faults.BAD_INPUT) -> int:
  print(f"{PROGRAM}: error: {message}", file=sys.stderr)
  return code


def run() -> None:
  """Console-script entry point (setup.py: efficientnet-import)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
