"""The compact table a command prints at the end of a run (``unsee eval``, the demo)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.table import Table

from unsee.report.tables import (
    DASH,
    figure,
    group_runs,
    headline_key,
    score_of,
    seconds_text,
    setting_labels,
    spent,
    vanilla_for,
)

TERMINAL_GROUPS = ("forget", "forget_test", "retain", "known", "general")


def terminal_table(results: Mapping[str, Any]) -> Table:
    """A compact rich table for the end of a run: headline groups, score and wall time."""
    runs = list(results["runs"])
    grouped = group_runs(runs)
    several = len(grouped) > 1
    groups = [g for g in TERMINAL_GROUPS if any(g in r["metrics"] for r in runs)]
    # no vertical rules, and a cell too wide folds onto the next line: at 80 columns (a terminal's, and what
    # a pipe is given) the ruled table cut names and figures to '…'
    table = Table(title="unsee results", show_lines=False, box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True)
    seeds = len({r.get("seed") for r in runs}) > 1  # runs over several unlearning seeds: each row says its own
    for name in [*(["setting"] if several else []), "method", "req", *(["seed"] if seeds else []), *groups, "score",
                 "wall s"]:
        table.add_column(name, justify="left" if name in ("setting", "method") else "right", overflow="fold")
    labels = setting_labels(grouped)
    for setting, setting_runs in grouped.items():
        vanilla = vanilla_for(setting_runs)
        keys = {g: headline_key(setting_runs, g) for g in groups}
        for run in setting_runs:
            cells = [labels[setting].replace(" \u00b7 ", "/")] if several else []
            cells += [str(run["method"]), str(run["request"]), *([str(run.get("seed", DASH))] if seeds else [])]
            for g in groups:
                value = figure(run, g, keys[g])
                cells.append(DASH if value is None else f"{value:.2f}")
            score = score_of(run, vanilla, key=headline_key(setting_runs, "forget") or "mcq")
            cells.append(DASH if score is None or score["score"] is None else f"{score['score']:.2f}")
            cells.append(seconds_text(spent(run)["wall_s"]))
            table.add_row(*cells)
    return table
