"""The report's two pictures: the forget/retain trade-off, and accuracy over continual requests.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot
global state, no display needed, safe in threads and on headless servers. matplotlib is
imported only when a plot is drawn, so importing :mod:`unsee.report` stays cheap.
Each PNG is written atomically, like every other output.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unsee.audit.verdicts import reference_checks
from unsee.eval.metrics import RETENTION_GROUPS, spread
from unsee.eval.results import config_key, one_run_per_seed
from unsee.io import atomic_write_bytes
from unsee.report.tables import (
    CHANCE,
    config_variants,
    figure,
    group_runs,
    headline_key,
    in_group_order,
    score_of,
    setting_labels,
    setting_of,
    vanilla_for,
)

RETENTION_LABEL = (
    "retention R: min over groups of acc / vanilla acc (capped at 1)\n"
    "groups: " + ", ".join(RETENTION_GROUPS)
)


PANEL_WIDTH, KEYED_WIDTH = 5.2, 7.6  # inches a panel takes, and one with its key beside it


def _new_figure(panels: int, *, width: float = PANEL_WIDTH, height: float = 4.4) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    cols = min(max(panels, 1), 3)
    rows = max(math.ceil(panels / cols), 1)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[: max(panels, 1)]


def _save_png(fig: Any, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _label(run: Mapping[str, Any]) -> str:
    return str(run["method"]) + (f" @r{run['request']}" if run["request"] > 1 else "")


def plot_tradeoff(results: Mapping[str, Any], path: str | Path) -> Path:
    """Forget accuracy (x) against retention R (y), one labelled point per run, one panel per setting.

    R is the retention term of the unlearning score, so the plot and the score column agree.
    The ideal sits at the top left: chance-level on the forget set, nothing lost elsewhere.
    Error bars: the spread over seeds, or one run's bootstrap interval (:func:`tradeoff_points`).
    """
    settings = group_runs(results["runs"])
    labels = setting_labels(settings)
    fig, axes = _new_figure(len(settings))
    for ax, (setting, runs) in zip(axes, settings.items(), strict=False):
        vanilla = vanilla_for(runs)
        key = headline_key(runs, "forget") or "mcq"
        chance = CHANCE if key == "mcq" else 0.0
        if key == "mcq":
            ax.axvline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance})")
        plotted = 0
        at = figure(vanilla, "forget", key)
        if at is not None:
            ax.scatter([at], [1.0], marker="*", s=220, color="black", zorder=3, label="vanilla")
            ax.annotate("vanilla", (at, 1.0), textcoords="offset points", xytext=(-8, 4), ha="right", fontsize=8)
            plotted += 1
        points = tradeoff_points(runs, vanilla, key)
        for (label, x, y, xerr, yerr), (dx, dy, side) in zip(points, label_offsets(points, vanilla_at=at),
                                                              strict=True):
            ax.errorbar([x], [y], xerr=None if xerr is None else [[xerr[0]], [xerr[1]]],
                        yerr=None if yerr is None else [[yerr], [yerr]], fmt="o", markersize=6, capsize=3,
                        elinewidth=1, zorder=3)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), ha=side, fontsize=8)
            plotted += 1
        if vanilla is None or plotted == 0:
            ax.text(
                0.5,
                0.5,
                "no vanilla run:\nretention cannot be computed",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=9,
                color="grey",
            )
        ax.scatter([chance], [1.0], marker="o", s=160, facecolors="none", edgecolors="green", label="ideal")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.08)
        _label_panel(ax, f"forget accuracy ({key}; lower is better)", RETENTION_LABEL,
                     labels[setting], legend="lower left")
    return _finish(fig, axes, path, empty=None if settings else "no runs")


def label_offsets(points: Sequence[tuple[Any, ...]], *, vanilla_at: float | None = None,
                  near: tuple[float, float] = (0.35, 0.05)) -> list[tuple[int, int, str]]:
    """Where each point's label goes, in offset points and alignment: to the left of points on the right half
    (a long label ran off the figure), and stacked a line apart where labels on one side would overlap
    (methods at one point, or within a label's width on one row: each printed over the others, and none could
    be read). A point above the ones it crowds stacks its label upwards, one at or below them downwards: a
    label a line below a point a line higher than its neighbour fell on the neighbour's own label."""
    placed: list[tuple[float, float, str]] = []
    if vanilla_at is not None:
        placed.append((vanilla_at, 1.0, "right"))  # the vanilla star's own label, to its upper left
    out = []
    for _, x, y, *_ in points:
        side = "right" if x > 0.55 else "left"
        crowded = [py for px, py, ps in placed if ps == side and abs(px - x) < near[0] and abs(py - y) < near[1]]
        placed.append((x, y, side))
        up = bool(crowded) and all(y > py for py in crowded)
        out.append((-6 if side == "right" else 6, 4 + (10 if up else -10) * len(crowded), side))
    return out


