"""Data flags: sources and preprocessing (-> `DataConfig`)."""
from absl import flags

from noisy_student import config as config_lib
from noisy_student.data import augment_table

_SPEC_HELP = (
    "A source: digits:labeled|unlabeled|test (embedded), tfds:NAME:SPLIT (from "
    "--tfds_data_dir), a folder of class sub-folders, a folder of images, or TFRecords "
    "(directory or file pattern; local or gs://).")


def define(fv: flags.FlagValues) -> None:
  """Defines the data flags on `fv`."""
  flags.DEFINE_string("label_data_dir", "digits:labeled", "Labeled data. " + _SPEC_HELP,
                      flag_values=fv)
  flags.DEFINE_string("unlabel_data_dir", "digits:unlabeled",
                      "Unlabeled data (labels, if any, are ignored). " + _SPEC_HELP,
                      flag_values=fv)
  flags.DEFINE_string("eval_data_dir", "digits:test", "Evaluation data. " + _SPEC_HELP,
                      flag_values=fv)
  flags.DEFINE_string("tfds_data_dir", None,
                      "tensorflow-datasets data_dir (prepared beforehand; nothing downloads).",
                      flag_values=fv)
  flags.DEFINE_integer("label_offset", 0,
                       "Subtracted from stored labels: 1 for ImageNet TFRecords (1-based).",
                       flag_values=fv)
  flags.DEFINE_bool("random_flip", True,
                    "Random horizontal flip in training (off for digits and letters).",
                    flag_values=fv)
  flags.DEFINE_string("augment_name", "v1",
                      "Input noise: 'v1' = RandAugment (the original's), 'none' = off.",
                      flag_values=fv)
  flags.DEFINE_integer("randaug_layer", 2, "RandAugment ops per image (N).", flag_values=fv)
  flags.DEFINE_float("randaug_mag", 27.0, "RandAugment magnitude (M; 10 = max level).",
                     flag_values=fv)
  flags.DEFINE_bool("cutout_op", True,
                    "Cutout in RandAugment's op list (16 ops; the original's default). "
                    "--nocutout_op: 15 ops.", flag_values=fv)
  flags.DEFINE_enum(
      "randaug_variant", "original", list(augment_table.VARIANTS),
      "RandAugment arithmetic. original: as the original code ran at every magnitude "
      "(translate 100 px and cutout 40 px at any resolution, S//8 on the 32-pixel path; "
      "above M=10 the solarize threshold and posterize shift wrap as uint8; Contrast's "
      "target H*W/256), which the published magnitudes were tuned with. scaled: "
      "constants x S/224, saturating integers, Contrast towards the mean grey.",
      flag_values=fv)
  flags.DEFINE_bool("small_image_cutout", True,
                    "With --small_image: the original SVHN path's extra cutout after "
                    "RandAugment.", flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of data order, augmentation and balancing.",
                       flag_values=fv)
  flags.DEFINE_integer("shuffle_buffer", 10_000, "Shuffle buffer (records).", flag_values=fv)
  flags.DEFINE_integer("digits_num_labeled", 500, "Embedded digits: labeled images.",
                       flag_values=fv)
  flags.DEFINE_integer("digits_num_test", 400, "Embedded digits: test images.",
                       flag_values=fv)


def to_config(fv: flags.FlagValues) -> config_lib.DataConfig:
  """Reads the data flags."""
  augment = fv.augment_name
  if augment is not None and augment.lower() in ("none", ""):
    augment = None
  return config_lib.DataConfig(
      label_data_dir=fv.label_data_dir,
      unlabel_data_dir=fv.unlabel_data_dir,
      eval_data_dir=fv.eval_data_dir,
      tfds_data_dir=fv.tfds_data_dir,
      label_offset=fv.label_offset,
      random_flip=fv.random_flip,
      augment_name=augment,
      randaug_layer=fv.randaug_layer,
      randaug_mag=fv.randaug_mag,
      cutout=fv.small_image_cutout,
      cutout_op=fv.cutout_op,
      randaug_variant=fv.randaug_variant,
      seed=fv.seed,
      shuffle_buffer=fv.shuffle_buffer,
      digits_num_labeled=fv.digits_num_labeled,
      digits_num_test=fv.digits_num_test)
