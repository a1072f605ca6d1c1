from __future__ import annotations

import copy
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from unsee import provenance
from unsee.errors import OutputExistsError, UnseeError
from unsee.eval import results as res
from unsee.eval.results import ResultsError
from unsee.provenance import CostMeter, combined_cost


def sample_run(method: str = "cvf_ncu", **over: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "method": method,
        "model": "tiny-llava",
        "benchmark": "builtin",
        "forget_split": "forget_10",
        "request": 1,
        "seed": 0,
        "config": {"lr": 1e-4, "scope": "visual"},
        "mcq_protocol": "loglik",
        "metrics": {
            "forget": {"mcq": 0.27, "cloze": 0.05, "rougeL": 0.21, "n": 120},
            "forget_test": {"mcq": 0.28, "n": 80},
            "retain": {"mcq": 0.95, "n": 900},
            "text_forget": {"mcq": 0.97, "n": 120},
            "text_retain": {"mcq": 0.97, "n": 900},
            "known": {"mcq": 0.96, "n": 200},
            "general": {"mcq": 0.93, "n": 200},
        },
        "cost": {
            "wall_s": 41.2,
            "peak_rss_bytes": 0,
            "peak_gpu_bytes": None,
            "trainable_params": 0,
            "optimizer_state_bytes": 0,
        },
    }
    run.update(over)
    return run


ENV = {"unsee_version": "0.1.0", "git_hash": "abc123"}


def sample_results(*runs: dict[str, Any]) -> dict[str, Any]:
    return res.new_results(runs or [sample_run()], env=ENV)


def test_design_md_example_validates() -> None:
    doc = {
        "schema_version": 1,
        "unsee_version": "0.1.0",
        "git_hash": "...",
        "created": "2026-01-01T00:00:00+00:00",
        "runs": [sample_run()],
    }
    res.validate_results(doc)


def test_optional_keys_validate() -> None:
    run = sample_run(
        request=2,
        notes="second request",
        attacks={"relearn": {"forget_before": 0.27, "forget_after": 0.6, "ag": 0.33}},
    )
    run["metrics"]["forget_r1"] = {"mcq": 0.3, "n": 120}
    run["metrics"]["forget"]["all_modal_acc"] = 0.1
    run["cost"]["peak_gpu_bytes"] = 123
    res.validate_results(sample_results(run))


def test_an_evaluation_without_cloze_or_generation_validates() -> None:
    """``max_gen_items=0`` scores MCQ only (the request benchmark's --no-generation); a negative cap is refused."""
    run = sample_run(evaluation={"protocol": "loglik", "max_items": None, "max_gen_items": 0, "scoring": {}})
    res.validate_results(sample_results(run))
    run["evaluation"]["max_gen_items"] = -1
    with pytest.raises(ResultsError, match="max_gen_items"):
        res.validate_results(sample_results(run))


def _invalid(mutate: Any) -> str:
    doc = sample_results()
    mutate(doc)
    with pytest.raises(ResultsError) as info:
        res.validate_results(doc)
    assert isinstance(info.value, UnseeError)
    return str(info.value)


def test_validation_names_the_failing_key() -> None:
    msg = _invalid(lambda d: d["runs"][0]["metrics"]["forget"].update(mcq=1.5))
    assert "runs[0].metrics.forget.mcq" in msg
    msg = _invalid(lambda d: d["runs"][0]["cost"].pop("wall_s"))
    assert "runs[0].cost" in msg and "wall_s" in msg
    msg = _invalid(lambda d: d["runs"][0].update(mcq_protocol="vibes"))
    assert "mcq_protocol" in msg
    msg = _invalid(lambda d: d["runs"][0]["metrics"]["retain"].pop("n"))
    assert "runs[0].metrics.retain" in msg
    msg = _invalid(lambda d: d["runs"][0]["metrics"]["retain"].update(n=-1))
    assert "retain.n" in msg
    msg = _invalid(lambda d: d.update(schema_version=2))
    assert "schema_version" in msg
    msg = _invalid(lambda d: d["runs"][0]["metrics"]["general"].update(extra="high"))
    assert "general.extra" in msg
    msg = _invalid(lambda d: d["runs"][0]["metrics"]["general"].update(mcq=math.nan))
    assert "general.mcq" in msg and "NaN" in msg


