"""Turn results.json files into something a person reads: report.md, plots and model cards.

``write_report`` is the Python twin of ``unsee report RESULTS.json... --out DIR``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from unsee.errors import OutputExistsError
from unsee.eval.results import load_results, load_samples, merge_results
from unsee.io import atomic_write_text
from unsee.report.card import model_card
from unsee.report.changes import changes_section, runs_with_samples
from unsee.report.plots import loss_panels, plot_continual, plot_losses, plot_tradeoff
from unsee.report.tables import render_report, terminal_table

__all__ = ["model_card", "plot_continual", "plot_losses", "plot_tradeoff", "print_results", "render_report",
           "terminal_table", "write_report"]

REPORT_FILES = ("report.md", "tradeoff.png", "continual.png", "losses.png")


def print_results(res: dict) -> None:
    """A results object as the table ``unsee eval`` prints."""
    from rich.console import Console

    Console().print(terminal_table(res))


def write_report(
    result_paths: Sequence[str | Path], out_dir: str | Path, *, overwrite: bool = False
) -> list[Path]:
    """Merge the results files and write report.md and tradeoff.png (continual.png for
    continual runs, losses.png for runs with a training history) into ``out_dir``; returns
    the paths written. Where a results file has samples.jsonl beside it, report.md lists
    the answers each method changed most.

    Only the report's own files are checked for overwriting, so the report can sit beside
    the results.json it was made from (as ``unsee demo`` does).
    """
    out = Path(out_dir)
    if not overwrite:
        existing = [out / name for name in REPORT_FILES if (out / name).exists()]
        if existing:
            raise OutputExistsError(f"{existing[0]} already exists; pass --overwrite to replace it")
    results = merge_results(result_paths)
    sources = []
    for path in result_paths:
        loaded = load_results(path)
        sources += runs_with_samples(loaded, load_samples(path, loaded))
    changes = changes_section(sources)  # before anything is written: a bad samples file leaves no half report
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_tradeoff(results, out / "tradeoff.png")]
    if any(run["request"] > 1 for run in results["runs"]):
        written.append(plot_continual(results, out / "continual.png"))
    else:
        (out / "continual.png").unlink(missing_ok=True)  # a stale plot from an overwritten report
    if loss_panels(results):
        written.append(plot_losses(results, out / "losses.png"))
    else:
        (out / "losses.png").unlink(missing_ok=True)
    images = [p.name for p in written]
    report = out / "report.md"
    atomic_write_text(report, render_report(results, images=images, changes=changes))
    return [report, *written]
