"""Config dataclasses: one place for each field's type, default and help text.

Every config section subclasses `Section` and declares its fields with `option()`.
Sections load from nested dicts (YAML), take dotted CLI overrides such as
`train.beta=0.2`, and raise `ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import yaml

S = TypeVar("S", bound="Section")


class ConfigError(ValueError):
    """Invalid configuration value; the message names the field and the fix."""


def option(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """Declare a config field with its default and help text.

    A mutable default (list or dict) is copied for each instance.
    """
    metadata = {"help": help, "choices": choices}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)) and len(args) == 1:
            return True, args[0]
    return False, tp


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert a YAML or CLI value to the field type, or raise ConfigError."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: null is not allowed; set a value of type {_type_name(tp)}")
    tp = inner
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{name}: invalid value {value!r}; expected one of {list(allowed)}")
        return value
    if isinstance(tp, type) and issubclass(tp, Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return tp.from_dict(value, prefix=f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        (item_type, *_) = get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclasses.dataclass
class Section:
    """Base class of config sections."""

    # Name of the section in a run config, used in messages when no prefix was given.
    section_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges; subclasses raise ConfigError naming the field.

        Every float field must be finite. NaN and infinity are rejected here, before a
        subclass compares them, because every comparison with NaN is false and so NaN
        would pass range checks such as `if value <= 0: raise`.
        """
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"{self._prefix()}{f.name}: invalid value {value!r}; "
                    f"expected one of {list(choices)}"
                )
            tp = hints[f.name]
            if _is_optional(tp)[1] is float and isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{self._field_name(f.name)} must be a finite number, got {value}")
            if isinstance(tp, type) and issubclass(tp, Section) and isinstance(value, dict):
                setattr(self, f.name, tp.from_dict(value, prefix=f"{f.name}."))

    def _prefix(self) -> str:
        return getattr(self, "_config_prefix", "")

    def _field_name(self, name: str) -> str:
        """Return `section.field` for messages, from the load prefix or `section_name`."""
        prefix = self._prefix() or (f"{self.section_name}." if self.section_name else "")
        return f"{prefix}{name}"

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any] | None, prefix: str = "") -> S:
        """Build a section from a mapping; unknown keys raise ConfigError."""
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        kwargs = {}
        for key, value in data.items():
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean {prefix}{close[0]}?" if close else ""
                raise ConfigError(
                    f"unknown config key {prefix}{key}{hint} "
                    f"(valid keys here: {', '.join(names)})"
                )
            kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
        try:
            obj = cls.__new__(cls)
            object.__setattr__(obj, "_config_prefix", prefix)
            obj.__init__(**kwargs)
        except ConfigError:
            raise
        except TypeError as error:
            raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {error}") from None
        return obj

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Section) else value
        return out

    def replace(self: S, **changes: Any) -> S:
        data = self.to_dict()
        data.update(changes)
        return type(self).from_dict(data, prefix=self._prefix())


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (["a", "b"], value) with the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"invalid override {text!r}; write it as section.field=value")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"invalid override {text!r}; the key before '=' is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested `data` with each `a.b=value` override set."""
    data = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"invalid override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def _deep_copy(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, raising ConfigError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        reason = yaml_error_line(error)
        raise ConfigError(f"config file {path} is not valid YAML: {reason}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level, got "
            f"{type(data).__name__}; write sections as top-level keys, e.g. `train:`"
        )
    return data


def read_run_config(path: Path, fix: str) -> Any:
    """Read an existing run's config.yaml, raising ConfigError with `fix` when it is not UTF-8 YAML."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        reason = yaml_error_line(error) if isinstance(error, yaml.YAMLError) else "not UTF-8 text"
        raise ConfigError(f"{path} is not a readable run config ({reason}); {fix}") from None


def yaml_error_line(error: yaml.YAMLError) -> str:
    """Describe a YAML syntax error in one line: the problem and its line and column."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}; fix the syntax there"
    return " ".join(str(error).split())


def load_config(
    cls: type[S], path: str | Path | None = None, overrides: list[str] | None = None
) -> S:
    """Load a section from an optional YAML file plus dotted overrides."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return cls.from_dict(data)


def add_section_arguments(
    parser: argparse.ArgumentParser, cls: type[Section], exclude: tuple[str, ...] = ()
) -> None:
    """Add one `--field-name` option per field of a flat section, with its help text.

    Fields named in `exclude` get no option, for settings that the command does not use.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name in exclude or (isinstance(tp, type) and issubclass(tp, Section)):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(map(str, choices)) + "}" if choices else _metavar(tp)
        parser.add_argument(flag, dest=f.name, default=None, metavar=metavar, help=help_text)


def _metavar(tp: Any) -> str:
    _, inner = _is_optional(tp)
    if get_origin(inner) is Literal:
        return "{" + ",".join(str(a) for a in get_args(inner)) + "}"
    return _type_name(inner).upper()


def section_from_args(cls: type[S], args: argparse.Namespace, base: S | None = None) -> S:
    """Build a section from parsed `--field-name` options over `base`.

    A value of the wrong type or outside the field's choices raises ConfigError naming
    the flag, such as `--batch-size`, so the message matches what the user typed.
    """
    data = base.to_dict() if base is not None else {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                # Text that is not valid YAML, such as "[draft", is kept as typed.
                pass
        value = _coerce(value, hints[f.name], flag)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{flag}: invalid value {value!r}; expected one of {list(choices)}")
        data[f.name] = value
    return cls.from_dict(data)
