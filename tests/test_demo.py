"""The main job end to end on a minimal config: every output exists and is well formed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import launch_command
from PIL import Image

from unsee.errors import OutputExistsError
from unsee.eval.results import load_results
from unsee.report.tables import setting_of

CONFIG = Path(__file__).parent / "data" / "demo_tiny.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from unsee.demo import run_demo

    root = tmp_path_factory.mktemp("demo")
    out = root / "out"
    run_demo(out, quick=True, cache_dir=root / "cache", config=CONFIG, methods="cvf_ncu,graddiff", audit=True)
    return out, root / "cache"


def test_demo_writes_every_output(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    for name in ("results.json", "report.md", "tradeoff.png", "examples.md", "examples.png"):
        assert (out / name).is_file(), name
    res = load_results(out / "results.json")
    assert [r["method"] for r in res["runs"]] == ["vanilla", "cvf_ncu", "graddiff"]
    report = (out / "report.md").read_text()
    for m in ("vanilla", "cvf_ncu", "graddiff"):
        assert f"| {m}" in report
    for png in ("tradeoff.png", "examples.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 100
    for m in ("cvf_ncu", "graddiff"):
        card = (out / m / "README.md").read_text()
        assert m in card and "forget" in card and "retain" in card
        assert (out / m / "model.safetensors").is_file()


def test_demo_audits_every_result(demo_run: tuple[Path, Path]) -> None:
    out, _ = demo_run
    runs = {r["method"]: r for r in load_results(out / "results.json")["runs"]}
    assert "attacks" not in runs["vanilla"]
    for m in ("cvf_ncu", "graddiff"):
        attacks = runs[m]["attacks"]
        assert set(attacks) == {"relearn", "pgd", "shift", "probe"}
        assert "skipped" in attacks["relearn"]  # the tiny world's request has one person: nothing to split
        assert 0 <= attacks["pgd"]["forget_attacked"] <= 1 and "vanilla_forget_acc" in attacks["probe"]
        assert "| pgd | forget_attacked |" in (out / m / "README.md").read_text()


def test_an_attack_on_a_demo_output_goes_to_the_run_of_the_model_attacked(demo_run: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """A demo's output holds several runs: the figures go to the run whose model was attacked (the vanilla
    model's too, without writing in the cache), and a model that is none of them is refused."""
    from unsee import api
    from unsee.errors import DataError

    out = Path(shutil.copytree(demo_run[0], tmp_path / "out"))
    made = json.loads((out / "demo.json").read_text())
    world, vanilla = made["world"], Path(made["vanilla"])
    options = ["quant_max_items=4", "quant_bits=[4]"]
    in_cache = {p: p.stat().st_mtime_ns for p in vanilla.rglob("*")}
    for attacked in (out / "cvf_ncu", vanilla):
        api.attack("quant", attacked, world, out / "results.json", overrides=options)
    runs = {r["method"]: r for r in load_results(out / "results.json")["runs"]}
    assert "quant" in runs["cvf_ncu"]["attacks"] and "quant" in runs["vanilla"]["attacks"]
    assert "quant" not in runs["graddiff"]["attacks"]
    assert "| quant |" in (out / "cvf_ncu" / "README.md").read_text()
    assert "quant" in (out / "report.md").read_text()  # the demo's report holds them too
    assert {p: p.stat().st_mtime_ns for p in vanilla.rglob("*")} == in_cache
    with pytest.raises(DataError, match="holds a demo's 3 runs, and .* is not the model of one of them"):
        api.attack("quant", demo_run[1] / next(p.name for p in demo_run[1].iterdir() if p.name.startswith("init-")),
                   world, out / "results.json", overrides=options)


