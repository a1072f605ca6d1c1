"""samples.jsonl: one line per scored item, written beside every results file, agreeing with it.

Each group's figures are recomputed here from the lines alone (fractions correct, means of
ROUGE-L and BLEU, counts), so a figure that does not come from its items fails. Both
protocols run on the built-in world through the command line, and ``official`` also on a
folder of each public benchmark in its hub layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import fixtures_bench as fb
import pytest

from unsee import api
from unsee.cli import main
from unsee.data import load_benchmark, prompts
from unsee.data.mllmu import load_mllmu
from unsee.data.schema import Suite
from unsee.errors import ConfigError, OutputExistsError
from unsee.eval import protocols
from unsee.eval.evaluator import run_evaluation
from unsee.eval.results import (
    ResultsError,
    load_results,
    load_samples,
    new_results,
    samples_path,
    write_results,
)
from unsee.models import load_adapter
from unsee.report import write_report
from unsee.report.changes import changes_section

FIXTURES = {"mllmu": (fb.write_mllmu, "forget_10"), "clear": (fb.write_clear, "forget05"),
            "umu": (fb.write_umu, "forget_10")}


def recomputed(lines: list[dict[str, Any]], run: int = 0) -> dict[str, dict[str, float]]:
    """Each group's figures from the lines of one run, computed independently of the evaluator."""
    out: dict[str, dict[str, float]] = {}
    groups = {ln["group"] for ln in lines if ln["run"] == run}
    for g in groups:
        mine = [ln for ln in lines if ln["run"] == run and ln["group"] == g]
        fig: dict[str, float] = {"n": sum(ln["task"] == "mcq" for ln in mine)}
        for task, key in (("mcq", "mcq"), ("cloze", "cloze")):
            scored = [ln["correct"] for ln in mine if ln["task"] == task]
            if scored:
                fig[key] = sum(scored) / len(scored)
        gen = [ln for ln in mine if ln["task"] == "gen"]
        if gen:
            fig["rougeL"] = sum(ln["rougeL"] for ln in gen) / len(gen)
            fig["bleu"] = sum(ln["bleu"] for ln in gen) / len(gen)
        out[g] = fig
    return out


def assert_agrees(results_file: Path) -> list[dict[str, Any]]:
    res = load_results(results_file)
    lines = load_samples(results_file)
    text = samples_path(results_file).read_text()
    assert res["samples"] == {"file": samples_path(results_file).name, "lines": len(lines),
                              "sha256": hashlib.sha256(text.encode()).hexdigest()}
    for i, run in enumerate(res["runs"]):
        again = recomputed(lines, i)
        assert set(again) == set(run["metrics"])
        for g, fig in again.items():
            for key, value in fig.items():
                assert run["metrics"][g][key] == pytest.approx(value), (g, key)
        assert {ln["method"] for ln in lines if ln["run"] == i} == {run["method"]}
    for ln in lines:
        assert {"uid", "group", "person", "question", "options", "prompt", "answer", "extracted",
                "correct"} <= set(ln)
        assert (ln["scores"] if ln.get("reply") is None else ln["reply"]) is not None
    return lines


