"""Which answers unlearning changed: the items of samples.jsonl that moved most from the vanilla run.

Aggregates say how much a method forgot; the items say *what* it forgot, and whether the
changes land on the forget targets or leak onto people and skills it should have kept.
An item's change is 1 when it went from right to wrong or back, 0.5 when the answer read
from it changed but stayed right or wrong, and the change in ROUGE-L for generation items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unsee.data.schema import LETTERS
from unsee.eval.results import run_key
from unsee.report.tables import Setting, baseline_for, config_variants, setting_labels, setting_of

TOP = 10
_WIDTH = 60


def runs_with_samples(results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]
                      ) -> list[tuple[Mapping[str, Any], list[Mapping[str, Any]]]]:
    """Each run of one results file with its own lines of samples.jsonl: those of its index that also name its
    method, request and seed (a results file edited by hand, its runs cut or reordered, keeps the samples file it
    recorded, whose lines would otherwise be read as another run's answers)."""
    by_run: dict[int, list[Mapping[str, Any]]] = {}
    for line in samples:
        by_run.setdefault(int(line.get("run", 0)), []).append(line)
    return [(run, [line for line in by_run.get(i, []) if all(
        line.get(k) is None or line.get(k) == run.get(k) for k in ("method", "request", "seed"))])
        for i, run in enumerate(results["runs"])]


def answer_text(rec: Mapping[str, Any]) -> str:
    """What the model answered: the chosen option for a log-likelihood MCQ, else its reply."""
    if rec.get("reply") is None and rec.get("extracted") in LETTERS and rec.get("options"):
        i = LETTERS.index(rec["extracted"])
        if i < len(rec["options"]):
            return f"{rec['extracted']}: {rec['options'][i]}"
    return str(rec.get("reply") if rec.get("reply") is not None else rec.get("extracted") or "")


def change(before: Mapping[str, Any], after: Mapping[str, Any]) -> float:
    """How far one item moved between two runs (see the module docstring)."""
    if before.get("task") == "gen":
        return abs(float(after.get("rougeL") or 0.0) - float(before.get("rougeL") or 0.0))
    if bool(before.get("correct")) != bool(after.get("correct")):
        return 1.0
    return 0.5 if before.get("extracted") != after.get("extracted") else 0.0


def _verdict(rec: Mapping[str, Any]) -> str:
    if rec.get("task") == "gen":
        return f"R-L {float(rec.get('rougeL') or 0.0):.2f}"
    return "right" if rec.get("correct") else "wrong"


def _cell(text: Any) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|")
    return s if len(s) <= _WIDTH else s[: _WIDTH - 1] + "\u2026"


def most_changed(vanilla: Sequence[Mapping[str, Any]], run: Sequence[Mapping[str, Any]], top: int = TOP
                 ) -> list[tuple[float, Mapping[str, Any], Mapping[str, Any]]]:
    """The ``top`` items (matched by group and uid) whose answers moved most; ties keep evaluation order."""
    before = {(r["group"], r["uid"]): r for r in vanilla}
    moved = []
    for k, rec in enumerate(run):
        base = before.get((rec["group"], rec["uid"]))
        if base is None:
            continue
        d = change(base, rec)
        if d > 0:
            moved.append((d, k, base, rec))
    moved.sort(key=lambda t: (-t[0], t[1]))
    return [(d, b, r) for d, _, b, r in moved[:top]]


def changes_section(sources: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                    top: int = TOP) -> list[str]:
    """Markdown: per setting and method, the items whose answers changed most from vanilla.

    ``sources`` pairs every run with its item records. Runs are compared only with the
    vanilla run of the same setting (:func:`unsee.report.tables.setting_of`). Empty when no
    run has records.
    """

    keyed: dict[Setting, list[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]]] = {}
    seen: set[str] = set()
    for run, recs in sources:
        key = run_key(run)  # a file given twice: its runs once, as in the tables
        if recs and key not in seen:
            seen.add(key)
            keyed.setdefault(setting_of(run), []).append((run, recs))
    out: list[str] = []
    labels = setting_labels(keyed)
    variant = config_variants([run for pairs in keyed.values() for run, _ in pairs])
    for setting, pairs in keyed.items():
        base = next(((run, recs) for run, recs in pairs if run["method"] == "vanilla"), None)
        if base is None:
            continue
        for run, recs in pairs:
            if run["method"] == "vanilla":
                continue
            # only the groups both measured on the same items (an earlier request of `forget --requests`:
            # its forget_rN alone)
            vanilla = [r for r in base[1] if baseline_for(run, base[0], str(r["group"])) is not None]
            moved = most_changed(vanilla, recs, top)
            config = f" [{variant[id(run)]}]" if variant[id(run)] else ""
            out += [f"### {run['method']}{config} (request {run['request']}, seed {run.get('seed', 0)}) "
                    f"\u00b7 {labels[setting]}", ""]
            if not moved:
                out += ["_No item changed its answer._", ""]
                continue
            out += ["| change | group | person | question | truth | vanilla | after |",
                    "|---:|---|---|---|---|---|---|"]
            for d, b, r in moved:
                out.append(f"| {d:.2f} | {r['group']} | {_cell(r.get('person', ''))} | {_cell(r.get('question', ''))} "
                           f"| {_cell(r.get('answer', ''))} | {_cell(answer_text(b))} ({_verdict(b)}) "
                           f"| {_cell(answer_text(r))} ({_verdict(r)}) |")
            out.append("")
    if not out:
        return []
    return ["## Answers that changed most", "",
            "Per method, the items (from samples.jsonl) whose answers moved most from the vanilla model's: "
            "1 = right became wrong or wrong became right, 0.5 = a different answer, equally right or wrong; "
            "generation items by their change in ROUGE-L.", "", *out]
