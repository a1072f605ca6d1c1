"""Typed configs: dataclasses with help text, loaded from YAML/JSON files or shipped names,
with ``key=value`` overrides from the command line.

One source of truth per option: the dataclass field carries its default, its type and its
help (``field(metadata={"help": ...})``); the CLI, the files and the Python API all go
through :func:`load_config`. Unknown keys are rejected by name so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import reprlib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from unsee.errors import ConfigError, did_you_mean

T = TypeVar("T")
SHIPPED = Path(__file__).parent / "configs"


def opt(default: Any, help: str, *, set_by: str = "", **kw: Any) -> Any:
    """A dataclass field with help text; mutable defaults are copied per instance. ``set_by`` names the
    code that fills a field no config may set (it is neither listed nor recorded, so a value given would
    change a run that its record could not repeat)."""
    meta = {"help": help, **({"set_by": set_by} if set_by else {})}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return dataclasses.field(default_factory=lambda d=default: dataclasses.replace(d), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


MAX_CONFIG_BYTES = 1 << 20


class Plain(str):
    """Text as the user wrote it: an unquoted YAML scalar or the value of a ``key=value`` override.

    It is typed only by the field it fills: a ``str`` field keeps the text (``tag=no`` stays
    ``"no"``, ``checkpoint_dir=1e3`` stays ``"1e3"``), any other field reads it as YAML would.
    Reading it earlier, without the field's type, is what turned such strings into booleans and
    numbers.
    """


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: a few hundred bytes of nested aliases expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError(f"YAML anchors and aliases (&, *) are not accepted (line {event.start_mark.line + 1}); "
                              "write the value out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A key given twice is refused: YAML keeps the last silently, and the first is what a reader sees."""
        seen: dict[str, int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise ConfigError(f"key {show(key.value)} is given twice (lines {seen[key.value]} and "
                                      f"{key.start_mark.line + 1}); keep one")
                seen[key.value] = key.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _TextLoader(_NoAliases):
    """Every unquoted scalar stays text (:class:`Plain`); the field it fills decides its type."""

    yaml_implicit_resolvers: dict = {}


_TextLoader.add_constructor(
    "tag:yaml.org,2002:str",
    lambda loader, node: Plain(node.value) if node.style is None else str(node.value))

_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxtuple = 2, 4, 4, 4
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 40


SHOWN = 160  # characters of a quoted value, at most: escaped non-ASCII text repeats through nested values


SEEDS = 2**32  # what numpy's and torch's generators take: 0 .. SEEDS - 1


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed numpy's and torch's generators both take, checked before any work rather than deep inside them
    (or, for the steps that draw nothing with it, never: a -1 would be recorded as if it were one)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEEDS:
        raise ConfigError(f"{name} must be a whole number in [0, 2**32), got {show(seed)}")
    return seed


def check_seeds(seed: int, count: int) -> None:
    """``count`` seeds from ``seed`` (``--seeds``): at least one, and the last one a seed too, checked before the
    first trains rather than when the last would start."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"--seeds must be a whole number, got {show(count)}")
    if count < 1:
        raise ConfigError(f"--seeds must be at least 1, got {show(count)}")
    check_seed(seed)
    check_seed(seed + count - 1, f"the last seed (--seed + --seeds - 1 = {seed + count - 1})")


def show(value: Any) -> str:
    """A bad value as an error message quotes it: at most a short prefix, however large the value."""
    text = _SHOW.repr(str(value) if isinstance(value, str) else value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def _yaml_error(e: BaseException) -> str:
    """One line: YAML's own messages span several, with the offending text quoted in full."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{e.problem or e.context or 'invalid YAML'}{where}"
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return (str(e).splitlines() or [type(e).__name__])[0][:200]


def _load_yaml(text: str, loader: type, what: str) -> Any:
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 (both loaders derive from SafeLoader)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(f"{what}: {_yaml_error(e)}") from None


def read_yaml(text: str, what: str) -> Any:
    """YAML (or JSON) as any input file is read: plain values, no anchors, and a key given twice refused."""
    return _load_yaml(text, _NoAliases, what)


EXTENDS = "extends"
MAX_EXTENDS = 16


def read_config_file(source: str | Path, kind: str) -> dict[str, Any]:
    """Read a YAML/JSON file, or a shipped config by name (``configs/<kind>/<name>.yaml``).

    Unquoted YAML scalars come back as :class:`Plain` text, typed later by their field. A file
    may name a parent with ``extends:`` (a shipped name, or a path relative to the file): the
    parent's keys come first and the file's own replace them, so that a variant states only
    what differs from the config it varies. Every file of the chain is read under the same
    guards.
    """
    return _read_chain(_locate(source, kind), kind, ())


def _shipped_names(kind: str) -> list[str]:
    """The shipped configs of a kind a user picks from; ``_name`` files are parents, not configs."""
    folder = SHIPPED / kind
    return sorted(p.stem for p in folder.glob("*.yaml") if not p.stem.startswith("_")) if folder.is_dir() else []


def _locate(source: str | Path, kind: str, beside: Path | None = None) -> Path:
    """The file ``source`` names: a path (relative to ``beside``, the extending file, if given), else a shipped name."""
    path = Path(source)
    if beside is not None and not path.is_absolute():
        path = beside.parent / path
    if path.is_file():  # a folder of the same name (a download called `mllmu`) is not a config
        return path
    shipped = SHIPPED / kind / f"{source}.yaml"
    if shipped.exists():
        return shipped
    if beside is not None:
        raise ConfigError(f"config {beside} extends {show(source)}, which is neither a file beside it nor a shipped "
                          f"{kind} config {_shipped_names(kind)}")
    raise ConfigError(f"config {show(source)} is neither a file nor a shipped {kind} config {_shipped_names(kind)}")


def _read_chain(path: Path, kind: str, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The file's keys over those of the parents it extends, nearest last."""
    here = path.resolve()
    if here in chain:
        names = " -> ".join(p.name for p in (*chain, here)[chain.index(here):])
        raise ConfigError(f"config {path} extends itself through {names}")
    if len(chain) >= MAX_EXTENDS:
        raise ConfigError(f"config {path}: more than {MAX_EXTENDS} configs extend one another; a chain holds a few")
    data = _read_file(path)
    parent = _pop_parent(data, f"config {path}: ")
    if parent is None:
        return data
    return _inherit(_read_chain(_locate(parent, kind, beside=path), kind, (*chain, here)), data)


def _pop_parent(data: dict[str, Any], where: str) -> str | None:
    """The config ``data`` extends, taken out of it; None where it extends none."""
    if EXTENDS not in data:
        return None
    parent = data.pop(EXTENDS)
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{where}extends names one config (a shipped name or a file), got {show(parent)}")
    return parent.strip()


def _inherit(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``parent``: a key the child sets whole also drops the parent's dotted keys under it."""
    whole = {k for k in child if isinstance(k, str) and "." not in k}
    kept = {k: v for k, v in parent.items() if not (isinstance(k, str) and k.partition(".")[0] in whole and "." in k)}
    return _merge(kept, child)


def _read_file(path: Path) -> dict[str, Any]:
    """One config file's own keys, under the size cap, without anchors."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path} is over {MAX_CONFIG_BYTES >> 20} MiB; a config holds a few options")
        text = path.read_text()
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config {path}: {_yaml_error(e)}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError, ConfigError) as e:
            raise ConfigError(f"cannot read config {path}: {_yaml_error(e)}") from None
    else:
        data = _load_yaml(text, _TextLoader, f"cannot read config {path}")
    if data is None or data == "":
        return {}
    if not isinstance(data, dict):
        got = "a list" if isinstance(data, list) else f"the value {show(data)}"
        raise ConfigError(f"config {path} must be a mapping of keys to values (key: value lines), got {got}")
    return data


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"key {show(twice[0])} is given twice; keep one")
    return dict(pairs)


def parse_overrides(items: str | Sequence[str]) -> dict[str, Any]:
    """``["lr=1e-5", "scope=visual"]`` -> ``{"lr": Plain("1e-5"), "scope": Plain("visual")}``.

    Values stay the text after ``=``; :func:`build` reads each by its field's type. One override may
    come as a string of its own, as an API caller writes it.
    """
    out: dict[str, Any] = {}
    for item in [items] if isinstance(items, str) else items:
        if "=" not in item:
            raise ConfigError(f"override {show(item)} is not of the form key=value")
        key, value = item.split("=", 1)
        out[key.strip()] = Plain(value)
    return out


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", re.ASCII)  # the digits float() reads alike


def _typed(text: Plain, name: str = "value") -> Any:
    """The text as YAML types it, plus the exponent floats YAML 1.1 leaves as strings (``1e-5``)."""
    if text.strip() == "":
        return None
    value = _load_yaml(text, _NoAliases, f"{name}: cannot read {show(text)}")
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value


def _structure(text: Plain, name: str = "value") -> Any:
    """Lists and mappings written in the text (``[1, 2]``, ``{a: 1}``), their items still text."""
    value = _load_yaml(text, _TextLoader, f"{name}: cannot read {show(text)}")
    return Plain("") if value is None else value


def _is_null(text: Plain) -> bool:
    try:
        return _typed(text) is None
    except ConfigError:
        return False


def resolve(value: Any) -> Any:
    """Type every :class:`Plain` inside ``value`` as YAML would, for fields that declare no type."""
    if isinstance(value, Plain):
        value = _typed(value)
        if isinstance(value, list | dict):
            return resolve(value)
        return value
    if isinstance(value, dict):
        return {resolve(k): resolve(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [resolve(v) for v in value]
    return value


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or a :class:`ConfigError` that names the field and quotes a prefix."""
    origin = tp if tp in (list, tuple) else typing.get_origin(tp)  # a bare ``list`` is a list of anything
    args = typing.get_args(tp)
    if tp is Any:
        return resolve(value)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, Plain) and _is_null(value))):
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: {show(value)} fits none of {tp}")
    if origin is typing.Literal:
        for candidate in (value, _typed(value, name) if isinstance(value, Plain) else value):
            if isinstance(candidate, str | int | float | bool | None) and candidate in args:
                return args[args.index(candidate)]
        raise ConfigError(f"{name}: {show(value)} is not one of {list(args)}")
    if origin in (list, tuple, Sequence):
        if isinstance(value, Plain):
            value = _structure(value, name)
        if isinstance(value, str):
            value = [Plain(v.strip()) for v in value.split(",") if v.strip()]
        if isinstance(value, int | float | bool):  # quant_bits=4: a list of one
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {show(value)}")
        inner = args[0] if args else Any
        items = [_coerce(name, v, inner) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if isinstance(value, Plain):
            value = _structure(value, name)
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {show(value)}")
        return resolve(dict(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Plain):
            value = _structure(value, name)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping for {tp.__name__}, got {show(value)}")
        return build(tp, value, prefix=f"{name}.")
    if tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{name}: expected a string, got {show(value)}")
    if isinstance(value, Plain):
        text = value.strip()
        value = int(text) if tp is int and text.isascii() and text.isdigit() else _typed(value, name)  # 0755: 755
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # a quoted one, as numbers are
            value = value.strip().lower() == "true"
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected true or false, got {show(value)}")
    if tp is float:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name}: expected a finite number, got {show(value)}")
            return float(value)
        raise ConfigError(f"{name}: expected a number, got {show(value)}")
    if tp is int:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{name}: expected an integer, got {show(value)}")
    return resolve(value)


def build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    """Make ``cls`` from a mapping; nested dataclasses accept nested mappings or dotted keys."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    nested: dict[str, dict[str, Any]] = {}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys are names, got {show(key)} in {cls.__name__}")
        head, _, rest = key.partition(".")
        if head not in fields:
            settable = sorted(k for k, f in fields.items() if not f.metadata.get("set_by"))
            raise ConfigError(f"unknown config key {show(prefix + head)} for {cls.__name__}"
                              f"{did_you_mean([head], settable)}; valid keys: {', '.join(settable)}")
        if set_by := fields[head].metadata.get("set_by"):
            raise ConfigError(f"{prefix + head} is set by {set_by}, not by a config")
        if rest:
            if not dataclasses.is_dataclass(hints[head]):
                raise ConfigError(f"config key {show(prefix + head)} has no sub-keys")
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
    values = config_values(source, kind or cls.__name__.lower())
    extra = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    return build(cls, _merge(values, extra))


def config_values(source: str | Path | Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    """The keys of a config file, shipped name or mapping, with whatever it ``extends`` beneath them.

    The API's mapping may extend a file or a shipped name as a file does (a path relative to the
    working folder)."""
    if source is None:
        return {}
    if not isinstance(source, Mapping):
        return read_config_file(source, kind)
    values = dict(source)
    parent = _pop_parent(values, "")
    return values if parent is None else _inherit(read_config_file(parent, kind), values)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        head, _, rest = k.partition(".") if isinstance(k, str) else (k, "", "")
        if rest and isinstance(out.get(head), dict):
            out[head] = _merge(out[head], {rest: v})
        else:
            out[k] = v
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def describe(cls: type, values: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None) -> str:
    """Help text for every option of a config class, for ``--help`` and the docs.

    ``values``: what a run starts from (a shipped config's), shown beside each default it changes.
    ``defaults``: where a caller's default is not the field's (a method's own ``scope``).
    """
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("set_by"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        )
        default = (defaults or {}).get(f.name, default)
        tp = getattr(hints[f.name], "__name__", str(hints[f.name]))
        shown = f"default {default!r}"
        if values is not None and f.name in values and values[f.name] != default:
            shown += f", shipped {values[f.name]!r}"
        lines.append(f"  {f.name} ({tp}, {shown}): {f.metadata.get('help', '')}")
    return "\n".join(lines)