@pytest.mark.parametrize("protocol", ["loglik", "official"])
def test_eval_on_the_builtin_world_writes_samples_that_agree(world: Path, model_dir: Path, tmp_path: Path,
                                                             protocol: str) -> None:
    out = tmp_path / "eval.json"
    precision = ["--dtype", "bf16"] if protocol == "official" else []  # the record says which was scored
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(out), "--protocol", protocol,
                 "--max-items", "2", "--max-new-tokens", "2", *precision]) == 0
    lines = assert_agrees(out)
    run = load_results(out)["runs"][0]
    assert run["evaluation"]["dtype"] == ("bfloat16" if precision else "float32")
    assert run["protocol"] == protocol and run["evaluation"]["protocol"] == protocol
    assert run["mcq_protocol"] == ("loglik" if protocol == "loglik" else "letter")
    assert run["evaluation"]["max_new_tokens"] == {"mcq": 2, "cloze": 2, "gen": 2}
    assert run["evaluation"]["scoring"]["forget"]["mcq"] == run["mcq_protocol"]
    mcq = [ln for ln in lines if ln["task"] == "mcq"]
    assert mcq and all(ln["group"] in run["metrics"] for ln in lines)
    if protocol == "official":
        assert all(ln["prompt"].endswith(prompts.MCQ_SUFFIX) and ln["reply"] is not None for ln in mcq)
    else:
        assert all(len(ln["scores"]) == len(ln["options"]) and ln["reply"] is None for ln in mcq)
    assert max(sum(ln["group"] == g and ln["task"] == t for ln in lines)
               for g in run["metrics"] for t in ("mcq", "cloze", "gen")) == 2


