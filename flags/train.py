"""Training flags: teacher and student (-> `TrainConfig`)."""
from absl import flags

from noisy_student import config as config_lib

# The students' unlabeled:labeled batch ratio when --unlabel_ratio is unset in
# --mode=pipeline; the embedded digits demo's value (the paper: 1 to 28, larger models
# take more; the SVHN example: 5).
DEFAULT_STUDENT_UNLABEL_RATIO = 3.0


def define(fv: flags.FlagValues) -> None:
  """Defines the training flags on `fv`."""
  d = config_lib.TrainConfig()
  flags.DEFINE_string("model_dir", "runs/default",
                      "Where checkpoints, summaries, results and the resolved config go "
                      "(local or gs://). In --mode=pipeline, each phase gets a sub-folder.",
                      flag_values=fv)
  flags.DEFINE_integer("train_batch_size", d.train_batch_size,
                       "Global labeled batch size.", flag_values=fv)
  flags.DEFINE_integer("train_steps", d.train_steps, "Training steps (students).",
                       flag_values=fv)
  flags.DEFINE_float("unlabel_ratio", None,
                     "Unlabeled batch = ceil(unlabel_ratio x train_batch_size); 0 = "
                     "supervised. Unset: 0 in --mode=train (a teacher), "
                     f"{DEFAULT_STUDENT_UNLABEL_RATIO:g} for the students of "
                     "--mode=pipeline.", flag_values=fv)
  flags.DEFINE_float("teacher_softmax_temp", d.teacher_softmax_temp,
                     "Soft pseudo-label temperature, applied once in training: targets "
                     "softmax(teacher logits / T) (pseudo-labels are stored at T = 1); "
                     "-1 = hard (one-hot argmax) labels.",
                     flag_values=fv)
  flags.DEFINE_float("label_smoothing", d.label_smoothing, "On labeled (and hard) targets.",
                     flag_values=fv)
  flags.DEFINE_float("weight_decay", d.weight_decay,
                     "Times sum(w^2)/2 over non-batch-norm weights, as the original.",
                     flag_values=fv)
  flags.DEFINE_float("moving_average_decay", d.moving_average_decay,
                     "EMA of weights (eval, predict, export use it); 0 disables.",
                     flag_values=fv)
  flags.DEFINE_enum("optimizer", d.optimizer, ["rmsprop", "sgd", "adamw"],
                    "rmsprop is the original's.", flag_values=fv)
  flags.DEFINE_enum("lr_schedule", d.lr_schedule, ["exponential", "cosine"],
                    "exponential = the original's staircase decay.", flag_values=fv)
  flags.DEFINE_float("base_learning_rate", d.base_learning_rate,
                     "Learning rate per 256 images (scaled by batch / 256).", flag_values=fv)
  flags.DEFINE_float("final_base_lr", None,
                     "If set (per 256 images, like --base_learning_rate), the "
                     "staircase period is stretched so the rate reaches about this "
                     "(scaled by batch / 256) at the last step; replaces "
                     "--lr_decay_epochs, as in the original.",
                     flag_values=fv)
  flags.DEFINE_float("warmup_epochs", d.warmup_epochs, "Linear warm-up.", flag_values=fv)
  flags.DEFINE_float("lr_decay_epochs", d.lr_decay_epochs, "Staircase period.",
                     flag_values=fv)
  flags.DEFINE_float("lr_decay_factor", d.lr_decay_factor, "Staircase factor.",
                     flag_values=fv)
  flags.DEFINE_integer("num_train_images", None,
                       "Images per epoch for the schedule; unset: the labeled count.",
                       flag_values=fv)
  flags.DEFINE_integer("save_checkpoints_steps", d.save_checkpoints_steps,
                       "Checkpoint period (steps).", flag_values=fv)
  flags.DEFINE_integer("keep_checkpoint_max", d.keep_checkpoint_max,
                       "Checkpoints kept.", flag_values=fv)
  flags.DEFINE_integer("iterations_per_loop", d.iterations_per_loop,
                       "Steps per execution (one host round trip).", flag_values=fv)
  flags.DEFINE_integer("log_every_n_steps", d.log_every_n_steps, "Progress line period.",
                       flag_values=fv)
  flags.DEFINE_string("init_model_path", None,
                      "Start from this checkpoint (file or model_dir) instead of scratch.",
                      flag_values=fv)
  flags.DEFINE_string("teacher_model_name", None,
                      "On-the-fly teacher's model name: optional (its build_config.json "
                      "names it); when given it must match.", flag_values=fv)
  flags.DEFINE_string("teacher_model_path", None,
                      "On-the-fly teacher (the original's mode): a model_dir, a pipeline's "
                      "model_dir or a .keras file; it labels --unlabel_data_dir's images "
                      "inside each step (--mode=train, --unlabel_ratio > 0).",
                      flag_values=fv)
  flags.DEFINE_string("pseudo_label_dir", None,
                      "Pseudo-labels written by --mode=predict/filter (student training).",
                      flag_values=fv)


def _unlabel_ratio(fv: flags.FlagValues) -> float:
  if fv.unlabel_ratio is not None:
    return fv.unlabel_ratio
  return DEFAULT_STUDENT_UNLABEL_RATIO if fv.mode == "pipeline" else 0.0


def to_config(fv: flags.FlagValues) -> config_lib.TrainConfig:
  """Reads the training flags."""
  return config_lib.TrainConfig(
      model_dir=fv.model_dir,
      train_batch_size=fv.train_batch_size,
      train_steps=fv.train_steps,
      unlabel_ratio=_unlabel_ratio(fv),
      teacher_softmax_temp=fv.teacher_softmax_temp,
      label_smoothing=fv.label_smoothing,
      weight_decay=fv.weight_decay,
      moving_average_decay=fv.moving_average_decay,
      optimizer=fv.optimizer,
      lr_schedule=fv.lr_schedule,
      base_learning_rate=fv.base_learning_rate,
      final_base_lr=fv.final_base_lr,
      warmup_epochs=fv.warmup_epochs,
      lr_decay_epochs=fv.lr_decay_epochs,
      lr_decay_factor=fv.lr_decay_factor,
      num_train_images=fv.num_train_images,
      save_checkpoints_steps=fv.save_checkpoints_steps,
      keep_checkpoint_max=fv.keep_checkpoint_max,
      iterations_per_loop=fv.iterations_per_loop,
      log_every_n_steps=fv.log_every_n_steps,
      init_model_path=fv.init_model_path,
      teacher_model_name=fv.teacher_model_name,
      teacher_model_path=fv.teacher_model_path,
      pseudo_label_dir=fv.pseudo_label_dir)
