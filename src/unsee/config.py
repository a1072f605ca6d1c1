"""Typed configs: dataclasses with help text, loaded from YAML/JSON files or shipped names,
with ``key=value`` overrides from the command line.

One source of truth per option: the dataclass field carries its default, its type and its
help (``field(metadata={"help": ...})``); the CLI, the files and the Python API all go
through :func:`load_config`. Unknown keys are rejected by name so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from unsee.errors import ConfigError

T = TypeVar("T")
SHIPPED = Path(__file__).parent / "configs"


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: dataclasses.replace(d), metadata={"help": help},
                                 **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def read_config_file(source: str | Path, kind: str) -> dict[str, Any]:
    """Read a YAML/JSON file, or a shipped config by name (``configs/<kind>/<name>.yaml``)."""
    path = Path(source)
    if not path.exists():
        shipped = SHIPPED / kind / f"{source}.yaml"
        if not shipped.exists():
            names = sorted(p.stem for p in (SHIPPED / kind).glob("*.yaml")) if (SHIPPED / kind).is_dir() else []
            raise ConfigError(f"config {source!r} is neither a file nor a shipped {kind} config {names}")
        path = shipped
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-5", "scope=visual"]`` -> ``{"lr": 1e-5, "scope": "visual"}``; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = _scalar(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of override {item!r}: {e}") from e
    return out


def _scalar(value: str) -> Any:
    """A YAML scalar, plus the float forms YAML 1.1 leaves as strings (``1e-5``)."""
    if value == "":
        return ""
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple, Sequence):
        if isinstance(value, str):
            value = [_scalar(v) for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, prefix=f"{name}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {value!r}")
    return value


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """Make ``cls`` from a mapping; nested dataclasses accept nested mappings or dotted keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if head not in fields:
            raise ConfigError(
                f"unknown config key {prefix + head!r} for {cls.__name__}; valid keys: {', '.join(sorted(fields))}"
            )
        if rest:
            if not dataclasses.is_dataclass(hints[head]):
                raise ConfigError(f"config key {prefix + head!r} has no sub-keys")
            nested.setdefault(head, {})[rest] = value
        else:
            kwargs[head] = _coerce(prefix + head, value, hints[head])
    for head, sub in nested.items():
        base = dataclasses.asdict(kwargs[head]) if head in kwargs else {}
        kwargs[head] = build(hints[head], {**base, **sub}, prefix=f"{prefix}{head}.")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def load_config(
    cls: type[T],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    kind: str | None = None,
) -> T:
    """File (or shipped name, or mapping), then overrides, then type checks and ``validate()``."""
    if source is None:
        values: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        values = dict(source)
    else:
        values = read_config_file(source, kind or cls.__name__.lower())
    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    return build(cls, _merge(values, extra))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        head, _, rest = k.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = _merge(out[head], {rest: v})
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type) -> str:
    """Help text for every option of a config class, for ``--help`` and the docs."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]))
        lines.append(f"  {f.name} ({tp}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
