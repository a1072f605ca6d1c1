"""Typed configs: files, shipped names and ``key=value`` overrides, with every mistake named."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import unsee.config as config_module
from unsee import api
from unsee.config import (
    Plain,
    build,
    check_seeds,
    describe,
    load_config,
    opt,
    parse_overrides,
    read_config_file,
    to_dict,
)
from unsee.engine.trainer import TrainConfig
from unsee.errors import ConfigError, did_you_mean
from unsee.methods import method_class
from unsee.runs import method_configs


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
    assert "(did you mean 'lr'?)" in str(info.value)  # a slip of one key is named


def test_a_slip_of_a_name_is_named_and_a_stranger_is_not() -> None:
    assert did_you_mean(["graddif"], ["ga", "graddiff", "kl"]) == " (did you mean 'graddiff'?)"
    assert did_you_mean(["augmnet", "zzz", "augment_"], ["augment", "tau"]) == " (did you mean 'augment'?)"
    assert did_you_mean(["xyz"], ["ga", "graddiff"]) == ""
    # equally close choices are all named: picking one of them would be a guess
    assert did_you_mean(["forget_20"], ["forget_10", "forget_r2", "retain_90"]) == \
        " (did you mean 'forget_10' or 'forget_r2'?)"
    with pytest.raises(ConfigError, match=r"unknown method 'npo_' \(did you mean 'npo'\?\); choose one of"):
        method_class("npo_")
    with pytest.raises(ConfigError, match=r"\['augmnet'\] for method 'cvf_ncu' \(did you mean 'augment'\?\)"):
        method_configs("cvf_ncu", None, ["augmnet=1"])


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


@pytest.mark.parametrize(("text", "message"), [("- a\n- b\n", "must be a mapping.*got a list$"),
                                               ("lr 1e-4\n", "must be a mapping.*got the value 'lr 1e-4'$"),
                                               ("lr: [1,\n", "cannot read")])
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
    shipped = describe(Recipe, {"lr": 0.5, "steps": 10})
    assert "lr (float, default 0.0001, shipped 0.5): learning rate" in shipped
    assert "steps (int, default 10): optimiser steps" in shipped  # a value equal to the default is not repeated


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


@pytest.mark.parametrize(("name", "text"), [("r.yaml", "lr: 0.1\nsteps: 2\nlr: 0.3\n"),
                                            ("r.json", '{"lr": 0.1, "lr": 0.3}'),
                                            ("o.yaml", "optim: {a: 1, a: 2}\n")])
def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path: Path, name: str, text: str) -> None:
    """YAML and JSON keep the last of two equal keys without a word; the first is the one a reader sees."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"is given twice") as info:
        load_config(Recipe, path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_one_override_may_be_a_string_of_its_own() -> None:
    assert load_config(Recipe, None, "lr=0.5").lr == load_config(Recipe, None, ["lr=0.5"]).lr == 0.5


def test_a_quoted_value_reads_alike_for_every_scalar_type(tmp_path: Path) -> None:
    """A JSON config or an API mapping may quote its values: a number or a truth value spelled out reads as one
    whatever the field's type (the float fields read them so, and the integer and boolean ones refused)."""
    cfg = load_config(Recipe, {"lr": "0.5", "steps": "7", "bf16": "false"})
    assert (cfg.lr, cfg.steps, cfg.bf16) == (0.5, 7, False)
    path = tmp_path / "r.json"
    path.write_text('{"steps": "3", "bf16": "True"}')
    assert (load_config(Recipe, path).steps, load_config(Recipe, path).bf16) == (3, True)
    for bad, field_ in (({"steps": "2.5"}, "steps"), ({"steps": "two"}, "steps"), ({"bf16": "no"}, "bf16")):
        with pytest.raises(ConfigError, match=f"^{field_}: expected"):
            load_config(Recipe, bad)


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
    with pytest.raises(ConfigError, match="^steps: expected an integer, got '²'"):  # a digit int() does not read
        load_config(Recipe, None, ["steps=²"])


def test_errors_quote_only_a_prefix_of_a_huge_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, None, ["steps=" + "x" * 100_000])
    assert len(str(info.value)) < 200
    path = tmp_path / "deep.yaml"
    path.write_text("lr: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path)
    assert len(str(info.value)) < 300 and "\n" not in str(info.value)


# ---- inheritance: extends -------------------------------------------------------------------


def test_extends_a_file_beside_it_then_its_own_keys(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("lr: 0.5\nsteps: 3\noptim: {lr: 0.1, betas: [0.1, 0.2]}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "mid.json").write_text(json.dumps({"extends": "../base.yaml", "steps": 4, "tag": "mid"}))
    child = tmp_path / "sub" / "child.yaml"
    child.write_text("extends: mid.json\ntag: child\noptim.lr: 0.2\n")
    cfg = load_config(Recipe, child, ["steps=5"])
    assert (cfg.lr, cfg.steps, cfg.tag) == (0.5, 5, "child")
    assert cfg.optim == Optim(lr=0.2, betas=[0.1, 0.2])  # a dotted key changes one value of the parent's mapping
    assert "extends" not in read_config_file(child, "recipe")


def test_a_mapping_given_to_the_api_extends_as_a_file_does(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("lr: 0.5\nsteps: 3\n")
    cfg = load_config(Recipe, {"extends": str(tmp_path / "base.yaml"), "steps": 4}, ["tag=t"])
    assert (cfg.lr, cfg.steps, cfg.tag) == (0.5, 4, "t")
    with pytest.raises(ConfigError, match="extends names one config"):
        load_config(Recipe, {"extends": ["a", "b"]})
    # a method's config, split between the engine's options and the method's, reads it the same way
    tcfg, mcfg, _ = api.method_configs("graddiff", {"extends": "graddiff", "max_steps": 1}, ["lr=0.25"])
    shipped, _, _ = api.method_configs("graddiff", None, [])
    assert (tcfg.max_steps, tcfg.lr, tcfg.epochs) == (1, 0.25, shipped.epochs)


def test_a_key_set_whole_replaces_the_parents_dotted_keys(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("optim.lr: 0.3\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\noptim: {betas: [0.5, 0.5]}\n")
    assert load_config(Recipe, tmp_path / "child.yaml").optim == Optim(betas=[0.5, 0.5])


def test_extends_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "_common.yaml").write_text("steps: 2\nlr: 0.25\n")
    (tmp_path / "recipe" / "quick.yaml").write_text("extends: _common\nsteps: 1\n")
    monkeypatch.setattr(config_module, "SHIPPED", tmp_path)
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: quick\ntag: mine\n")
    assert (load_config(Recipe, "quick").steps, load_config(Recipe, "quick").lr) == (1, 0.25)
    assert to_dict(load_config(Recipe, mine)) == to_dict(load_config(Recipe, "quick", ["tag=mine"]))
    # a parent file is a shipped name too, but the list of configs to pick from leaves it out
    with pytest.raises(ConfigError, match=r"shipped recipe config \['quick'\]$"):
        load_config(Recipe, "slow")


@pytest.mark.parametrize(("files", "message"), [
    ({"a.yaml": "extends: a.yaml\n"}, r"a.yaml extends itself through a.yaml -> a.yaml$"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
     r"extends itself through a.yaml -> b.yaml -> a.yaml"),
    ({"a.yaml": "extends: nowhere\n"}, r"extends 'nowhere', which is neither a file beside it nor a shipped recipe"),
    ({"a.yaml": "extends: [b.yaml]\n"}, r"extends names one config"),
    ({"a.yaml": "extends:\n"}, r"extends names one config"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "x: &x 1\ny: *x\n"}, r"anchors and aliases"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "- 1\n"}, r"b.yaml must be a mapping"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "steps: " + "1" * (1 << 20) + "\n"}, r"b.yaml is over 1 MiB"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "stpes: 1\n"}, r"unknown config key 'stpes'"),
    ({"a.yaml": "extends: b.yaml\n", "b.yaml": "steps: many\n"}, r"steps: expected an integer"),
])
def test_bad_inheritance_is_one_line(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(Recipe, tmp_path / "a.yaml")
    assert "\n" not in str(info.value) and len(str(info.value)) < 500


def test_a_long_chain_stops(tmp_path: Path) -> None:
    for i in range(40):
        (tmp_path / f"c{i}.yaml").write_text(f"extends: c{i + 1}.yaml\n")
    (tmp_path / "c40.yaml").write_text("steps: 1\n")
    with pytest.raises(ConfigError, match="more than 16 configs extend one another"):
        load_config(Recipe, tmp_path / "c0.yaml")


# What every shipped unlearning config resolves to (run.json and results.json record it): pinned when
# the shipped files came to share parents through ``extends``, and moved since only by the settings
# picked on the validation request (the learning rates of ga, mmunlearner, vkd, the CVF family and
# ncu_only) and ncu_only's null space made cvf_ncu's. A change of a shipped setting shows here.
TRAIN_BEFORE = {
    "scope": "full", "lr": 2e-05, "epochs": 5.0, "max_steps": 0, "min_steps": 0, "batch_size": 8,
    "group_by_length": False, "visual_lr_scale": 1.0, "weight_decay": 0.0, "grad_clip": 1.0, "sam_rho": 0.0,
    "warmup_ratio": 0.0,
    "schedule": "constant", "bf16": False, "master_weights": "fp32", "reference_device": "same",
    "gradient_checkpointing": False, "lora_r": 16, "lora_alpha": 16, "lora_dropout": 0.05, "seed": 0,
    "log_every": 10, "report_to": "", "logging_dir": "", "eval_every": 0, "progress": True, "checkpoint_dir": "",
    "checkpoint_every": 0, "keep_checkpoint": False,
    "sam_terms": "all",  # added since; off with sam_rho 0
}
# NCU options added since, whose defaults keep the earlier behaviour (the retained null space).
NCU_ADDED = {"subspace": "null", "contrast_rank": 0.02}
CVF_BEFORE = {
    "scope": "visual", "lr": 0.0108, "epochs": 75.0, "min_steps": 282, "tau": 0.1, "lambda_r": 1.0,
    "lambda_d": 80.0, "lambda_o": 0.0, "lambda_t": 10.0, "lambda_v": 0.0, "lambda_dv": 0.0, "merge_block": None,
    "augment": 1.0, "adv_steps": 0, "adv_eps": 8 / 255, "relearn_sim_steps": 0, "relearn_sim_eps": 0.003,
    "ncu": True, "energy": 0.01, "ncu_images": 1024, "lambda_k": 20.0,
    **NCU_ADDED,
    "lambda_known": 0.0, "known_covariance": False,  # added since; off
    "token_target": "mean",  # added since; the one target of before
    "augment_retain": 1.0,  # added since; picked on the validation request
    "redistil_steps": 0, "redistil_alpha": 0.3, "redistil_lr": 0.001, "redistil_batch": 32,  # added since; off
    "redistil_teacher": "start",  # added since; read only with redistil_steps
    "redistil_earlier": 0.125,  # added since; read only with redistil_steps, in continual runs
    "augment_pose": 0.0,  # added since; off
    "augment_background": 0.0,  # added since; off
}
RESOLVED_BEFORE: dict[str, dict] = {
    "ga": {"lr": 1.8e-05},  # since: picked again with the reported people out of the validation request
    "graddiff": {"retain_weight": 1.0},
    "kl": {"kl_weight": 1.0},
    "npo": {"beta": 0.1, "retain_weight": 1.0},
    "mmunlearner": {"lr": 9e-05, "epochs": 1.0, "batch_size": 4, "fisher_batches": 8, "threshold": 1.0,
                    "max_retain_ratio": 9},
    # vkd's lr since: picked again, as GA's
    "vkd": {"scope": "visual", "lr": 0.0027, "epochs": 10.0, "retain_weight": 1.0, "saliency": True,
            "threshold": 1.0, "fisher_batches": 4},
    "cvf_ncu": CVF_BEFORE,
    "cvf_only": {**CVF_BEFORE, "ncu_images": 256},
    "ncu_only": {"scope": "visual", "lr": 0.0009, "tau": 0.1, "lambda_r": 1.0, "lambda_d": 1.0, "lambda_o": 0.0,
                 "lambda_t": 0.0, "lambda_v": 0.0, "lambda_dv": 0.0, "merge_block": None, "augment": 0.0,
                 "adv_steps": 0, "adv_eps": 8 / 255, "relearn_sim_steps": 0, "relearn_sim_eps": 0.003, "ncu": True,
                 "energy": 0.01, "ncu_images": 1024,  # since: the null space of cvf_ncu, as documented
                 "lambda_k": 1.0, **NCU_ADDED},
}
# Keys that were recorded but never read: cvf_only never ran NCU (it recorded ncu: true all the
# same), and ncu_only's loss is GA's, with none of CVF's terms.
NOT_READ = {
    "cvf_only": {"ncu", "energy", "ncu_images", *NCU_ADDED},
    "ncu_only": {"tau", "lambda_r", "lambda_d", "lambda_o", "lambda_t", "lambda_v", "lambda_dv", "merge_block",
                 "augment", "adv_steps", "adv_eps", "relearn_sim_steps", "relearn_sim_eps", "ncu", "lambda_k"},
}


def resolved(method: str, overrides: Sequence[str] = ()) -> dict:
    """What ``unsee unlearn`` records of a method's config (``api.unlearn_adapter``)."""
    tcfg, mcfg, _ = api.method_configs(method, None, overrides)
    return {**to_dict(tcfg), **{k: v for k, v in to_dict(mcfg).items() if k != "forgotten_images"}}


@pytest.mark.parametrize("method", sorted(RESOLVED_BEFORE))
def test_shipped_configs_resolve_as_before_they_shared_parents(method: str) -> None:
    before = {**TRAIN_BEFORE, **RESOLVED_BEFORE[method]}
    assert resolved(method) == {k: v for k, v in before.items() if k not in NOT_READ.get(method, ())}


def test_the_hardened_preset_is_cvf_ncu_with_the_hardening_on() -> None:
    tcfg, mcfg, _ = api.method_configs("cvf_ncu", "cvf_ncu_hardened", ())
    hardened = {**to_dict(tcfg), **{k: v for k, v in to_dict(mcfg).items() if k != "forgotten_images"}}
    assert hardened == {**resolved("cvf_ncu"), "redistil_steps": 300}


def test_the_eraser_config_is_read_as_written() -> None:
    tcfg, ecfg, _ = api.method_configs("eraser", None, ())
    assert (ecfg.fit, ecfg.keep, ecfg.strength, ecfg.gate, ecfg.depth, ecfg.max_items) == (
        "joint", ["train_retain", "train_general", "train_text", "train_known"], -8.0, 0.4, [0.5, 0.75], 200)
    # it trains nothing: a training option would be a silent no-op, so it is refused; bookkeeping is not
    for key in ("lr=1e8", "scope=language", "max_steps=5", "epochs=100", "eval_every=1", "log_every=5"):
        with pytest.raises(ConfigError, match=f"eraser trains no weights: the training option.*{key.split('=')[0]}"):
            api.method_configs("eraser", None, [key])
    api.method_configs("eraser", None, ["progress=false", "logging_dir=logs"])
    # its own batch_size shares an engine option's name and is its own, so its recorded config reads back
    tcfg, ecfg, _ = api.method_configs("eraser", None, ["batch_size=8"])
    assert ecfg.batch_size == 8 and tcfg.batch_size == TrainConfig().batch_size
    recorded = to_dict(api.method_configs("eraser", None, ())[1])
    assert to_dict(api.method_configs("eraser", recorded, ())[1]) == recorded
    # the shipped sweep picks strength, gate and layers itself: setting them beside it would change nothing
    for key in ("strength=-3", "gate=0.2", "depth=[0, 0.25]"):
        with pytest.raises(ConfigError, match=f"{key.split('=')[0]} would not be read: with sweep=true"):
            api.method_configs("eraser", None, [key])
    assert api.method_configs("eraser", None, ["sweep=false", "strength=-3"])[1].strength == -3.0
    assert api.method_configs("eraser", None, ["layers=[1]", "sweep_strengths=[-3]"])[1].layers == [1]


@pytest.mark.parametrize(("method", "key"), [
    ("ncu_only", "lambda_t=10"), ("ncu_only", "tau=0.2"), ("ncu_only", "ncu=false"), ("cvf_only", "ncu=true"),
    ("cvf_only", "energy=0.1"), ("cvf_only", "ncu_images=8"), ("ga", "retain_weight=2"), ("graddiff", "kl_weight=2"),
    ("kl", "beta=0.2"), ("npo", "kl_weight=1"), ("vkd", "lambda_d=1"), ("mmunlearner", "saliency=false"),
    ("cvf_ncu", "beta=0.1"),
])
def test_a_key_the_method_does_not_read_is_refused(method: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown option\(s\) \['{key.split('=')[0]}'\] for method '{method}'"):
        api.method_configs(method, None, [key])


@pytest.mark.parametrize(("method", "key", "value"), [
    ("ncu_only", "energy", 0.05), ("ncu_only", "ncu_images", 8), ("cvf_only", "lambda_t", 2.0),
    ("cvf_only", "lambda_k", 3.0), ("cvf_ncu", "ncu", False), ("cvf_ncu", "energy", 0.05),
    ("graddiff", "retain_weight", 2.0), ("npo", "beta", 0.2),
])
def test_a_key_the_method_reads_is_taken(method: str, key: str, value: object) -> None:
    assert resolved(method, [f"{key}={value}"])[key] == value


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A download kept as ./mllmu shares its name with the finetune recipe for it: the recipe is read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mllmu").mkdir()
    assert read_config_file("mllmu", "finetune") == read_config_file(config_module.SHIPPED / "finetune" / "mllmu.yaml",
                                                                     "finetune")
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="config 'mine' is neither a file nor a shipped finetune config"):
        read_config_file("mine", "finetune")


def test_one_override_as_a_string_takes_the_runs_own_additions() -> None:
    """The API takes one override as a plain string: the per-seed checkpoint folder joins it, not its letters."""
    for overrides in ("checkpoint_dir=ck", ["checkpoint_dir=ck"]):
        seeded = api.seed_overrides("graddiff", None, overrides, 1, 2)
        assert api.method_configs("graddiff", None, seeded)[0].checkpoint_dir == str(Path("ck") / "seed-1")


@pytest.mark.parametrize(("method", "key", "why"), [
    ("ncu_only", "ncu_images=-1", "ncu_images must be at least 1"), ("ncu_only", "ncu_images=0", "at least 1"),
    ("ncu_only", "energy=1.5", "energy is a fraction"), ("cvf_ncu", "energy=-0.1", "energy is a fraction"),
    ("cvf_ncu", "lambda_r=-1", "lambda_r=-1.0: must not be negative"), ("cvf_only", "tau=0", "tau must be positive"),
    ("cvf_only", "adv_eps=-0.01", "adv_eps=-0.01: must not"), ("cvf_ncu", "relearn_sim_steps=-2", "must not be"),
])
def test_an_option_out_of_its_range_is_refused_before_a_model_loads(method: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)):
        api.method_configs(method, None, [key])


