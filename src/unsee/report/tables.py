"""The report as text: a markdown table per setting and a compact table for the terminal.

A reader should see at a glance what each method did to each group *relative to the model
before unlearning*, so every cell carries its change from the vanilla run of the same
model, benchmark and forget split, plus the one-number trade-off score and the cost.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, NamedTuple

from unsee.audit.verdicts import reference_checks
from unsee.data.schema import METRIC_GROUPS
from unsee.engine.trainer import UNKEYED
from unsee.errors import UnseeError
from unsee.eval.metrics import RETENTION_GROUPS, unlearning_score
from unsee.eval.results import config_key, seed_summary

CHANCE = 0.25
MINUS = "\u2212"
DASH = "\u2014"
MIB = 1024 * 1024

PROTOCOL_NOTES = {
    "loglik": "MCQ scored by log-likelihood: the option whose answer text the model finds most likely.",
    "letter": "MCQ scored by letter: the first alphanumeric character of the generated reply.",
    "option_string": "MCQ scored by option string: the reply must equal the correct option's text.",
}

class Setting(NamedTuple):
    """What runs must share to be compared, and to share a vanilla baseline."""

    model: str
    benchmark: str
    split: str
    scored: str  # the data, its seed, any cap on the items scored and the reply budget ("" where none is recorded)


def setting_of(run: Mapping[str, Any]) -> Setting:
    """Runs are comparable, and share a vanilla baseline, only within one setting.

    A run scored under the ``official`` protocol is a setting of its own (its split reads
    ``forget_10 [official]``): its figures are not on the same scale as log-likelihood ones.
    So is a run on other data under the same split name (another world, another download of
    a benchmark), one whose items were drawn with another seed (other held-out views), one
    whose evaluation scored fewer items (a vanilla model measured on 20 items a task is no
    baseline for a run measured on all of them), one given another reply budget, or one whose
    weights were scored in another precision than fp32.
    """
    split = str(run["forget_split"])
    protocol = run.get("protocol", "loglik")
    evaluation = run.get("evaluation") or {}
    data = run.get("data") or {}
    scored = [f"data {data['fingerprint']}"] if data.get("fingerprint") else []
    scored += [f"data seed {data['seed']}"] if data.get("seed") else []
    scored += [f"{key} {evaluation[key]}" for key in ("max_items", "max_gen_items") if evaluation.get(key)]
    scored += [f"dtype {evaluation['dtype']}"] if evaluation.get("dtype", "float32") != "float32" else []
    if budget := evaluation.get("max_new_tokens"):
        scored.append("max_new_tokens " + "/".join(f"{task} {n}" for task, n in sorted(budget.items())))
    if without := run.get("retain_without"):  # a continual run's retain group leaves every request's people out
        scored.append("retain without " + ",".join(without))
    return Setting(str(run["model"]), str(run["benchmark"]), split if protocol == "loglik" else f"{split} [{protocol}]",
                   ", ".join(scored))


def setting_labels(settings: Iterable[Setting]) -> dict[Setting, str]:
    """Each setting as a person reads it, "model · benchmark · split", with what else tells it
    apart only where two settings would otherwise read the same."""
    settings = list(settings)
    alike = Counter(s[:3] for s in settings)
    return {s: " \u00b7 ".join(s[:3]) + (f" ({s.scored})" if alike[s[:3]] > 1 and s.scored else "")
            for s in settings}


def group_runs(runs: Iterable[Mapping[str, Any]]) -> dict[Setting, list[Mapping[str, Any]]]:
    """Runs by setting, in first-seen order."""
    out: dict[Setting, list[Mapping[str, Any]]] = {}
    for run in runs:
        out.setdefault(setting_of(run), []).append(run)
    return out


def vanilla_for(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The baseline of one setting's runs: its first run with method ``vanilla``."""
    return next((r for r in runs if r["method"] == "vanilla"), None)


def baseline_for(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None,
                 group: str | None = None) -> Mapping[str, Any] | None:
    """``vanilla`` where its figures (of ``group``, or all of them) were taken on the run's items, else None.

    The requests of one ``unsee forget --requests`` share a setting, and its vanilla run is measured on
    the last request's people (its ``request``): an earlier request's run is read against it on the
    ``forget_rN`` groups alone, which both measured on the same items.
    """
    if vanilla is None or run is vanilla:
        return None
    if vanilla["request"] in (1, run["request"]) or (group is not None and _request_index(group) is not None):
        return vanilla
    return None


