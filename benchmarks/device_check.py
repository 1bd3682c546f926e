"""The device check behind benchmarks/device_check.sh: tests, then speed, one JSON report.

    python benchmarks/device_check.py [--report device_check.json]

On whatever devices TensorFlow sees, with what is installed (nothing is installed or
downloaded):
  1. the suite's accelerator tests (`pytest -m accelerator`: XLA parity of every step,
     mixed precision, the TPU input contract, strategies); on a CPU-only machine the
     quick ones only, which is the CPU part;
  2. side by side, under the device's precision and XLA setting (GPU: mixed_float16,
     XLA on; CPU: float32, XLA off, as --jit_compile=auto decides):
     - our EfficientNet-B0 student train step at 224 px (noise, EMA, labeled + 3x
       pseudo-labeled images) against keras.applications.EfficientNetB0 with plain
       `fit` (benchmarks/bench_train.py);
     - predict end to end against bare `model.predict` (benchmarks/bench_predict.py);
     - with 2 or more GPUs: our train step under MirroredStrategy over all GPUs
       against one GPU (scaling efficiency = ratio / GPUs).
Prints images/s and ratios and writes them, with the devices and the test outcome, to
the report. Exit code: 0 when the tests pass (a CPU-only machine is said so and ends
after the CPU part), 1 when a test failed.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

# The tests run in a child process on the same GPUs: neither may take all their memory.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Sizes per device kind: (images per train step and replica, steps per execution,
# predict images, predict batch). A 2-core CPU trains B0 at 224 px at ~6 images/s, so
# the CPU part stays small to end within the check's 8 minutes.
SIZES = {"GPU": (64, 10, 4096, 256), "CPU": (8, 2, 256, 32)}


def devices() -> dict:
  return {kind: [d.name for d in tf.config.list_physical_devices(kind)]
          for kind in ("CPU", "GPU", "TPU")}


def run_tests(quick: bool) -> dict:
  """The accelerator tests in a child process; {command, exit_code, seconds}."""
  marker = "accelerator and not slow" if quick else "accelerator"
  command = [sys.executable, "-m", "pytest", "-q", "-m", marker, "tests"]
  print(f"+ {' '.join(command)}", flush=True)
  start = time.time()
  code = subprocess.call(command, cwd=ROOT)
  return {"command": " ".join(command[1:]), "exit_code": code,
          "seconds": round(time.time() - start, 1)}


def measure_train(kind: str, dtype_policy: str) -> dict:
  import bench_train  # pylint: disable=import-outside-toplevel
  batch, loop, _, _ = SIZES[kind]
  args = bench_train.parser().parse_args([
      "--batch", str(batch), "--loop", str(loop), "--unlabel_ratio", "3",
      "--dtype_policy", dtype_policy, "--jit_compile", "auto"])
  return bench_train.compare(224, args, "efficientnet-b0", against="keras")


def measure_predict(kind: str) -> dict:
  import bench_predict  # pylint: disable=import-outside-toplevel
  _, _, num_images, batch = SIZES[kind]
  return bench_predict.measure("efficientnet-b0", 224, num_images, batch, 1000, repeats=2)


def measure_mirrored(dtype_policy: str, num_gpus: int) -> dict:
  """Our train step on all GPUs (MirroredStrategy) against one GPU, same batch per GPU."""
  import bench_train  # pylint: disable=import-outside-toplevel
  batch, loop, _, _ = SIZES["GPU"]
  kwargs = dict(model="efficientnet-b0", unlabel_ratio=3.0, dtype_policy=dtype_policy,
                jit_compile="auto")
  one = bench_train.ours(224, batch, loop, strategy="one_device", **kwargs)
  mirrored = bench_train.ours(224, batch, loop, strategy="mirrored", **kwargs)
  print(f"MirroredStrategy over {num_gpus} GPUs {mirrored:8.1f} images/s, one GPU "
        f"{one:8.1f} images/s, ratio {mirrored / one:.2f}x (efficiency "
        f"{mirrored / one / num_gpus:.0%})", flush=True)
  return {"gpus": num_gpus, "mirrored": mirrored, "one_gpu": one,
          "ratio": mirrored / one, "efficiency": mirrored / one / num_gpus}


def summary(report: dict) -> str:
  """The ratios on one line."""
  train, predict, mirrored = report["train"], report["predict"], report["mirrored"]
  parts = [f"train step ours / keras fit {train['ratio']:.2f}x ({train['ours']:.1f} vs "
           f"{train['other']:.1f} images/s)",
           f"predict end to end / bare {predict['ratio']:.2f}x ({predict['end_to_end']:.1f}"
           f" vs {predict['bare']:.1f} images/s)"]
  if "ratio" in mirrored:
    parts.append(f"MirroredStrategy / one GPU {mirrored['ratio']:.2f}x")
  else:
    parts.append(f"MirroredStrategy skipped ({mirrored['skipped']})")
  return "; ".join(parts)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--report", default="device_check.json")
  args = parser.parse_args()
  start = time.time()
  seen = devices()
  kind = "GPU" if seen["GPU"] else "CPU"
  report = {"tensorflow": tf.__version__, "python": platform.python_version(),
            "devices": seen, "cpu_only": kind == "CPU"}
  if seen["TPU"]:
    print("A TPU is attached: the tests and CPU measurements run on the host; TPU "
          "figures come from a training run (--use_tpu), not this check.")
  if kind == "CPU":
    print("No GPU or TPU visible to TensorFlow: this is a CPU-only machine. Running the "
          "CPU part (quick accelerator tests, CPU measurements) and stopping there.",
          flush=True)
  report["tests"] = run_tests(quick=kind == "CPU")
  dtype_policy = "mixed_float16" if kind == "GPU" else "float32"
  from noisy_student.train import distribute  # pylint: disable=import-outside-toplevel
  report["setting"] = {"dtype_policy": dtype_policy, "jit_compile": distribute.
                       resolve_jit_compile("auto", tf.distribute.get_strategy())}
  report["train"] = measure_train(kind, dtype_policy)
  report["predict"] = measure_predict(kind)
  if len(seen["GPU"]) >= 2:
    report["mirrored"] = measure_mirrored(dtype_policy, len(seen["GPU"]))
  else:
    report["mirrored"] = {"skipped": f"{len(seen['GPU'])} GPU(s); needs 2 or more"}
  report["seconds"] = round(time.time() - start, 1)
  with open(args.report, "w") as f:
    json.dump(report, f, indent=1)
  print(summary(report))
  print(f"Report: {args.report} ({report['seconds']:.0f} s)."
        + (" CPU-only machine: the CPU part is done." if kind == "CPU" else ""))
  if report["tests"]["exit_code"] != 0:  # pytest's 5 (no test ran) is a failure too.
    print(f"The accelerator tests failed (exit code {report['tests']['exit_code']}).")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
