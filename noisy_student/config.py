"""Every setting of a run, declared once: frozen dataclasses, one per concern.

Each field is declared with `settings.setting` (default, help, check, and the command-line
name where it differs), and from that one declaration follow the absl flag (`flags/`),
the value library code receives, and its range check. `Config.problems()` adds the
checks that involve several settings; it runs before TensorFlow loads and is shared by
the command line and the Python API (`Config.check()` raises). Names follow the original
noisystudent flags where they mean the same thing, so its users recognise them; only the
entry point (`noisy_student.main`) reads absl flags.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from typing import List, Optional, Tuple

from noisy_student import atomic
from noisy_student import settings
from noisy_student.settings import (at_least, distinct, each, greater, in_range, non_empty,
                                    setting)

MODES = ("train", "predict", "filter", "eval", "export", "pipeline", "ablate")
EXPORT_FORMATS = ("saved_model", "keras", "tflite")
LOOP_MODES = ("pipeline", "ablate")  # Modes that run the whole teacher -> student loop.
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
JIT_COMPILE_SETTINGS = ("auto", "true", "false")  # DistributeConfig.jit_compile.
RANDAUG_VARIANTS = ("original", "scaled")  # noisy_student/data/augment_table.py
# PipelineConfig.iterations: every --student_model_names, or while they pay
# (noisy_student/iterations.py).
ITERATION_RULES = ("all", "auto")
ADAPTIVE_THRESHOLDS = ("none", "mean")  # FilterConfig.adaptive_threshold (balance.py).
# Apache Beam's runners by name (apache_beam.options.pipeline_options.StandardOptions,
# Beam 2.77); PredictConfig.runner also takes a dotted PipelineRunner class path.
BEAM_RUNNERS = ("DirectRunner", "PrismRunner", "DataflowRunner", "FlinkRunner",
                "SparkRunner", "PortableRunner", "FnApiRunner", "BundleBasedDirectRunner",
                "SwitchingDirectRunner", "TestDirectRunner", "TestDataflowRunner")
# The students' unlabeled:labeled batch ratio when --unlabel_ratio is unset in the loop
# modes: the embedded digits demo's value (the paper: 1 to 28, larger models take more;
# the SVHN example: 5).
DEFAULT_STUDENT_UNLABEL_RATIO = 3.0
HARD_LABELS = -1.0  # teacher_softmax_temp value meaning "one-hot argmax pseudo-labels".
# Total stride of EfficientNet's stem + stages; smaller inputs collapse to 1x1 maps long
# before the head, which 'same' padding hides but which cannot learn anything useful.
MIN_IMAGE_SIZE = 32


def _image_size(size: int):
  return (None if size >= MIN_IMAGE_SIZE else f"EfficientNet takes images of at least "
          f"{MIN_IMAGE_SIZE} pixels (its total stride is 32)")


def _runner(name: str):
  if not name or name in BEAM_RUNNERS or "." in name:
    return None
  return f"unknown Beam runner; known: {', '.join(BEAM_RUNNERS)} (or a dotted class path)"


def _temperature(t: float):
  return None if t == HARD_LABELS or t > 0 else "must be > 0, or -1 for hard labels"


_SOURCE_HELP = (
    "A source: digits:labeled|unlabeled|test (embedded), tfds:NAME:SPLIT (from "
    "--tfds_data_dir), a folder of class sub-folders, a folder of images, or TFRecords "
    "(directory or file pattern; local or gs://).")


def normalize_model_name(name: str) -> str:
  """'b0' / 'B0' / 'efficientnet-b0' -> 'efficientnet-b0'; other names pass through."""
  name = name.strip().lower()
  if re.fullmatch(r"b\d|l2|t\d|test", name):
    return "efficientnet-" + name
  return name


def _normalize(obj, name: str) -> None:
  """Normalises the model name(s) in field `name` of a frozen dataclass, in place."""
  value = getattr(obj, name)
  if isinstance(value, str):
    object.__setattr__(obj, name, normalize_model_name(value))
  elif isinstance(value, (tuple, list)):
    object.__setattr__(obj, name, tuple(normalize_model_name(v) for v in value))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which network to build (see `efficientnet.build_model`)."""
  model_name: str = setting(
      "efficientnet-b0", "The teacher's model (and the student's in --mode=train): "
      "efficientnet-b0..b8, efficientnet-l2, the CPU-sized 32-pixel efficientnet-t0..t2, or "
      "efficientnet-test; 'b0' is short for efficientnet-b0.")
  num_label_classes: Optional[int] = setting(
      None, "Number of classes; unset: taken from the labeled data.", check=greater(0))
  input_image_size: Optional[int] = setting(
      None, "Training and eval resolution; unset: the model's native resolution.",
      check=_image_size)
  dropout_rate: Optional[float] = setting(
      None, "Dropout before the classifier; unset: the model table's.",
      check=in_range(0, 1, high_open=True))
  stochastic_depth_rate: float = setting(
      0.2, "Drop rate of the last block (the original's drop_connect_rate); 0 disables.",
      check=in_range(0, 1, high_open=True))
  small_image: bool = setting(
      False, "The original's 32-pixel variant: stride 1 in the 2nd and 3rd stages.")
  width_coefficient: Optional[float] = setting(
      None, "Overrides the model table's width, for the teacher and every student alike "
      "(students that grow take larger --student_model_names instead, e.g. t0 -> t1, t2).",
      check=greater(0))
  depth_coefficient: Optional[float] = setting(
      None, "Overrides the model table's depth, for every model alike (as "
      "--width_coefficient).", check=greater(0))
  sync_batch_norm: bool = setting(
      False, "Cross-replica batch norm (always on with more than one replica).")
  dtype_policy: Optional[str] = setting(
      None, "Keras dtype policy; unset: mixed_bfloat16 with --use_bfloat16 "
      "(mixed_float16 on GPUs), else float32.", choices=DTYPE_POLICIES)

  def __post_init__(self):
    _normalize(self, "model_name")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where images come from and how they are preprocessed."""
  label_data_dir: str = setting("digits:labeled", "Labeled data. " + _SOURCE_HELP)
  unlabel_data_dir: str = setting(
      "digits:unlabeled", "Unlabeled data (labels, if any, are ignored). " + _SOURCE_HELP)
  eval_data_dir: str = setting("digits:test", "Evaluation data. " + _SOURCE_HELP)
  tfds_data_dir: Optional[str] = setting(
      None, "tensorflow-datasets data_dir (prepared beforehand; nothing downloads).")
  label_offset: int = setting(
      0, "Subtracted from stored labels: 1 for ImageNet TFRecords (1-based).",
      check=at_least(0))
  random_flip: bool = setting(
      True, "Random horizontal flip in training (off for digits and letters).")
  augment_name: Optional[str] = setting(
      "v1", "Input noise: 'v1' = RandAugment (the original's), 'none' = off.",
      choices=("v1", None))
  randaug_layer: int = setting(2, "RandAugment ops per image (N).", check=at_least(0))
  randaug_mag: float = setting(27.0, "RandAugment magnitude (M; 10 = max level).",
                               check=at_least(0))
  cutout_op: bool = setting(
      True, "Cutout in RandAugment's op list (16 ops; the original's default). "
      "--nocutout_op: 15 ops.")
  randaug_variant: str = setting(
      "original", "RandAugment arithmetic. original: as the original code ran at every "
      "magnitude (translate 100 px and cutout 40 px at any resolution, S//8 on the "
      "32-pixel path; above M=10 the solarize threshold and posterize shift wrap as "
      "uint8; Contrast's target H*W/256), which the published magnitudes were tuned with. "
      "scaled: constants x S/224, saturating integers, Contrast towards the mean grey "
      "(noisy_student/data/augment_table.py).", choices=RANDAUG_VARIANTS)
  small_image_cutout: bool = setting(
      True, "With --small_image: the original SVHN path's extra cutout after RandAugment.")
  seed: int = setting(
      0, "Seed of the data split (digits), order, augmentation, balancing and the "
      "robustness report's corruptions.")
  shuffle_buffer: int = setting(10_000, "Shuffle buffer (records).", check=at_least(0))
  digits_num_labeled: int = setting(500, "Embedded digits: labeled images.",
                                    check=greater(0))
  digits_num_test: int = setting(400, "Embedded digits: test images.", check=greater(0))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Teacher or student training."""
  model_dir: str = setting(
      "runs/default", "Where checkpoints, summaries, results and the resolved config go "
      "(local or gs://). In --mode=pipeline, each phase gets a sub-folder.")
  train_batch_size: int = setting(128, "Global labeled batch size.", check=greater(0))
  train_epochs: float = setting(
      350.0, "Training length in passes over the labeled images (the original's default "
      "109474 steps are 350 epochs of ImageNet at batch 4096); the steps follow from the "
      "labeled count and --train_batch_size. In --mode=pipeline: the students' (and the "
      "teacher's unless --teacher_train_epochs / --teacher_train_steps).",
      check=greater(0))
  train_steps: Optional[int] = setting(
      None, "Training steps; overrides --train_epochs when set.", check=greater(0))
  train_ratio: float = setting(
      1.0, "The original's: multiplies the training length (epochs or steps) and the "
      "staircase period --lr_decay_epochs; its ImageNet B0-B4 students use 2 (700 "
      "epochs, decay every 4.8). In --mode=pipeline it applies to the students, as the "
      "original's train.sh (the teacher's length is --teacher_train_epochs).",
      check=greater(0))
  unlabel_ratio: Optional[float] = setting(
      None, "Unlabeled batch = ceil(unlabel_ratio x train_batch_size); 0 = supervised. "
      f"Unset: 0 in --mode=train (a teacher), {DEFAULT_STUDENT_UNLABEL_RATIO:g} for the "
      "students of --mode=pipeline.", check=at_least(0))
  teacher_softmax_temp: float = setting(
      1.0, "Soft pseudo-label temperature, applied once in training: targets "
      "softmax(teacher logits / T) (pseudo-labels are stored at T = 1); -1 = hard "
      "(one-hot argmax) labels.", check=_temperature)
  label_smoothing: float = setting(0.1, "On labeled (and hard) targets.",
                                   check=in_range(0, 1, high_open=True))
  weight_decay: float = setting(
      1e-5, "Times sum(w^2)/2 over non-batch-norm weights, as the original.",
      check=at_least(0))
  moving_average_decay: float = setting(
      0.9999, "EMA of weights (eval, predict, export use it); 0 disables.",
      check=in_range(0, 1, high_open=True))
  optimizer: str = setting("rmsprop", "rmsprop is the original's.",
                           choices=("rmsprop", "sgd", "adamw"))
  lr_schedule: str = setting("exponential",
                             "exponential = the original's staircase decay.",
                             choices=("exponential", "cosine"))
  base_learning_rate: float = setting(
      0.016, "Learning rate per 256 images (scaled by batch / 256).", check=greater(0))
  final_base_lr: Optional[float] = setting(
      None, "If set (per 256 images, like --base_learning_rate), the staircase period is "
      "stretched so the rate reaches about this (scaled by batch / 256) at the last "
      "step; replaces --lr_decay_epochs, as in the original.", check=greater(0))
  warmup_epochs: float = setting(5.0, "Linear warm-up.", check=at_least(0))
  lr_decay_epochs: float = setting(2.4, "Staircase period.", check=greater(0))
  lr_decay_factor: float = setting(0.97, "Staircase factor.",
                                   check=in_range(0, 1, high_open=True))
  num_train_images: Optional[int] = setting(
      None, "Images per epoch for the schedule; unset: the labeled count.",
      check=greater(0))
  save_checkpoints_steps: int = setting(1000, "Checkpoint period (steps).",
                                        check=greater(0))
  keep_checkpoint_max: int = setting(5, "Checkpoints kept.", check=greater(0))
  iterations_per_loop: int = setting(100, "Steps per execution (one host round trip).",
                                     check=greater(0))
  log_every_n_steps: int = setting(100, "Progress line period.", check=greater(0))
  divergence_factor: float = setting(
      1000.0, "Training stops as diverged when a step's loss exceeds this times the run's "
      "first-step loss (floored at 1); NaN / Inf losses, gradient norms and weights stop "
      "it always (docs/training.md, Divergence). 0: only those.", check=at_least(0))
  init_model_path: Optional[str] = setting(
      None, "Start every model this run trains from these weights instead of scratch: a "
      "model_dir, checkpoint or .keras file of the same network (e.g. one written by "
      "efficientnet-import), or an original TF1 checkpoint (its EMA weights, as the "
      "original's flag of this name); a classifier of another size starts anew, for "
      "fine-tuning on your classes.")
  teacher_model_name: Optional[str] = setting(
      None, "On-the-fly teacher's model name: optional (its build_config.json names it); "
      "when given it must match.")
  teacher_model_path: Optional[str] = setting(
      None, "On-the-fly teacher (the original's mode): a model_dir, a pipeline's model_dir "
      "or a .keras file; it labels --unlabel_data_dir's images inside each step "
      "(--mode=train, --unlabel_ratio > 0).")
  pseudo_label_dir: Optional[str] = setting(
      None, "Pseudo-labels written by --mode=predict/filter (student training).")

  def __post_init__(self):
    if self.teacher_model_name:
      _normalize(self, "teacher_model_name")


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
  """Which tf.distribute strategy to run under."""
  strategy: str = setting(
      "auto", "tf.distribute strategy; auto: tpu with --use_tpu, multi_worker with "
      "TF_CONFIG, mirrored with several GPUs, else default.", choices=STRATEGIES)
  use_tpu: bool = setting(False, "Run on a Cloud TPU (needs gs:// paths).")
  tpu: Optional[str] = setting(None, "TPU name or grpc:// address ('local' on a TPU VM).")
  tpu_zone: Optional[str] = setting(None, "GCE zone of the TPU.")
  gcp_project: Optional[str] = setting(None, "GCP project of the TPU.")
  use_bfloat16: bool = setting(False, "Mixed bfloat16 precision (TPU).")
  jit_compile: str = setting(
      "auto", "XLA-compile every step (train, predict, eval, robustness). auto: on when "
      "every replica is a GPU or TPU, off on CPUs, where XLA made an EfficientNet-B0 train "
      "step at 32 px 7x to 18x slower (6.5 vs 48.3 and 2.3 vs 40.9 images/s in two "
      "side-by-side runs on 2 shared cores, 2026-12-01: benchmarks/bench_train.py --sizes "
      "32 --compare xla). true with several CPU replicas is refused (TensorFlow compiles "
      "mirrored updates only on GPUs).", choices=JIT_COMPILE_SETTINGS)

  def tf_config_workers(self) -> int:
    """Number of workers the TF_CONFIG environment variable describes (0 when unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
      return 0
    try:
      cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as e:
      raise ValueError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]}") from e
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))

  def multi_worker(self) -> bool:
    """Whether this run trains across machines (explicitly, or "auto" with TF_CONFIG)."""
    return self.strategy == "multi_worker" or (
        self.strategy == "auto" and not (self.use_tpu or self.tpu) and
        self.tf_config_workers() > 1)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """Forward passes without noise: evaluation, robustness and the teacher's labelling."""
  eval_batch_size: int = setting(
      256, "Global batch size of evaluation, robustness and prediction (a multiple of the "
      "replicas; the original's flag, which its predict step used too).", check=greater(0))


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """The un-noised teacher labelling the unlabeled source."""
  predict_ckpt_path: Optional[str] = setting(
      None, "Teacher model_dir for --mode=predict; unset: --model_dir.")
  output_dir: Optional[str] = setting(
      None, "Where pseudo-label shards go; unset: <model_dir>/pseudo.")
  num_shards: int = setting(128, "Output shards per worker.", check=at_least(1))
  worker_index: int = setting(0, "This worker's index among --num_workers.",
                              aliases=("worker_id",), check=at_least(0))
  num_workers: int = setting(1, "Workers splitting the unlabeled data (any count).",
                             aliases=("total_replicas",), check=at_least(1))
  runner: str = setting(
      "", "Apache Beam runner of predict (and of the pipeline's predict phases): "
      "DirectRunner, PrismRunner, DataflowRunner, FlinkRunner, SparkRunner, ...; one Beam "
      "job labels every worker's part into the same shards, manifests and balance plan "
      "as --num_workers in-process workers and the filter step would (needs "
      "pip install \".[beam]\"; docs/usage.md). Empty: in-process.", check=_runner)
  beam_options: str = setting(
      "", "With --runner: Beam pipeline options, e.g. \"--project=P --region=R "
      "--temp_location=gs://B/tmp\" (shell-quoted); on the command line, arguments after "
      "a bare -- are appended.")

  def beam_args(self) -> List[str]:
    """The Beam pipeline options: --runner, then --beam_options split as a shell would."""
    return [f"--runner={self.runner}"] + shlex.split(self.beam_options)

  def problems(self) -> List[str]:
    errors = []
    if not 0 <= self.worker_index < self.num_workers:
      errors.append(f"--worker_index={self.worker_index}: must be in [0, --num_workers="
                    f"{self.num_workers})")
    if self.beam_options and not self.runner:
      errors.append("--beam_options needs --runner (empty --runner predicts in-process)")
    if self.runner and self.worker_index:
      errors.append(f"--worker_index={self.worker_index} with --runner={self.runner}: one "
                    "Beam job labels every worker's part; drop --worker_index")
    try:
      given = shlex.split(self.beam_options)
    except ValueError as e:
      return errors + [f"--beam_options={self.beam_options}: {e}"]
    if any(a == "--runner" or a.startswith("--runner=") for a in given):
      errors.append("--beam_options holds --runner; give the runner with --runner")
    return errors


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Confidence filtering and per-class balancing of pseudo-labels."""
  min_threshold: float = setting(
      0.3, "Drop pseudo-labels whose confidence is below this (paper: 0.3).",
      check=in_range(0, 1))
  adaptive_threshold: str = setting(
      "none", "Raise --min_threshold from the unlabeled pool's own confidences: 'mean' "
      "drops pseudo-labels below the teacher's mean confidence over the pool (FreeMatch's "
      "self-adaptive global threshold, computed once offline), so a pool with out-of-class "
      "images, whose confidences are low, filters harder; 'none': --min_threshold alone.",
      choices=ADAPTIVE_THRESHOLDS)
  num_image: int = setting(
      0, "Target images per class (paper: 130000); 0 keeps all that pass; -1: the mean "
      "per-class count of the pseudo-labels that pass the threshold.", check=at_least(-1))
  upsample: bool = setting(True, "Duplicate classes short of --num_image.")
  exact_topk: bool = setting(False, "Exact per-class top-K (records must fit in memory).")

  def resolved_from_pool(self) -> bool:
    """Whether the threshold or the target is decided by the pool's own histograms
    (balance.resolve): --adaptive_threshold or --num_image=-1."""
    return self.adaptive_threshold != "none" or self.num_image < 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """The exports for serving and devices (docs/usage.md "Serving")."""
  export_format: str = setting(
      "saved_model", "saved_model: for TF Serving and SavedModel hosts (image bytes or "
      "uint8 in); keras: a .keras file (uint8 S x S in, eval preprocessing inside); "
      "tflite: LiteRT files, float32 and with --tflite_int8 int8 (same input, batch 1).",
      choices=EXPORT_FORMATS)
  export_dir: Optional[str] = setting(
      None, "Destination of the numbered versions; unset: <model_dir>/export "
      "(saved_model), <model_dir>/export-keras, <model_dir>/export-tflite.")
  top_k: int = setting(5, "Class names returned per image by the SavedModel.",
                       check=at_least(1))
  check_images: int = setting(
      1000, "Images of --eval_data_dir each export is run on (by TF's session loader, "
      "Keras or LiteRT) and compared with the Keras model before it is published; "
      "the agreement goes to its check.json. 0: no check.", flag="export_check_images",
      check=at_least(0))
  tflite_int8: bool = setting(
      True, "tflite: also an int8 post-training-quantized model, calibrated on "
      "--export_calibration_images images of --label_data_dir.")
  calibration_images: int = setting(
      200, "tflite int8: labeled images (a seeded sample) the quantization is "
      "calibrated on.", flag="export_calibration_images", check=greater(0))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The `--mode=pipeline` loop: teacher -> students -> optional fine-tune -> export."""
  teacher_train_epochs: Optional[float] = setting(
      None, "Pipeline: the teacher's length in epochs of the labeled images; unset: the "
      "students' (--train_steps, else --train_epochs).", check=greater(0))
  teacher_train_steps: Optional[int] = setting(
      None, "Pipeline: the teacher's steps; overrides --teacher_train_epochs.",
      check=greater(0))
  teacher_image_size: Optional[int] = setting(
      None, "Pipeline: the teacher's training and predict resolution; unset: "
      "--input_image_size (the paper's B7 teacher ran at 600, its L2 students at 475).",
      check=_image_size)
  student_unlabel_ratios: Tuple[float, ...] = setting(
      (), "Pipeline: unlabel_ratio per iteration (paper L2: 14,14,28); unset: "
      "--unlabel_ratio.", check=each(greater(0)))
  reassign_label: bool = setting(
      False, "Pipeline: filter and balance the unlabeled images once, with the first "
      "teacher, and have each later teacher relabel that same set (the original's flow: "
      "filter_unlabel.sh once, then reassign.sh, predict_label.py --reassign_label). "
      "Unset: each iteration filters with its own teacher.")
  allow_smaller_student: bool = setting(
      False, "Allow a student with fewer parameters than its teacher (the paper's never "
      "has: B7 -> L0 -> L1 -> L2); unset, such --student_model_names are refused.")
  iterations: str = setting(
      "all", "Pipeline: which of --student_model_names to train. all: every one. auto: "
      "hold out --validation_fraction of the labeled images (stratified per class, by "
      "--seed; no model trains on them) and start the next iteration only while each "
      "student beats its teacher on them by more than the standard error of the "
      "difference; --student_model_names is the cap, and the last student that beat its "
      "teacher is the final model (fine-tuned, exported). The results table says why it "
      "stopped (noisy_student/iterate.py).", choices=ITERATION_RULES)
  validation_fraction: float = setting(
      0.1, "Pipeline with --iterations=auto: the share of each class's labeled images held "
      "out to decide on iterating (at least one per class, and one left to train on).",
      check=lambda v: greater(0)(v) or in_range(0, 1, high_open=True)(v))
  finetune: bool = setting(
      False, "Pipeline: fine-tune the last student at the test resolution on unaugmented "
      "labeled images, shallow layers frozen (FixRes).")
  finetune_image_size: Optional[int] = setting(
      None, "Fine-tune and test resolution; unset: 1.15 x the training size.",
      check=_image_size)
  finetune_epochs: float = setting(1.5, "Fine-tune passes over the labeled images.",
                                   check=greater(0))
  finetune_learning_rate: float = setting(0.001, "Fine-tune SGD rate per 256 images.",
                                          check=greater(0))
  finetune_frozen_fraction: float = setting(
      0.7, "Leading share of the layers frozen while fine-tuning.",
      check=in_range(0, 1, high_open=True))
  export_at_end: bool = setting(True, "Pipeline: export the last model for serving.")


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """`--mode=ablate`: the paper's ablations at small scale (noisy_student/ablations.py)."""
  ablations: Tuple[str, ...] = setting(
      ("no_noise", "no_randaugment", "no_dropout", "no_stochastic_depth", "hard_labels",
       "balance", "larger_student"),
      "--mode=ablate: variants of the iteration-1 student to train besides the main arm "
      "(teacher and --ablation_iterations students); the table of variants is "
      "noisy_student/ablation_variants.py.")
  seeds: Tuple[int, ...] = setting(
      (0, 1, 2), "--mode=ablate: seeds; each seed is a whole run (data split, init, "
      "noise) in <model_dir>/seed_<s>.", flag="ablation_seeds",
      check=lambda v: non_empty(v) or distinct(v))
  iterations: int = setting(3, "--mode=ablate: Noisy Student iterations of the main arm.",
                            flag="ablation_iterations", check=at_least(1))
  larger_scale: float = setting(
      1.5, "--mode=ablate: the larger student's width and depth coefficients are the "
      "teacher's times this.", flag="ablation_larger_scale", check=greater(1))


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
  """ImageNet-C / ImageNet-P style corruption and perturbation tests and FGSM, run at
  every evaluation (noisy_student/robustness/, docs/robustness.md)."""
  enabled: bool = setting(
      True, "Run the robustness report (corruptions, perturbations, FGSM) in --mode=eval "
      "and for every model --mode=pipeline evaluates.", flag="robustness")
  corruptions: Tuple[str, ...] = setting(
      (), "ImageNet-C style corruptions; unset: every one of ImageNet-C's benchmark set "
      "implemented here (all but frost; docs/robustness.md); 'all' adds the extras "
      "(speckle_noise, gaussian_blur, saturate).")
  severities: Tuple[int, ...] = setting((1, 2, 3, 4, 5), "Corruption severities.",
                                        check=lambda v: non_empty(v) or each(in_range(1, 5))(v))
  perturbations: Tuple[str, ...] = setting(
      (), "ImageNet-P style perturbation sequences; unset or 'all': every one.")
  perturbation_frames: int = setting(
      10, "Frames per perturbation sequence (ImageNet-P: 31).", check=at_least(2))
  fgsm_epsilons: Tuple[float, ...] = setting(
      (0.0, 1.0, 2.0, 4.0, 8.0, 16.0),
      "FGSM step sizes in pixel units of 0..255; empty: no FGSM.",
      check=each(in_range(0, 255)))
  baseline: Optional[str] = setting(
      None, "The model (model_dir or .keras) or robustness report (.json) that CE / mCE "
      "and FR / mFR are relative to (100 = as robust as it). Unset: the pipeline's "
      "teacher when --model_dir has one, else unnormalised numbers only.",
      flag="robustness_baseline")
  max_images: Optional[int] = setting(
      None, "Use only the first N eval images for the robustness report; unset: all.",
      flag="robustness_max_images", check=greater(0))

  def active(self) -> bool:
    """Its settings are checked only when the report runs."""
    return self.enabled