@pytest.mark.parametrize("protocol", ["loglik", "official"])
def test_every_group_is_asked_in_one_generation_pass_a_budget_with_the_replies_it_gets_alone(
        protocol: str, world: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Decoding pays its budget per pass, whatever the batch holds: small groups are asked together, one pass per
    reply budget, and each item's reply, record and figure are those of its group evaluated on its own. The
    answers, the slow part on a CPU, show a bar."""
    adapter = load_adapter(model_dir)
    suite = load_mllmu(world, "forget_10")
    bench = protocols.benchmark_of(suite.info.get("benchmark", suite.name))
    monkeypatch.setitem(protocols.MAX_NEW_TOKENS, bench, {"mcq": 3, "cloze": 5, "gen": 4})  # three budgets
    real, budgets = adapter.generate, []
    monkeypatch.setattr(adapter, "generate", lambda turns, **k: budgets.append(k["max_new_tokens"]) or real(turns, **k))
    together = run_evaluation(adapter, suite, protocol=protocol, max_items=2, progress=True)
    assert budgets == ([5, 4] if protocol == "loglik" else [3, 5, 4])  # the MCQs are generated only when official
    assert "eval answers (5 tokens)" in capsys.readouterr().err
    budgets.clear()
    alone = [run_evaluation(adapter, suite, groups=[g], protocol=protocol, max_items=2, progress=False)
             for g in together.metrics]
    assert len(budgets) == len(alone) * (2 if protocol == "loglik" else 3)
    assert together.samples == [rec for ev in alone for rec in ev.samples]
    assert together.metrics == {g: ev.metrics[g] for g, ev in zip(together.metrics, alone, strict=True)}
    assert {r["task"] for r in together.samples} == {"mcq", "cloze", "gen"}


def test_what_evaluate_returns_is_what_it_wrote(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """With its samples record, so that load_samples can check the file beside it against the returned results."""
    out = tmp_path / "eval.json"
    returned = api.evaluate(model_dir, world, out, max_items=2, max_new_tokens=2)
    assert returned == load_results(out) and returned["samples"]["file"] == samples_path(out).name
    assert load_samples(out, returned) == load_samples(out) != []


def test_a_run_that_measured_no_cost_is_not_shown_as_spending_none(tmp_path: Path) -> None:
    """The vanilla row of a run and a run an attack makes carry zeros; read as measured, they said 0 MiB."""
    suite = Suite(name="builtin", groups={}, info={"benchmark": "builtin"})
    vanilla = api.make_run("vanilla", {"forget": {"mcq": 1.0, "n": 3}}, model="m", suite=suite, forget="forget_10",
                           seed=0)
    assert vanilla["cost"]["covers"] == "nothing"
    write_results(tmp_path / "results.json", new_results([vanilla]))
    write_report([tmp_path / "results.json"], tmp_path)
    (row,) = [r for r in (tmp_path / "report.md").read_text().splitlines() if r.startswith("| vanilla |")]
    assert row.endswith("| \u2014 | \u2014 | \u2014 | \u2014 |")


@pytest.mark.parametrize("kind", sorted(FIXTURES))
def test_official_protocol_on_each_hub_layout(kind: str, tiny_models: Any, tmp_path: Path) -> None:
    write, forget = FIXTURES[kind]
    suite = load_benchmark(kind, write(tmp_path / kind), forget)
    ev = run_evaluation(tiny_models.adapter("tiny-llava"), suite, protocol="official", max_items=2,
                        max_new_tokens=2, progress=False)
    run = api.make_run("vanilla", ev, model="tiny-llava", suite=suite, forget=forget, seed=0)
    out = tmp_path / "out" / "results.json"
    out.parent.mkdir()
    write_results(out, new_results([run]))
    lines = assert_agrees(out)
    assert load_results(out)["runs"][0]["mcq_protocol"] == ("option_string" if kind == "umu" else "letter")
    items = {e.uid: e for g in suite.groups.values() for e in g}
    for ln in lines:  # every prompt is the benchmark's own text for that item
        assert ln["prompt"] == protocols.prompt(kind, "official", items[ln["uid"]])
    tasks = {ln["task"] for ln in lines}
    assert tasks == ({"mcq", "gen"} if kind == "clear" else {"mcq", "cloze", "gen"})
    if kind == "umu":
        assert "all_modal_acc" in run["metrics"]["forget"] and "rougeL_all_modal" in run["metrics"]["forget"]


def _line(run: int, method: str, uid: str, correct: bool, reply: str) -> dict[str, Any]:
    return {"run": run, "method": method, "request": 1, "seed": 0, "protocol": "official", "group": "forget",
            "uid": uid, "person": "p1", "task": "mcq", "image": True, "question": f"Question {uid}?",
            "options": ["A1", "B1"], "answer": "A1", "gold": "A", "prompt": "", "rule": "letter", "pair": None,
            "reply": reply, "extracted": reply[:1], "correct": correct}


def test_report_lists_the_answers_each_method_changed_most(tmp_path: Path) -> None:
    def run(method: str, mcq: float) -> dict[str, Any]:
        return api.make_run(method, {"forget": {"mcq": mcq, "n": 3}}, model="m",
                            suite=Suite(name="builtin", groups={}, info={"benchmark": "builtin"}),
                            forget="forget_10", seed=0, protocol="official")

    out = tmp_path / "r"
    out.mkdir()
    res = new_results([run("vanilla", 1.0), run("ga", 1 / 3)])
    res["runs"][0]["_samples"] = [{k: v for k, v in _line(0, "vanilla", u, True, "A").items()
                                   if k not in ("run", "method", "request", "seed", "protocol")}
                                  for u in ("q1", "q2", "q3")]
    res["runs"][1]["_samples"] = [{k: v for k, v in ln.items()
                                   if k not in ("run", "method", "request", "seed", "protocol")}
                                  for ln in (_line(1, "ga", "q1", True, "A"), _line(1, "ga", "q2", False, "B"),
                                             _line(1, "ga", "q3", False, "B"))]
    write_results(out / "results.json", res)
    write_report([out / "results.json"], out)
    report = (out / "report.md").read_text()
    section = report[report.index("## Answers that changed most"):]
    assert "### ga" in section and "Question q2?" in section and "Question q3?" in section
    assert "Question q1?" not in section  # unchanged: not listed
    assert "A: " not in section and "| B (wrong) |" in section and "| A (right) |" in section
    # the same file given twice: its runs once, in the tables and here alike
    write_report([out / "results.json", out / "results.json"], out, overwrite=True)
    assert (out / "report.md").read_text().count("### ga") == 1


def test_samples_are_a_run_s_only_where_they_name_it() -> None:
    """A results file whose runs were cut by hand keeps its samples file: the lines at a run's index that name
    another method, request or seed are not that run's answers."""
    from unsee.report.changes import runs_with_samples

    runs = [{"method": "vanilla", "request": 1, "seed": 0}, {"method": "ga", "request": 1, "seed": 1}]
    lines = [_line(0, "vanilla", "q1", True, "A"), {**_line(1, "ga", "q1", False, "B"), "seed": 0}]
    assert [len(mine) for _, mine in runs_with_samples({"runs": runs}, lines)] == [1, 0]
    ours = {**_line(1, "ga", "q2", False, "B"), "seed": 1}
    assert runs_with_samples({"runs": runs}, [*lines, ours])[1][1] == [ours]


def test_a_samples_file_that_is_not_the_one_recorded_is_refused_before_any_report_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Edited, cut short or left by other results, its lines would be read as these runs' answers."""
    out = tmp_path / "r"
    test_report_lists_the_answers_each_method_changed_most(tmp_path)
    lines = (out / "samples.jsonl").read_text().splitlines()
    for bad, message in ((lines[:-1], "not the file results.json recorded"),
                         ([lines[0].replace('"correct": true', '"correct": false'), *lines[1:]],
                          "not the file results.json recorded")):
        (out / "samples.jsonl").write_text("\n".join(bad) + "\n")
        with pytest.raises(ResultsError, match=message):
            load_samples(out / "results.json")
        with pytest.raises(ResultsError, match=message):
            write_report([out / "results.json"], tmp_path / "rep")
        assert not (tmp_path / "rep").exists()  # no plots without their report
    (out / "samples.jsonl").write_bytes(b"\xff\xfe\n")
    with pytest.raises(ResultsError, match="cannot read"):
        load_samples(out / "results.json")
    # results that record no samples file (older ones): the file beside them is not read as theirs
    (out / "samples.jsonl").write_text("\n".join(lines) + "\n")
    unrecorded = {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k != "samples"}
    (out / "results.json").write_text(json.dumps(unrecorded))
    assert load_samples(out / "results.json") == []
    assert "is not recorded by results.json" in capsys.readouterr().err


def test_an_earlier_request_is_compared_with_vanilla_on_the_items_both_measured() -> None:
    """`forget --requests A,B`: the vanilla run was measured on B's groups; request A's retain items share their
    uids with B's and are other questions, so only forget_r1 (the same items) is compared."""
    def recs(correct: bool, groups: tuple[str, ...]) -> list[dict[str, Any]]:
        return [{"group": g, "uid": f"{g}/q", "task": "mcq", "correct": correct, "extracted": "A",
                 "question": f"{g}?"} for g in groups]

    base = {"model": "m", "benchmark": "request", "forget_split": "a+b", "method": "vanilla", "request": 2,
            "seed": 0, "config": {}}
    first = {**base, "method": "ga", "request": 1}
    section = "\n".join(changes_section([(base, recs(True, ("retain", "forget_r1"))),
                                         (first, recs(False, ("retain", "forget_r1")))]))
    assert "forget_r1?" in section and "retain?" not in section


def test_a_samples_file_of_other_results_is_not_replaced(model_dir: Path, world: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval --out r.json` writes r.samples.jsonl beside it: one already there is results too (or the
    user's own), refused as r.json itself would be, before the model loads."""
    samples = tmp_path / "r.samples.jsonl"
    samples.write_text("notes\n")
    with monkeypatch.context() as m:
        m.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
        with pytest.raises(OutputExistsError, match="r.samples.jsonl already exists"):
            api.evaluate(model_dir, world, tmp_path / "r.json", max_items=1)
    run = api.make_run("vanilla", {"forget": {"mcq": 0.5, "n": 2}}, model="m", suite=api.load_suite(world),
                       forget="forget_10", seed=0)
    with pytest.raises(OutputExistsError, match="r.samples.jsonl already exists"):  # the writer's own check too
        write_results(tmp_path / "r.json", new_results([{**run, "_samples": []}]))
    assert samples.read_text() == "notes\n" and not (tmp_path / "r.json").exists()


def test_bad_evaluation_options_fail_before_any_work(model_dir: Path, world: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.json"
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(out), "--protocol", "vibes"])
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--max-items", "0"]) == 2
    assert "max_items" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown protocol"):
        api.evaluate(tmp_path / "no-model", tmp_path / "no-data", out, protocol="vibes")
    assert not out.exists() and not samples_path(out).exists()
    assert json.dumps(api.eval_options(protocol="official")) == (
        '{"protocol": "official", "max_items": null, "max_new_tokens": null}')


def _with_samples(method: str, uid: str) -> dict[str, Any]:
    res = new_results([api.make_run(method, {"forget": {"mcq": 1.0, "n": 1}}, model="m",
                                    suite=Suite(name="builtin", groups={}, info={"benchmark": "builtin"}),
                                    forget="forget_10", seed=0, protocol="official")])
    res["runs"][0]["_samples"] = [{k: v for k, v in _line(0, method, uid, True, "A").items()
                                   if k not in ("run", "method", "request", "seed", "protocol")}]
    return res


def test_results_interrupted_after_their_samples_keep_the_pair_they_had(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """samples.jsonl lands first: interrupted before results.json, it goes back to the one beside the results
    kept (or goes, where there were none), so no results file is left with another's answers."""
    import unsee.eval.results as results_module

    out = tmp_path / "results.json"
    real = results_module.atomic_write_json

    def interrupted(path: Path, obj: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(results_module, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(out, _with_samples("vanilla", "q1"))
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(results_module, "atomic_write_json", real)
    write_results(out, _with_samples("vanilla", "q1"))
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(results_module, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_results(out, _with_samples("ga", "q2"), overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept
    assert [ln["uid"] for ln in load_samples(out)] == ["q1"]


def test_a_report_interrupted_while_it_draws_leaves_the_one_before(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import unsee.report as report_module

    write_results(tmp_path / "results.json", _with_samples("vanilla", "q1"))
    out = tmp_path / "r"

    def interrupted(*args: Any, **kw: Any) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(report_module, "render_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report([tmp_path / "results.json"], out)
    assert not out.exists()  # the folder it made for itself goes with it
    out.mkdir()
    monkeypatch.undo()
    from unsee import io as io_module

    dead = out / f".report.md.{io_module._HOST}-999999999-abc.tmp"  # what a killed report left: removed next time
    dead.mkdir()
    write_report([tmp_path / "results.json"], out)
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(kept) == ["report.md", "tradeoff.png"]
    monkeypatch.setattr(report_module, "render_report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report([tmp_path / "results.json"], out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept


def test_an_attack_on_older_results_keeps_their_samples_and_a_link_is_followed(tmp_path: Path) -> None:
    """Results without a samples record are older ones: adding attacks to them emptied their samples.jsonl."""
    real = tmp_path / "real" / "results.json"
    write_results(real, _with_samples("vanilla", "q1"))
    res = load_results(real)
    res.pop("samples")
    kept = samples_path(real).read_bytes()
    write_results(real, res, overwrite=True, keep_samples=True)
    assert samples_path(real).read_bytes() == kept and "samples" not in load_results(real)
    link = tmp_path / "results.json"
    link.symlink_to(real)
    write_results(link, _with_samples("ga", "q2"), overwrite=True)
    assert link.is_symlink() and [ln["uid"] for ln in load_samples(real)] == ["q2"]
    assert not samples_path(link).exists()


def test_a_report_written_meanwhile_to_the_same_folder_is_not_replaced(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import unsee.report as report_module

    write_results(tmp_path / "results.json", _with_samples("vanilla", "q1"))
    out = tmp_path / "r"
    real = report_module.render_report

    def meanwhile(*args: Any, **kw: Any) -> str:
        (out / "report.md").write_text("the other report")
        return real(*args, **kw)

    monkeypatch.setattr(report_module, "render_report", meanwhile)
    with pytest.raises(OutputExistsError, match="was written while this report was made"):
        write_report([tmp_path / "results.json"], out)
    assert (out / "report.md").read_text() == "the other report" and not (out / "tradeoff.png").exists()