@pytest.mark.parametrize("method", ["cvf_ncu", "ncu_only"])
def test_what_the_continual_driver_sets_is_no_option(method: str) -> None:
    """A value given would change the run while its record, which leaves the field out, could not repeat it."""
    with pytest.raises(ConfigError, match="forgotten_images is set by the continual driver, not by a config"):
        api.method_configs(method, None, ["forgotten_images=[a.png]"])
    assert "forgotten_images" not in describe(api.method_configs(method, None, ())[2].Config)


def test_a_quoted_value_stays_short_however_it_nests() -> None:
    """Each string is cut, but escaped non-ASCII text in a list of mappings still ran to a thousand characters."""
    from unsee.config import show

    nested = [{"\U0007ae61" * 40 + str(i): "\x84" * 40 for i in range(4)}] * 4
    assert len(show(nested)) <= 160 and "\n" not in show(nested)
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, {"lr": nested})
    assert len(str(info.value)) < 200


@pytest.mark.parametrize(("count", "says"), [(0, "at least 1, got 0"), (-2, "at least 1, got -2"),
                                             (2.5, "a whole number, got 2.5"), (True, "a whole number, got True"),
                                             ("3", "a whole number, got '3'")])
def test_a_count_of_seeds_is_a_whole_number_from_one(count: object, says: str) -> None:
    """The API takes ``seeds`` as Python gives it: 2.5 seeds is no count, and is said as such, not as too few."""
    with pytest.raises(ConfigError, match=f"--seeds must be {re.escape(says)}"):
        check_seeds(0, count)  # type: ignore[arg-type]
    check_seeds(0, 3)
