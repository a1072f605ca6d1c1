from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image
from rich.console import Console

from unsee import cli_process
from unsee.errors import OutputExistsError
from unsee.eval.results import ResultsError, new_results, write_results
from unsee.report import (
    model_card,
    plot_continual,
    plot_losses,
    plot_tradeoff,
    plots,
    print_results,
    render_report,
    terminal_table,
    write_report,
)
from unsee.report.card import verdict
from unsee.report.plots import audit_rows, continual_panels, continual_series, continual_values
from unsee.report.tables import config_variants, in_group_order

GROUPS = ("forget", "forget_test", "retain", "text_forget", "text_retain", "known", "general")


def run(method: str, accs: dict[str, float], *, request: int = 1, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "method": method,
        "model": "tiny-llava",
        "benchmark": "builtin",
        "forget_split": "forget_10",
        "request": request,
        "seed": 0,
        "config": {"lr": 0.0001, "steps": 20},
        "mcq_protocol": "loglik",
        "metrics": {g: {"mcq": a, "n": 40} for g, a in accs.items()},
        "cost": {
            "wall_s": 12.5,
            "peak_rss_bytes": 512 * 1024 * 1024,
            "peak_gpu_bytes": None,
            "trainable_params": 1234,
            "optimizer_state_bytes": 9872,
        },
    }
    out.update(over)
    return out


VANILLA = run("vanilla", dict.fromkeys(GROUPS, 0.95), cost={**run("x", {})["cost"], "trainable_params": 0})
GA = run("ga", {**dict.fromkeys(GROUPS, 0.5), "forget": 0.27})
CVF = run(
    "cvf_ncu",
    {**dict.fromkeys(GROUPS, 0.93), "forget": 0.25, "forget_test": 0.3},
    attacks={"relearn": {"forget_before": 0.25, "forget_after": 0.4, "ag": 0.15}},
)


def continual_runs() -> list[dict[str, Any]]:
    runs = []
    for k in (1, 2, 3):
        accs = {**dict.fromkeys(GROUPS, 0.9 - 0.05 * k), "forget": 0.26}
        accs.update({f"forget_r{j}": 0.26 + 0.02 * (k - j) for j in range(1, k + 1)})  # the current one included
        runs.append(run("npo", accs, request=k, forget_split=f"forget_r{k}"))
    return runs


def second_seed() -> list[dict[str, Any]]:
    """The continual runs again under seed 1, every accuracy 0.1 lower."""
    return [{**r, "seed": 1, "metrics": {g: {**m, "mcq": m["mcq"] - 0.1} for g, m in r["metrics"].items()}}
            for r in continual_runs()]


def results(*runs: dict[str, Any]) -> dict[str, Any]:
    return new_results(runs, env={"unsee_version": "0.1.0", "git_hash": "abc123"})


def test_render_report_has_a_row_per_run_with_changes() -> None:
    text = render_report(results(VANILLA, GA, CVF))
    first_table = text.split("## tiny-llava")[1].split("\n\n")[1]
    rows = first_table.splitlines()
    methods = [r.split("|")[1].strip() for r in rows[2:]]
    assert methods == ["vanilla", "ga", "cvf_ncu"]
    header = rows[0]
    for col in (*GROUPS, "score", "wall s", "peak RSS MiB", "trainable params"):
        assert col in header
    ga_row = rows[3]
    assert "0.27 (\u22120.68)" in ga_row
    assert "| 512 |" in ga_row and "| 1,234 |" in ga_row
    assert "0.95 |" in rows[2] and "(" not in rows[2].split("|")[3]  # vanilla: no change shown
    assert "loglik" in text and "log-likelihood" in text
    assert "## Attacks" in text and "relearn" in text
    # score: E = (0.95-0.25)/0.70 = 1, R = 0.93/0.95 -> 2ER/(E+R)
    r = 0.93 / 0.95
    assert f"{2 * r / (1 + r):.2f}" in rows[4]


