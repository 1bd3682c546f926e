#!/usr/bin/env bash
# The device check: one command, on whatever accelerators TensorFlow sees, with what is
# installed (it installs and downloads nothing; under 8 minutes). Runs the suite's
# accelerator tests, then measures side by side (our B0 train step vs Keras fit, predict
# end to end vs bare model.predict, MirroredStrategy over all GPUs vs one), prints
# images/s and ratios, and writes a JSON report. A CPU-only machine is told so and the
# check exits 0 after the CPU part. See benchmarks/device_check.py.
#
#   benchmarks/device_check.sh [report.json]      (default: device_check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import tensorflow, keras" 2>/dev/null || {
  echo "device_check: TensorFlow and Keras must be installed (pip install -e \".[test]\")" >&2
  exit 2
}
exec python benchmarks/device_check.py --report "${1:-device_check.json}"
