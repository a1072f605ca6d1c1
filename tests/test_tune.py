"""``unsee tune``: every setting runs on the validation request, the best mean score is the pick, the pick is a
config that unlearn takes as it is, and the reported people inform nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import WORLD_OVERRIDES
from helpers import launch_command

from unsee import api, tune
from unsee.audit.verdicts import mean_attacks, reference_checks
from unsee.cli import main
from unsee.data.request_example import write_world_request
from unsee.errors import ConfigError, DataError, OutputExistsError, TrainingError
from unsee.eval.metrics import unlearning_score
from unsee.eval.results import load_results
from unsee.runs import method_configs

FAST = ["max_steps=1", "batch_size=2", "progress=false"]


def test_tune_picks_the_best_mean_score_on_the_validation_people_and_writes_it_as_a_config(
        world: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    suites: list[Any] = []
    real = tune.unlearn_and_save
    monkeypatch.setattr(tune, "unlearn_and_save",
                        lambda m, a, suite, **k: suites.append(suite) or real(m, a, suite, **k))
    out = tmp_path / "t"
    code = main(["tune", "--method", "graddiff", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--on", "val_forget_10", "--exclude", "forget_10", "--grid", "lr=1e-4,3e-2", "--seeds", "2",
                 "--max-items", "3", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "tune.json").read_text())
    assert [r["overrides"] for r in result["rows"]] == [["lr=1e-4"], ["lr=3e-2"]]
    assert all(r["seeds"] == [0, 1] for r in result["rows"]) and len(suites) == 4
    # every run is on the validation people, and the reported ones are not even among the retained
    reported = set(api.load_suite(world, "forget_10").forget_entities)
    validation = set(api.load_suite(world, "val_forget_10").forget_entities)
    assert validation and all(set(s.forget_entities) == validation for s in suites)
    for s in suites:
        retained = {e.entity for g in ("retain", "text_retain", "train_retain") for e in s.groups[g]}
        assert retained and not reported & (retained | set(s.forget_entities))
    assert result["exclude"] == {"forget_10": sorted(reported)} and result["exclude_left_out_of_retain"]
    assert result["validation_twin"] is None  # picked on a validation request: nothing flattered
    assert {"unsee_version", "git_hash", "threads"} <= set(result["environment"])  # where the pick was made
    # each row's score is the mean of its runs' unlearning scores against the model's own validation figures
    runs = load_results(out / "results.json")["runs"]
    vanilla, trained = runs[0], runs[1:]
    assert vanilla["method"] == "vanilla" and len(trained) == 4
    for row in result["rows"]:
        mine = [r for r in trained if r["tune"]["overrides"] == row["overrides"]]
        scores = [unlearning_score(vanilla["metrics"], r["metrics"])["score"] for r in mine]
        assert row["scores"] == scores and row["score"] == pytest.approx(sum(scores) / len(scores))
    best = max(result["rows"], key=lambda r: r["score"])
    assert result["pick"]["overrides"] == best["overrides"]
    other = next(r for r in result["rows"] if r is not best)
    assert result["pick"]["lead"]["runner_up"] == other["overrides"]
    assert result["pick"]["lead"]["margin"] == pytest.approx(best["score"] - other["score"])
    assert "<- pick" in printed and f"--config {out / 'graddiff.yaml'}" in printed
    # the pick's file resolves to the very configs the picked run trained with
    assert method_configs("graddiff", out / "graddiff.yaml", [])[:2] == \
        method_configs("graddiff", None, [*FAST, *best["overrides"]])[:2]
    assert {"report.md", "tradeoff.png", "samples.jsonl"} <= {p.name for p in out.iterdir()}
    with pytest.raises(OutputExistsError):
        api.tune("graddiff", model_dir, world, out, on="val_forget_10", overrides=FAST)


def test_a_setting_that_diverges_loses_and_the_others_still_run(world: Path, model_dir: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    assert main(["tune", "--method", "graddiff", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--on", "val_forget_10", "--grid", "lr=1e30,1e-4", "--max-items", "2", *FAST]) == 0
    result = json.loads((out / "tune.json").read_text())
    diverged, kept = result["rows"]
    assert diverged["score"] == 0.0 and list(diverged["failed"]) == ["0"] and not diverged["figures"]
    assert "not finite" in diverged["failed"]["0"] or "became" in diverged["failed"]["0"]
    assert result["pick"]["overrides"] == kept["overrides"] == ["lr=1e-4"] and kept["figures"]
    assert "failed" in capsys.readouterr().out
    with pytest.raises(TrainingError, match="every setting"):
        api.tune("graddiff", model_dir, world, tmp_path / "u", on="val_forget_10", grid=["lr=1e30"], overrides=FAST,
                 max_items=2)
    assert not (tmp_path / "u").exists()


def test_the_people_of_a_request_file_the_pick_is_for_are_left_out_of_the_retained_ones(
        world: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = write_world_request(world, tmp_path / "asked", forget="forget_10")
    people = set(api.load_suite(asked).forget_entities)
    assert people <= set(api.load_suite(world, "val_forget_10").retain_entities)  # retained, unless left out
    suites: list[Any] = []
    real = tune.unlearn_and_save
    monkeypatch.setattr(tune, "unlearn_and_save",
                        lambda m, a, suite, **k: suites.append(suite) or real(m, a, suite, **k))
    out = api.tune("graddiff", model_dir, world, tmp_path / "t", on="val_forget_10", exclude=[str(asked)],
                   grid=["lr=1e-4"], overrides=FAST, max_items=2)
    assert json.loads((out / "tune.json").read_text())["exclude_left_out_of_retain"]
    assert suites and all(not people & set(s.retain_entities) for s in suites)


def test_a_stopped_tune_goes_on_from_its_first_unfinished_run_with_the_same_numbers(
        world: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kw: dict[str, Any] = {"on": "val_forget_10", "grid": ["lr=1e-4,1e-3"], "seeds": 2, "overrides": FAST,
                          "max_items": 2}
    whole = api.tune("graddiff", model_dir, world, tmp_path / "whole", **kw)
    real, calls = tune.unlearn_and_save, []

    def stop_at_the_third(*a: Any, **k: Any) -> Any:
        calls.append(k["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tune, "unlearn_and_save", stop_at_the_third)
    out = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt) as info:
        api.tune("graddiff", model_dir, world, out, **kw)
    assert "runs 1-2 of 4 are kept" in " ".join(info.value.__notes__) and not out.exists()
    with pytest.raises(ConfigError, match="another tune"):  # another grid never takes them up
        api.tune("graddiff", model_dir, world, out, **{**kw, "grid": ["lr=1e-4,1e-2"]})
    calls.clear()
    api.tune("graddiff", model_dir, world, out, **kw)
    assert calls == [0, 1]  # the second setting's two seeds alone
    assert not Path(f"{out}.partial").exists()
    picked, reference = (json.loads((d / "tune.json").read_text()) for d in (out, whole))
    assert picked["rows"] == [{**r, "wall_s": p["wall_s"]} for r, p in
                              zip(reference["rows"], picked["rows"], strict=True)]


def test_tune_attacks_every_run_and_sets_the_audit_figures_beside_each_score(
        world: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    assert main(["tune", "--method", "graddiff", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--on", "val_forget_10", "--grid", "lr=1e-4,1e-3", "--seeds", "2", "--max-items", "2",
                 "--attacks", "quant", *FAST]) == 0
    result = json.loads((out / "tune.json").read_text())
    runs = load_results(out / "results.json")["runs"][1:]
    for row in result["rows"]:
        mine = [r["attacks"]["quant"]["forget_int4_all"] for r in runs if r["tune"]["overrides"] == row["overrides"]]
        assert len(mine) == 2 and row["audits"]["quant_int4_forget"] == pytest.approx(sum(mine) / 2)
    assert "quant_int4_forget" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(ConfigError, match="nope"):
        api.tune("graddiff", model_dir, world, tmp_path / "u", on="val_forget_10", overrides=FAST, attacks=["nope"])
    with pytest.raises(ConfigError, match="--audit-set is for the audits, and none runs: add --attacks"):
        api.tune("graddiff", model_dir, world, tmp_path / "u", on="val_forget_10", overrides=FAST,
                 audit_overrides=["relearn_steps=2"])


def test_a_setting_whose_audits_fail_ranks_below_one_whose_audits_hold() -> None:
    rows = [{"overrides": ["lr=1"], "score": 0.99, "audits_hold": False},
            {"overrides": ["lr=2"], "score": 0.90, "audits_hold": True},
            {"overrides": ["lr=3"], "score": 0.95, "audits_hold": True, "failed": {"0": "diverged"}},
            {"overrides": ["lr=4"], "score": 0.90, "audits_hold": True}]
    assert tune.best_row(rows)["overrides"] == ["lr=2"]  # and the first of two equal scores
    assert tune.best_row([{**r, "audits_hold": True} for r in rows])["overrides"] == ["lr=1"]
    assert tune.best_row([{k: v for k, v in r.items() if k != "audits_hold"} for r in rows])["overrides"] == ["lr=1"]


def test_the_pick_says_how_far_it_leads_the_runner_up_against_the_seeds_noise() -> None:
    """A lead inside the standard error of the difference is a tie (a 0.001 lead over three seeds picked the
    setting that then forgot less on the reported people); one far outside it is not."""
    rows = [{"overrides": ["lr=1"], "score": 0.976, "scores": [0.972, 0.978, 0.977]},
            {"overrides": ["lr=2"], "score": 0.977, "scores": [0.988, 0.963, 0.979]},
            {"overrides": ["lr=3"], "score": 0.99, "scores": [0.99], "failed": {"1": "diverged"}},
            {"overrides": ["lr=4"], "score": 0.373, "scores": [0.37, 0.37, 0.38]}]
    ahead = tune.lead(rows, tune.best_row(rows))
    assert ahead is not None and ahead["runner_up"] == ["lr=1"]  # a setting that failed a seed is no rival
    assert ahead["margin"] == pytest.approx(0.001) and ahead["margin_se"] == pytest.approx(0.00754, abs=1e-5)
    assert ahead["within_noise"] is True
    clear = tune.lead(rows[:1] + rows[3:], rows[0])
    assert clear is not None and clear["runner_up"] == ["lr=4"] and clear["within_noise"] is False
    one_seed = [{**r, "scores": r["scores"][:1]} for r in rows[:2]]
    assert tune.lead(one_seed, one_seed[1]) == {"runner_up": ["lr=1"], "margin": pytest.approx(0.001),
                                                "margin_se": None, "within_noise": None}
    assert tune.lead(rows[:1], rows[0]) is None
    table = [{**r, "figures": []} for r in rows[:2]]
    printed = tune.summary({"vanilla": {}, "rows": table, "pick": {"overrides": ["lr=2"], "lead": ahead}})
    assert "the pick leads lr=1 by 0.001, within the standard error of the difference over the seeds (0.008)" \
        in printed
    assert "the pick leads" not in tune.summary(
        {"vanilla": {}, "rows": table, "pick": {"overrides": ["lr=2"], "lead": clear}})
    alone = tune.summary({"vanilla": {}, "rows": table,
                          "pick": {"overrides": ["lr=2"], "lead": tune.lead(one_seed, one_seed[1])}})
    assert "the pick leads lr=1 by 0.001 on one seed a setting, which cannot tell a lead from noise" in alone


def test_tune_attacks_the_reference_beside_every_run_and_judges_each_setting_on_its_seed_means(
        world: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t"
    drawn = api.init_model("tiny-llava", tmp_path / "drawn", world=world, seed=1)  # another draw of the reference
    assert main(["tune", "--method", "graddiff", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--on", "val_forget_10", "--grid", "lr=1e-4,1e-3", "--seeds", "2", "--max-items", "2",
                 "--attacks", "quant,mia", "--reference", str(model_dir), "--reference", str(drawn), *FAST]) == 0
    result = json.loads((out / "tune.json").read_text())
    assert result["reference"] == [str(model_dir), str(drawn)]
    runs = load_results(out / "results.json")["runs"][1:]
    assert all(r["attacks"]["mia"]["reference"]["n_draws"] == 2 for r in runs)  # both beside every run
    for row in result["rows"]:
        mine = [r["attacks"] for r in runs if r["tune"]["overrides"] == row["overrides"]]
        checks = {k: c["pass"] for k, c in reference_checks(mean_attacks(mine)).items() if c["pass"] is not None}
        assert row["checks"] == checks and {"quant_int4_forget", "forget_quality"} <= set(checks)
        assert row["audits_hold"] == all(checks.values())
    assert result["pick"]["overrides"] == tune.best_row(result["rows"])["overrides"]
    assert "audits held" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--reference is for the audits, and none runs: add --attacks"):
        api.tune("graddiff", model_dir, world, tmp_path / "u", on="val_forget_10", overrides=FAST,
                 reference=model_dir)
    with pytest.raises(ConfigError, match="--reference-draws is for the audits, and none runs"):
        api.tune("graddiff", model_dir, world, tmp_path / "u", on="val_forget_10", overrides=FAST,
                 reference=api.CachedDraws(2))


def test_tune_help_with_a_method_lists_what_a_grid_may_set(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["tune", "--method", "npo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--grid KEY=V1,V2" in out and "options of npo" in out and "lr (float" in out
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "unsee tune --method NAME --help lists the options" in capsys.readouterr().out


def test_the_default_grid_is_the_configured_rate_first_then_a_third_and_three_times() -> None:
    lr = method_configs("npo", None, [])[0].lr
    assert tune.grid_points("npo", None, [], []) == [[], [f"lr={lr * 0.3:.3g}"], [f"lr={lr * 3:.3g}"]]
    assert tune.grid_points("npo", None, ["lr=1e-3"], []) == [[], ["lr=0.0003"], ["lr=0.003"]]
    assert tune.grid_points("npo", None, [], ["lr=1e-4,1e-3", "epochs=1,2"]) == [
        ["lr=1e-4", "epochs=1"], ["lr=1e-4", "epochs=2"], ["lr=1e-3", "epochs=1"], ["lr=1e-3", "epochs=2"]]


@pytest.mark.parametrize(("kw", "error", "says"), [
    ({"on": "forget_5", "exclude": ["forget_10"]}, DataError, "share"),
    ({"on": "forget_10", "exclude": ["forget_10"]}, ConfigError, "also excluded"),
    ({}, ConfigError, "--on SPLIT"),
    ({"on": "val_forget_10", "grid": ["lr"]}, ConfigError, "KEY=V1,V2"),
    ({"on": "val_forget_10", "grid": ["lr=1e-4", "lr=1e-3"]}, ConfigError, "twice"),
    ({"on": "val_forget_10", "grid": ["lr=1e-4,1e-4"]}, ConfigError, "value twice"),
    ({"on": "val_forget_10", "grid": ["max_steps=1,2"]}, ConfigError, "both set"),
    ({"on": "val_forget_10", "grid": ["not_an_option=1,2"]}, ConfigError, "not_an_option"),
    ({"on": "val_forget_10", "overrides": [*FAST, "checkpoint_dir=/tmp/x"]}, ConfigError, "checkpoint_dir"),
    ({"on": "val_forget_10", "method": "eraser", "overrides": []}, ConfigError, "--grid"),
    ({"on": "val_forget_10", "grid": ["lr=abc,1e-3"]}, ConfigError, "lr"),
    ({"on": "val_forget_10", "seeds": 0}, ConfigError, "seeds"),
    ({"on": "val_forget_99"}, DataError, "val_forget_99"),
    ({"on": "val_forget_10", "exclude": ["gone/request.yaml"]}, DataError, "no such request file"),
    ({"on": "other/request.yaml"}, ConfigError, "names a file where a split"),
    ({"on": "val_forget_10", "grid": ["lr=1e-3,0.001"]}, ConfigError, "lr=1e-3 and lr=0.001 are the same setting"),
    ({"on": "val_forget_10", "grid": ["epochs=1,2"]}, ConfigError, "max_steps=1 sets the number of steps"),
])
def test_tune_refuses_before_any_model_loads(kw: dict[str, Any], error: type, says: str, world: Path,
                                             model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*a: Any, **k: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(tune, "load_adapter", never)
    args = {"overrides": FAST, **kw}
    with pytest.raises(error, match=says):
        api.tune(args.pop("method", "graddiff"), model_dir, world, tmp_path / "t", **args)
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(("on", "noted"), [("forget_10", True), ("val_forget_10", False), ("forget_5", False)])
def test_tuning_on_a_reported_request_beside_its_validation_twin_is_noted(
        on: str, noted: bool, world: Path, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A pick made on the people it is then reported on flatters its figures; the world's validation request is
    named beside it (forget_5 has no validation twin in this world, so nothing is said of it)."""
    def stop(*a: Any, **k: Any) -> None:
        raise AssertionError("loaded")

    monkeypatch.setattr(tune, "load_adapter", stop)
    with pytest.raises(AssertionError, match="loaded"):
        api.tune("graddiff", model_dir, world, tmp_path / "t", on=on, overrides=FAST)
    err = capsys.readouterr().err
    assert ("tune on val_forget_10, with --exclude forget_10" in err) is noted
    assert len(err.strip().splitlines()) == noted


