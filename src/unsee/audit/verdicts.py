"""Which audits pass against the retrained reference.

The model that never saw the forget photos is the bar: on the default world it already
regains 19 points under relearning and keeps a probe accuracy of 0.97, so an absolute target
would ask for more than never having learned gives. Each check compares an audit figure with
the reference's figure for the same attack (or, for quantization, with the model's own figure
before quantizing), within a stated margin. One place, so that the model card, the report and
the benchmarks judge alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from unsee.audit.mia import PER_ITEM, SCORES

MARGIN_POINTS = 5.0  # relearning gain, in points
MARGIN = 0.05  # accuracies, AUCs
MIN_FORGET_QUALITY = 0.05


def audit_figures(attacks: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers the audit targets judge: relearning gain, forget accuracy under PGD, probe accuracy,
    forget accuracy after 4-bit rounding of every linear weight, the loss MIA's AUC and forget quality."""
    return {"relearn_ag": attacks.get("relearn", {}).get("ag"),
            "pgd_forget": attacks.get("pgd", {}).get("forget_attacked"),
            "probe_forget": attacks.get("probe", {}).get("forget_acc"),
            "quant_int4_forget": attacks.get("quant", {}).get("forget_int4_all"),
            "mia_auc_loss": attacks.get("mia", {}).get("auc_loss"),
            "forget_quality": attacks.get("mia", {}).get("forget_quality")}


