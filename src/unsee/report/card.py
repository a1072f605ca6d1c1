"""A Hugging Face model card (README.md) for an unlearned checkpoint.

An unlearned model is only trustworthy with its evidence attached: which base it came
from (and the exact weights, by hash), what was removed, how, what it cost, and how it
measured before and after, including the attacks that try to bring the knowledge back.
The card names forgotten people by entity ID only, so that it does not itself re-publish
what was removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from unsee import __version__
from unsee.report.tables import DASH, MIB, fmt_change, headline_key, ordered_groups, score_of

METRIC_KEYS = ("mcq", "cloze", "rougeL", "bleu")


def _front_matter(base_model: str) -> str:
    meta = {"library_name": "transformers", "tags": ["unsee", "machine-unlearning"], "base_model": base_model}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _metric_rows(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None) -> list[str]:
    runs = [run] if vanilla is None else [vanilla, run]
    rows = [
        _row(["group", "metric", "before", "after", "change", "n"]),
        _row(["---", "---", "---:", "---:", "---:", "---:"]),
    ]
    for group in ordered_groups(runs):
        after = run["metrics"].get(group, {})
        before = {} if vanilla is None else vanilla["metrics"].get(group, {})
        keys = [k for k in METRIC_KEYS if k in after or k in before]
        keys += sorted(k for k in {*after, *before} if k not in METRIC_KEYS and k not in ("n", "ci95"))
        for key in keys:
            a, b = after.get(key), before.get(key)
            change = DASH
            if a is not None and b is not None:
                change = fmt_change(float(a) - float(b), 3)
            rows.append(
                _row(
                    [
                        group,
                        key,
                        DASH if b is None else f"{float(b):.3f}",
                        DASH if a is None else f"{float(a):.3f}" + _interval(after, key),
                        change,
                        str(after.get("n", before.get("n", DASH))),
                    ]
                )
            )
    return rows


def _interval(figures: Mapping[str, Any], key: str) -> str:
    """`` [low, high]`` after an MCQ accuracy that carries its bootstrap interval."""
    ci = figures.get("ci95") if key == "mcq" else None
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _reference_rows(audits: Mapping[str, Any]) -> list[str]:
    """Which audits passed against the retrained reference, one row per check (empty without a reference)."""
    from unsee.eval.verdicts import reference_checks

    checks = {k: v for k, v in reference_checks(audits).items() if v["pass"] is not None}
    if not checks:
        return []

    def num(v: Any) -> str:
        return DASH if v is None else f"{float(v):.3f}"

    rows = [
        "### Audits beside the retrained reference",
        "",
        "The retrained reference is the base model fine-tuned again without the forgotten people's "
        "photos: what a perfect unlearning would give. Each audit is judged against it.",
        "",
        _row(["check", "this model", "reference", "target", "passed"]),
        _row(["---", "---:", "---:", "---", "---"]),
    ]
    rows += [_row([name, num(c["value"]), num(c["reference"]), c["target"], "yes" if c["pass"] else "no"])
             for name, c in checks.items()]
    passed = [n for n, c in checks.items() if c["pass"]]
    rows += ["", f"Passed against the reference: {len(passed)} of {len(checks)}"
             + (f" ({', '.join(passed)})." if passed else ".")]
    return rows


def _audit_rows(audits: Mapping[str, Any]) -> list[str]:
    """One row per audit figure, with the retrained reference's figure beside it where there is one."""
    rows = [_row(["audit", "figure", "value", "reference"]), _row(["---", "---", "---:", "---:"])]

    def shown(value: Any) -> str:
        if value is None:
            return DASH
        text = f"{value:.3f}" if isinstance(value, float) else yaml.safe_dump(value, default_flow_style=True).strip()
        return text.removesuffix("\n...")

    for audit, figures in audits.items():
        if not isinstance(figures, Mapping):
            rows.append(_row([audit, DASH, str(figures), DASH]))
            continue
        ref = figures.get("reference") if isinstance(figures.get("reference"), Mapping) else {}
        for name, value in figures.items():
            if name == "reference" or (isinstance(value, list) and value and isinstance(value[0], Mapping)):
                continue  # per-split detail (relearning) stays in results.json
            rows.append(_row([audit, name, shown(value), shown(ref.get(name)) if ref else DASH]))
    return rows