def test_report_shows_a_forget_group_interval_over_people_beside_the_one_over_items() -> None:
    metrics = {g: {"mcq": 0.5, "n": 40, "ci95": [0.4, 0.6], "ci95_people": [0.2, 0.8]} for g in GROUPS}
    text = render_report(results(VANILLA, run("npo", {}, metrics=metrics)))
    row = next(r for r in text.splitlines() if r.startswith("| npo"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[3].endswith("[0.40, 0.60; people 0.20, 0.80]")  # forget
    assert cells[5].endswith("[0.40, 0.60]")  # retain: the interval over items only
    assert "resampled as wholes" in text


def test_render_report_without_vanilla_and_several_settings() -> None:
    other = run("ga", {"forget": 0.5, "retain": 0.8}, model="tiny-qwen2-vl")
    text = render_report(results(GA, other))
    assert text.count("## tiny-") == 2
    assert "No `vanilla` run" in text
    assert "(\u2212" not in text


def test_a_vanilla_run_on_other_data_or_fewer_items_is_no_baseline() -> None:
    """The score of a run reads its vanilla model on the same data and items; another split's
    name alone does not make a baseline."""
    data = {"source": "w", "path": "w", "fingerprint": "aaaa"}
    full = {"protocol": "loglik", "max_items": None}
    method = run("ga", {**dict.fromkeys(GROUPS, 0.95), "forget": 0.25}, data=data, evaluation=full)
    capped = run("vanilla", dict.fromkeys(GROUPS, 0.5), data=data, evaluation={**full, "max_items": 3})
    elsewhere = run("vanilla", dict.fromkeys(GROUPS, 0.5), data={**data, "fingerprint": "bbbb"}, evaluation=full)
    same = run("vanilla", dict.fromkeys(GROUPS, 1.0), data=data, evaluation=full)
    # other held-out views (the items' seed), or shorter replies: no baseline either
    reseeded = run("vanilla", dict.fromkeys(GROUPS, 0.5), data={**data, "seed": 1}, evaluation=full)
    shorter = run("vanilla", dict.fromkeys(GROUPS, 0.5), data=data,
                  evaluation={**full, "max_new_tokens": {"cloze": 4, "gen": 4}})
    text = render_report(results(capped, elsewhere, reseeded, shorter, method, same))
    assert text.count("## tiny-llava \u00b7 builtin \u00b7 forget_10 (") == 5
    assert "(data aaaa, max_items 3)" in text and "(data bbbb)" in text
    assert "(data aaaa, data seed 1)" in text and "(data aaaa, max_new_tokens cloze 4/gen 4)" in text
    # a continual run's retain group leaves out every request's people: a plain vanilla run is no baseline
    continual = run("ga", dict.fromkeys(GROUPS, 0.5), data=data, evaluation=full, retain_without=["forget_10", "x"])
    assert "(data aaaa, retain without forget_10,x)" in render_report(results(same, continual))
    # weights scored in bf16 are another model than fp32's; a run that records no precision was fp32
    halved = run("ga", dict.fromkeys(GROUPS, 0.5), data=data, evaluation={**full, "dtype": "bfloat16"})
    assert "(data aaaa, dtype bfloat16)" in render_report(results(same, halved))
    assert "dtype" not in render_report(results(same, run("ga", dict.fromkeys(GROUPS, 0.5), data=data,
                                                          evaluation={**full, "dtype": "float32"})))
    row = next(r for r in text.splitlines() if r.startswith("| ga"))
    # read against the vanilla run on the same data and items: forget 1.00 -> 0.25, E = 1, R = 0.95
    assert "0.25 (\u22120.75)" in row and "| 0.97 |" in row
    alone = render_report(results(method, same))
    assert "## tiny-llava \u00b7 builtin \u00b7 forget_10\n" in alone  # nothing to tell apart: the plain label


def test_terminal_table() -> None:
    table = terminal_table(results(VANILLA, GA, CVF))
    assert table.row_count == 3 and "seed" not in [c.header for c in table.columns]
    console = Console(width=160, record=True)
    console.print(table)
    assert "cvf_ncu" in console.export_text()
    # the runs of several unlearning seeds: each row says which, or two rows of one method read alike
    table = terminal_table(results(VANILLA, GA, CVF, {**CVF, "seed": 1}))
    seed = [c.header for c in table.columns].index("seed")
    assert list(table.columns[seed].cells) == ["0", "0", "0", "1"]


def test_the_table_keeps_every_name_and_figure_whole_in_a_pipe_and_at_80_columns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipe or a file is given 80 columns, and the ruled table needed 85: `graddiff` read `graddi…` and
    forget_test `forget…`, which could not be told from forget. An output that cannot take a dash crashed
    on it after the results were saved."""
    long = {**CVF, "method": "cvf_ncu_with_a_long_setting_name"}
    res = results(VANILLA, GA, long)
    terminal = Console(width=80, record=True, force_terminal=True)
    terminal.print(terminal_table(res))
    piped = io.StringIO()
    print_results(res, Console(file=piped, width=80))
    for text in (terminal.export_text(), piped.getvalue()):
        assert "…" not in text and "forget_test" in text and "0.50" in text
    assert "cvf_ncu_with_a_long_setting_name" in piped.getvalue()  # a log is read wider: nothing folds
    plain = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", plain)
    cli_process.plain_text_where_asked()
    print_results(res)
    plain.flush()
    assert b"cvf_ncu_with_a_long_setting_name" in plain.buffer.getvalue()


def _assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.size[0] > 100 and img.size[1] > 100


def test_plot_tradeoff_is_png(tmp_path: Path) -> None:
    out = plot_tradeoff(results(VANILLA, GA, CVF), tmp_path / "tradeoff.png")
    _assert_png(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tradeoff.png"]


def test_plot_tradeoff_without_vanilla_still_draws(tmp_path: Path) -> None:
    _assert_png(plot_tradeoff(results(GA), tmp_path / "t.png"))


def test_continual_series_follows_each_request() -> None:
    series = continual_series(continual_runs())
    assert series["forget_r1"] == [(1, 0.26), (2, pytest.approx(0.28)), (3, pytest.approx(0.30))]
    assert series["forget_r3"] == [(3, 0.26)]
    assert [k for k, _ in series["retain"]] == [1, 2, 3]
    assert "forget" not in series


def test_continual_series_draws_the_mean_of_the_seeds() -> None:
    other = second_seed()
    series = continual_series([*continual_runs(), *other])
    assert series["forget_r1"] == [(1, pytest.approx(0.21)), (2, pytest.approx(0.23)), (3, pytest.approx(0.25))]
    assert [k for k, _ in series["retain"]] == [1, 2, 3]
    assert continual_values([*continual_runs(), *other])["forget_r1"][2] == [pytest.approx(0.28), pytest.approx(0.18)]


def test_plot_continual_is_png(tmp_path: Path) -> None:
    _assert_png(plot_continual(results(VANILLA, *continual_runs()), tmp_path / "continual.png"))
    other = second_seed()
    _assert_png(plot_continual(results(VANILLA, *continual_runs(), *other), tmp_path / "seeds.png"))


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plots draw, kept as they are saved."""
    kept: list[Any] = []
    real = plots._save_png
    monkeypatch.setattr(plots, "_save_png", lambda fig, path: (kept.append(fig), real(fig, path))[1])
    return kept


def test_each_requests_own_people_are_points_and_the_requests_run_in_number_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At request k, forget_test and text_forget hold request k's own people: one line through them drew a
    change of people as a trend. And forget_r10 came between forget_r1 and forget_r2."""
    drawn = _drawn(monkeypatch)
    runs = [{**r, "metrics": {**r["metrics"], "forget_test": {"mcq": 0.3 + 0.1 * r["request"], "n": 9}}}
            for r in continual_runs()]
    plot_continual(results(VANILLA, *runs), tmp_path / "c.png")
    lines = {line.get_label(): line for line in drawn[0].axes[0].get_lines()}
    own = lines["forget_test (each request's own people)"]
    assert own.get_linestyle() == "None" and list(own.get_xdata()) == [1, 2, 3]
    assert lines["retain"].get_linestyle() != "None"
    assert in_group_order(["forget_r10", "retain", "forget_r2", "forget_r1", "forget"]) == [
        "forget", "retain", "forget_r1", "forget_r2", "forget_r10"]


def test_loss_curves_of_one_method_at_two_settings_are_told_apart(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of one method at two learning rates were keyed alike ([graddiff forget_10 s0 #1] and #2), and a
    key of every run's every term ran off the figure: one colour per run and one line style per term."""
    history = [{"step": s, "loss": 1.0 / s, "nll_f": 2.0, "nll_r": 0.5} for s in (1, 2, 3)]
    slow = run("graddiff", {"forget": 0.5}, history=history, config={"lr": 1e-5})
    fast = run("graddiff", {"forget": 0.3}, history=history, config={"lr": 1e-4})
    assert plots.run_tags([slow, fast]) == ["graddiff s0 [lr=1e-05]", "graddiff s0 [lr=0.0001]"]
    drawn = _drawn(monkeypatch)
    plot_losses(results(slow, fast), tmp_path / "l.png")
    key = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert key == ["graddiff s0 [lr=1e-05]", "graddiff s0 [lr=0.0001]", "loss", "nll_f", "nll_r"]


def test_labels_at_one_point_are_stacked_and_those_on_the_right_read_leftwards() -> None:
    """Methods at one point printed their labels over each other, and a long label ran off the right edge."""
    points = [("ga", 0.9, 0.7, None, None), ("npo", 0.9, 0.7, None, None), ("kl", 0.2, 0.7, None, None)]
    (dx1, dy1, side1), (_, dy2, side2), (dx3, dy3, side3) = plots.label_offsets(points)
    assert side1 == side2 == "right" and dx1 < 0 and dy1 != dy2
    assert side3 == "left" and dx3 > 0 and dy3 == dy1  # far from the others: its own first line
    # two settings a few points apart in retention: the higher one's label goes up, clear of the lower one's
    (_, low, _), (_, high, _) = plots.label_offsets([("a", 0.27, 0.94, None, None), ("b", 0.26, 0.985, None, None)])
    assert high > low


def test_continual_panel_follows_a_method_across_its_requests() -> None:
    """Each request has its own forget split; the method's panel still holds all of them."""
    alone = run("npo", {**dict.fromkeys(GROUPS, 0.9), "forget": 0.5})  # one request on forget_10: no sequence
    panels = continual_panels(results(VANILLA, *continual_runs(), GA, alone))
    assert [(title, [r["request"] for r in runs]) for title, runs in panels] == [("npo", [1, 2, 3])]
    # each request's targets once per run: forget and forget_rk of request k are the same items
    assert continual_values(continual_runs())["forget_r1"] == {1: [0.26], 2: [0.28], 3: [0.30]}
    # the method at another config is another panel, labelled by what differs; its seeds share one
    stronger = [{**r, "config": {**r["config"], "lr": 1.0}} for r in second_seed()]
    panels = continual_panels(results(VANILLA, *continual_runs(), *second_seed(), *stronger))
    assert [(title, len(runs)) for title, runs in panels] == [(f"npo [lr={continual_runs()[0]['config']['lr']}]", 6),
                                                             ("npo [lr=1.0]", 3)]
    # the same chain on another world is no second seed of it: a panel of its own, never pooled into one line
    elsewhere = [{**r, "data": {"fingerprint": "0843de15d1402661"}} for r in second_seed()]
    panels = continual_panels(results(VANILLA, *continual_runs(), *elsewhere))
    assert [(title, len(runs)) for title, runs in panels] == [
        ("npo (tiny-llava/builtin)", 3), ("npo (tiny-llava/builtin, data 0843de15d1402661)", 3)]
    # so is the same chain scored on fewer items: a panel of its own, its runs kept, not dropped as repeats
    capped = [{**r, "evaluation": {"max_items": 3}} for r in continual_runs()]
    panels = continual_panels(results(VANILLA, *continual_runs(), *capped, *continual_runs()))
    assert [(title, len(runs)) for title, runs in panels] == [
        ("npo (tiny-llava/builtin)", 3), ("npo (tiny-llava/builtin, max_items 3)", 3)]


def test_write_report(tmp_path: Path) -> None:
    res_path = tmp_path / "results.json"
    write_results(res_path, results(VANILLA, GA, CVF))
    written = write_report([res_path], tmp_path)
    assert [p.name for p in written] == ["report.md", "tradeoff.png"]
    report = (tmp_path / "report.md").read_text()
    assert "| ga |" in report and "![tradeoff](tradeoff.png)" in report
    _assert_png(tmp_path / "tradeoff.png")
    with pytest.raises(OutputExistsError):
        write_report([res_path], tmp_path)

    cont = tmp_path / "continual.json"
    write_results(cont, results(*continual_runs()))
    written = write_report([res_path, cont], tmp_path, overwrite=True)
    assert [p.name for p in written] == ["report.md", "tradeoff.png", "continual.png"]
    _assert_png(tmp_path / "continual.png")
    assert "![continual](continual.png)" in (tmp_path / "report.md").read_text()
    assert json.loads(res_path.read_text())["runs"][0]["method"] == "vanilla"  # inputs untouched


def test_a_report_that_fails_leaves_no_folder_it_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while the plot is saved: the folders the report made for itself go, one already there stays."""
    import unsee.report as report

    res_path = tmp_path / "results.json"
    write_results(res_path, results(VANILLA, GA))

    def full(*args: Any, **kwargs: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "plot_tradeoff", full)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(OSError, match="No space"):
        write_report([res_path], tmp_path / "new" / "report")
    assert sorted(tmp_path.iterdir()) == before
    with pytest.raises(OSError, match="No space"):
        write_report([res_path], tmp_path)
    assert sorted(tmp_path.iterdir()) == before


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_peak_memory_measured_after_other_runs_in_its_process_is_marked() -> None:
    """Freed heap stays resident: a run measured after others in one process (the demo, a benchmark run
    --in-process) carries their memory in its peak. Its figure is marked, and the note says so, in the report
    and on the model card; a run measured first, or in a process of its own, is not."""
    later = {**CVF, "cost": {**CVF["cost"], "measured_after": 2}}
    rows = render_report(results(VANILLA, GA, later)).split("## tiny-llava")[1].split("\n\n")[1].splitlines()
    assert "| 512 |" in rows[3] and "| 512† |" in rows[4]
    text = render_report(results(VANILLA, GA, later))
    assert "† measured after other runs in the same process" in text
    assert "†" not in render_report(results(VANILLA, GA, CVF))
    card = model_card(later, VANILLA, base_model="b", base_hash="sha256:0", forgotten=["p"], audits=None)
    assert "- Peak resident memory: 512 MiB (measured after 2 other runs in the same process" in card
    assert "measured after" not in model_card(CVF, VANILLA, base_model="b", base_hash="sha256:0",
                                              forgotten=["p"], audits=None)


def test_model_card() -> None:
    card = model_card(
        CVF,
        VANILLA,
        base_model="llava-hf/llava-1.5-7b-hf",
        base_hash="sha256:deadbeef",
        forgotten=["person_0007", "person_0042"],
        audits=None,
    )
    meta = _front_matter(card)
    assert meta == {
        "library_name": "transformers",
        "tags": ["unsee", "machine-unlearning"],
        "base_model": "llava-hf/llava-1.5-7b-hf",
        # what a later attack needs to write the card again, beside results.json
        "unsee": {"base": "llava-hf/llava-1.5-7b-hf", "hub_id": "llava-hf/llava-1.5-7b-hf", "hash": "sha256:deadbeef",
                  "forgotten": ["person_0007", "person_0042"], "request": None, "method": CVF["method"]},
    }
    for section in (
        "## Base model",
        "## Method",
        "## What was forgotten",
        "## Evaluation",
        "## Audits",
        "## Cost",
    ):
        assert section in card
    assert "sha256:deadbeef" in card
    assert "- `person_0007`" in card and "- `person_0042`" in card
    config = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert config == CVF["config"]
    assert "| forget | mcq | 0.950 | 0.250 | \u22120.700 | 40 |" in card
    assert "| relearn | forget_after | 0.400 |" in card  # audits default to the run's attacks
    assert "Unlearning score" in card
    assert "unsee 0.1.0" in card


def test_model_card_shows_a_small_audit_setting_as_it_is() -> None:
    """A learning rate of 1e-4 or a p-value of 8e-5 read 0.000 at three places."""
    card = model_card(CVF | {"attacks": {"relearn": {"lr": 1e-4, "ag": 0.0}, "mia": {"forget_quality": 8.3e-5}}},
                      VANILLA, base_model="m", base_hash="h", forgotten=["p"], audits=None)
    assert "| relearn | lr | 0.0001 |" in card and "| mia | forget_quality | 8.3e-05 |" in card
    assert "| relearn | ag | 0.000 |" in card


def test_model_card_keeps_a_long_skip_reason_on_its_row_as_results_json_has_it() -> None:
    """A reason past 80 characters, with quotes in it, broke the audits table over three lines."""
    reason = ("the MIA held-out set 'holdout' has no image MCQ items: membership inference needs items of people "
              "the model never saw (a group of the benchmark, or another split via mia_holdout=NAME)")
    attacks = {"mia": {"skipped": reason}, "relearn": {"ag": 0.1, "splits": [0.1, 0.2] * 30},
               "note": {"why": "one line\nand a second"}}
    card = model_card(CVF | {"attacks": attacks}, VANILLA, base_model="m", base_hash="h", forgotten=["p"],
                      audits=None)
    assert f"| mia | skipped | {reason} | \u2014 |" in card.splitlines()
    assert any(line.startswith("| relearn | splits | [0.1, 0.2,") and line.endswith("|") for line in card.splitlines())
    assert "| note | why | one line and a second | \u2014 |" in card.splitlines()


def test_model_card_without_vanilla_or_audits() -> None:
    card = model_card(
        GA | {"attacks": None}, None, base_model="m", base_hash="h", forgotten=["e1"], audits={}
    )
    assert "| forget | mcq | \u2014 | 0.270 | \u2014 | 40 |" in card
    assert "No audits were run" in card
    assert "Unlearning score" not in card


def test_model_card_names_a_local_base_by_architecture_and_hash(tmp_path: Path) -> None:
    base = tmp_path / "cache" / "vanilla-tiny-llava-0123"
    base.mkdir(parents=True)
    (base / "unsee.json").write_text(json.dumps({"arch": "tiny-llava", "seed": 0}))
    (base / "unsee_vanilla.json").write_text("{}")
    card = model_card(CVF, VANILLA, base_model=str(base), base_hash="abc123", forgotten=["p1"], audits=None)
    assert str(tmp_path) not in card and "vanilla-tiny-llava-0123" not in card
    assert "base_model" not in _front_matter(card)  # the hub's field takes hub ids only
    assert "`tiny-llava (vanilla model built by unsee)`" in card and "`abc123`" in card
    # a local copy of a hub model is named by the hub id its config records
    (base / "unsee.json").unlink()
    (base / "config.json").write_text(json.dumps({"_name_or_path": "llava-hf/llava-1.5-7b-hf"}))
    card = model_card(CVF, VANILLA, base_model=str(base), base_hash="abc123", forgotten=["p1"], audits=None)
    assert _front_matter(card)["base_model"] == "llava-hf/llava-1.5-7b-hf"


def _body(card: str) -> list[str]:
    return [line for line in card.split("---\n", 2)[2].splitlines() if line.strip()]


def test_model_card_opens_with_what_the_audits_found() -> None:
    hidden = CVF | {"attacks": {"relearn": {"ag": 78.0}, "pgd": {"forget_clean": 0.25, "forget_attacked": 0.3}}}
    first = _body(model_card(hidden, VANILLA, base_model="m/x", base_hash="h", forgotten=["p"], audits=None))[0]
    assert first.startswith("**Verdict:** the forget people are no longer recognised")
    assert "bring them back (relearning +78 points)" in first and "hidden, not removed" in first
    held = CVF | {"attacks": {"relearn": {"ag": 4.0}}}
    first = _body(model_card(held, VANILLA, base_model="m/x", base_hash="h", forgotten=["p"], audits=None))[0]
    assert "did not bring them back (relearning +4 points)" in first
    # a gain of exactly the card's bound (4 of 10 items to 6) is one, though 0.6 - 0.4 falls short of it in floats
    at_bound = CVF | {"attacks": {"pgd": {"forget_clean": 0.4, "forget_attacked": 0.6, "n_forget": 10}}}
    first = _body(model_card(at_bound, VANILLA, base_model="m/x", base_hash="h", forgotten=["p"], audits=None))[0]
    assert "but the audits bring them back (PGD 0.40 \u2192 0.60)" in first
    first = _body(model_card(GA | {"attacks": None}, VANILLA, base_model="m/x", base_hash="h", forgotten=["p"],
                             audits={}))[0]
    assert "no audits were run" in first
    kept = run("ga", dict.fromkeys(GROUPS, 0.9))
    first = _body(model_card(kept, VANILLA, base_model="m/x", base_hash="h", forgotten=["p"], audits={}))[0]
    assert "still recognised" in first


def test_rows_of_one_method_at_other_configs_and_seeds_tell_which_they_are() -> None:
    """Two learning rates of GraDiff, two seeds each: four rows, each naming its config and its seed."""
    rows = [run("graddiff", dict.fromkeys(GROUPS, 0.5), seed=seed, config={**GA["config"], "lr": lr})
            for lr in (2e-5, 6e-5) for seed in (0, 1)]
    table = render_report(results(VANILLA, *rows)).split("\n\n## ")[1]  # the setting's table
    found = [tuple(c.strip() for c in line.strip("|").split("|")[:3]) for line in table.splitlines()
             if line.startswith("| graddiff")]
    assert sorted(found) == [("graddiff [lr=2e-05]", "1", "0"), ("graddiff [lr=2e-05]", "1", "1"),
                             ("graddiff [lr=6e-05]", "1", "0"), ("graddiff [lr=6e-05]", "1", "1")]


def test_the_verdict_reads_the_figure_after_and_the_held_out_photos() -> None:
    """People the model did not recognise before, read at twice chance after, are recognised; and photos no
    method trained on are judged beside the training photos."""
    unknown = run("vanilla", {**dict.fromkeys(GROUPS, 0.95), "forget": 0.25})
    learned = run("ga", {**dict.fromkeys(GROUPS, 0.9), "forget": 0.5})
    line = verdict(learned, unknown, {})
    assert "are still recognised (forget mcq 0.25 \u2192 0.50" in line and "were not before" not in line
    assert "not recognised, and were not before" in verdict(run("ga", {**dict.fromkeys(GROUPS, 0.9),
                                                                      "forget": 0.27}), unknown, {})
    held = run("ga", {**dict.fromkeys(GROUPS, 0.9), "forget": 0.25, "forget_test": 0.95})
    line = verdict(held, VANILLA, {})
    assert "are no longer recognised (forget mcq 0.95 \u2192 0.25" in line
    assert "; on held-out photos they are still recognised (forget_test mcq 0.95 \u2192 0.95" in line


def test_a_continual_verdict_reads_every_request() -> None:
    """The last request forgotten is not enough: an earlier request whose people came back shows."""
    groups = (*GROUPS, "forget_r1", "forget_r2")
    vanilla = run("vanilla", dict.fromkeys(groups, 0.95))
    back = run("cvf_ncu", {**dict.fromkeys(GROUPS, 0.9), "forget": 0.25, "forget_r2": 0.25, "forget_r1": 0.9},
               request=2)
    line = verdict(back, vanilla, {})
    assert "still recognised (1 of 2 requests)" in line
    assert "forget_r1 mcq 0.95 \u2192 0.90" in line and "forget_r2 mcq 0.95 \u2192 0.25" in line
    gone = run("cvf_ncu", {**dict.fromkeys(GROUPS, 0.9), "forget": 0.25, "forget_r2": 0.25, "forget_r1": 0.3},
               request=2)
    assert "are no longer recognised (forget_r1" in verdict(gone, vanilla, {})


def test_model_card_keeps_item_counts_out_of_the_metric_rows() -> None:
    gen = CVF | {"metrics": {"forget": {"mcq": 0.25, "n": 40, "cloze": 0.1, "n_cloze": 12, "rougeL": 0.3,
                                       "bleu": 0.1, "n_gen": 9}}}
    card = model_card(gen, None, base_model="m/x", base_hash="h", forgotten=["p"], audits={})
    rows = [line for line in card.splitlines() if line.startswith("| forget |")]
    assert [r.split("|")[2].strip() for r in rows] == ["mcq", "cloze", "rougeL", "bleu"]
    assert [r.split("|")[-2].strip() for r in rows] == ["40", "12", "9", "9"]


def test_model_card_lists_a_request_by_name_or_hash() -> None:
    request = {"files": ["request.yaml"], "people": ["Ann Example"], "hidden": False}
    card = model_card(CVF, VANILLA, base_model="m/x", base_hash="h", forgotten=["p1"], audits=None, request=request)
    assert "`request.yaml`" in card and "- `Ann Example`" in card and "- `p1`" not in card
    card = model_card(CVF, VANILLA, base_model="m/x", base_hash="h", forgotten=["p1"], audits=None,
                      request={**request, "people": ["sha256:00ff"], "hidden": True})
    assert "salted SHA-256" in card and "Ann Example" not in card


def test_attack_figures_keep_counts_and_small_settings_readable() -> None:
    attacked = CVF | {"attacks": {"pgd": {"forget_attacked": 0.3125, "step": 2 / 255, "n_forget": 18},
                                  "relearn": {"ag": 12.5, "lr": 1e-4}}}
    text = render_report(results(VANILLA, attacked))
    assert "forget_attacked 0.31, step 0.0078, n_forget 18" in text and "ag 12.50, lr 0.0001" in text


def test_a_run_scored_as_given_is_labelled_so_beside_its_method_s_runs() -> None:
    """A steering file or checkpoint scored with ``unsee eval`` records no config: beside the method's own runs
    it reads as such, not as every option set to None."""
    trained = run("eraser", dict.fromkeys(GROUPS, 0.5), config={"layers": [1], "strength": 2.0})
    scored = run("eraser", dict.fromkeys(GROUPS, 0.5), config={})
    labels = config_variants([trained, scored])
    assert labels[id(trained)] == "" and labels[id(scored)] == "no config recorded"
    other = run("eraser", dict.fromkeys(GROUPS, 0.5), config={"layers": [2], "strength": 2.0})
    assert config_variants([trained, other, scored])[id(other)] == "layers=[2]"


def test_the_api_reports_one_results_file_given_alone_or_as_its_folder(tmp_path: Path) -> None:
    """``api.report("results.json", out)``, as a notebook user writes it: one file, not its characters."""
    from unsee import api

    write_results(tmp_path / "results.json", results(run("vanilla", {"forget": 1.0}), run("ga", {"forget": 0.2})))
    for given in (str(tmp_path / "results.json"), tmp_path / "results.json", tmp_path, str(tmp_path)):
        out = api.report(given, tmp_path / "rep", overwrite=True)  # a folder stands for the results.json in it
        assert "| ga" in (out / "report.md").read_text()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match=r"empty/results.json: no such results file"):
        api.report(tmp_path / "empty", tmp_path / "rep2")
    assert not (tmp_path / "rep2").exists()


def test_report_shows_each_person_to_forget_beside_vanilla() -> None:
    """A group's mean can hide a person still recognised: each forget group's people get a column of their own."""
    def named(method: str, forget: dict[str, float], held_out: dict[str, float]) -> dict[str, Any]:
        metrics = {g: {"mcq": 0.9, "n": 40} for g in GROUPS}
        metrics["forget"] = {"mcq": sum(forget.values()) / 2, "n": 40, "people": forget}
        metrics["forget_test"] = {"mcq": sum(held_out.values()) / 2, "n": 40, "people": held_out}
        return run(method, {}, metrics=metrics)

    text = render_report(results(named("vanilla", {"p1": 1.0, "p2": 1.0}, {"p1": 0.9, "p2": 1.0}),
                                 named("cvf_ncu", {"p1": 0.1, "p2": 0.6}, {"p1": 0.2, "p2": 0.7})))
    section = text.split("## The people to forget, one by one")[1]
    rows = [r for r in section.splitlines() if r.startswith("|")]
    assert [c.strip() for c in rows[0].split("|")[1:-1]] == ["person", "vanilla", "cvf_ncu"]
    assert "| p1 | 1.00 / 0.90 | 0.10 / 0.20 |" in rows and "| p2 | 1.00 / 1.00 | 0.60 / 0.70 |" in rows
    assert "forget / forget_test" in section
    assert sum(r.startswith("| cvf_ncu |") for r in text.splitlines()) == 1  # the run table's row alone
    assert "one by one" not in render_report(results(VANILLA, GA))  # no people named, no section


AUDITED = {"relearn": {"ag": 20.0, "reference": {"ag": 18.9}},
           "pgd": {"forget_attacked": 0.9, "reference": {"forget_attacked": 0.76}},
           "mia": {"auc_loss": 0.62, "auc_zlib": 0.6, "auc_mink_pp": 0.55, "forget_quality": 1e-9,
                   "reference": {"auc_loss": 0.6, "auc_zlib": 0.5, "auc_mink_pp": 0.56}}}


def test_audited_runs_get_a_plot_of_their_checks_and_a_report_without_audits_none(tmp_path: Path) -> None:
    """Eight checks a run over several runs are a grid of numbers; the plot shows each beside what passes."""
    audited = {**CVF, "attacks": AUDITED}
    rows = audit_rows([VANILLA, GA, audited, {**audited, "seed": 1}])
    # only runs with a judged check, labelled apart; an unjudged check (no reference) is left out
    assert [label for label, _ in rows] == ["cvf_ncu s0", "cvf_ncu s1"]
    assert set(rows[0][1]) == {"relearn_ag", "pgd_forget", "mia_auc_loss", "mia_auc_zlib", "mia_auc_mink_pp",
                               "forget_quality"}
    res_path = tmp_path / "results.json"
    write_results(res_path, results(VANILLA, GA, audited))
    written = write_report([res_path], tmp_path / "r")
    assert [p.name for p in written] == ["report.md", "tradeoff.png", "audits.png"]
    _assert_png(tmp_path / "r" / "audits.png")
    assert "![audits](audits.png)" in (tmp_path / "r" / "report.md").read_text()
    write_results(res_path, results(VANILLA, GA), overwrite=True)  # the same report, its runs no longer audited
    write_report([res_path], tmp_path / "r", overwrite=True)
    assert not (tmp_path / "r" / "audits.png").exists()  # no stale plot beside the new table