def tradeoff_points(runs: Sequence[Mapping[str, Any]], vanilla: Mapping[str, Any] | None,
                    key: str) -> list[tuple[str, float, float, tuple[float, float] | None, float | None]]:
    """(label, forget, R, forget error below/above, R error) for each method and request.

    Runs of one method and config that differ only in their seed become one point at their mean,
    with one standard deviation as the error bars; a single run's forget error bar is its 95%
    bootstrap interval over the items, where the run carries one. Runs of one method at other
    configs are other points, labelled with the keys that differ."""

    by: dict[tuple[str, int, str], list[tuple[Mapping[str, Any], float, float]]] = {}
    for run in one_run_per_seed(runs):  # the same seed run again (another results file) is no second seed
        x = figure(run, "forget", key)
        score = score_of(run, vanilla, key=key)
        if run is vanilla or x is None or score is None or score["R"] is None:
            continue
        by.setdefault((str(run["method"]), int(run["request"]), config_key(run)), []).append(
            (run, x, float(score["R"])))
    variant = config_variants([g[0] for group in by.values() for g in group])
    points = []
    for group in by.values():
        differs = variant[id(group[0][0])]
        label = _label(group[0][0]) + (f" [{differs}]" if differs else "")
        if len(group) > 1:
            xs, ys = spread([g[1] for g in group]), spread([g[2] for g in group])
            points.append((f"{label} ({len(group)} seeds)", xs["mean"], ys["mean"], (xs["sd"], xs["sd"]), ys["sd"]))
            continue
        run, x, y = group[0]
        ci = run["metrics"].get("forget", {}).get("ci95") if key == "mcq" else None
        points.append((label, x, y, (max(x - ci[0], 0.0), max(ci[1] - x, 0.0)) if ci else None, None))
    return points


# Groups that hold, at request k, request k's own people (its held-out views, its text questions): measured
# once for each request's people, they are no line through time
OWN_PEOPLE = ("forget_test", "text_forget")


def continual_values(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, list[float]]]:
    """Each group's accuracies at each request, one per run that reached it (the seeds of one benchmark).

    At request k the ``forget`` group holds request k's own targets, so it is filed as
    ``forget_rk``: each line then follows one request's targets from the moment they were
    forgotten onwards. The groups of :data:`OWN_PEOPLE` are measured for request k's people
    alone, and are drawn as points.
    """
    values: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        k = int(run["request"])
        for group in run["metrics"]:
            if group == "forget" and f"forget_r{k}" in run["metrics"]:
                continue  # the same items, measured once: counted once
            value = figure(run, group, headline_key([run], group))
            if value is not None:
                values.setdefault(f"forget_r{k}" if group == "forget" else group, {}).setdefault(k, []).append(value)
    return values


