"""The resolved configuration of a run: frozen dataclasses, one per flag group.

Only the entry point (`noisy_student.main`) reads absl flags; it turns them into a
`Config` (see `flags/`) and hands the pieces below to library code. Library code never
imports absl `FLAGS`. Field names follow the original noisystudent flags where they mean
the same thing, so its users recognise them.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

from noisy_student import atomic


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which network to build (see `efficientnet.build_model`)."""
  model_name: str = "efficientnet-b0"
  num_label_classes: int = 1000
  input_image_size: Optional[int] = None  # None: the model's native resolution.
  dropout_rate: Optional[float] = None  # None: the model table's rate.
  stochastic_depth_rate: float = 0.2  # Last block's drop rate (the original's drop_connect).
  small_image: bool = False  # The original's 32-pixel variant (stride 1 in stages 2, 3).
  width_coefficient: Optional[float] = None
  depth_coefficient: Optional[float] = None
  sync_batch_norm: bool = False  # Cross-replica batch norm (set when replicas > 1).
  dtype_policy: str = "float32"  # "float32", "mixed_bfloat16" (TPU) or "mixed_float16".


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where images come from and how they are preprocessed.

  A source spec is one of: "digits:labeled" / "digits:unlabeled" / "digits:test" (the
  embedded default), "tfds:NAME:SPLIT" (read from `tfds_data_dir`), a folder of class
  sub-folders (labeled), a folder of images (unlabeled), or TFRecord files given as a
  directory or a file pattern (local or gs://).
  """
  label_data_dir: str = "digits:labeled"
  unlabel_data_dir: str = "digits:unlabeled"
  eval_data_dir: str = "digits:test"
  tfds_data_dir: Optional[str] = None
  label_offset: int = 0  # 1 for ImageNet-style TFRecords whose labels start at 1.
  random_flip: bool = True  # Off where flipping changes the class (digits, letters).
  augment_name: Optional[str] = "v1"  # "v1" = RandAugment; None = no input noise.
  randaug_layer: int = 2
  randaug_mag: float = 27.0
  cutout: bool = True  # The 32-pixel path's extra cutout after RandAugment (original SVHN).
  cutout_op: bool = False  # Add Cutout to RandAugment's op list (the original's cutout_op).
  seed: int = 0
  shuffle_buffer: int = 10_000
  digits_num_labeled: int = 500  # Embedded default split sizes (digits has 1797 images).
  digits_num_test: int = 400


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Teacher or student training."""
  model_dir: str = "runs/default"
  train_batch_size: int = 128
  train_steps: int = 1000
  unlabel_ratio: float = 0.0  # 0: supervised (teacher); > 0: student.
  teacher_softmax_temp: float = 1.0  # -1: hard (one-hot argmax) pseudo-labels.
  label_smoothing: float = 0.1
  weight_decay: float = 1e-5  # On sum(w^2)/2 of non-batch-norm weights, as the original.
  moving_average_decay: float = 0.9999  # 0 disables the EMA of weights.
  optimizer: str = "rmsprop"  # "rmsprop" (original), "sgd", "adamw".
  lr_schedule: str = "exponential"  # "exponential" (original staircase) or "cosine".
  base_learning_rate: float = 0.016  # Per 256 images; scaled by batch / 256.
  final_base_lr: Optional[float] = None
  warmup_epochs: float = 5.0
  lr_decay_epochs: float = 2.4
  lr_decay_factor: float = 0.97
  num_train_images: Optional[int] = None  # Defines an "epoch" for the schedule.
  save_checkpoints_steps: int = 1000
  keep_checkpoint_max: int = 5
  iterations_per_loop: int = 100  # Steps per execution (one host round trip).
  log_every_n_steps: int = 100
  init_model_path: Optional[str] = None  # Start from this checkpoint instead of scratch.
  teacher_model_name: Optional[str] = None  # On-the-fly teacher (original's mode).
  teacher_model_path: Optional[str] = None
  pseudo_label_dir: Optional[str] = None  # Output of the predict/filter phases.


JIT_COMPILE_SETTINGS = ("auto", "true", "false")  # DistributeConfig.jit_compile.


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
  """Which tf.distribute strategy to run under."""
  strategy: str = "auto"  # auto, default, mirrored, multi_worker, tpu.
  use_tpu: bool = False
  tpu: Optional[str] = None
  tpu_zone: Optional[str] = None
  gcp_project: Optional[str] = None
  use_bfloat16: bool = False
  jit_compile: str = "auto"  # XLA for every step: auto (GPU/TPU on, CPU off), true, false.


@dataclasses.dataclass(frozen=True)
class PredictConfig:
  """The un-noised teacher labelling the unlabeled source."""
  predict_ckpt_path: Optional[str] = None
  output_dir: str = "runs/default/pseudo"
  eval_batch_size: int = 256
  num_shards: int = 128  # Shards per worker.
  worker_index: int = 0
  num_workers: int = 1
  teacher_softmax_temp: float = 1.0  # -1: store hard labels.


@dataclasses.dataclass(frozen=True)
class FilterConfig:
  """Confidence filtering and per-class balancing of pseudo-labels."""
  min_threshold: float = 0.3
  num_image: int = 0  # Target per class; 0 keeps every record that passes the threshold.
  upsample: bool = True  # Duplicate classes short of num_image.
  exact_topk: bool = False  # Exact per-class top-K (data must fit in memory).
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  export_dir: Optional[str] = None
  top_k: int = 5


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """The `--mode=pipeline` loop: teacher -> students -> optional fine-tune -> export.

  The students' model names live in `Config.student_model_names` (one per iteration).
  """
  teacher_train_steps: Optional[int] = None  # None: TrainConfig.train_steps.
  student_unlabel_ratios: Tuple[float, ...] = ()  # Per iteration; () = TrainConfig's.
  allow_smaller_student: bool = False  # The paper's students are equal or larger.
  finetune: bool = False  # The paper's train/test resolution fix, after the last student.
  finetune_image_size: Optional[int] = None  # None: 1.15 x the training size, as FixRes.
  finetune_epochs: float = 1.5  # Passes over the labeled images.
  finetune_learning_rate: float = 0.001  # Per 256 images, SGD with momentum 0.9.
  finetune_frozen_fraction: float = 0.7  # Leading share of the layers kept frozen.
  export_at_end: bool = True  # Export the last model for serving at the end.


@dataclasses.dataclass(frozen=True)
class AblationConfig:
  """`--mode=ablate`: the paper's ablations at small scale (noisy_student/ablations.py)."""
  ablations: Tuple[str, ...] = ("no_noise", "no_randaugment", "no_dropout",
                                "no_stochastic_depth", "hard_labels", "balance",
                                "larger_student")
  seeds: Tuple[int, ...] = (0, 1, 2)
  iterations: int = 3  # Noisy Student iterations of the main arm (student -> teacher).
  larger_scale: float = 1.5  # larger_student: width and depth x this vs the teacher.


@dataclasses.dataclass(frozen=True)
class RobustnessConfig:
  """ImageNet-C / ImageNet-P style corruption and perturbation tests and FGSM, run at
  every evaluation (noisy_student/robustness/, docs/robustness.md)."""
  enabled: bool = True
  corruptions: Tuple[str, ...] = ()  # () = every implemented ImageNet-C benchmark one.
  severities: Tuple[int, ...] = (1, 2, 3, 4, 5)
  perturbations: Tuple[str, ...] = ()  # () = all.
  perturbation_frames: int = 10  # Frames per ImageNet-P style sequence.
  fgsm_epsilons: Tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)  # 0..255 pixels.
  baseline: Optional[str] = None  # Model (dir or .keras) or report JSON for mCE / mFR.
  max_images: Optional[int] = None  # Use only the first N eval images (speed).
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class Config:
  mode: str = "pipeline"
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  distribute: DistributeConfig = DistributeConfig()
  predict: PredictConfig = PredictConfig()
  filter: FilterConfig = FilterConfig()
  export: ExportConfig = ExportConfig()
  student_model_names: Tuple[str, ...] = ()  # One per iteration, e.g. (b0, b0, b1).
  pipeline: PipelineConfig = PipelineConfig()
  ablation: AblationConfig = AblationConfig()
  robustness: RobustnessConfig = RobustnessConfig()

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def write(self, directory: str, name: str = "config.json") -> str:
    """Writes the resolved configuration into `directory` atomically; returns the path."""
    return atomic.write_text(f"{directory.rstrip('/')}/{name}", self.to_json())