def test_demo_under_two_processes_writes_once(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli demo`: the first process builds the world and the tiny model while the
    other waits, both train each method, and the first alone evaluates, audits and writes."""
    import torch
    from safetensors.torch import load_file

    out, cache = demo_run
    mine = tmp_path / "cache"
    shutil.copytree(cache, mine)
    for built in [*mine.glob("world-*"), *mine.glob("init-*")]:
        shutil.rmtree(built)  # built again under the launch; the vanilla model stays cached
    cmd, env = launch_command("cpu.yaml", "-m", "unsee.cli", "demo", "--quick", "--config", str(CONFIG),
                              "--out", str(tmp_path / "two"), "--cache-dir", str(mine))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("unsee results") == 1  # one table
    runs = {r["method"]: r for r in load_results(tmp_path / "two" / "results.json")["runs"]}
    assert list(runs) == ["vanilla", "cvf_ncu", "graddiff"]
    assert all(set(runs[m]["attacks"]) == {"relearn", "pgd", "shift", "probe"} for m in ("cvf_ncu", "graddiff"))
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in cache.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "two"]
    # GradDiff draws no crops, so its two-process training is the one-process one
    vanilla = load_file(next(cache.glob("vanilla-*")) / "model.safetensors")
    one, two = (load_file(d / "graddiff" / "model.safetensors") for d in (out, tmp_path / "two"))
    moved = sum(float((one[k] - vanilla[k]).pow(2).sum()) for k in one)
    apart = sum(float((two[k] - one[k]).pow(2).sum()) for k in one)
    assert moved > 0 and apart < 1e-4 * moved, (moved, apart)
    assert all(torch.isfinite(v).all() for v in two.values())


def test_demo_reuses_the_cache_and_refuses_existing_output(demo_run: tuple[Path, Path], monkeypatch) -> None:
    from unsee import demo
    from unsee.demo import run_demo

    out, cache = demo_run
    before = hashlib.sha256((out / "results.json").read_bytes()).hexdigest()
    with pytest.raises(OutputExistsError):
        run_demo(out, quick=True, cache_dir=cache, config=CONFIG, audit=False)
    assert hashlib.sha256((out / "results.json").read_bytes()).hexdigest() == before

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the vanilla model was trained again")

    monkeypatch.setattr(demo, "finetune", boom)
    again = out.parent / "again"
    run_demo(again, quick=True, cache_dir=cache, config=CONFIG, methods="graddiff", audit=False)
    assert (again / "results.json").is_file()


def test_interrupted_demo_leaves_nothing_and_resumes_from_the_cache(demo_run: tuple[Path, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during unlearning: no output directory, no temporary leftovers; the next run trains nothing again."""
    from unsee import demo
    from unsee.demo import run_demo

    out, cache = demo_run
    target = out.parent / "interrupted"
    real = demo.unlearn_and_save

    def ctrl_c(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the vanilla model was trained again")

    monkeypatch.setattr(demo, "finetune", boom)
    monkeypatch.setattr(demo, "unlearn_and_save", ctrl_c)
    before = sorted(p.name for p in out.parent.iterdir())
    with pytest.raises(KeyboardInterrupt):
        run_demo(target, quick=True, cache_dir=cache, config=CONFIG, methods="graddiff", audit=False)
    assert sorted(p.name for p in out.parent.iterdir()) == before
    monkeypatch.setattr(demo, "unlearn_and_save", real)
    run_demo(target, quick=True, cache_dir=cache, config=CONFIG, methods="graddiff", audit=False)
    assert (target / "results.json").is_file() and (target / "graddiff" / "model.safetensors").is_file()


def test_unlearn_benchmark_runs_on_the_demo_world(demo_run: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/unlearn.py on the cached demo world: rows, scores, targets and a results.json for the report."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import unlearn

    suites: list[tuple[str, Any]] = []
    measure = unlearn.measure
    monkeypatch.setattr(unlearn, "measure", lambda *a, **k: suites.append((a[3], a[2])) or measure(*a, **k))
    kept = tmp_path / "kept"
    args = [*_bench_args(demo_run[1], tmp_path / "u.json"), "--methods", "graddiff,cvf_ncu,eraser",
            "--lr-scales", "1.0", "3.0", "--sweep", "graddiff", "--keep", str(kept), "--retrained", "--in-process",
            "--method-set", "eraser:sweep=false", "--method-set", "eraser:max_items=8"]  # its own sweep is slow
    result = unlearn.main(args)
    # each later run's peak memory carries the heap earlier ones left: in one process it is not judged
    assert not result["process_per_run"] and "peak_rss_bytes" not in result["targets"]["cvf_ncu"]
    # the reference a perfect visual unlearning would reach: evaluated like every row, scored against vanilla
    assert {"forget", "retain"} <= set(result["retrained"]["metrics"]) and "score" in result["retrained"]["score"]
    # only graddiff is swept: its shipped setting, then 3x the learning rate, both on the validation people
    assert [r["method"] for r in result["rows"]] == ["graddiff", "graddiff", "cvf_ncu", "eraser"]
    assert {r["split"] for r in result["rows"]} == {"val_forget_10"}
    assert result["selection"]["on"] == "val_forget_10" and result["selection"]["held_out"]
    assert result["selection"]["swept"] == ["graddiff"]
    # the reported people are not even retained where the picks are made: no choice is made on them at all
    reported = {p for split, s in suites if split == "forget_10" for p in s.forget_entities}
    picked_on = [s for split, s in suites if split == "val_forget_10"]
    retained = {e.entity for s in picked_on for group in ("retain", "text_retain", "train_retain")
                for e in s.groups[group]}
    assert reported and picked_on and retained and not reported & retained
    assert result["complete"] and json.loads((tmp_path / "u.json").read_text())["rows"] == result["rows"]
    assert result["rows"][1]["overrides"][-1].startswith("lr=")
    assert result["rows"][2]["overrides"] == result["rows"][0]["overrides"]  # cvf_ncu: shipped, not swept
    assert result["rows"][3]["overrides"] == ["sweep=false", "max_items=8"]  # the eraser's own options only
    assert all(r["cost"]["wall_s"] > 0 and "forget" in r["metrics"] for r in result["rows"])
    # each pick then runs on the reported people, whom no sweep saw
    graddiff = result["best"]["graddiff"]
    assert graddiff["overrides"] == result["selection"]["picks"]["graddiff"]
    assert graddiff["selected_on"] == "val_forget_10"
    assert {r["forget_split"] for r in load_results(tmp_path / "u.results.json")["runs"]} == {"forget_10"}
    # another run at these picks, with nothing chosen in it: the JSON names the file they came from
    again = unlearn.main([*_bench_args(demo_run[1], tmp_path / "p.json"), "--methods", "graddiff", "--in-process",
                          "--picks", str(tmp_path / "u.json")])
    assert again["best"]["graddiff"]["overrides"] == graddiff["overrides"] != []
    assert [r["split"] for r in again["rows"]] == ["forget_10"] and again["selection"]["swept"] == []
    assert again["selection"]["picked_in"] == {"file": str(tmp_path / "u.json"), "world": "quick", "seed": 0,
                                               "on": "val_forget_10", "picks": {"graddiff": graddiff["overrides"]}}
    assert {"forget", "retain", "score_highest", "wall_s", "forget_ci_high"} <= set(result["targets"]["cvf_ncu"])
    assert result["best"]["eraser"]["generation"]["plain_s"] > 0
    # the known people kept, on held-out views no method trains on, beside the known group in the table
    head, _, vanilla_row = ([c.strip() for c in line.strip("|").split("|")] for line in
                            unlearn.table(result).splitlines()[:3])
    assert head[head.index("known"):head.index("known") + 3] == ["known", "known_test", "general"]
    assert vanilla_row[head.index("known_test")] == f"{result['vanilla']['known_test']['mcq']:.3f}"
    assert [r["method"] for r in load_results(tmp_path / "u.results.json")["runs"]] == [
        "vanilla", "graddiff", "cvf_ncu", "eraser"]
    # one setting, so that `unsee report` reads every method against the vanilla run
    assert len({setting_of(r) for r in load_results(tmp_path / "u.results.json")["runs"]}) == 1
    # the kept best models are what audits.py --models attacks, without training them again
    assert (kept / "eraser" / "steering.safetensors").is_file() and (kept / "graddiff" / "model").is_dir()
    row = json.loads((kept / "graddiff" / "row.json").read_text())
    assert (row["seed"], row["forget"]) == (0, "forget_10") and Path(row["vanilla"]).is_dir()
    import audits

    a = audits.main([*_bench_args(demo_run[1], tmp_path / "a.json"), "--methods", "graddiff,eraser",
                     "--models", str(kept), "--attack-set", "relearn_steps=1", "--attack-set", "pgd_steps=1",
                     "--attack-set", "max_items=2", "--attack-set", "probe_steps=10", "--attack-set",
                     "quant_max_items=4", "--attack-set", "quant_bits=[4]", "--attack-set", "mia_max_items=4"])
    assert a["settings"]["graddiff"] == result["best"]["graddiff"]["overrides"]
    assert set(a["attacks"]) == {"vanilla", "graddiff", "eraser"}
    with pytest.raises(SystemExit, match="no model saved"):
        audits.main([*_bench_args(demo_run[1], tmp_path / "b.json"), "--methods", "npo", "--models", str(kept)])
    # a kept model is audited against the split and vanilla model it was trained with, or not at all
    with pytest.raises(SystemExit):
        audits.main([*_bench_args(demo_run[1], tmp_path / "c.json"), "--methods", "graddiff", "--models", str(kept),
                     "--forget", "forget_r1"])
    assert "not from" in capsys.readouterr().err and not (tmp_path / "c.json").exists()


def test_a_benchmark_run_in_a_process_of_its_own_is_the_same_run(demo_run: tuple[Path, Path]) -> None:
    """benchmarks/unlearn.py trains each run in a fresh process, so that its peak memory is its own. It must be
    the same run: the same figures, and the same unlearned model or steering, read back from what it saved."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import common

    from unsee import api

    args = common.parser("x", methods="cvf_ncu", out="x.json").parse_args(_bench_args(demo_run[1], Path("x.json")))
    world, vanilla = common.vanilla_model(args)
    suite = api.load_suite(world, "forget_10")
    cheap = {"cvf_ncu": args.train_set, "eraser": ["sweep=false", "max_items=8"]}
    for method in ("cvf_ncu", "eraser"):
        (run, adapter, artifact), (run_here, adapter_here, artifact_here) = (
            common.measure(method, vanilla, suite, "forget_10", cheap[method], 0, common.eval_kw(args), apart=apart)
            for apart in (True, False))
        assert run["metrics"] == run_here["metrics"] and run["config"] == run_here["config"], method
        assert run["cost"]["trainable_params"] == run_here["cost"]["trainable_params"]
        weights, weights_here = (a.model.state_dict() for a in (adapter, adapter_here))
        assert weights.keys() == weights_here.keys()
        assert all(weights[k].equal(weights_here[k]) for k in weights), method
        if method == "eraser":  # the vanilla weights, steered by the same maps
            maps, maps_here = (a.steering.weights for a in (artifact, artifact_here))
            assert maps.keys() == maps_here.keys() and maps
            assert all(maps[k].equal(maps_here[k]) for k in maps)


def test_unlearn_benchmark_averages_seeds(demo_run: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--seeds N: the pick runs N times where it is reported, and its row is their mean with an interval;
    picked on the reported split, its first seed is the run it was picked by, not a second training."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import unlearn

    trained: list[int] = []
    measure = unlearn.measure
    monkeypatch.setattr(unlearn, "measure", lambda *a, **k: trained.append(a[5]) or measure(*a, **k))
    result = unlearn.main([*_bench_args(demo_run[1], tmp_path / "s.json"), "--methods", "graddiff",
                           "--lr-scales", "1.0", "--select-on", "reported", "--seeds", "2", "--table",
                           str(tmp_path / "s.md"), "--generation"])
    assert result["process_per_run"]  # the default: each run's peak memory its own
    assert result["selection"] == {"on": "forget_10", "held_out": False, "seeds": 2, "swept": [],
                                   "picks": {"graddiff": ["max_steps=2", "progress=false"]}}
    row = result["best"]["graddiff"]
    assert row["seeds"] == [0, 1] and {"mean", "sd", "min", "max"} <= set(row["score_seeds"])
    forget = row["metrics"]["forget"]
    assert forget["seeds"]["min"] <= forget["mcq"] <= forget["seeds"]["max"]
    assert forget["ci95"][0] <= forget["mcq"] <= forget["ci95"][1]
    seeds = load_results(tmp_path / "s.results.json")["runs"][1:]  # the figures besides MCQ: their mean
    assert forget["rougeL"] == pytest.approx(sum(r["metrics"]["forget"]["rougeL"] for r in seeds) / 2)
    assert forget["n_cloze"] == seeds[0]["metrics"]["forget"]["n_cloze"] and "cloze" in forget
    runs = load_results(tmp_path / "s.results.json")
    assert [(r["method"], r["seed"]) for r in runs["runs"]] == [("vanilla", 0), ("graddiff", 0), ("graddiff", 1)]
    assert trained == [0, 1]
    assert runs["seeds"][-1]["seeds"] == [0, 1]
    table = (tmp_path / "s.md").read_text().splitlines()
    assert table[2].startswith("| vanilla |") and table[3].startswith("| graddiff | max_steps=2 progress=false | 0,1 |")
    # the score beside its sd is the mean of the seeds' scores, which the sd is taken around
    assert f"{row['score_seeds']['mean']:.3f} ± {row['score_seeds']['sd']:.3f}" in table[3]
    assert f"{forget['mcq']:.3f} [" in table[3]
    people = forget["ci95_people"]
    assert people[0] <= forget["mcq"] <= people[1] and f"people {people[0]:.2f}, {people[1]:.2f}]" in table[3]
    with pytest.raises(SystemExit, match="is the reported split"):
        unlearn.main([*_bench_args(demo_run[1], tmp_path / "x.json"), "--select-on", "forget_10"])


def _bench_args(cache: Path, out: Path) -> list[str]:
    import yaml

    cfg = yaml.safe_load(CONFIG.read_text())
    return (["--world", "quick", "--cache-dir", str(cache), "--max-items", "4", "--threads", "1", "--out", str(out),
             "--train-set", "max_steps=2", "--train-set", "progress=false"]
            + [f"--world-set={x}" for x in cfg["world_overrides"]]
            + [f"--recipe-set={x}" for x in cfg["recipe_overrides"]])


def test_continual_and_audit_benchmarks_run_on_the_demo_world(demo_run: tuple[Path, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import audits
    import continual

    c = continual.main([*_bench_args(demo_run[1], tmp_path / "c.json"), "--methods", "cvf_ncu,graddiff",
                        "--seeds", "0,1"])
    assert c["requests"] == ["forget_r1", "forget_r2"]
    cvf = c["methods"]["cvf_ncu"]
    assert set(cvf["targets"]) == {"forget_r1", "forget_r2", "retain"} and cvf["seeds"] == [0, 1]
    first, second = cvf["per_seed"]
    assert first["known"] is not None and cvf["spread"]["forget_r1"]["min"] == min(
        first["forget_r1"], second["forget_r1"])
    assert cvf["after_last"]["forget_r1"] == pytest.approx((first["forget_r1"] + second["forget_r1"]) / 2)
    assert cvf["targets"]["retain"]["value"] == cvf["after_last"]["retain"]
    runs = json.loads((tmp_path / "c.results.json").read_text())["runs"]
    assert sum(r["method"] == "graddiff" for r in runs) == 4  # two requests, two seeds
    first_request = {setting_of(r) for r in runs if r["request"] == 1}
    assert len(first_request) == 1 and runs[0]["method"] == "vanilla"  # the vanilla run is their baseline
    assert (tmp_path / "c.png").is_file() and (tmp_path / "c.results.json").is_file()
    mine = tmp_path / "mine.yaml"  # a config of one's own, as a user passes a preset
    mine.write_text("extends: cvf_ncu\nlambda_d: 40.0\n")
    own = continual.main([*_bench_args(demo_run[1], tmp_path / "own.json"), "--methods", "cvf_ncu",
                          "--config", str(mine)])
    assert own["config"] == str(mine) and "max_steps=2" in own["train_set"]
    runs = json.loads((tmp_path / "own.results.json").read_text())["runs"]
    assert {r["config"]["lambda_d"] for r in runs if r["method"] == "cvf_ncu"} == {40.0}
    assert {r["config"]["max_steps"] for r in runs if r["method"] == "cvf_ncu"} == {2}  # --train-set still counts
    with monkeypatch.context() as m:  # a mistyped option is refused before the vanilla model is even looked for
        m.setattr(continual, "vanilla_model", lambda *a: pytest.fail("the vanilla model was reached"))
        with pytest.raises(SystemExit):
            continual.main([*_bench_args(demo_run[1], tmp_path / "typo.json"), "--methods", "cvf_ncu",
                            "--train-set", "lamda_d=40"])
        assert "lamda_d" in capsys.readouterr().err  # one line, not a traceback
    sets = [x for o in ("relearn_steps=1", "pgd_steps=1", "max_items=2", "probe_steps=10", "quant_max_items=4",
                        "quant_bits=[4]", "mia_max_items=4") for x in ("--attack-set", o)]
    a = audits.main([*_bench_args(demo_run[1], tmp_path / "a.json"), "--methods", "cvf_ncu,graddiff", *sets,
                     "--retrained", "--seeds", "2", "--reference-draws", "2", "--table", str(tmp_path / "a.md"),
                     "--plot", str(tmp_path / "a.png")])
    drawn = "retrained [seed 1]"  # the reference drawn again, judged against the first as a method is
    assert set(a["attacks"]) == {"vanilla", "retrained", "cvf_ncu", "graddiff", drawn}
    assert a["seeds_run"][drawn] == [1]
    assert a["per_seed"][drawn][0]["mia"]["reference"] == a["attacks"]["retrained"]["mia"]
    assert a["targets"][drawn]["pgd_forget"]["reference"] == a["attacks"]["retrained"]["pgd"]["forget_attacked"]
    assert f"| {drawn} | 1 |" in (tmp_path / "a.md").read_text()
    kinds = {"pgd", "shift", "probe", "relearn", "quant", "mia"}
    assert kinds <= set(a["attacks"]["retrained"]) and kinds <= set(a["attacks"]["cvf_ncu"])
    assert a["seeds_run"]["cvf_ncu"] == [0, 1] and len(a["per_seed"]["graddiff"]) == 2
    pgd = a["targets"]["cvf_ncu"]["pgd_forget"]
    assert pgd["reference"] == a["attacks"]["retrained"]["pgd"]["forget_attacked"]
    runs = [r["pgd"]["forget_attacked"] for r in a["per_seed"]["cvf_ncu"]]
    assert pgd["value"] == pytest.approx(sum(runs) / 2) and pgd["seeds"]["min"] == min(runs)
    assert pgd["pass"] == (pgd["value"] <= pgd["reference"] + 0.05 + 1e-9)
    for method in ("cvf_ncu", "graddiff"):
        # one forget person in this world: relearning is skipped, so it has no check
        assert {"pgd_forget", "quant_int4_forget", "mia_auc_loss", "forget_quality"} <= set(a["targets"][method])
        assert a["per_seed"][method][0]["mia"]["reference"] == a["attacks"]["retrained"]["mia"]
    assert "| cvf_ncu | 0,1 |" in (tmp_path / "a.md").read_text()
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    # every row judged against the two draws read as one: each figure their mean, each draw's beside it
    b = audits.main([*_bench_args(demo_run[1], tmp_path / "b.json"), "--methods", "graddiff", "--attacks", "pgd,mia",
                     *sets, "--retrained", "--reference-draws", "2", "--against", "draws", "--plot",
                     str(tmp_path / "b.png")])
    pgd_draws = [a["attacks"]["retrained"]["pgd"]["forget_attacked"], a["attacks"][drawn]["pgd"]["forget_attacked"]]
    assert b["against"] == "mean of 2 draws" and len(b["models"]["retrained_draws"]) == 2
    assert b["attacks"]["retrained"]["pgd"]["n_draws"] == 2
    assert b["attacks"]["retrained"]["pgd"]["forget_attacked"] == pytest.approx(sum(pgd_draws) / 2)
    assert b["targets"]["graddiff"]["pgd_forget"]["reference_draws"] == pgd_draws
    # and each draw, the first too, against the others: with two, the other one
    assert b["targets"][drawn]["pgd_forget"]["reference"] == pgd_draws[0]
    assert b["targets"]["retrained [seed 0]"]["pgd_forget"]["reference"] == pgd_draws[1]
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    assert audits.draw_seeds(0, 3) == [None, 1, 2] and audits.draw_seeds(2, 2) == [None, 3]  # never the recipe's
    # methods audited in two sittings beside the same reference: one table, as if audited in one
    for method, rows in (("cvf_ncu", ["cvf_ncu"]), ("graddiff", ["graddiff", drawn])):
        part = {**a, **{k: {m: a[k][m] for m in rows} for k in ("settings", "seeds_run", "per_seed", "targets")}}
        (tmp_path / f"{method}.json").write_text(json.dumps(part))
    both = audits.main(["--combine", str(tmp_path / "cvf_ncu.json"), str(tmp_path / "graddiff.json"),
                        "--out", str(tmp_path / "both.json")])
    assert audits.table(both) == audits.table(a) and both["targets"] == json.loads(json.dumps(a["targets"]))
    assert both["attacks"] == json.loads(json.dumps(a["attacks"]))
    assert [(c["file"], c["methods"]) for c in both["combined"]] == [
        (str(tmp_path / "cvf_ncu.json"), ["cvf_ncu"]), (str(tmp_path / "graddiff.json"), ["graddiff", drawn])]
    other = {**json.loads((tmp_path / "cvf_ncu.json").read_text()), "settings": {"cvf_ncu": ["lr=1"]}}
    (tmp_path / "other.json").write_text(json.dumps(other))  # the same method at another setting: a row of its own
    two = audits.main(["--combine", str(tmp_path / "cvf_ncu.json"), str(tmp_path / "other.json"),
                       "--out", str(tmp_path / "two.json")])
    rows = {"cvf_ncu [max_steps=2, progress=false]", "cvf_ncu [lr=1]"}
    assert set(two["per_seed"]) == set(two["targets"]) == set(two["attacks"]) - {"vanilla", "retrained"} == rows
    elsewhere = {**json.loads((tmp_path / "graddiff.json").read_text()), "forget": "forget_r1"}
    (tmp_path / "elsewhere.json").write_text(json.dumps(elsewhere))
    # equal figures from other weights (another CPU's vanilla model that happened to agree) are no same reference
    assert set(a["models"]) == {"vanilla", "retrained"} and a["models"]["vanilla"] != a["models"]["retrained"]
    retrained = {**json.loads((tmp_path / "graddiff.json").read_text()), "models": {**a["models"], "retrained": "0"}}
    (tmp_path / "retrained.json").write_text(json.dumps(retrained))
    twice = "cvf_ncu [max_steps=2, progress=false] audited at the same"
    for parts, said in ((["cvf_ncu.json", "elsewhere.json"], "not set beside the same"),
                        (["cvf_ncu.json", "retrained.json"], "audited other weights"),
                        (["cvf_ncu.json", "cvf_ncu.json"], twice)):
        with pytest.raises(SystemExit):
            audits.main(["--combine", *(str(tmp_path / f) for f in parts), "--out", str(tmp_path / "x.json")])
        assert said in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    # every method at an earlier run's validation pick, with an option of its own after it, in one command
    picks = {"arch": "tiny-llava", "complete": True, "world": "quick", "seed": 0,
             "selection": {"on": "val_forget_10", "held_out": True, "picks": {"graddiff": ["lr=2e-4"], "eraser": []}}}
    (tmp_path / "val.json").write_text(json.dumps(picks))
    seen: list[list[str]] = []
    measure = audits.measure
    monkeypatch.setattr(audits, "measure", lambda *a, **k: seen.append(a[4]) or measure(*a, **k))
    p = audits.main([*_bench_args(demo_run[1], tmp_path / "p.json"), "--methods", "graddiff,eraser",
                     "--picks", str(tmp_path / "val.json"), "--method-set", "graddiff:retain_weight=2",
                     "--method-set", "eraser:sweep=false", "--attacks", "quant", "--attack-set", "quant_max_items=4",
                     "--attack-set", "quant_bits=[4]"])
    assert seen == [["max_steps=2", "progress=false", "lr=2e-4", "retain_weight=2"], ["sweep=false"]]
    assert p["settings"] == {"graddiff": seen[0], "eraser": seen[1]}
    assert p["picked_in"] == {"file": str(tmp_path / "val.json"), "world": "quick", "seed": 0, "on": "val_forget_10",
                              "picks": picks["selection"]["picks"]}


def test_seeds_benchmark_repeats_a_seed_exactly(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/seeds.py: every setting at every seed, with its spread; the same seed run again gives the same
    figures, which is what lets the spread between seeds be read as the seed's doing (and why a seed listed
    twice is refused: it would count as a second draw)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import common
    import seeds

    args = [*_bench_args(demo_run[1], tmp_path / "s.json"), "--methods", "cvf_ncu", "--seeds", "1",
            "--variant", "shipped:", "--variant", "held:lambda_t=2", "--attacks", "probe",
            "--attack-set", "probe_steps=10"]
    s = seeds.main(args)
    assert set(s["results"]) == {"cvf_ncu/shipped", "cvf_ncu/held"}
    held = s["results"]["cvf_ncu/held"]
    # what ran, --train-set included
    assert held["overrides"] == ["max_steps=2", "progress=false", "lambda_t=2"] and s["train_set"] == [
        "max_steps=2", "progress=false"]
    assert [r["seed"] for r in held["runs"]] == [0]
    again = seeds.main([*args, "--out", str(tmp_path / "again.json")])["results"]["cvf_ncu/held"]
    first, second = ({k: v for k, v in r["figures"].items() if k != "wall_s"} for r in (*held["runs"], *again["runs"]))
    assert first == second and first["probe_forget"] is not None and first["relearn_ag"] is None
    assert set(s["vanilla"]) == set(seeds.GROUPS) and 0 <= first["score"] <= 1  # what a pick is made by
    assert held["spread"]["forget"]["min"] == held["spread"]["forget"]["mean"] == first["forget"]
    assert common.seed_list("3", 1) == [1, 2, 3] and common.seed_list("2,0", 5) == [2, 0]
    with pytest.raises(SystemExit, match="seed 0 is given twice"):  # an interval over it would not be one
        common.seed_list("0,1,0", 5)
    assert json.loads((tmp_path / "s.json").read_text())["results"]["cvf_ncu/held"]["runs"] == held["runs"]
    with pytest.raises(SystemExit, match="give it a name"):
        seeds.main([*_bench_args(demo_run[1], tmp_path / "t.json"), "--variant", ":lr=1"])


def test_seeds_benchmark_scores_a_validation_request_blind_to_the_reported_people(
        demo_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting run on val_forget_10 is scored without forget_10's people among the retained ones, as the
    unlearn benchmark's picks are: the figures that choose a setting say nothing of the people reported."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import seeds

    asked: list[object] = []
    real = seeds.api.load_suite
    monkeypatch.setattr(seeds.api, "load_suite", lambda *a, **k: asked.append(k.get("retain_exclude")) or real(*a, **k))
    out = seeds.main([*_bench_args(demo_run[1], tmp_path / "v.json"), "--methods", "ga", "--seeds", "1",
                      "--forget", "val_forget_10", "--attacks", "none"])
    assert asked[0] == ["forget_10"] and out["retain_exclude"] == ["forget_10"]


def test_benchmark_options_are_refused_before_any_work(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A wrong method name, no seeds, or a reference a benchmark would not measure: one line at the parser, before
    the first method trains (the benchmarks that write at their end would lose every run before it)."""
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import audits
    import continual
    import protocols
    import seeds
    import unlearn

    wrong = ["--methods", "graddiff,nosuch"]
    picks = {"arch": "tiny-llava", "complete": True, "world": "default", "seed": 0,
             "selection": {"on": "val_forget_10", "held_out": True, "picks": {"graddiff": ["lr=1e-5"]}}}
    (tmp_path / "val.json").write_text(json.dumps(picks))
    reported = {**picks, "selection": {**picks["selection"], "held_out": False}}
    (tmp_path / "reported.json").write_text(json.dumps(reported))
    (tmp_path / "partial.json").write_text(json.dumps({**picks, "complete": False}))
    (tmp_path / "bad.json").write_text('{"selection": ')
    for main, argv in ((unlearn.main, wrong), (seeds.main, wrong), (audits.main, wrong), (continual.main, wrong),
                       (protocols.main, wrong), (audits.main, ["--methods", "graddiff", "--seeds", "0"]),
                       (unlearn.main, ["--methods", "graddiff", "--seeds", "-1"]),
                       (continual.main, ["--methods", "graddiff", "--retrained"]),
                       (protocols.main, ["--methods", "graddiff", "--retrained"]),
                       (unlearn.main, ["--methods", "graddiff", "--seed", "-1"]),
                       (seeds.main, ["--methods", "graddiff", "--seed", "4294967296"]),
                       (unlearn.main, ["--methods", "graddiff", "--seed", "4294967295", "--seeds", "2"]),
                       (audits.main, ["--methods", "graddiff", "--seed", "4294967295", "--seeds", "2"]),
                       (unlearn.main, ["--methods", "graddiff", "--method-set", "nosuch:lr=1"]),
                       (unlearn.main, ["--methods", "graddiff,eraser", "--method-set", "eraser:strenght=-2"]),
                       (unlearn.main, ["--methods", "graddiff", "--method-set", "eraser:sweep=false"]),
                       (unlearn.main, ["--methods", "graddiff", "--train-set", "lr=fast"]),
                       *((unlearn.main, ["--methods", m, "--picks", str(tmp_path / f), *extra]) for m, f, extra in (
                           ("graddiff", "val.json", ["--sweep", "graddiff"]),
                           ("graddiff", "val.json", ["--arch", "tiny-qwen2-vl"]),
                           ("graddiff,npo", "val.json", []), ("graddiff", "reported.json", []),
                           ("graddiff", "partial.json", []), ("graddiff", "bad.json", []),
                           ("graddiff", "nosuch.json", []))),
                       (audits.main, ["--methods", "graddiff,npo", "--picks", str(tmp_path / "val.json")]),
                       (audits.main, ["--methods", "graddiff", "--method-set", "npo:lr=1"]),
                       (audits.main, ["--methods", "graddiff,npo", "--method-set", "npo:lr=quick"]),
                       (audits.main, ["--methods", "graddiff", "--models", str(tmp_path), "--picks",
                                      str(tmp_path / "val.json")]),
                       (audits.main, ["--methods", "graddiff", "--reference-draws", "2"]),
                       (audits.main, ["--methods", "graddiff", "--retrained", "--against", "draws"])):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("unknown method(s) ['nosuch']") == 5 and "must be at least 1" in err
    assert err.count("unrecognized arguments: --retrained") == 2 and err.count("invalid seed") == 2
    assert err.count("runs past the last seed") == 2
    # a method's option is checked against its config before the first run, not when its turn comes
    assert "expected METHOD:KEY=VALUE" in err and "eraser: " in err and "strenght" in err
    assert "graddiff: " in err and "'fast'" in err
    assert "--method-set names eraser, which --methods does not run" in err
    # another run's picks: only made on held-out people, by a finished run, for this model and every method
    assert "takes no --sweep and no --select-on" in err
    assert "picked for tiny-llava, and this run is tiny-qwen2-vl" in err
    assert "val.json has no pick for npo" in err and "its picks were made on the groups it reports" in err
    assert "that run did not finish" in err and err.count("not a JSON unlearn.py wrote") == 2
    # the audits take the same picks, and refuse them beside models that were trained already
    assert err.count("val.json has no pick for npo") == 2 and "--method-set names npo" in err
    assert "--models audits the kept models at the settings they were trained with" in err
    assert "npo: " in err and "'quick'" in err  # every method's options checked before the first audit
    assert "--reference-draws sets more draws of the reference beside the first: add --retrained" in err
    assert "--against draws reads several draws of the reference as one: add --reference-draws N" in err
    with pytest.raises(SystemExit, match="-1 is not a seed"):  # every seed of a list, before the first runs
        continual.main(["--methods", "graddiff", "--seeds", "0,-1"])

    def sweep(method: str, sweep: str = "all", lr: tuple[float, ...] = (1.0,)) -> list[list[str]]:
        return unlearn.settings(method, argparse.Namespace(sweep=sweep, lr_scales=list(lr), epoch_scales=[1.0],
                                                           train_set=[], method_set=method_set))

    method_set: list[tuple[str, str]] = []
    # each run in a process of its own, unless asked not to or launched on several processes
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert unlearn.runs_apart(argparse.Namespace(in_process=False))
    assert not unlearn.runs_apart(argparse.Namespace(in_process=True))
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not unlearn.runs_apart(argparse.Namespace(in_process=False))

    # the shipped setting runs first whatever the scales, and a sweep of one scale is still a sweep
    assert [len(s) for s in sweep("graddiff", lr=(3.0,))] == [0, 1] and sweep("graddiff", lr=(3.0,))[1][0] == "lr=6e-05"
    assert sweep("graddiff", lr=(3.0, 1.0, 3.0)) == sweep("graddiff", lr=(3.0,))
    # the eraser's own sweep follows --sweep alone
    assert sweep("eraser", "eraser") == [[], ["sweep=true"]] and sweep("eraser", "graddiff") == [[]]
    # a method's own options come with each of its settings, after the engine's, and with no other method's
    method_set = [unlearn.method_option("eraser:gate=0.5"), unlearn.method_option("graddiff:epochs=2")]
    assert sweep("eraser", "eraser") == [["gate=0.5"], ["gate=0.5", "sweep=true"]]
    assert [s[0] for s in sweep("graddiff", lr=(3.0,))] == ["epochs=2", "epochs=2"]
    # a reply with no letter is counted, under None, so that the counts add up to the items
    rec = {"group": "retain", "task": "mcq", "options": ["a", "b"], "answer": "a"}
    ll = [{**rec, "uid": str(i), "correct": True, "extracted": None} for i in range(3)]
    off = [{**rec, "uid": "0", "correct": True, "extracted": "A", "reply": "A"},
           *({**rec, "uid": str(i), "correct": False, "extracted": None, "reply": "hm"} for i in (1, 2))]
    assert protocols.agreement(ll, off)["retain"]["official_letter_counts"] == {"A": 1, "None": 2}


def test_vanilla_benchmark_splits_general_by_kind() -> None:
    """The pooled `general` figure hides which skill is missing; vanilla.py reports each kind."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from vanilla import by_kind

    from unsee.data.scenes import GENERAL_TEMPLATES
    from unsee.data.schema import Example

    def item(kind: str) -> Example:
        return Example(uid=kind, entity="g", question=GENERAL_TEMPLATES[kind][0], answer="x", task="mcq")

    items = [item("shape"), item("shape"), item("count"), item("colour")]
    split = by_kind(items, [True, False, False, True])
    assert split == {"colour": {"acc": 1.0, "n": 1}, "count": {"acc": 0.0, "n": 1}, "shape": {"acc": 0.5, "n": 2}}
    with pytest.raises(ValueError):
        by_kind(items, [True])


def test_reproduce_benchmark_trains_the_vanilla_model_again_bit_for_bit(demo_run: tuple[Path, Path],
                                                                        tmp_path: Path) -> None:
    """benchmarks/reproduce.py: two trainings from empty caches give the same tensors; a model
    that differs is named, tensor by tensor."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import reproduce

    cfg = yaml.safe_load(CONFIG.read_text())
    r = reproduce.main(["--world", "quick", "--cache-dir", str(tmp_path / "cache"), "--threads", "1",
                        "--out", str(tmp_path / "r.json"), *(f"--world-set={x}" for x in cfg["world_overrides"]),
                        *(f"--recipe-set={x}" for x in cfg["recipe_overrides"])])
    assert r["identical"] and r["differing"] == [] and r["max_abs_diff"] == 0.0 and r["n_tensors"] > 50
    assert json.loads((tmp_path / "r.json").read_text())["identical"] is True
    other = reproduce.compare(Path(r["against"]), demo_run[0] / "graddiff")
    assert not other["identical"] and other["differing"] and other["max_abs_diff"] > 0


def test_general_probe_benchmark_probes_and_fine_tunes_a_copy(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/general_probe.py: a probe per general question, then the held-out general MCQ by kind before
    and after a fine-tune on the general training scenes alone."""
    import math
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import general_probe

    cfg = yaml.safe_load(CONFIG.read_text())
    r = general_probe.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--threads", "1", "--steps", "10",
                            "--out", str(tmp_path / "g.json"), "--finetune-steps", "2",
                            *[f"--world-set={x}" for x in cfg["world_overrides"]],
                            *[f"--recipe-set={x}" for x in cfg["recipe_overrides"]]])
    assert r["questions"] and all(0 <= q["test_acc"] <= 1 for q in r["questions"].values())
    tuned = r["finetune"]
    assert tuned["steps"] == 2 and math.isfinite(tuned["final_nll"]) and tuned["final_nll"] > 0
    assert set(tuned["before"]["by_kind"]) == set(tuned["after"]["by_kind"]) <= {"colour", "shape", "count",
                                                                                  "position"}
    assert json.loads((tmp_path / "g.json").read_text())["finetune"]["after"] == tuned["after"]


def test_shape_tower_benchmark_trains_the_visual_module_alone(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/shape_tower.py: heads on the initial model's visual tokens, scored on held-out scenes of the
    world's size while the training objects are drawn larger; the tower rebuilt with 8-pixel patches whose
    embedding starts as an orthonormal DCT basis."""
    import math
    import sys

    import numpy as np
    import torch
    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import shape_tower

    items = shape_tower.scenes(np.random.default_rng(0), 12, "shape", scale=(2.0, 2.5))
    plain = shape_tower.scenes(np.random.default_rng(0), 40, "general")
    assert {it.kind for it in items} == {"shape"} and all(0.18 <= it.radius <= 0.13 * 2.5 for it in items)
    assert {it.kind for it in plain} > {"shape"} and all(0.09 <= it.radius <= 0.13 for it in plain)
    cfg = yaml.safe_load(CONFIG.read_text())
    r = shape_tower.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--threads", "1", "--steps", "4",
                          "--eval-every", "2", "--eval-scenes", "24", "--task", "general", "--head", "attn",
                          "--train-scale", "1,2", "--patch-size", "8", "--patch-init", "dct",
                          "--out", str(tmp_path / "s.json"),
                          *[f"--world-set={x}" for x in cfg["world_overrides"]]])
    assert [c["step"] for c in r["curve"]] == [2, 4] and all(math.isfinite(c["loss"]) for c in r["curve"])
    assert set(r["final"]) == {"colour", "shape", "count", "position"} and all(0 <= v <= 1 for v in r["final"].values())
    assert Path(r["model"]).name.startswith("init-tiny-llava") and r["train_scale"] == [1.0, 2.0]
    assert r["patch_size"] == 8 and r["patch_init"] == "dct"
    from unsee.models import load_adapter

    adapter = load_adapter(r["model"])
    shape_tower.dct_patch_init(adapter)
    w = adapter.model.model.vision_tower.embeddings.patch_embedding.weight.flatten(1)
    assert torch.allclose(w @ w.T, torch.eye(w.shape[0]), atol=1e-5)  # 192 orthonormal filters of 768 inputs
    assert json.loads((tmp_path / "s.json").read_text())["final"] == r["final"]
    with pytest.raises(SystemExit):  # a Qwen tower is not CLIP's: the patch options are refused, nothing trains
        shape_tower.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--arch", "tiny-qwen2.5-vl",
                          "--patch-init", "dct", "--out", str(tmp_path / "q.json"),
                          *[f"--world-set={x}" for x in cfg["world_overrides"]]])
    assert not (tmp_path / "q.json").exists()


def test_benchmark_scratch_is_removed_at_exit(tmp_path: Path) -> None:
    """A benchmark process's scratch folders (models of every swept run) are gone once it exits."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, 'benchmarks'); import common; "
            "d = common.scratch('x-'); (d / 'w').write_text('1'); print(d)")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert Path(out).is_relative_to(tmp_path) and not Path(out).exists()
    assert list(tmp_path.iterdir()) == []


def test_arch_profile_names_where_each_methods_step_goes(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    """benchmarks/arch_profile.py: one profiled run per method from the untrained tiny model; the named parts
    of a step add up to no more than the profiled training, and only cvf_ncu projects onto a null space; with
    --repeats, unprofiled rounds of every method in turn and the time ratio of each round."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import arch_profile

    cfg = yaml.safe_load(CONFIG.read_text())
    r = arch_profile.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--threads", "1", "--archs",
                           "tiny-llava", "--train-set", "max_steps=3", "--train-set", "progress=false",
                           "--out", str(tmp_path / "p.json"), "--repeats", "2",
                           *[f"--world-set={x}" for x in cfg["world_overrides"]]])
    rows = r["rows"]["tiny-llava"]
    assert set(rows) == {"cvf_ncu", "graddiff"}
    for row in rows.values():
        parts = row["parts_s"]
        assert row["steps"] == 3 and row["s_per_step"] > 0
        assert parts["backward"] > 0 and parts["other"] >= -0.05
        assert sum(v for k, v in parts.items() if k != "other") <= row["profiled_train_s"] + 0.05
    assert rows["cvf_ncu"]["parts_s"]["null_space_projection"] > 0 and rows["cvf_ncu"]["parts_s"]["visual_forward"] > 0
    assert rows["graddiff"]["parts_s"]["null_space_projection"] == 0
    ratio = rows["cvf_ncu"]["wall_s"] / rows["graddiff"]["wall_s"]
    assert r["cvf_ncu_over_graddiff_wall"]["tiny-llava"] == round(ratio, 3)
    assert json.loads((tmp_path / "p.json").read_text())["rows"] == r["rows"]
    # the unprofiled rounds: every method twice, and the ratio of each round's pair
    timed = r["unprofiled"]["tiny-llava"]
    walls = {m: timed[m]["wall_s"] for m in ("cvf_ncu", "graddiff")}
    assert all(len(w) == 2 and min(w) > 0 for w in walls.values())
    pairs = timed["cvf_ncu_over_graddiff"]["pairs"]
    assert pairs == [round(a / b, 3) for a, b in zip(walls["cvf_ncu"], walls["graddiff"], strict=True)]
    assert timed["cvf_ncu_over_graddiff"]["min"] <= timed["cvf_ncu_over_graddiff"]["median"] <= max(pairs)
    with pytest.raises(SystemExit):
        arch_profile.main(["--repeats", "-1", "--out", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()


def test_step_flops_counts_a_step_and_carries_a_layer_to_full_depth(demo_run: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """benchmarks/step_flops.py: a step's FLOPs from runs of 2 and 4 steps; cvf_ncu's step, the visual
    module alone, counts fewer than GradDiff's whole model; and a tower counted at two and three layers,
    carried to its depth, gives exactly what the whole tower counts."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import step_flops

    from unsee.models import adapter_class
    from unsee.models.shapes import TINY_SIDE, build_shaped

    cfg = yaml.safe_load(CONFIG.read_text())
    r = step_flops.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--threads", "1", "--archs",
                         "tiny-llava", "--train-set", "max_steps=3", "--train-set", "progress=false", "--no-hub",
                         "--out", str(tmp_path / "f.json"), *[f"--world-set={x}" for x in cfg["world_overrides"]]])
    row = r["rows"]["tiny-llava"]
    cvf, gd = row["cvf_ncu"], row["graddiff"]
    assert cvf["steps"] == gd["steps"] == 3  # the full runs took the overridden step count
    assert 0 < cvf["step_flops"] < gd["step_flops"] and cvf["once_flops"] > 0
    assert row["item"]["V"] > 0 and row["item"]["L"] > 0 and row["item"]["text_tokens"] > 0
    assert row["cvf_ncu_over_graddiff"]["run"] == pytest.approx(cvf["run_flops"] / gd["run_flops"])
    assert cvf["run_flops"] == pytest.approx(3 * cvf["step_flops"] + cvf["once_flops"])
    assert "hub" not in row and json.loads((tmp_path / "f.json").read_text())["rows"] == r["rows"]
    with pytest.raises(SystemExit):  # a split the world lacks: one line, and no JSON
        step_flops.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--archs", "tiny-llava", "--no-hub",
                         "--forget", "no_such_split", "--out", str(tmp_path / "no.json"),
                         *[f"--world-set={x}" for x in cfg["world_overrides"]]])
    assert not (tmp_path / "no.json").exists()
    # the depth carry: every layer of a tower counts alike, so five layers are two plus three times the third
    image = step_flops.Image.new("RGB", (TINY_SIDE, TINY_SIDE), (128, 96, 64))
    for shape, model_type in (("llava-1.5-7b", "llava"), ("qwen2-vl-7b", "qwen2_vl")):
        at = {n: step_flops.item_flops(adapter_class(model_type)(*build_shaped(shape, tiny=True, layers=n)), image, 8)
              for n in (2, 3, 5)}
        for part in ("V", "L"):
            assert at[5][part] == at[2][part] + 3 * (at[3][part] - at[2][part]) and at[3][part] > at[2][part]
    carried = step_flops.hub_item_flops("llava-1.5-7b", 8, tiny=True)  # the shrunk shape: vision 3, language 2
    whole = step_flops.item_flops(adapter_class("llava")(*build_shaped("llava-1.5-7b", tiny=True)), image, 8)
    assert carried["depths"] == [3, 2] and (carried["V"], carried["L"]) == (whole["V"], whole["L"])


def test_subspace_energy_measures_each_groups_share_in_both_subspaces(demo_run: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    """benchmarks/subspace_energy.py: shares are fractions; the contrast space, built to hold the forget
    photos' inputs and not the retained ones', gives the forget photos the larger share."""
    import sys

    import yaml

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import subspace_energy

    cfg = yaml.safe_load(CONFIG.read_text())
    r = subspace_energy.main(["--world", "quick", "--cache-dir", str(demo_run[1]), "--threads", "1",
                              "--contrast-rank", "0.1", "--out", str(tmp_path / "e.json"),
                              *[f"--world-set={x}" for x in cfg["world_overrides"]],
                              *[f"--recipe-set={x}" for x in cfg["recipe_overrides"]]])
    spaces = r["subspaces"]
    assert set(spaces) == {"null", "contrast"} and len(r["last_layers"]) == 2
    for rows in spaces.values():
        for row in rows.values():
            assert 0 <= row["mean"] <= 1 and all(0 <= v <= 1 for v in row["last"])
    assert spaces["contrast"]["forget"]["mean"] > 2 * spaces["contrast"]["retain"]["mean"]
    assert json.loads((tmp_path / "e.json").read_text())["subspaces"] == spaces


def test_seeds_benchmark_refuses_a_count_of_no_seeds() -> None:
    """--seeds N counts seeds from --seed; 0 would run nothing and fail later, so it is refused in one line."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import common

    assert common.seed_list("2", 5) == [5, 6] and common.seed_list("0,3", 5) == [0, 3]
    with pytest.raises(SystemExit, match="1 or more"):
        common.seed_list("0", 0)
    for bad in ("0,x", "two", "0,,1"):  # a typo is refused in one line, not by int()'s traceback
        with pytest.raises(SystemExit, match="whole numbers"):
            common.seed_list(bad, 0)


def test_vanilla_benchmark_holds_the_quick_world_to_its_own_bars_as_well() -> None:
    """benchmarks/vanilla.py: the default targets for every world; on the quick world also its own bars (image
    questions 0.95, known 0.85, general 0.70), so a quick model reading known people near chance fails; on the
    default world held-out views at 0.90 and each kind of general question at 0.75."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import vanilla

    pooled = {name: {"acc": 0.96} for name in vanilla.TARGETS} | {"known": {"acc": 0.5}, "general": {"acc": 0.75}}
    quick = vanilla.target_checks(pooled, "quick", vision_s=100.0, world_s=200.0, by_kind={})
    assert not quick["quick_known"]["pass"] and quick["quick_general"]["pass"] and quick["quick_image_train"]["pass"]
    assert not quick["general"]["pass"] and not quick["world_stages_s"]["pass"] and quick["vision_stage_s"]["pass"]
    assert quick["image_test"]["target"] == 0.85 and not any(k.startswith("general_") for k in quick)
    kinds = {"colour": {"acc": 1.0, "n": 31}, "shape": {"acc": 0.22, "n": 18}}
    default = vanilla.target_checks(pooled, "default", vision_s=100.0, world_s=200.0, by_kind=kinds)
    assert not any(k.startswith("quick_") for k in default) and default["world_stages_s"]["pass"]
    # the default world: held-out views at 0.90, and each kind of general question on its own
    assert default["image_test"]["target"] == 0.90 and default["image_test"]["pass"]
    assert default["general_colour"]["pass"] and not default["general_shape"]["pass"]
    # the stage cache is named as in every other benchmark (the old spelling still works)
    assert vanilla.parser().parse_args(["--cache-dir", "c"]).cache == "c" == vanilla.parser().parse_args(
        ["--cache", "c"]).cache


def test_benchmarks_refuse_a_thread_count_below_one_and_an_unknown_architecture_in_one_line(capsys) -> None:
    """--threads 0, --arch tiny-nope and an unknown attack end at the parser with a one-line message, before any
    model is built; --attacks none is a run without audits."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import common

    p = common.parser(__doc__ or "benchmark", methods="cvf_ncu", out="x.json")
    common.attack_options(p)
    assert p.parse_args(["--threads", "3"]).threads == 3
    assert p.parse_args(["--attacks", "none"]).attacks == []  # a measuring run, no audits
    assert p.parse_args(["--attacks", "relearn,pgd"]).attacks == ["relearn", "pgd"]
    for bad, word in ((["--threads", "0"], "at least 1"), (["--arch", "tiny-nope"], "invalid choice"),
                      (["--attacks", "relearn,nope"], "unknown attack(s) ['nope']"), (["--attacks", ""], "unknown")):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
        assert word in capsys.readouterr().err


def test_example_photos_are_labelled_by_whose_they_are(suite: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The labels follow the person, not the position: a forget person with fewer than three photos shown
    must not lend the label to a retained one."""
    from matplotlib.axes import Axes

    from unsee import demo

    forget = [e for e in suite.groups["forget"] if e.task == "mcq" and e.has_image][:1]
    retain = [e for e in suite.groups["retain"] if e.task == "mcq" and e.has_image][:3]
    titles: list[str] = []
    monkeypatch.setattr(Axes, "set_title", lambda self, text, **kw: titles.append(text))
    items = [*forget, *retain]
    demo._write_examples(tmp_path, items, ["a"] * 4, {"ga": ["b"] * 4}, forgotten=set(suite.forget_entities))
    assert [t.split("\n")[0].endswith("(forget)") for t in titles] == [True, False, False, False]
    assert (tmp_path / "examples.png").is_file() and (tmp_path / "examples.md").is_file()
