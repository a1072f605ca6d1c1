"""The command line: a thin layer whose user mistakes end in one line on stderr and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from unsee import __version__
from unsee.cli import main
from unsee.models import load_adapter

if TYPE_CHECKING:
    from conftest import TinyModels


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"unsee {__version__}"


def test_python_dash_m_runs_the_command_line() -> None:
    """``python -m unsee`` where the ``unsee`` script is not on PATH: the same command line, its exit code kept."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "unsee", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"unsee {__version__}"
    bad = subprocess.run([sys.executable, "-m", "unsee", "eval", "--model", "nowhere", "--data", "nowhere", "--out",
                          "nowhere.json"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_progress_bar_setting_tqdm_cannot_read_is_one_line_naming_it(tmp_path: Path) -> None:
    """tqdm parses TQDM_* when it is imported: a bad one was a ValueError traceback naming no variable."""
    import os
    import subprocess
    import sys

    out = tmp_path / "r.json"
    env = {**os.environ, "TQDM_MININTERVAL": "fast"}
    bad = subprocess.run([sys.executable, "-m", "unsee", "eval", "--model", "nowhere", "--data", "nowhere", "--out",
                          str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert bad.stderr.count("\n") == 1 and "TQDM_MININTERVAL='fast'" in bad.stderr
    assert not out.exists()


def test_a_home_folder_written_as_a_tilde_is_the_home_folder_for_every_option(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out=~/x`` and quoted paths reach unsee with their ``~``: --data read it as the home folder, while
    --model looked it up on the hub and --out made a folder named ``~``."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "m").symlink_to(model_dir)
    (home / "w").symlink_to(world)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", "~/m", "--data", "~/w", "--out=~/ev.json", "--forget", "forget_5",
                 "--max-items", "1"]) == 0
    assert (home / "ev.json").is_file() and not (tmp_path / "~").exists()
    # `~name` of no user is a path like any other (pathlib raised on it: a traceback for a typo)
    assert main(["eval", "--model", "~no-such-user-here/m", "--data", "~/w", "--out", "e.json"]) == 2


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: unsee" in out
    for command in ("world", "model", "finetune", "retrain", "unlearn", "eval", "report", "demo", "attack"):
        assert command in out
    # `unsee model` without `init` printed the top-level help and exited 0: a usage error, with its own usage
    with pytest.raises(SystemExit) as e:
        main(["model"])
    assert e.value.code == 2 and "usage: unsee model" in capsys.readouterr().err


def test_missing_required_option_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["model", "init", "--out", str(tmp_path / "m")])
    assert info.value.code == 2
    assert "--arch" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_model_init_shape_writes_the_hub_structure(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["model", "init", "--shape", "qwen2.5-vl-7b", "--out", str(out)]) == 0
    assert "qwen2.5-vl-7b (tiny, random weights)" in capsys.readouterr().out
    adapter = load_adapter(out)
    assert adapter.arch == "qwen2_5_vl" and adapter.model.config.vision_config.fullatt_block_indexes == [1, 3]
    with pytest.raises(SystemExit):
        main(["model", "init", "--shape", "qwen2.5-vl-7b", "--arch", "tiny-llava", "--out", str(tmp_path / "x")])
    capsys.readouterr()
    shaped = ["model", "init", "--shape", "qwen2.5-vl-7b", "--world", str(tmp_path), "--out", str(tmp_path / "y")]
    assert main(shaped) == 2
    assert "a small local tokenizer of its own" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_model_init_unknown_arch(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "m"
    assert main(["model", "init", "--arch", "nope", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("unsee: error: ")
    assert "'nope'" in lines[0] and "tiny-llava" in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert list(tmp_path.iterdir()) == []


def test_model_init_writes_a_loadable_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_models: TinyModels
) -> None:
    out = tmp_path / "m"
    assert main(["model", "init", "--arch", "tiny-llava", "--out", str(out), "--seed", "0"]) == 0
    assert f"tiny-llava written to {out}" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    # the CLI writes exactly what the Python API writes for the same seed
    expected = tiny_models.dir("tiny-llava")
    assert (out / "model.safetensors").read_bytes() == (expected / "model.safetensors").read_bytes()
    assert load_adapter(out).arch == "llava"


def test_model_init_refuses_existing_results(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["model", "init", "--arch", "tiny-llava", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["results.json"]


def test_retrain_needs_a_vanilla_model_made_by_finetune(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        tiny_models: TinyModels, world: Path) -> None:
    out, model = tmp_path / "r", tiny_models.dir("tiny-llava")
    capsys.readouterr()  # what building the model printed
    assert main(["retrain", "--model", str(model), "--data", str(world), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not made by unsee finetune" in err[0]
    assert not out.exists()
    copied = Path(shutil.copytree(model, tmp_path / "v"))
    (copied / "unsee_vanilla.json").write_text("{cut sho")  # a copy cut short
    capsys.readouterr()
    assert main(["retrain", "--model", str(copied), "--data", str(world), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0] and "unsee_vanilla.json" in err[0], err
    assert not out.exists()


def test_unlearn_method_help_lists_the_methods_options(capsys: pytest.CaptureFixture[str]) -> None:
    """``--method X --help`` lists X's keys with their defaults and help, then the shared training keys."""
    with pytest.raises(SystemExit) as info:
        main(["unlearn", "--method", "ncu_only", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    own, shared = out.split("options of ncu_only", 1)[1].split("training options every training method shares")
    assert "ncu_images (int, default 256, shipped 1024): NCU: retained images used for the covariance" in own
    assert "energy (float, default 0.01)" in own and "lambda_t" not in own and "tau" not in own
    assert "lr (float, default 1e-05, shipped 0.0009): AdamW learning rate" in shared
    assert "max_steps (int, default 0)" in shared
    with pytest.raises(SystemExit):
        main(["unlearn", "--help", "--method=cvf_ncu"])
    out = capsys.readouterr().out
    assert "lambda_t (float, default 0.0, shipped 10.0): weight of a token-level forget term" in out
    assert "ncu_images (int, default 256, shipped 1024)" in out


def test_unlearn_help_without_a_method_says_how_to_list_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["unlearn", "--help"])
    out = capsys.readouterr().out
    assert "--method NAME --help lists the options" in out and "training options every method shares" not in out


def test_unlearn_help_for_an_unknown_method_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unlearn", "--method", "nope", "--help"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'nope'" in err[0]


def test_a_seed_set_in_the_config_is_used_and_seed_replaces_it(tmp_path: Path, model_dir: Path, world: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``seed=N`` (or ``seed:`` in a config file) is the seed unless ``--seed`` is given: never silently 0."""
    from conftest import WORLD_OVERRIDES

    tiny = [*WORLD_OVERRIDES, "n_requests=0"]
    assert main(["world", "--out", str(tmp_path / "w3"), "--config", "quick", "--no-example", *tiny, "seed=3"]) == 0
    assert json.loads((tmp_path / "w3" / "world.json").read_text())["seed"] == 3
    assert main(["world", "--out", str(tmp_path / "w4"), "--config", "quick", "--no-example", "--seed", "4", *tiny,
                 "seed=3"]) == 0
    assert json.loads((tmp_path / "w4" / "world.json").read_text())["seed"] == 4

    fast = ["max_steps=1", "batch_size=2", "progress=false"]
    common = ["unlearn", "--method", "ga", "--model", str(model_dir), "--data", str(world), "--max-items", "1"]
    config = tmp_path / "ga.yaml"
    config.write_text("seed: 5\n")
    seeds = {}
    for name, extra in {"override": [*fast, "seed=3"], "file": ["--config", str(config), *fast],
                        "flag": ["--seed", "4", *fast, "seed=3"], "none": fast}.items():
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
        run = json.loads((tmp_path / name / "results.json").read_text())["runs"][-1]
        assert run["seed"] == run["config"]["seed"]
        seeds[name] = run["seed"]
    assert seeds == {"override": 3, "file": 5, "flag": 4, "none": 0}


def test_demo_command_and_api_share_their_defaults() -> None:
    """``unsee demo`` and ``unsee.api.demo`` with nothing given do the same thing (audits included)."""
    import inspect

    from unsee.cli import parser
    from unsee.demo import run_demo

    given = parser().parse_args(["demo", "--out", "x"])
    defaults = {k: p.default for k, p in inspect.signature(run_demo).parameters.items()}
    assert defaults["audit"] is (not given.no_audit)
    for key in ("methods", "quick", "arch", "seed", "protocol", "seeds", "config"):
        assert defaults[key] == getattr(given, key), key


@pytest.mark.parametrize(("config", "why"), [
    ({"attacks": ["relearm"]}, "attacks: unknown attack(s) ['relearm']"),
    ({"audit_methods": ["grad_diff"]}, "audit_methods: unknown method(s) ['grad_diff']"),
    ({"method_overrides": {"grad_diff": ["max_steps=1"]}}, "method_overrides: unknown method(s) ['grad_diff']"),
    ({"method_overrides": {"ga": ["max_stepz=1"]}},
     "unknown option(s) ['max_stepz'] for method 'ga' (did you mean 'max_steps'?)"),
    ({"world_overrides": ["seed=5"]}, "world_overrides: the demo's --seed sets"),
    ({"recipe_overrides": ["n_people=4", " seed =7"]}, "recipe_overrides: the demo's --seed sets"),
])
def test_a_demo_config_naming_what_does_not_exist_stops_before_anything_is_built(
        config: dict, why: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A typo was read as no audits or as the shipped config, or stopped the demo after a method had run;
    a seed given beside --seed was replaced by it."""
    path = tmp_path / "demo.yaml"
    path.write_text(json.dumps(config))
    assert main(["demo", "--quick", "--out", str(tmp_path / "out"), "--config", str(path),
                 "--methods", "ga", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("argv", "said", "guess"), [
    (["unlern"], "'unlern' (choose from 'world', 'model', 'finetune', 'retrain', 'unlearn', 'tune', 'forget', "
                 "'eval', 'report', 'demo', 'attack')", "unlearn"),
    (["attack", "qaunt", "--model", "m", "--data", "d", "--out", "o"], "'mia', 'all')", "quant"),
    (["eval", "--model", "m", "--data", "d", "--out", "o", "--dtype", "bf61"], "'fp32')", "bf16"),
    (["attack", "nothinglike", "--model", "m", "--data", "d", "--out", "o"], "'mia', 'all')", None),
])
def test_a_mistyped_choice_names_the_one_it_is_a_slip_of(argv: list[str], said: str, guess: str | None,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """argparse lists the choices; the one a typo meant is named too, as unsee's own errors name it, and a name
    close to none gets no guess."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.rstrip()
    assert said in err
    assert err.endswith(f"{said} (did you mean {guess!r}?)" if guess else said)


def test_an_unknown_tiny_architecture_names_the_one_it_is_a_slip_of(tmp_path: Path) -> None:
    from unsee.errors import ModelError
    from unsee.models.tiny import init_model

    with pytest.raises(ModelError, match=r"tiny-qwen2\.5-vl \(did you mean 'tiny-qwen2-vl'\?\)$"):
        init_model("tiny-qwen2vl", tmp_path / "m")
    assert not (tmp_path / "m").exists()