@dataclasses.dataclass(frozen=True)
class Config:
  """A whole run: the mode, the students, and one section per concern."""
  mode: str = setting(
      "pipeline", "train: a teacher (or a student with --unlabel_ratio > 0); predict: "
      "pseudo-label --unlabel_data_dir; filter: filter and balance them; eval: top-1/top-5 "
      "on --eval_data_dir; export: a model for serving (--export_format); pipeline: all of it, "
      "resumable; ablate: the paper's ablations over seeds (see --ablations).",
      choices=MODES)
  student_model_names: Tuple[str, ...] = setting(
      ("efficientnet-b0",), "Pipeline: one student model per iteration, e.g. b0,b0,b1.")
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  distribute: DistributeConfig = DistributeConfig()
  eval: EvalConfig = EvalConfig()
  predict: PredictConfig = PredictConfig()
  filter: FilterConfig = FilterConfig()
  export: ExportConfig = ExportConfig()
  pipeline: PipelineConfig = PipelineConfig()
  ablation: AblationConfig = AblationConfig()
  robustness: RobustnessConfig = RobustnessConfig()

  def __post_init__(self):
    _normalize(self, "student_model_names")

  def sections(self):
    """(name, section) of every section, in declaration order."""
    return [(name, getattr(self, name)) for name, _ in list(settings.sections(Config))[1:]]

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def write(self, directory: str, name: str = "config.json") -> str:
    """Writes the resolved configuration into `directory` atomically; returns the path."""
    return atomic.write_text(f"{directory.rstrip('/')}/{name}", self.to_json())