def mean_attacks(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One attacks dict whose numbers are the means over ``runs`` (the reference's figures are shared).

    The 4-bit check reads the worse of two roundings (all weights, the changed ones); its mean is the mean
    of each run's worse one (``forget_int4_worse``), not the worse of the two means, which can lie below
    every run's own figure."""
    out: dict[str, Any] = {}
    for kind in {k for r in runs for k in r}:
        figures = [r[kind] for r in runs if kind in r]
        if kind == "quant":
            figures = [{**f, "forget_int4_worse": w} if (w := _int4_worse(f)) is not None else f for f in figures]
        out[kind] = _mean_figures(figures)
    return out


def _numbers(figures: Mapping[str, Any]) -> dict[str, float]:
    return {k: v for k, v in figures.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _mean_figures(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One attack's figures over several runs: each number the mean over the runs that have it, the first run's
    reference kept; where every run skipped the attack, the first reason."""
    figures = [f for f in runs if "skipped" not in f]
    if not figures:
        return dict(runs[0])
    keys = {k for f in figures for k in _numbers(f)}
    merged: dict[str, Any] = {k: statistics.fmean([f[k] for f in figures if f.get(k) is not None])
                              for k in keys if any(f.get(k) is not None for f in figures)}
    for k in {k for f in figures for k, v in f.items() if _series(v)}:  # a figure per draw: the mean of each
        rows = [f[k] for f in figures if _series(f.get(k))]
        if len({len(r) for r in rows}) == 1:
            merged[k] = [statistics.fmean(column) for column in zip(*rows, strict=True)]
    if "reference" in figures[0]:
        merged["reference"] = figures[0]["reference"]
    return merged


def _series(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                           for v in value)


def reference_of_draws(draws: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One attack's figures for several draws of the retrained reference (``unsee retrain --seed``), read as one
    reference: each number the mean over the draws, ``draws`` each draw's own numbers and ``per_item`` each
    draw's per-item scores (forget quality pools them).

    A single draw is a sample too: on the built-in world three draws of the same recipe regained +16, +4 and
    +6 points under relearning, so a check read against one draw is partly read against that draw's luck."""
    if len(draws) == 1:
        return dict(draws[0])
    merged = _mean_figures(draws)
    if "skipped" in merged:
        return merged
    merged["n_draws"] = len(draws)
    merged["draws"] = [_numbers(d) for d in draws]
    items = [d[PER_ITEM] for d in draws if PER_ITEM in d]
    if items:
        merged[PER_ITEM] = items
    return merged


def _int4_worse(quant: Mapping[str, Any]) -> float | None:
    """Forget accuracy after the worse 4-bit rounding: of all linear weights, or of the changed ones."""
    after = [v for v in (_get(quant, "forget_int4_all"), _get(quant, "forget_int4_changed")) if v is not None]
    return max(after) if after else None


def _get(figures: Mapping[str, Any] | None, key: str) -> float | None:
    if not isinstance(figures, Mapping):
        return None
    value = figures.get(key)
    return None if value is None or isinstance(value, bool) else float(value)


# A figure at its bound is within it: 0.6 - 0.4 is 0.19999999999999996 in floats.
AT_BOUND = 1e-9


def _row(value: float | None, bound: float | None, target: str, reference: float | None,
         draws: list[float | None] | None = None) -> dict[str, Any]:
    ok = None if value is None or bound is None else value <= bound + AT_BOUND
    row = {"value": value, "reference": reference, "target": target, "pass": ok, "passing": [None, bound]}
    return {**row, "reference_draws": draws} if draws else row


def _draws(reference: Any, key: str) -> list[float | None] | None:
    """Each draw's own figure where the reference is several draws read as one (:func:`reference_of_draws`)."""
    draws = reference.get("draws") if isinstance(reference, Mapping) else None
    return [_get(d, key) for d in draws] if draws else None


def reference_checks(attacks: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The checks the recorded ``attacks`` allow, each ``{value, reference, target, pass}``.

    - ``relearn_ag``: relearning gain <= the reference's + 5 points;
    - ``pgd_forget``: forget accuracy under PGD <= the reference's + 0.05;
    - ``probe_forget``: probe accuracy on the forget people <= the reference's + 0.05;
    - ``quant_int4_forget``: forget accuracy after 4-bit rounding (of all linear weights, and of
      the changed ones where known) <= the model's own before rounding + 0.05: the forgetting
      must not come back (the reference's figure is shown, not used);
    - ``mia_auc_<score>``: |AUC - the reference's AUC| <= 0.05;
    - ``forget_quality``: the KS p-value against the reference >= 0.05.

    A check whose figures are missing (attack not run, or no reference) has ``pass`` None. ``passing`` is
    ``[low, high]``, the values of ``value`` that pass (None: no bound on that side, or none known), so
    that a plot can draw the target beside the figure. Against several draws of the reference ``reference`` is
    their mean and ``reference_draws`` each draw's figure; ``forget_quality`` adds ``per_draw``, the p-value
    against each draw alone, which the verdict does not read (the pooled p-value is judged).
    """
    out: dict[str, dict[str, Any]] = {}
    pairs = (("relearn_ag", "relearn", "ag", MARGIN_POINTS), ("pgd_forget", "pgd", "forget_attacked", MARGIN),
             ("probe_forget", "probe", "forget_acc", MARGIN))
    for name, kind, key, margin in pairs:
        figures = attacks.get(kind)
        if not isinstance(figures, Mapping) or "skipped" in figures:
            continue
        value, ref = _get(figures, key), _get(figures.get("reference"), key)
        out[name] = _row(value, None if ref is None else ref + margin, f"<= reference + {margin:g}", ref,
                         _draws(figures.get("reference"), key))
    quant = attacks.get("quant")
    if isinstance(quant, Mapping) and "skipped" not in quant:
        clean = _get(quant, "forget_clean")
        worse = _get(quant, "forget_int4_worse")  # a mean over runs carries it (mean_attacks)
        out["quant_int4_forget"] = _row(_int4_worse(quant) if worse is None else worse,
                                        None if clean is None else clean + MARGIN,
                                        f"<= before quantizing ({clean if clean is None else round(clean, 4)}) "
                                        f"+ {MARGIN:g}", _get(quant.get("reference"), "forget_int4_all"),
                                        _draws(quant.get("reference"), "forget_int4_all"))
    mia = attacks.get("mia")
    if isinstance(mia, Mapping) and "skipped" not in mia:
        ref_figs = mia.get("reference")
        for score in SCORES:
            value, ref = _get(mia, f"auc_{score}"), _get(ref_figs, f"auc_{score}")
            gap = None if value is None or ref is None else abs(value - ref)
            row = _row(gap, MARGIN if ref is not None else None, f"|AUC - reference| <= {MARGIN:g}", ref,
                       _draws(ref_figs, f"auc_{score}"))
            band = [None, None] if ref is None else [ref - MARGIN, ref + MARGIN]
            out[f"mia_auc_{score}"] = {**row, "value": value, "passing": band}
        fq = _get(mia, "forget_quality")
        out["forget_quality"] = {"value": fq, "reference": None, "target": f">= {MIN_FORGET_QUALITY:g}",
                                 "pass": None if fq is None else fq >= MIN_FORGET_QUALITY,
                                 "passing": [MIN_FORGET_QUALITY, None]}
        if _series(alone := mia.get("forget_quality_per_draw")):
            out["forget_quality"]["per_draw"] = alone
    return out
