"""Property tests of config parsing: whatever YAML text or override a user writes, each field
ends up with its declared type, or the parse stops with one short line naming what is wrong."""

from __future__ import annotations

import dataclasses
import time
import tracemalloc
from pathlib import Path
from typing import Any, Literal

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unsee.config import load_config, opt
from unsee.errors import ConfigError


@dataclasses.dataclass
class Inner:
    rate: float = opt(0.5, "a float")


@dataclasses.dataclass
class Every:
    """One field of each kind a config of unsee declares."""

    f: float = opt(1.0, "float")
    i: int = opt(1, "int")
    b: bool = opt(False, "bool")
    s: str = opt("", "str")
    lit: Literal["a", "b"] = opt("a", "literal")
    ints: list[int] = opt([], "list of int")
    strs: list[str] = opt([], "list of str")
    maybe: int | None = opt(None, "optional int")
    table: dict = opt({}, "free mapping")
    anything: Any = opt(None, "untyped")
    inner: Inner = opt(Inner(), "nested")


CHECKS = {
    "f": lambda v: type(v) is float, "i": lambda v: type(v) is int, "b": lambda v: type(v) is bool,
    "s": lambda v: type(v) is str, "lit": lambda v: v in ("a", "b"),
    "ints": lambda v: type(v) is list and all(type(x) is int for x in v),
    "strs": lambda v: type(v) is list and all(type(x) is str for x in v),
    "maybe": lambda v: v is None or type(v) is int, "table": lambda v: type(v) is dict,
    "anything": lambda v: True, "inner": lambda v: type(v) is Inner and type(v.rate) is float,
}
KEYS = [*CHECKS, "inner.rate"]

# YAML-ish text: the characters that make YAML do something (indicators, quotes, digits, words).
TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(list("0123456789.eE+-_xob:[]{},&*!|>'\"#%@`~ \tnyestrufalN")), max_size=40),
    st.sampled_from(["yes", "no", "on", "off", "null", "~", ".inf", "-.nan", "0755", "1e3", "0x1F", "2024-01-01",
                     "[1, 2]", "{a: 1}", "a,b", "&a x", "*a", "!!python/object:os.system", "'1'", '"no"']),
    st.text(max_size=30),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=5), inner, max_size=4)),
                      max_leaves=12)


def _check(build: Any) -> None:
    """Run ``build``; the result is well typed, or the error is one short line, in bounded time and memory."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        cfg = build()
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 400, message
    else:
        for name, ok in CHECKS.items():
            assert ok(getattr(cfg, name)), (name, getattr(cfg, name))
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 20 << 20


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), text=TEXT)
def test_any_override_text_parses_to_the_declared_type_or_one_line(key: str, text: str) -> None:
    _check(lambda: load_config(Every, None, [f"{key}={text}"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_any_yaml_file_parses_to_the_declared_type_or_one_line(values: dict, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    _check(lambda: load_config(Every, path))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=TEXT)
def test_any_yaml_text_under_a_key_parses_or_gives_one_line(body: str, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"f: {body}\ns: {body}\n")
    _check(lambda: load_config(Every, path))


@settings(max_examples=60, deadline=None)
@given(values=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_any_mapping_from_python_parses_or_gives_one_line(values: dict) -> None:
    _check(lambda: load_config(Every, values))
