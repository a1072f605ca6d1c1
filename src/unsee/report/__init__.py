"""Turn results.json files into something a person reads: report.md, plots and model cards.

``write_report`` is the Python twin of ``unsee report RESULTS.json... --out DIR``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from unsee.errors import OutputExistsError
from unsee.eval.results import load_results, load_samples, merge_results
from unsee.io import atomic_write_text, staging_dir
from unsee.report.card import model_card
from unsee.report.changes import changes_section, runs_with_samples
from unsee.report.plots import audit_rows, loss_panels, plot_audits, plot_continual, plot_losses, plot_tradeoff
from unsee.report.tables import render_report
from unsee.report.terminal import terminal_table

__all__ = ["model_card", "plot_audits", "plot_continual", "plot_losses", "plot_tradeoff", "print_results",
           "render_report", "terminal_table", "write_report"]

REPORT_FILES = ("report.md", "tradeoff.png", "continual.png", "losses.png", "audits.png")


def print_results(res: dict, console: Console | None = None) -> None:
    """A results object as the table ``unsee eval`` and the demo print. Written to a file or a pipe, the
    table takes the width it needs: a pipe is given 80 columns, and a log is read wider."""
    console = console or Console()
    table = terminal_table(res)
    if not console.is_terminal:
        natural = console.measure(table, options=console.options.update_width(1000)).maximum
        console = Console(file=console.file, width=max(console.width, natural))
    console.print(table)


def write_report(
    result_paths: Sequence[str | Path], out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Merge the results files and write report.md and tradeoff.png (continual.png for
    continual runs, losses.png for runs with a training history, audits.png for audited runs: each
    judged figure beside what passes and the retrained reference's) into ``out_dir``; returns
    the paths written. Where a results file has samples.jsonl beside it, report.md lists
    the answers each method changed most.

    Only the report's own files are checked for overwriting, so the report can sit beside
    the results.json it was made from (as ``unsee demo`` does).
    """
    out = Path(out_dir)
    if not overwrite and (existing := _written(out)):
        raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    results = merge_results(result_paths)
    sources = []
    for path in result_paths:
        loaded = load_results(path)
        sources += runs_with_samples(loaded, load_samples(path, loaded))
    changes = changes_section(sources)  # before anything is written: a bad samples file leaves no half report
    made = [p for p in (out, *out.parents) if not p.exists()]  # the leaf first
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _land_report(results, out, changes, overwrite)
    except BaseException:
        for folder in made:  # folders this call made, left empty by a failure (a full disk), are not left behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _land_report(results: dict[str, Any], out: Path, changes: list[str], overwrite: bool) -> list[Path]:
    # Every file is made aside first and they land together, report.md last: an interrupt while the plots
    # draw leaves the earlier report whole, or none, never one report's plot beside another's table.
    staged = staging_dir(out / "report.md")
    try:
        drawn = [plot_tradeoff(results, staged / "tradeoff.png")]
        if any(run["request"] > 1 for run in results["runs"]):
            drawn.append(plot_continual(results, staged / "continual.png"))
        if loss_panels(results):
            drawn.append(plot_losses(results, staged / "losses.png"))
        if audited := audit_rows(results["runs"]):
            drawn.append(plot_audits(audited, staged / "audits.png"))
        atomic_write_text(staged / "report.md", render_report(results, images=[p.name for p in drawn],
                                                              changes=changes))
        if not overwrite and (there := _written(out)):  # another report, meanwhile
            raise OutputExistsError(f"{there[0]} was written while this report was made; pass --overwrite to "
                                    "replace it")
        for name in REPORT_FILES[1:]:
            if (staged / name).exists():
                os.replace(staged / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)  # a stale plot from an overwritten report
        os.replace(staged / "report.md", out / "report.md")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return [out / "report.md", *(out / p.name for p in drawn)]


def _written(out: Path) -> list[Path]:
    """The report's files already in ``out``."""
    return [out / name for name in REPORT_FILES if (out / name).exists()]