def continual_series(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Each group's (request, accuracy) points for one method's continual runs. Where several runs
    share a request number, each point is their mean: one seed's line would show that seed's luck."""
    return _means(continual_values(runs))


def _means(values: Mapping[str, Mapping[int, list[float]]]) -> dict[str, list[tuple[int, float]]]:
    return {name: [(k, sum(v) / len(v)) for k, v in sorted(by_request.items())] for name, by_request in values.items()}


def continual_panels(results: Mapping[str, Any]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """One panel per model, benchmark and method that ran more than one request, of its continual runs.

    Each request of a continual run has its own forget split, so the runs are gathered
    across splits: the panel follows the method from its first request to its last.
    """
    panels: dict[tuple[str, str, str, str, str], list[Mapping[str, Any]]] = {}
    for run in results["runs"]:  # a run on one forget split alone is no point of a sequence of requests
        if run["method"] != "vanilla" and any(g.startswith("forget_r") and g[8:].isdigit() for g in run["metrics"]):
            model, benchmark, _, scored = setting_of(run)
            # a method at another config, or on other data (another world, other items), is another line of
            # runs: only seeds share a panel
            panels.setdefault((model, benchmark, scored, str(run["method"]), config_key(run)), []).append(run)
    # the same seed run again (another results file) is no second seed
    continual = {k: one_run_per_seed(v) for k, v in panels.items() if any(int(r["request"]) > 1 for r in v)}
    wheres = {k[:3] for k in continual}
    alike = Counter(where[:2] for where in wheres)
    first = {key: min(runs, key=lambda r: int(r["request"])) for key, runs in continual.items()}
    variant = config_variants(list(first.values()))  # the keys that tell one method's panels apart
    return [(method + (f" [{variant[id(first[key])]}]" if variant[id(first[key])] else "")
             + (f" ({model}/{benchmark}" + (f", {scored}" if alike[model, benchmark] > 1 and scored else "") + ")"
                if len(wheres) > 1 else ""), runs)
            for key, runs in continual.items() for model, benchmark, scored, method, _ in [key]]


def plot_continual(results: Mapping[str, Any], path: str | Path) -> Path:
    """Every group's accuracy against the request number, one line per group, one panel per method; with
    several seeds, the line is their mean and the band their range."""
    from matplotlib import colormaps

    panels = continual_panels(results)
    fig, axes = _new_figure(len(panels), width=KEYED_WIDTH)
    for ax, (title, runs) in zip(axes, panels, strict=False):
        ax.set_prop_cycle(color=colormaps["tab20"].colors)  # a continual panel has more lines than 10 colours
        values = continual_values(runs)
        means = _means(values)
        for name in in_group_order(means):
            xs, ys = zip(*means[name], strict=True)
            if name in OWN_PEOPLE:  # request k's own people at k: points of other people, joined by no line
                ax.plot(xs, ys, linestyle="none", marker="D", markersize=5, label=f"{name} (each request's own people)")
                continue
            style = "-" if name.startswith("forget") else "--"
            line, = ax.plot(xs, ys, style, marker="o", markersize=4, label=name)
            if any(len(v) > 1 for v in values[name].values()):  # the seeds' range, shaded
                ax.fill_between(xs, [min(values[name][k]) for k in xs], [max(values[name][k]) for k in xs],
                                color=line.get_color(), alpha=0.12, linewidth=0)
        requests = sorted({int(r["request"]) for r in runs})
        ax.set_xticks(requests)
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1)
        _label_panel(ax, "request", "accuracy (MCQ; ROUGE-L where a group has none)", title, legend="outside")
    return _finish(fig, axes, path, empty=None if panels else "no continual runs")


def loss_panels(results: Mapping[str, Any]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """One panel per method with a training ``history``: the runs whose loss curves it shows."""
    panels: dict[str, list[Mapping[str, Any]]] = {}
    for run in results["runs"]:
        if run.get("history"):
            panels.setdefault(str(run["method"]), []).append(run)
    return list(panels.items())


def plot_losses(results: Mapping[str, Any], path: str | Path) -> Path:
    """Each method's training loss and loss terms against the step, one panel per method.

    The total is a solid line, each term dashed; a panel with several runs (seeds, requests,
    settings) labels each line with its run.
    """
    from matplotlib import colormaps

    panels = loss_panels(results)
    fig, axes = _new_figure(len(panels), width=KEYED_WIDTH if any(len(runs) > 1 for _, runs in panels) else PANEL_WIDTH)
    for ax, (method, runs) in zip(axes, panels, strict=False):
        colours = colormaps["tab20"].colors
        terms = ["loss", *sorted({k for run in runs for row in run["history"] for k in row} - {"step", "loss"})]
        styles = dict(zip(terms, ["-", "--", ":", "-.", *[(0, (5, 1, 1, 1, 1, 1))] * len(terms)], strict=False))
        tags = run_tags(runs)
        for i, run in enumerate(runs):
            rows = run["history"]
            steps = [row["step"] for row in rows]
            for j, key in enumerate(terms):
                points = [(s, row[key]) for s, row in zip(steps, rows, strict=True) if key in row]
                if points:
                    xs, ys = zip(*points, strict=True)
                    # one run: a colour per term; several: a colour per run and a line style per term, keyed
                    # apart, so that the key holds runs plus terms, not every run's every term
                    ax.plot(xs, ys, linestyle=styles[key], linewidth=1.2, label=key if len(runs) == 1 else None,
                            color=colours[(j if len(runs) == 1 else i) % len(colours)])
        if len(runs) > 1:
            for i, t in enumerate(tags):
                ax.plot([], [], color=colours[i % len(colours)], label=t)
            for k in terms:
                ax.plot([], [], color="grey", linestyle=styles[k], label=k)
        _label_panel(ax, "step", "training loss and its terms", method, legend="outside" if len(runs) > 1 else "best")
    return _finish(fig, axes, path, empty=None if panels else "no training history")


AUDIT_TITLES = {"relearn_ag": "relearning gain (points)", "pgd_forget": "forget accuracy under PGD",
                "probe_forget": "probe accuracy, forget people", "quant_int4_forget": "forget accuracy, 4-bit",
                "mia_auc_loss": "MIA AUC, loss", "mia_auc_zlib": "MIA AUC, zlib",
                "mia_auc_mink_pp": "MIA AUC, Min-K%++", "forget_quality": "forget quality (KS p-value)"}


def audit_rows(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Each attacked run's checks (:func:`unsee.audit.verdicts.reference_checks`), labelled as the loss plot
    labels its runs; runs with no check judged are left out."""
    rows = [(tag, reference_checks(run.get("attacks") or {})) for tag, run in zip(run_tags(runs), runs, strict=True)]
    return [(tag, checks) for tag, checks in rows if any(c["pass"] is not None for c in checks.values())]


P_FLOOR = 1e-16  # where the log axis of forget quality stops: its p-values run from 1 down to 1e-14


def plot_audits(rows: Sequence[tuple[str, Mapping[str, Mapping[str, Any]]]], path: str | Path) -> Path:
    """Each audit's figure beside the range that passes, one panel per audit, a row per run or method.

    ``rows`` are (label, checks) with checks as :func:`unsee.audit.verdicts.reference_checks` gives them
    (``value``, ``reference``, ``pass``, ``passing``; ``seeds`` where they are means: their lowest and highest
    seed); a check not judged is left out. The passing range is shaded, the reference's figure is a black
    tick, and the figure a green dot where it passes and a red cross where it does not: eight numbers a run,
    read at a glance."""
    judged = [(label, {k: c for k, c in checks.items() if c.get("pass") is not None and c.get("value") is not None})
              for label, checks in rows]
    names = [n for n in AUDIT_TITLES if any(n in checks for _, checks in judged)]
    fig, axes = _new_figure(len(names), width=4.2, height=0.9 + 0.38 * max(len(judged), 1))
    for ax, name in zip(axes, names, strict=False):
        log = name == "forget_quality"
        for i, (_, checks) in enumerate(judged):
            if name in checks:
                _draw_check(ax, i, checks[name], log)
        figures = [v for _, checks in judged if name in checks
                   for v in (checks[name]["value"], checks[name].get("reference"), *checks[name]["passing"],
                             *((checks[name].get("seeds") or {}).get(k) for k in ("min", "max")),
                             *(checks[name].get("reference_draws") or ()))
                   if isinstance(v, int | float)]
        if log:
            ax.set_xscale("log")
            ax.set_xlim(max(min(figures) / 3, P_FLOOR), 1.5)
        else:
            pad = 0.08 * (max(figures) - min(figures) or 1.0)
            ax.set_xlim(min(figures) - pad, max(figures) + pad)
        ax.set_yticks(range(len(judged)), [label for label, _ in judged], fontsize=7)
        ax.set_ylim(len(judged) - 0.5, -0.5)
        _label_panel(ax, "", "", AUDIT_TITLES[name], legend=None)
    drawn = any(c.get("reference_draws") for _, checks in judged for c in checks.values())
    fig.suptitle("green dot: passes, red cross: fails; shaded: the range that passes; black tick: the retrained "
                 f"reference's figure{' (the mean of its draws; small grey ticks: each draw)' if drawn else ''}; "
                 "grey line: lowest to highest seed", fontsize=8)
    return _finish(fig, axes, path, empty=None if names else "no audit judged")


def _draw_check(ax: Any, row: int, check: Mapping[str, Any], log: bool) -> None:
    """One run's figure in one audit's panel: its passing range, its seeds' spread, the reference, the figure."""
    def at(v: float) -> float:
        return max(v, P_FLOOR) if log else v

    low, high = check["passing"]
    left = at(low) if low is not None else (P_FLOOR if log else -1e9)  # an open side runs off the axis
    right = high if high is not None else (1.0 if log else 1e9)
    ax.barh(row, right - left, left=left, height=0.7, color="tab:green", alpha=0.15, linewidth=0)
    seeds = check.get("seeds") or {}
    if seeds.get("min") is not None and seeds["min"] != seeds.get("max"):
        ax.hlines(row, at(seeds["min"]), at(seeds["max"]), color="grey", linewidth=1.5)
    for drawn in check.get("reference_draws") or ():  # several draws of the reference: each, beside their mean
        if drawn is not None:
            ax.plot([drawn], [row], marker="|", color="grey", markersize=8)
    if check.get("reference") is not None:
        ax.plot([check["reference"]], [row], marker="|", color="black", markersize=14)
    ok = check["pass"]
    ax.plot([at(check["value"])], [row], marker="o" if ok else "X", color="tab:green" if ok else "tab:red",
            markersize=7, linestyle="none")


def run_tags(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What tells one method's runs apart in a key: request, seed, the config keys that differ and, where
    the runs are in several settings, the setting (the same label the tables and the trade-off give)."""
    variant = config_variants(runs)
    where = setting_labels(group_runs(runs))
    several = len(where) > 1
    tags = [" ".join([_label(run), f"s{run.get('seed', 0)}", *([f"[{variant[id(run)]}]"] if variant[id(run)] else []),
                      *([f"({where[setting_of(run)]})"] if several else [])]) for run in runs]
    seen = Counter(tags)
    return [t + (f" #{i + 1}" if seen[t] > 1 else "") for i, t in enumerate(tags)]


def _label_panel(ax: Any, xlabel: str, ylabel: str, title: str, *, legend: str | None = "best") -> None:
    """Every panel of every figure is labelled, gridded and keyed the same way (``legend``: None where the
    panel has drawn its own key)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend == "outside":  # many lines: the key beside the panel, where it covers none of them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    elif legend is not None:
        ax.legend(fontsize=7, loc=legend)


def _finish(fig: Any, axes: Any, path: str | Path, *, empty: str | None) -> Path:
    """Save the figure; one with nothing to draw says so instead of showing empty axes."""
    if empty:
        axes[0].text(0.5, 0.5, empty, ha="center", va="center", transform=axes[0].transAxes)
    return _save_png(fig, path)