def ordered_groups(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Metric groups in docs/results-format.md order, then continual ``forget_rN`` by N, then the rest by name."""
    return in_group_order({g for r in runs for g in r["metrics"]})


def in_group_order(groups: Iterable[str]) -> list[str]:
    """Group names in the order :func:`ordered_groups` gives: ``forget_r10`` after ``forget_r2``, not before."""
    present = set(groups)
    known = [g for g in METRIC_GROUPS if g in present]
    return known + sorted(present - set(known), key=lambda g: (_request_index(g) is None, _request_index(g) or 0, g))


def _request_index(group: str) -> int | None:
    """N of a continual request's own group, ``forget_rN``; None for every other group."""
    tail = group[len("forget_r") :]
    return int(tail) if group.startswith("forget_r") and tail.isdigit() else None


def headline_key(runs: Iterable[Mapping[str, Any]], group: str) -> str | None:
    """The figure shown for a group: MCQ accuracy where any run has it, else ROUGE-L, else cloze."""
    runs = list(runs)
    for key in ("mcq", "rougeL", "cloze"):
        if any(key in r["metrics"].get(group, {}) for r in runs):
            return key
    return None


def figure(run: Mapping[str, Any] | None, group: str, key: str | None) -> float | None:
    if run is None or key is None:
        return None
    value = run["metrics"].get(group, {}).get(key)
    return None if value is None else float(value)


def fmt_delta(value: float | None, base: float | None) -> str:
    """``0.27 (−0.68)``: the value, and its change from the baseline when there is one."""
    if value is None:
        return DASH
    if base is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({fmt_change(value - base)})"


def fmt_change(delta: float, digits: int = 2) -> str:
    """``−0.68``, ``+0.03`` or ``±0.00``: a typographic minus, and no sign for what rounds to zero."""
    half = 0.5 * 10**-digits
    sign = "+" if delta >= half else (MINUS if delta <= -half else "\u00b1")
    return f"{sign}{abs(delta):.{digits}f}"


def score_of(
    run: Mapping[str, Any], vanilla: Mapping[str, Any] | None, *, key: str = "mcq"
) -> dict[str, Any] | None:
    """The unlearning score, or None where it cannot be judged (no baseline, no forget figure,
    the baseline itself). Chance is 0.25 for four-option MCQ and 0 for ROUGE-L or cloze."""
    if baseline_for(run, vanilla) is None or run["method"] == "vanilla":
        return None
    assert vanilla is not None
    try:
        return unlearning_score(
            vanilla["metrics"], run["metrics"], chance=CHANCE if key == "mcq" else 0.0, key=key
        )
    except UnseeError:
        return None


CARRIED = "†"  # a peak RSS that can carry earlier runs' memory (cost.measured_after)


def _mib(nbytes: int | None) -> str:
    return DASH if nbytes is None else f"{nbytes / MIB:,.0f}"


def fig3(v: Any) -> str:
    return DASH if v is None else f"{float(v):.3f}"


def seconds_text(s: float | None) -> str:
    return DASH if s is None else f"{float(s):.1f}"


def _count(n: int | None) -> str:
    return DASH if n is None else f"{n:,}"


def spent(run: Mapping[str, Any]) -> Mapping[str, Any]:
    """The run's unlearning cost; for a model only evaluated, none: its cost is the evaluation's."""
    cost = run["cost"]
    return cost if cost.get("covers", "unlearning") == "unlearning" else {k: None for k in cost}


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def interval_text(fig: Mapping[str, Any], *, people: bool = True) -> str:
    """`` [low, high]`` after an MCQ figure, with ``; people low, high`` where asked and known: the interval
    a new draw of people would show (the few people of a request make it the wider one)."""
    ci, over_people = fig.get("ci95"), fig.get("ci95_people") if people else None
    if not ci:
        return ""
    return f" [{ci[0]:.2f}, {ci[1]:.2f}" + (f"; people {over_people[0]:.2f}, {over_people[1]:.2f}]"
                                             if over_people else "]")


def _interval(fig: Mapping[str, Any], group: str, key: str | None) -> str:
    return interval_text(fig, people=group.startswith("forget")) if key == "mcq" else ""


def _setting_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    vanilla = vanilla_for(runs)
    groups = ordered_groups(runs)
    keys = {g: headline_key(runs, g) for g in groups}
    header = ["method", "request", "seed"]
    header += [g if keys[g] in ("mcq", None) else f"{g} ({keys[g]})" for g in groups]
    header += ["score", "wall s", "peak RSS MiB", "peak GPU MiB", "trainable params"]
    lines = [_md_row(header), _md_row(["---"] * 2 + ["---:"] * (len(header) - 2))]
    variant = config_variants(runs)  # what tells apart two rows of one method
    for run in _vanilla_first(runs):
        cells = _run_cells(run, variant)
        for g in groups:
            base = figure(baseline, g, keys[g]) if (baseline := baseline_for(run, vanilla, g)) else None
            cells.append(fmt_delta(figure(run, g, keys[g]), base) + _interval(run["metrics"].get(g, {}), g, keys[g]))
        score = score_of(run, vanilla, key=keys.get("forget") or "mcq")
        cells.append(DASH if score is None or score["score"] is None else f"{score['score']:.2f}")
        cost = spent(run)
        cells += [
            seconds_text(cost["wall_s"]),
            _mib(cost["peak_rss_bytes"]) + CARRIED * bool(cost.get("measured_after")),
            _mib(cost["peak_gpu_bytes"]),
            _count(cost["trainable_params"]),
        ]
        lines.append(_md_row(cells))
    if vanilla is None:
        lines += ["", "_No `vanilla` run in this setting: changes and scores cannot be shown._"]
    if any(spent(r).get("measured_after") for r in runs):
        lines += ["", f"_{CARRIED} measured after other runs in the same process, whose freed memory it can "
                      "carry: not comparable with the other rows' peak RSS. `benchmarks/unlearn.py` measures "
                      "each run in a process of its own._"]
    return lines


def render_report(results: Mapping[str, Any], *, images: Sequence[str] = (), changes: Sequence[str] = ()) -> str:
    """The markdown report: one table per (model, benchmark, forget split), one row per run.

    ``images`` are relative paths of plots to embed at the end (``write_report`` passes them);
    ``changes`` the lines of the changed-answers section (:mod:`unsee.report.changes`).
    """
    runs = list(results["runs"])
    out = [
        "# unsee report",
        "",
        f"unsee {results.get('unsee_version', '?')}, git `{results.get('git_hash') or 'unknown'}`, "
        f"created {results.get('created', '?')}; {len(runs)} run(s).",
        "",
    ]
    if not runs:
        out += ["No runs.", ""]
    grouped = group_runs(runs)
    labels = setting_labels(grouped)
    for setting, setting_runs in grouped.items():
        out += [f"## {labels[setting] if setting.split else labels[setting] + '(no split)'}", ""]
        out += _setting_table(setting_runs)
        out.append("")
    out += people_section(runs)
    protocols = sorted({r["mcq_protocol"] for r in runs})
    out += [
        "## How to read this",
        "",
        "- Each cell is an accuracy in [0, 1] (MCQ unless the header names another figure), "
        "with its change from the `vanilla` run of the same setting in brackets.",
        f"- score: the harmonic mean of efficacy E = clip((vanilla forget \u2212 forget) / "
        f"(vanilla forget \u2212 {CHANCE}), 0, 1) and retention R = the minimum over "
        f"{', '.join(RETENTION_GROUPS)} of run / vanilla (capped at 1). 1 is best.",
        "- Cost: wall-clock seconds, peak resident memory, peak GPU memory allocated by PyTorch "
        "(\u2014 without a GPU), and parameters trained.",
    ]
    out += [f"- {PROTOCOL_NOTES.get(p, f'MCQ protocol `{p}`.')} (mcq_protocol `{p}`)" for p in protocols]
    if any(r.get("protocol") == "official" for r in runs):
        out.append("- Runs with protocol `official` are scored the benchmark's own way (its prompts, reply "
                   "budget, answer reading and metrics); `evaluation.scoring` in results.json names the rule "
                   "behind each figure.")
    continual = [r for r in runs if r["request"] > 1]
    if continual:
        out.append(
            "- Continual runs: `forget_rN` is the accuracy on the targets of request N, measured later."
        )
    if any(g.get("ci95") for r in runs for g in r["metrics"].values()):
        out.append("- [low, high] after an MCQ accuracy: its 95% bootstrap interval over the items; `people` "
                   "after a forget group's, the interval with its people resampled as wholes.")
    seed_lines = _seeds_section(runs)
    if seed_lines:
        out += ["", *seed_lines]
    attack_lines = _attacks_section(runs)
    if attack_lines:
        out += ["", *attack_lines]
    if changes:
        out += ["", *changes]
    if images:
        out += ["", "## Plots", ""]
        out += [f"![{PurePosixPath(i).stem}]({i})" for i in images]
    out.append("")
    return "\n".join(out)


def _people(run: Mapping[str, Any], group: str) -> Mapping[str, float]:
    return (run["metrics"].get(group) or {}).get("people") or {}


def people_section(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """One table per setting whose forget groups name their people (results.json's ``metrics.<group>.people``):
    a row per person, a column per run, each cell the person's accuracy in every forget group that holds them.
    Rows are people, not runs, so that the run tables' rows stay the only ones that start with a method.

    A group's mean over five people can sit near chance while one of them is still recognised, and a person's
    questions can be guessed by a model that never saw them; so each figure, not a verdict, beside vanilla's."""
    grouped = group_runs(runs)
    labels = setting_labels(grouped)
    out: list[str] = []
    for setting, setting_runs in grouped.items():
        groups = [g for g in ordered_groups(setting_runs) if any(_people(r, g) for r in setting_runs)]
        if not groups:
            continue
        people = list(dict.fromkeys(p for g in groups for r in setting_runs for p in _people(r, g)))
        where = {p: [g for g in groups if any(p in _people(r, g) for r in setting_runs)] for p in people}
        ordered = _vanilla_first(setting_runs)
        variant = config_variants(ordered)
        several = {k: len({str(r.get(k, 0)) for r in ordered}) > 1 for k in ("request", "seed")}
        columns = [" ".join([_method_label(r, variant), *(f"{k} {r.get(k, 0)}" for k in ("request", "seed")
                                                          if several[k])]) for r in ordered]
        lines = [_md_row(["person", *columns]), _md_row(["---", *["---:"] * len(columns)])]
        for p in people:
            values = [[_people(run, g).get(p) for g in where[p]] for run in ordered]
            lines.append(_md_row([p, *(" / ".join(DASH if v is None else f"{v:.2f}" for v in vs) for vs in values)]))
        orders = sorted({" / ".join(w) for w in where.values()})
        out += [f"### {labels[setting]}", "", f"Each cell: the person's MCQ accuracy in {' or '.join(orders)}.", "",
                *lines, ""]
    if not out:
        return []
    return ["## The people to forget, one by one", "",
            "A request is answered when each of its people is forgotten: a group's mean can hide one still "
            "recognised. A person's questions can also be guessed without knowing them, so read each figure "
            "beside the vanilla model's (and, where there is one, the retrained reference's).", "", *out]


def _number(v: Any) -> str:
    """A count as a count, a figure to two places, and a small setting (a rate, a step) as it is."""
    if not isinstance(v, float):  # a count, a flag, a name
        return str(v)
    return f"{v:.2f}" if v == 0 or abs(v) >= 0.05 else f"{v:.2g}"


def _figures_text(figures: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_number(v)}" for k, v in figures.items() if not isinstance(v, dict | list))


def _attacks_section(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each run's attack figures, and the retrained reference's beside them where it was attacked too."""
    rows = []
    variant = config_variants(runs)
    for run in runs:
        for attack, figures in (run.get("attacks") or {}).items():
            ref = figures.get("reference")
            rows.append(_md_row([*_run_cells(run, variant), attack, _figures_text(figures) or DASH,
                                 _figures_text(ref) or DASH if isinstance(ref, Mapping) else DASH]))
    if not rows:
        return []
    lines = [
        "## Attacks",
        "",
        _md_row(["method", "request", "seed", "attack", "figures", "retrained reference"]),
        _md_row(["---"] * 6),
        *rows,
    ]
    checks, referenced = _reference_check_rows(runs, variant)
    if checks:  # without a reference only the 4-bit rounding is judged, against the model's own figure
        lines += ["", "### Against the retrained reference" if referenced else "### Checks that need no reference", "",
                  _md_row(["method", "request", "seed", "check", "value", "reference", "target", "passed"]),
                  _md_row(["---"] * 4 + ["---:"] * 2 + ["---"] * 2), *checks]
    return lines


def _run_cells(run: Mapping[str, Any], variant: Mapping[int, str]) -> list[str]:
    """Which run a row is: its method (with the config keys that set it apart), request and seed."""
    return [_method_label(run, variant), str(run["request"]), str(run.get("seed", 0))]


def _method_label(run: Mapping[str, Any], variant: Mapping[int, str]) -> str:
    """The run's method, with the config keys that set it apart from its method's other runs."""
    return str(run["method"]) + (f" [{variant[id(run)]}]" if variant.get(id(run)) else "")


def _vanilla_first(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The order a setting's runs are shown in: vanilla first, then by request."""
    return sorted(runs, key=lambda r: (r["method"] != "vanilla", r["request"]))


def check_cells(check: Mapping[str, Any]) -> list[str]:
    """A check's figure and its reference's; against several draws of the reference, their mean and range, and the
    figure against each draw alone where there is one (forget quality: how far its verdict rests on one draw)."""
    draws = [d for d in check.get("reference_draws") or () if d is not None]
    alone = ", ".join(f"{p:.3g}" for p in check.get("per_draw") or ())
    return [fig3(check["value"]) + (f" (each draw alone: {alone})" if alone else ""), fig3(check.get("reference"))
            + (f" (mean of {len(draws)} draws, {min(draws):.3f} to {max(draws):.3f})" if draws else "")]


def _reference_check_rows(runs: Sequence[Mapping[str, Any]], variant: Mapping[int, str]) -> tuple[list[str], bool]:
    """The judged checks' rows, and whether any was judged against a retrained reference."""
    rows, referenced = [], False
    for run in runs:
        for name, c in reference_checks(run.get("attacks") or {}).items():
            if c["pass"] is not None:
                referenced |= c["reference"] is not None
                rows.append(_md_row([*_run_cells(run, variant), name, *check_cells(c), c["target"],
                                     "yes" if c["pass"] else "no"]))
    return rows, referenced


def config_variants(runs: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Each run's config keys (``k=v``) that differ among the runs of its method and request, by ``id(run)``:
    what tells apart two rows or points of one method (empty where its runs share one config)."""
    by: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for run in runs:
        by.setdefault((str(run["method"]), int(run["request"])), []).append(run)
    out: dict[int, str] = {}
    for group in by.values():
        configs = [run.get("config") or {} for run in group]
        keys = sorted({k for c in configs for k in c} - {"seed", *UNKEYED})
        recorded = [c for c in configs if c]  # a model or steering file scored as given records none
        differ = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in recorded}) > 1]
        for run, c in zip(group, configs, strict=True):
            out[id(run)] = ", ".join(f"{k}={c.get(k)}" for k in differ) if c or not recorded else "no config recorded"
    return out


def _seed_entries(runs: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The spread of the runs that differ in their seed alone (same setting, method, request and config),
    labelled, for each such group of more than one seed."""
    by: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        by.setdefault((setting_of(run), config_key(run), run["method"], run["request"]), []).append(run)
    variant = config_variants(runs)
    labels = setting_labels({key[0] for key in by})
    out = []
    for (setting, *_), group in by.items():
        entry = seed_summary(group)[0]
        if len(set(entry["seeds"])) < 2:
            continue
        where = labels[setting] if len(labels) > 1 else f"{entry['model']}, {entry['forget_split']}"
        differs = variant[id(group[0])]
        out.append((f"{entry['method']} ({where})" + (f" [{differs}]" if differs else ""), entry))
    return out


def _seeds_section(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Mean ± sd [min, max] over unlearning seeds, for each method run with more than one seed."""

    labelled = _seed_entries(runs)
    if not labelled:
        return []
    several = [e for _, e in labelled]
    groups = [g for g in ("forget", "forget_test", "retain", "known", "general")
              if any("mcq" in e["metrics"].get(g, {}) for e in several)]
    lines = ["## Over unlearning seeds", "",
             "MCQ accuracy as mean \u00b1 sd [min, max] over the seeds; audit figures the same way.", "",
             _md_row(["method", "seeds", *groups]), _md_row(["---", "---", *["---:"] * len(groups)])]

    def cell(s: Mapping[str, float] | None, seeds: int) -> str:
        if not s:
            return DASH
        if s.get("n", seeds) < seeds:  # measured on some seeds only: say on how many
            return f"{s['mean']:.3f} ({s['n']} of {seeds} seeds)" if s["n"] == 1 else (
                f"{s['mean']:.3f} \u00b1 {s['sd']:.3f} [{s['min']:.3f}, {s['max']:.3f}] ({s['n']} of {seeds} seeds)")
        return f"{s['mean']:.3f} \u00b1 {s['sd']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    for label, e in labelled:
        lines.append(_md_row([label, ",".join(map(str, e["seeds"])),
                              *[cell(e["metrics"].get(g, {}).get("mcq"), len(e["seeds"])) for g in groups]]))
    audit_rows = []
    for label, e in labelled:
        for kind, figs in e.get("attacks", {}).items():
            for key in AUDIT_HEADLINES.get(kind, ()):
                if key in figs:
                    audit_rows.append(_md_row([label, f"{kind}.{key}", cell(figs[key], len(e["seeds"]))]))
    if audit_rows:
        lines += ["", _md_row(["method", "audit figure", "mean \u00b1 sd [min, max]"]), _md_row(["---", "---", "---:"]),
                  *audit_rows]
    return lines


AUDIT_HEADLINES = {"relearn": ("ag",), "pgd": ("forget_attacked",), "probe": ("forget_acc",),
                   "shift": ("forget_occlude",), "quant": ("forget_int4_all", "forget_int4_changed"),
                   "mia": ("auc_loss", "auc_mink_pp", "privleak_loss", "forget_quality")}
