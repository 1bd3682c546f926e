"""The command line of `noisy-student`: one absl flag per declared setting.

Only the entry point (`noisy_student.main`) uses this package:

  flags.define_all()                # once, before absl parses argv
  config = flags.to_config(FLAGS)   # -> noisy_student.config.Config
  noisy_student.checks.check(config)

Nothing here declares a setting: every flag, its type, default, help and aliases come from
the field that declares it in noisy_student/config.py (see noisy_student/settings.py), and
`--helpfull` lists them grouped by section. Presets live in `flags/presets/*.flags` (use
them with `--flagfile=`); without any data flag the embedded demo's preset supplies the
defaults.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from absl import flags as absl_flags

from noisy_student import settings
from noisy_student.checks import ConfigError
from noisy_student.config import Config

PRESETS_DIR = os.path.join(os.path.dirname(__file__), "presets")
DEMO_PRESET = os.path.join(PRESETS_DIR, "demo.flags")
DATA_FLAGS = ("label_data_dir", "unlabel_data_dir", "eval_data_dir")

__all__ = ["ConfigError", "DEMO_PRESET", "PRESETS_DIR", "define_all", "to_config"]


def _help(f: settings.Field) -> str:
  return f.spec.help + (f" (The original's --{', --'.join(f.spec.aliases)}.)"
                        if f.spec.aliases else "")


def _define(fv: absl_flags.FlagValues, f: settings.Field, group: str) -> None:
  """Defines the flag of one declared setting on `fv`, listed under `group`."""
  kwargs = dict(flag_values=fv, module_name=group)
  if f.kind is tuple:
    absl_flags.DEFINE_list(f.flag, [settings.show(v) for v in f.default], _help(f), **kwargs)
  elif f.spec.choices is not None:
    choices = [settings.show(c) for c in f.spec.choices]
    absl_flags.DEFINE_enum(f.flag, None if f.default is None else settings.show(f.default),
                           choices, _help(f), **kwargs)
  else:
    define = {bool: absl_flags.DEFINE_bool, int: absl_flags.DEFINE_integer,
              float: absl_flags.DEFINE_float, str: absl_flags.DEFINE_string}[f.kind]
    define(f.flag, f.default, _help(f), **kwargs)
  for alias in f.spec.aliases:
    absl_flags.DEFINE_alias(alias, f.flag, flag_values=fv, module_name=group)


def define_all(fv: absl_flags.FlagValues = absl_flags.FLAGS) -> None:
  """Defines every setting's flag on `fv` (call once per FlagValues)."""
  for _, section in settings.sections(Config):
    group = f"{section.__name__}: {section.__doc__.splitlines()[0]}"
    for f in settings.fields(section):
      _define(fv, f, group)


def apply_demo_defaults(fv: absl_flags.FlagValues) -> bool:
  """Without any data flag, the run is the embedded demo: presets/demo.flags becomes the
  default of every flag the user did not set. Returns whether it applied."""
  if any(fv[name].present for name in DATA_FLAGS):
    return False
  with open(DEMO_PRESET, encoding="utf-8") as f:
    lines = [line.strip() for line in f if line.strip().startswith("--")]
  for line in lines:
    name, _, value = line[2:].partition("=")
    if not fv[name].present:
      fv.set_default(name, value or "true")
  return True


def _value(f: settings.Field, raw: Any) -> Any:
  """A parsed flag value -> the setting's value (typed tuples, 'none' -> None)."""
  if f.kind is tuple:
    return settings.parse_list(f, raw)
  if f.spec.choices is not None and raw is not None:
    return next(c for c in f.spec.choices if settings.show(c) == raw)
  return raw


def _section(section: type, fv: absl_flags.FlagValues) -> Dict[str, Any]:
  return {f.name: _value(f, fv[f.flag].value) for f in settings.fields(section)}


def to_config(fv: absl_flags.FlagValues = absl_flags.FLAGS) -> Config:
  """Parsed flags -> the frozen Config handed to library code.

  Without data flags the embedded demo's recipe fills in the unset flags (see
  `apply_demo_defaults`). Raises `ConfigError` (one line) when a flag's value cannot be
  read, e.g. a list of numbers that holds a word. Range checks and combinations are
  `noisy_student.checks.check`'s.
  """
  apply_demo_defaults(fv)
  try:
    values = _section(Config, fv)
    for attribute, section in list(settings.sections(Config))[1:]:
      values[attribute] = section(**_section(section, fv))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return Config(**values)