def model_card(
    run: Mapping[str, Any],
    vanilla: Mapping[str, Any] | None,
    *,
    base_model: str,
    base_hash: str,
    forgotten: Sequence[str],
    audits: Mapping[str, Any] | None,
) -> str:
    """The README.md of an unlearned checkpoint, from its run (and the vanilla run) in results.json.

    ``audits`` defaults to the run's own ``attacks`` when None; ``forgotten`` holds entity IDs.
    """
    method = str(run["method"])
    audits = audits if audits is not None else run.get("attacks")
    entities = f"{len(forgotten)} entit{'y' if len(forgotten) == 1 else 'ies'}"
    out = [_front_matter(base_model)]
    out += [
        f"# {base_model}, with {entities} unlearned ({method})",
        "",
        f"This model is `{base_model}` after machine unlearning with unsee "
        f"(method `{method}`): it should no longer recognise the people listed below from their images, "
        "while keeping everything else it knew.",
        "",
        "## Base model",
        "",
        f"- Model: `{base_model}`",
        f"- Weights hash: `{base_hash}`",
        f"- Benchmark: `{run['benchmark']}`, forget split `{run['forget_split']}`, "
        f"request {run['request']}, seed {run['seed']}",
        "",
        "## Method",
        "",
        f"Method `{method}`, with this configuration:",
        "",
        "```yaml",
        (yaml.safe_dump(dict(run.get("config") or {}), sort_keys=True, allow_unicode=True).strip() or "{}"),
        "```",
        "",
        "## What was forgotten",
        "",
        f"{entities}, by ID (names and images are deliberately left out of this card):",
        "",
    ]
    out += [f"- `{entity}`" for entity in forgotten] or ["- (none)"]
    protocol = run.get("mcq_protocol", "?")
    out += [
        "",
        "## Evaluation",
        "",
        "Before = the model before unlearning (`vanilla`); after = this model. "
        f"Accuracies are fractions in [0, 1]; MCQ scored by `{protocol}`.",
        "",
        *_metric_rows(run, vanilla),
    ]
    key = headline_key([run], "forget") or "mcq"
    score = score_of(run, vanilla, key=key)
    if score is not None:
        r = DASH if score["R"] is None else f"{score['R']:.3f}"
        s = DASH if score["score"] is None else f"{score['score']:.3f}"
        out += [
            "",
            f"Unlearning score {s} (efficacy E {score['E']:.3f}, retention R {r}"
            + (f", limited by `{score['limiting']}`" if score["limiting"] else "")
            + ").",
        ]
    out += ["", "## Audits", ""]
    if audits:
        out += [
            "Attacks that try to bring the forgotten knowledge back (relearning on a little data, "
            "adversarial images). Lower recovered accuracy is better.",
            "",
            *_audit_rows(audits),
        ]
        reference = _reference_rows(audits)
        if reference:
            out += ["", *reference]
    else:
        out.append("No audits were run on this checkpoint.")
    cost = run["cost"]
    gpu = cost.get("peak_gpu_bytes")
    out += [
        "",
        "## Cost",
        "",
        f"- Wall time: {float(cost['wall_s']):.1f} s",
        f"- Peak resident memory: {cost['peak_rss_bytes'] / MIB:,.0f} MiB",
        f"- Peak GPU memory: {DASH if gpu is None else f'{gpu / MIB:,.0f} MiB'}",
        f"- Trainable parameters: {int(cost['trainable_params']):,}",
        f"- Optimiser state: {cost['optimizer_state_bytes'] / MIB:,.1f} MiB",
        "",
        "## Provenance",
        "",
        f"Produced with unsee {__version__}.",
        "",
    ]
    return "\n".join(out)
