"""Which files of a directory of TFRecords belong to a split: the original's rule.

The original reads a data directory by prefix (google-research/noisystudent
data_input.py:386-402): `<dir>/train*` for training, plus `<dir>/extra*` for the
unlabeled data (data_input.py:391-399, SVHN's `extra` split), and `<dir>/validation*`
for evaluation (data_input.py:394; its eval mode also reads named subsets, `dev` and
`test`, main.py:789). ImageNet's standard layout keeps `train-*` and `validation-*` side
by side, so taking every file of the directory would train on the validation set.

A directory therefore means the files of one split: `train` (labeled training data),
`unlabeled` (train* and extra*), `eval` (validation*, else test*). A directory whose
files match none is refused; a file pattern picks any files explicitly.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from absl import logging
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Files a directory of TFRecords may hold besides the records themselves.
NON_RECORD_EXTENSIONS = IMAGE_EXTENSIONS + (".json", ".txt", ".md", ".tmp", ".csv")
# Per split, groups of file-name prefixes: the first group with any file is taken whole.
SPLITS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    "train": (("train",),),
    "unlabeled": (("train", "extra"),),
    "eval": (("validation",), ("test",)),
}
ALL_PREFIXES = ("train", "extra", "validation", "test", "dev")


def _is_record_name(name: str) -> bool:
  """A data file's name: not hidden or a sidecar (`_*`), not a known non-record type,
  not a temporary file."""
  return (not name.startswith((".", "_")) and ".tmp-" not in name
          and not name.lower().endswith(NON_RECORD_EXTENSIONS))


def names_a_split(file_name: str) -> bool:
  """Whether a file's name makes it a record file of some known split."""
  return _is_record_name(file_name) and file_name.startswith(ALL_PREFIXES)


def _join(directory: str, name: str) -> str:
  return directory.rstrip("/") + "/" + name.rstrip("/")


def split_files(directory: str, split: str) -> List[str]:
  """The sorted record files of `split` (a key of SPLITS) in `directory`; logs what it
  took and what it left out. Raises ValueError when no file matches the split."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
  names = sorted(n.rstrip("/") for n in tf.io.gfile.listdir(directory))
  records = [n for n in names if _is_record_name(n)]
  for prefixes in SPLITS[split]:
    taken = [n for n in records if n.startswith(prefixes)
             and not tf.io.gfile.isdir(_join(directory, n))]
    if taken:
      _log_choice(directory, split, prefixes, taken, records)
      return [_join(directory, n) for n in taken]
  wanted = " or ".join("/".join(f"{p}*" for p in group) for group in SPLITS[split])
  hint = (" It is a prepared tensorflow-datasets directory: use tfds:NAME:SPLIT with "
          "--tfds_data_dir." if "dataset_info.json" in names else "")
  raise ValueError(
      f"TFRecord directory {directory} has no {wanted} files for its {split} split (a "
      f"directory is read by split, as the original's data_input.py does); it holds "
      f"{', '.join(names[:5]) or 'nothing'}{', ...' if len(names) > 5 else ''}. Give a "
      f"file pattern (e.g. {directory.rstrip('/')}/NAME-*) to read other files.{hint}")


def _log_choice(directory: str, split: str, prefixes: Tuple[str, ...], taken: List[str],
                records: List[str]) -> None:
  left = {}
  for n in records:
    if n not in taken:
      key = next((p for p in ALL_PREFIXES if n.startswith(p)), "other")
      left[f"{key}*"] = left.get(f"{key}*", 0) + 1
  logging.info("TFRecord directory %s, %s split: %d %s files (%s .. %s)%s", directory,
               split, len(taken), "/".join(f"{p}*" for p in prefixes), taken[0], taken[-1],
               "; left out: " + ", ".join(f"{n} {k}" for k, n in sorted(left.items()))
               if left else "")
