"""One declaration per setting: a dataclass field that carries its default, help and check.

A configuration section is a frozen dataclass whose fields are declared with `setting`:

  @dataclasses.dataclass(frozen=True)
  class FilterConfig:
    min_threshold: float = setting(0.3, "Drop pseudo-labels below this confidence.",
                                   check=in_range(0, 1))

From that one declaration follow the command-line flag (`flags.define_all`, same name unless
`flag=` says otherwise, typed from the annotation), its help, its range check (`problems`),
and the field of the Config that library code receives. This module is pure Python: checks
run before TensorFlow loads.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, Iterator, List, Optional, Tuple

# A check returns what is wrong with a value ("must be > 0"), or None when it is fine.
Check = Callable[[Any], Optional[str]]


@dataclasses.dataclass(frozen=True)
class Spec:
  """What a setting declares besides its default: see `setting`."""
  help: str
  flag: Optional[str] = None
  aliases: Tuple[str, ...] = ()
  choices: Optional[Tuple[Any, ...]] = None
  check: Optional[Check] = None


def setting(default: Any, help: str, *, flag: Optional[str] = None,  # pylint: disable=redefined-builtin
            aliases: Tuple[str, ...] = (), choices: Optional[Tuple[Any, ...]] = None,
            check: Optional[Check] = None) -> Any:
  """A dataclass field declaring one setting.

  Args:
    default: the default value (immutable: tuples for lists).
    help: the flag's help; says what an unset (None) value means where it can be None.
    flag: the command-line name when it differs from the field's (e.g. the section's
      prefix: RobustnessConfig.baseline is --robustness_baseline).
    aliases: other command-line names, e.g. the original code's (--worker_id).
    choices: the allowed values (an enum flag); None among them is spelled "none".
    check: a `Check` of a set value (None values are not checked).
  """
  spec = Spec(help=help, flag=flag, aliases=tuple(aliases),
              choices=tuple(choices) if choices is not None else None, check=check)
  return dataclasses.field(default=default, metadata={"setting": spec})


@dataclasses.dataclass(frozen=True)
class Field:
  """A declared setting as the flag layer sees it."""
  name: str  # The dataclass field.
  flag: str  # The command-line name.
  kind: type  # bool, int, float, str, or tuple (a list flag).
  item: Optional[type]  # The element type of a tuple.
  optional: bool  # None is a valid value.
  default: Any
  spec: Spec


def _kind(annotation) -> Tuple[type, Optional[type], bool]:
  """(kind, item, optional) of a field's type: Optional[int] -> (int, None, True)."""
  optional = False
  args = typing.get_args(annotation)
  if typing.get_origin(annotation) is typing.Union and type(None) in args:
    optional = True
    annotation = next(a for a in args if a is not type(None))
  if typing.get_origin(annotation) is tuple:
    return tuple, typing.get_args(annotation)[0], optional
  return annotation, None, optional


@functools.lru_cache(maxsize=None)
def fields(section: type) -> Tuple[Field, ...]:
  """The declared settings of a section dataclass, in declaration order."""
  hints = typing.get_type_hints(section)
  out = []
  for f in dataclasses.fields(section):
    spec = f.metadata.get("setting")
    if spec is None:
      continue
    kind, item, optional = _kind(hints[f.name])
    out.append(Field(f.name, spec.flag or f.name, kind, item, optional, f.default, spec))
  return tuple(out)


def sections(config: type) -> Iterator[Tuple[Optional[str], type]]:
  """(attribute, section class) of a config: its own settings first (attribute None)."""
  yield None, config
  hints = typing.get_type_hints(config)
  for f in dataclasses.fields(config):
    if dataclasses.is_dataclass(hints[f.name]):
      yield f.name, hints[f.name]


def show(value: Any) -> str:
  """A value as the user would have typed it on the command line."""
  if isinstance(value, (tuple, list)):
    return ",".join(show(v) for v in value)
  if isinstance(value, float):
    return f"{value:g}"
  return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def problems(section: Any) -> List[str]:
  """One line per declared setting of `section` whose value fails its choices or check."""
  out = []
  for f in fields(type(section)):
    value = getattr(section, f.name)
    if value is None:
      continue
    values = value if f.kind is tuple else (value,)
    if f.spec.choices is not None:
      bad = [v for v in values if v not in f.spec.choices]
      if bad:
        known = ", ".join(show(c) for c in f.spec.choices)
        out.append(f"--{f.flag}={show(value)}: unknown {show(bad)}; known: {known}")
        continue
    message = f.spec.check(value) if f.spec.check else None
    if message:
      out.append(f"--{f.flag}={show(value)}: {message}")
  return out


# Checks, composable: each returns the message of a bad value.

def greater(bound: float) -> Check:
  return lambda v: None if v > bound else f"must be > {bound:g}"


def at_least(bound: float) -> Check:
  return lambda v: None if v >= bound else f"must be >= {bound:g}"


def in_range(low: float, high: float, *, high_open: bool = False) -> Check:
  """low <= v <= high (or < high when `high_open`)."""
  close = ")" if high_open else "]"
  def check(v):
    ok = low <= v < high if high_open else low <= v <= high
    return None if ok else f"must be in [{low:g}, {high:g}{close}"
  return check


def each(check: Check) -> Check:
  """A check of every element of a tuple setting."""
  def check_all(values):
    for v in values:
      message = check(v)
      if message:
        return f"each {message}"
    return None
  return check_all


def distinct(values) -> Optional[str]:
  return None if len(set(values)) == len(values) else "values must be distinct"


def non_empty(values) -> Optional[str]:
  return None if values else "give at least one value"


def parse_list(f: Field, raw) -> tuple:
  """A list flag's strings -> the setting's typed tuple; ValueError names the flag."""
  try:
    return tuple(f.item(v.strip()) for v in raw if v.strip())
  except ValueError:
    kind = {int: "integers", float: "numbers"}.get(f.item, f.item.__name__)
    raise ValueError(f"--{f.flag}={','.join(raw)}: expected comma-separated "
                     f"{kind}") from None


def require(section: Any) -> None:
  """Raises ValueError naming every declared check `section` fails (for library entry
  points called without the command line's checks)."""
  errors = problems(section)
  errors += section.problems() if hasattr(section, "problems") else []
  if errors:
    raise ValueError("; ".join(errors))