def test_new_results_stamps_provenance() -> None:
    doc = res.new_results([sample_run()])
    assert doc["schema_version"] == 1
    assert doc["unsee_version"] == "0.1.0"
    assert doc["created"][:2] == "20"
    assert set(doc["environment"]) >= {"torch", "transformers", "python", "platform", "device", "git_hash"}
    assert doc["environment"]["threads"] == torch.get_num_threads()  # another count trains another model
    res.validate_results(doc)


def test_environment_never_fails_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **k: Any) -> None:
        raise FileNotFoundError("git")

    provenance._git_state.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", broken)
    try:
        env = provenance.environment()
    finally:
        provenance._git_state.cache_clear()
    assert env["git_hash"] is None
    assert env["python"]


def test_an_install_inside_the_users_own_repository_records_no_commit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel installed in ``project/.venv`` found the project's repository above it, and results.json
    and the report named the user's commit (and its edits) as unsee's."""
    git = ["git", "-c", "user.email=u@example.org", "-c", "user.name=u"]
    (tmp_path / ".gitignore").write_text(".venv/\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "notes.txt").write_text("edited\n")
    installed = tmp_path / ".venv" / "lib" / "site-packages" / "unsee"
    installed.mkdir(parents=True)
    for name in ("__init__.py", "provenance.py"):
        (installed / name).write_text("")
    monkeypatch.setattr(provenance, "__file__", str(installed / "provenance.py"))
    provenance._git_state.cache_clear()
    try:
        assert provenance._git_state() == (None, None)
        monkeypatch.undo()
        provenance._git_state.cache_clear()
        commit, _ = provenance._git_state()  # this checkout's own commit is still read
    finally:
        provenance._git_state.cache_clear()
    checkout = Path(provenance.__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout
        assert commit == head.strip()


def test_write_and_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    doc = sample_results()
    res.write_results(path, doc)
    loaded = res.load_results(path)
    # runs without item records get an empty samples.jsonl, which the results file names
    assert loaded.pop("samples") == {"file": "samples.jsonl", "lines": 0, "sha256": hashlib.sha256(b"").hexdigest()}
    assert loaded == doc
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json", "samples.jsonl"]  # no temp file left


def test_write_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    res.write_results(path, sample_results())
    with pytest.raises(OutputExistsError, match="overwrite"):
        res.write_results(path, sample_results(sample_run("ga")))
    assert res.load_results(path)["runs"][0]["method"] == "cvf_ncu"
    res.write_results(path, sample_results(sample_run("ga")), overwrite=True)
    assert res.load_results(path)["runs"][0]["method"] == "ga"


def test_write_refuses_invalid_and_keeps_nothing(tmp_path: Path) -> None:
    doc = sample_results()
    doc["runs"][0]["request"] = 0
    with pytest.raises(ResultsError, match="request"):
        res.write_results(tmp_path / "r.json", doc)
    assert not list(tmp_path.iterdir())


def test_write_accepts_numpy_scalars(tmp_path: Path) -> None:
    run = sample_run(seed=np.int64(3))
    run["metrics"]["forget"]["mcq"] = np.float32(0.5)
    run["metrics"]["forget"]["n"] = np.int64(120)
    res.write_results(tmp_path / "r.json", sample_results(run))
    assert res.load_results(tmp_path / "r.json")["runs"][0]["seed"] == 3


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no such results file"):
        res.load_results(tmp_path / "missing.json")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(ResultsError, match="empty"):
        res.load_results(empty)
    full = json.dumps(sample_results())
    partial = tmp_path / "partial.json"
    partial.write_text(full[: len(full) // 2])
    with pytest.raises(ResultsError, match=r"not valid JSON at line \d+.*truncated"):
        res.load_results(partial)
    bad = copy.deepcopy(sample_results())
    del bad["runs"][0]["metrics"]
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(bad))
    with pytest.raises(ResultsError, match=r"wrong\.json.*runs\[0\].*metrics"):
        res.load_results(wrong)


def test_merge_results(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    res.write_results(a, sample_results(sample_run("vanilla"), sample_run("ga")))
    res.write_results(b, sample_results(sample_run("npo")))
    merged = res.merge_results([a, b, a])
    assert [r["method"] for r in merged["runs"]] == ["vanilla", "ga", "npo"]
    assert merged["git_hash"] == "abc123"
    assert [s["path"] for s in merged["sources"]] == [str(a), str(b), str(a)]
    res.validate_results(merged)
    with pytest.raises(ResultsError):
        res.merge_results([])


def test_cost_meter_counts_parameters_and_optimizer_state() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].weight.requires_grad_(False)  # frozen: not counted, no optimiser state
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=0.1)
    with CostMeter() as meter:
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        meter.record_model(model, opt)
        inside = meter.cost()
    cost = meter.cost()
    assert cost["trainable_params"] == 12 + 3 + 2
    moments = 2 * 17 * 4  # exp_avg and exp_avg_sq in float32
    assert moments <= cost["optimizer_state_bytes"] <= moments + 3 * 8  # plus the scalar step tensors
    assert inside["trainable_params"] == 17
    assert cost["wall_s"] >= inside["wall_s"] >= 0
    if not torch.cuda.is_available():
        assert cost["peak_gpu_bytes"] is None
    doc = sample_results(sample_run(cost=cost))
    res.validate_results(doc)


def test_cost_meter_peak_rss_is_per_block_when_linux_allows() -> None:
    with CostMeter() as big:
        blob = b"\x01" * (96 * 1024 * 1024)  # touched pages, so they count as resident
        del blob
    with CostMeter() as small:
        pass
    assert big.cost()["peak_rss_bytes"] >= 96 * 1024 * 1024
    # a kernel that keeps the lifetime peak can look like one that reset it when the process sits at its
    # peak (the first meter); the second, entered below the first one's peak, tells the two apart
    if big.rss_scope != "block" or small.rss_scope != "block":
        pytest.skip("VmHWM cannot be reset here: peaks are process-lifetime (ru_maxrss)")
    assert small.cost()["peak_rss_bytes"] < big.cost()["peak_rss_bytes"] - 48 * 1024 * 1024


def test_cost_meter_falls_back_to_process_scope_when_a_reset_does_not_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that accepts the clear_refs write but keeps the lifetime peak must not pass for a
    block-scoped one: the meter would report the whole process's peak as its block's."""
    if provenance._vm_hwm_bytes() is None:
        pytest.skip("no /proc/self/status here")
    blob = b"\x01" * (96 * 1024 * 1024)  # lifts the peak well above what stays resident
    del blob
    silent = tmp_path / "clear_refs"
    real_open = open

    def accept_and_ignore(path: object, *args: object, **kwargs: object) -> object:
        return real_open(silent if path == "/proc/self/clear_refs" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", accept_and_ignore)
    with CostMeter() as meter:
        pass
    assert silent.read_text() == "5"  # the write went through, as on such a kernel
    assert meter.rss_scope == "process"


def test_a_second_meter_in_one_process_says_how_many_blocks_came_before_it() -> None:
    """Their freed heap stays resident and counts in its peak: the cost says so, and stays valid."""
    with CostMeter() as first:
        pass
    with CostMeter() as second:
        pass
    assert second.measured_after == first.measured_after + 1 >= 1
    assert second.cost()["measured_after"] == second.measured_after
    res.validate_results(sample_results(sample_run(cost=second.cost())))
    fresh = subprocess.run([sys.executable, "-c", "from unsee.provenance import CostMeter\n"
                            "with CostMeter() as m: pass\nprint(sorted(m.cost()))"],
                           capture_output=True, text=True, timeout=300, check=True)
    assert "measured_after" not in fresh.stdout and "wall_s" in fresh.stdout  # the first of its process
    # a continual run's requests are one job: it was measured after what its first request was
    first, later = {"wall_s": 1.0, "peak_rss_bytes": 5}, {"wall_s": 2.0, "peak_rss_bytes": 7, "measured_after": 1}
    assert combined_cost([first, later]) == {"wall_s": 3.0, "peak_rss_bytes": 7, "requests": 2}
    assert combined_cost([{**first, "measured_after": 4}, {**later, "measured_after": 5}])["measured_after"] == 4


def test_cost_meter_without_model() -> None:
    with CostMeter() as meter:
        meter.record_model(None)
    cost = meter.cost()
    assert cost["trainable_params"] == 0 and cost["optimizer_state_bytes"] == 0
    assert cost["peak_rss_bytes"] > 0