def test_a_pick_made_on_a_reported_request_says_so_in_tune_json(world: Path, model_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The note on stderr scrolls away; the file a pick is shipped from keeps that it flatters its own figures."""
    out = api.tune("graddiff", model_dir, world, tmp_path / "t", on="forget_10", overrides=FAST, max_items=3)
    assert json.loads((out / "tune.json").read_text())["validation_twin"] == "val_forget_10"
    assert "# picked on the people forget_10 reports, not on its validation request val_forget_10" in (
        out / "graddiff.yaml").read_text().splitlines()[1]  # the file that is shipped says it too
    assert "a pick made on forget_10 is made on the people it then forgets" in capsys.readouterr().err


def test_tune_on_a_removal_request_of_other_people_excludes_the_request_to_answer(
        model_dir: Path, tmp_path: Path) -> None:
    """An engineer's validation request is a request file too: of people the model knows, who are not the ones
    asking to be forgotten."""
    # two requests of two people each, with enough people left to retain (ten photos) in each
    world = api.build_world(tmp_path / "w", config="quick", example=False,
                            overrides=[o for o in WORLD_OVERRIDES if not o.startswith("n_people")] + ["n_people=8"])
    validation = write_world_request(world, tmp_path / "val", forget="forget_r1")
    asked = write_world_request(world, tmp_path / "asked", forget="forget_r2")
    with pytest.raises(ConfigError, match="drop --on"):
        api.tune("graddiff", model_dir, validation, tmp_path / "t", on="val_forget_10", overrides=FAST)
    with pytest.raises(ConfigError, match="request files"):
        api.tune("graddiff", model_dir, validation, tmp_path / "t", exclude=["forget_10"], overrides=FAST)
    with pytest.raises(DataError, match="share"):
        api.tune("graddiff", model_dir, asked, tmp_path / "t", exclude=[str(asked)], overrides=FAST)
    out = api.tune("graddiff", model_dir, validation, tmp_path / "t", exclude=[str(asked)], grid=["lr=1e-4"],
                   overrides=FAST, max_items=2)
    result = json.loads((out / "tune.json").read_text())
    assert result["on"] == "request" and list(result["exclude"]) == [str(asked)]
    assert not result["exclude_left_out_of_retain"]  # a request lists its retained people itself
    assert result["pick"]["overrides"] == ["lr=1e-4"] and (out / "graddiff.yaml").is_file()


@pytest.mark.slow
def test_tune_under_two_processes_writes_once_with_the_figures_of_one(world: Path, model_dir: Path,
                                                                       tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli tune`: every process trains its share of each run, a setting that diverges
    stops in all of them at once, and the first alone evaluates, scores and writes: the rows of one process."""
    opts = ["--method", "graddiff", "--model", str(model_dir), "--data", str(world), "--on", "val_forget_10",
            "--grid", "lr=1e30,1e-4", "--max-items", "2", "max_steps=2", "batch_size=2", "progress=false"]
    cmd, env = launch_command("cpu.yaml", "-m", "unsee.cli", "tune", *opts, "--out", str(tmp_path / "two"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("<- pick") == 1 and proc.stdout.count("written to") == 1  # said once
    assert main(["tune", *opts, "--out", str(tmp_path / "one")]) == 0
    two, one = (json.loads((tmp_path / d / "tune.json").read_text()) for d in ("two", "one"))
    assert list(two["rows"][0]["failed"]) == ["0"] and two["rows"][1]["figures"]
    assert [r["figures"] for r in two["rows"]] == [r["figures"] for r in one["rows"]]
    assert two["pick"] == one["pick"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no progress, no stray temporary
