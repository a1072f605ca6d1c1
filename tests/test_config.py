"""Typed configs: files, shipped names and ``key=value`` overrides, with every mistake named."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import unsee.config as config_module
from unsee.config import Plain, build, describe, load_config, opt, parse_overrides, read_config_file, to_dict
from unsee.errors import ConfigError


@dataclass
class Optim:
    lr: float = opt(1e-4, "learning rate")
    betas: list[float] = opt([0.9, 0.999], "Adam betas")


@dataclass
class Recipe:
    lr: float = opt(1e-4, "learning rate")
    steps: int = opt(10, "optimiser steps")
    scope: Literal["full", "visual", "projector", "language", "lora", "vision_tower"] = opt("full", "what trains")
    layers: list[int] = opt([], "decoder layers to edit")
    names: list[str] = opt([], "entity names")
    bf16: bool = opt(False, "bfloat16 autocast")
    max_items: int | None = opt(None, "cap per group")
    tag: str = opt("run", "a label")
    optim: Optim = field(default_factory=Optim, metadata={"help": "optimiser settings"})

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")


# ---- overrides ----------------------------------------------------------------------


def test_overrides_set_typed_values() -> None:
    cfg = load_config(Recipe, None, ["lr=1e-5", "scope=visual", "steps=3", "bf16=true", "names=ann,bob",
                                     "max_items=null", "tag=7"])
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.scope == "visual"
    assert cfg.steps == 3
    assert cfg.bf16 is True
    assert cfg.names == ["ann", "bob"]
    assert cfg.max_items is None
    assert cfg.tag == "7"


def test_override_list_in_yaml_flow_syntax() -> None:
    assert load_config(Recipe, None, ["layers=[1, 2]"]).layers == [1, 2]


def test_override_comma_list() -> None:
    cfg = load_config(Recipe, None, ["layers=1,2", "names=ann,2"])
    assert cfg.layers == [1, 2]
    assert cfg.names == ["ann", "2"]


def test_yaml_boolean_words_stay_strings_for_str_fields() -> None:
    cfg = load_config(Recipe, None, ["tag=no", "names=yes,on"])
    assert cfg.tag == "no" and cfg.names == ["yes", "on"]
    assert load_config(Recipe, None, ["tag=true"]).tag == "true"


def test_parse_overrides() -> None:
    parsed = parse_overrides(["scope=visual", "steps=3", "layers=[1,2]", "tag=", "note=a=b"])
    assert parsed == {"scope": "visual", "steps": "3", "layers": "[1,2]", "tag": "", "note": "a=b"}
    assert all(isinstance(v, Plain) for v in parsed.values())  # typed later, by the field they fill


def test_overrides_read_exponent_floats() -> None:
    assert load_config(Recipe, None, ["lr=1e-5"]).lr == 1e-5


def test_override_without_equals_raises() -> None:
    with pytest.raises(ConfigError, match="'lr'.*key=value"):
        parse_overrides(["lr"])


@pytest.mark.parametrize(
    ("override", "field"),
    [("steps=abc", "steps"), ("steps=1.5", "steps"), ("lr=fast", "lr"), ("bf16=maybe", "bf16"),
     ("scope=everything", "scope"), ("layers=1,x", "layers"), ("optim.lr=x", "optim.lr"),
     ("max_items=[1", "max_items")],
)
def test_bad_type_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        load_config(Recipe, None, [override])


# ---- unknown keys --------------------------------------------------------------------


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'lrr' for Recipe") as info:
        load_config(Recipe, None, ["lrr=1e-5"])
    assert "valid keys:" in str(info.value) and "lr" in str(info.value)


def test_unknown_nested_key_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'optim.beta' for Optim"):
        load_config(Recipe, {"optim": {"beta": [0.9]}})
    with pytest.raises(ConfigError, match="unknown config key 'optim.beta'"):
        load_config(Recipe, None, ["optim.beta=1"])


def test_unknown_key_in_a_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 0.1\nsteep: 3\n")
    with pytest.raises(ConfigError, match="'steep'"):
        load_config(Recipe, path)


def test_sub_key_of_a_plain_field() -> None:
    with pytest.raises(ConfigError, match="'lr' has no sub-keys"):
        load_config(Recipe, None, ["lr.value=1"])


# ---- files, mappings, nesting -----------------------------------------------------------


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("lr: 0.001\nsteps: 5\noptim:\n  lr: 0.5\n")
    cfg = load_config(Recipe, path, ["steps=7", "optim.betas=[0.8, 0.9]"])
    assert (cfg.lr, cfg.steps) == (0.001, 7)
    assert cfg.optim == Optim(lr=0.5, betas=[0.8, 0.9])


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"scope": "projector", "layers": [3], "optim": {"lr": 2}}))
    cfg = load_config(Recipe, path)
    assert cfg.scope == "projector" and cfg.layers == [3]
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)


def test_dotted_override_keeps_the_other_nested_values() -> None:
    cfg = load_config(Recipe, {"optim": {"lr": 0.5, "betas": [0.1, 0.2]}}, {"optim.lr": 0.25})
    assert cfg.optim == Optim(lr=0.25, betas=[0.1, 0.2])


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(Recipe, path) == Recipe()


@pytest.mark.parametrize(("text", "message"), [("- a\n- b\n", "must be a mapping"), ("lr: [1,\n", "cannot read")])
def test_bad_file_raises(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Recipe, path)


def test_shipped_config_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "quick.yaml").write_text("steps: 2\n")
    monkeypatch.setattr(config_module, "SHIPPED", tmp_path)
    assert read_config_file("quick", "recipe") == {"steps": "2"}
    assert load_config(Recipe, "quick", ["lr=0.5"]).steps == 2
    with pytest.raises(ConfigError, match=r"neither a file nor a shipped recipe config \['quick'\]"):
        load_config(Recipe, "slow")


def test_validate_runs_after_overrides() -> None:
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        load_config(Recipe, {"steps": 1}, ["steps=-1"])


def test_mutable_defaults_are_not_shared() -> None:
    a, b = Recipe(), Recipe()
    a.layers.append(1)
    a.optim.betas.append(0.5)
    assert b.layers == [] and b.optim.betas == [0.9, 0.999]


def test_opt_accepts_a_nested_config_default() -> None:
    @dataclass
    class Outer:
        optim: Optim = opt(Optim(lr=0.5), "optimiser settings")

    a, b = Outer(), Outer()
    assert a.optim == Optim(lr=0.5) and a.optim is not b.optim


def test_round_trip_through_a_dict() -> None:
    cfg = load_config(Recipe, None, ["scope=language", "layers=[0, 3]", "optim.lr=0.2"])
    assert build(Recipe, to_dict(cfg)) == cfg


def test_describe_lists_every_option_with_its_help() -> None:
    text = describe(Recipe)
    assert "lr (float, default 0.0001): learning rate" in text
    assert "layers" in text and "decoder layers to edit" in text
    assert len(text.splitlines()) == len(Recipe.__dataclass_fields__)


# ---- hostile input: aliases, rewritten text, huge values ------------------------------------


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    """Six levels of nine aliases are 9**6 list items (nine levels: gigabytes) from a few hundred bytes."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 6)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "lr: *a5"]) + "\n")
    with pytest.raises(ConfigError, match="anchors and aliases") as info:
        load_config(Recipe, path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_config(Recipe, None, ["names=[&a x, *a]"])


@pytest.mark.parametrize("text", ["1e3", "0755", "no", "on", "null", "1_000", "2024-01-01", "~", ".inf", "0x1F"])
def test_string_fields_keep_the_text_that_was_written(tmp_path: Path, text: str) -> None:
    assert load_config(Recipe, None, [f"tag={text}"]).tag == text
    path = tmp_path / "r.yaml"
    path.write_text(f"tag: {text}\nnames: [{text}, b]\n")
    cfg = load_config(Recipe, path)
    assert cfg.tag == text and cfg.names == [text, "b"]


def test_typed_fields_still_read_yaml() -> None:
    cfg = load_config(Recipe, None, ["steps=0755", "lr=1e3", "bf16=yes", "max_items=~"])
    assert (cfg.steps, cfg.lr, cfg.bf16, cfg.max_items) == (755, 1000.0, True, None)
    with pytest.raises(ConfigError, match="^lr: expected a finite number"):
        load_config(Recipe, None, ["lr=.nan"])


def test_errors_quote_only_a_prefix_of_a_huge_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, None, ["steps=" + "x" * 100_000])
    assert len(str(info.value)) < 200
    path = tmp_path / "deep.yaml"
    path.write_text("lr: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)
