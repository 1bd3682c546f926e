"""Replays the faults of issue 18 against the real command line and prints what each ends in.

Each probe runs `python -m noisy_student` as a user would (the smoke preset, or tiny image
folders made here), then prints one markdown row: the probe, the exit code, the one
`noisy-student: error:` line (or the log line that tells what happened), whether a
traceback was printed, and the seconds it took.

  python benchmarks/fault_probes.py --root /tmp/fault_probes

Needs root for the full-disk probe (a 600 KB tmpfs); without it that row says so.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = [f"--flagfile={REPO}/flags/presets/smoke.flags", "--norobustness"]


def _run(argv, wait=True):
  cmd = [sys.executable, "-m", "noisy_student"] + argv
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
  return proc.returncode, proc.stderr, time.time() - start


def _said(stderr, needle=None):
  """The one error line, else the first log line holding `needle`."""
  errors = [l for l in stderr.splitlines() if l.startswith("noisy-student: error:")]
  if errors:
    return errors[0]
  found = [l.split("] ", 1)[-1] for l in stderr.splitlines() if needle and needle in l]
  return found[0] if found else "(no error line)"


def _row(probe, rc, stderr, seconds, needle=None):
  line = _said(stderr, needle).replace("|", "\\|")
  traceback = "yes" if "Traceback (most recent call last)" in stderr else "no"
  print(f"| {probe} | {rc} | `{line[:400]}` | {traceback} | {seconds:.0f} |", flush=True)


def _images(folder, classes, n=6, corrupt=False, seed=0):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  for c in classes:
    os.makedirs(os.path.join(folder, c), exist_ok=True)
    for i in range(n):
      path = os.path.join(folder, c, f"{i}.png")
      if corrupt:
        with open(path, "wb") as f:
          f.write(b"not an image at all")
      else:
        Image.fromarray(rng.integers(0, 255, [32, 32, 3], dtype=np.uint8)).save(path)


def _digest(folder):
  h = hashlib.sha256()
  for dirpath, _, names in sorted(os.walk(folder)):
    for name in sorted(names):
      with open(os.path.join(dirpath, name), "rb") as f:
        h.update(name.encode() + f.read())
  return h.hexdigest()[:12]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default="/tmp/fault_probes")
  root = parser.parse_args().root
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  base = f"{root}/base"
  print("| probe | exit | what it prints | traceback | s |\n|---|---|---|---|---|")

  _row("`--base_learning_rate=1e6`",
       *_run(SMOKE + [f"--model_dir={root}/diverge", "--base_learning_rate=1e6"]))

  first = _run(SMOKE + [f"--model_dir={base}"], wait=False)
  time.sleep(2)
  _row("the same command twice, 2 s apart, one model_dir", *_run(SMOKE + [f"--model_dir={base}"]))
  _, err = first.communicate()
  _row("(the first of the two, to its end)", first.returncode, err, 0, needle="Results")

  shard = sorted(n for n in os.listdir(f"{base}/pseudo_1") if n.startswith("train-")
                 and "manifest" not in n and not n.endswith(".json"))[0]
  path = f"{base}/pseudo_1/{shard}"
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  for name in os.listdir(f"{base}/phases"):  # The later phases run again on it.
    if name.startswith(("student-", "eval-student", "finetune", "eval-finetune", "export")):
      os.remove(f"{base}/phases/{name}")
  _row("a pseudo-label shard cut in half, pipeline run again",
       *_run(SMOKE + [f"--model_dir={base}"]), needle="re-opening predict")

  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    data = bytearray(f.read(40))
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))
  _row("the same shard with 40 bytes flipped, `--mode=train` on it",
       *_run(SMOKE + ["--mode=train", f"--model_dir={root}/train_on_flipped",
                      f"--pseudo_label_dir={base}/pseudo_1", "--unlabel_ratio=1"]))

  _images(f"{root}/labeled", ["a", "b"])
  _images(f"{root}/eval", ["a", "b", "c"], seed=1)
  folders = ["--label_data_dir=" + f"{root}/labeled", "--eval_data_dir=" + f"{root}/eval"]
  _row("an eval folder with a class the labeled folder lacks",
       *_run(SMOKE + folders + [f"--unlabel_data_dir={root}/labeled",
                                f"--model_dir={root}/classes"]))

  _row("`--label_data_dir=gs://...` with no network",
       *_run(SMOKE + ["--label_data_dir=gs://no-such-bucket/labeled",
                      f"--model_dir={root}/gcs"]))

  if os.geteuid() == 0:
    mount = f"{root}/small"
    os.makedirs(mount)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", mount], check=True)
    try:
      _row("disk full while checkpointing (600 KB tmpfs)",
           *_run(SMOKE + [f"--model_dir={mount}/run"]))
    finally:
      subprocess.run(["umount", mount], check=True)
  else:
    print("| disk full while checkpointing | - | not run: mounting a tmpfs needs root | - | - |")

  _images(f"{root}/corrupt", ["x"], n=20, corrupt=True)
  _row("an unlabeled folder whose files are all corrupt",
       *_run(SMOKE + [f"--unlabel_data_dir={root}/corrupt", f"--model_dir={root}/corrupt_run"]))

  copy = f"{root}/copy"
  shutil.copytree(base, copy)
  before = _digest(base)
  for name in os.listdir(f"{copy}/phases"):
    if name.startswith(("balance-", "student-", "eval-student", "finetune", "eval-finetune",
                        "export")):
      os.remove(f"{copy}/phases/{name}")
  rc, err, seconds = _run(SMOKE + [f"--model_dir={copy}"])
  untouched = "original untouched" if _digest(base) == before else "ORIGINAL CHANGED"
  plan = "plan in the copy" if any(n.startswith("plan") or "balance" in n
                                   for n in os.listdir(f"{copy}/pseudo_1")) else "no plan?"
  _row(f"a finished model_dir copied and resumed ({untouched}; {plan})", rc, err, seconds,
       needle="Phase balance-1")


if __name__ == "__main__":
  main()
