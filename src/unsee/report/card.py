"""A Hugging Face model card (README.md) for an unlearned checkpoint.

An unlearned model is only trustworthy with its evidence attached: which base it came
from (and the exact weights, by hash), what was removed, how, what it cost, and how it
measured before and after, including the attacks that try to bring the knowledge back.
It opens with a one-line verdict, so that a reader who stops there still learns what the
audits found. The card names forgotten people by entity ID, or (for a removal request) by
name or salted hash, and never shows their images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from unsee import __version__
from unsee.audit.verdicts import AT_BOUND, reference_checks
from unsee.eval.metrics import COUNT_KEYS
from unsee.io import atomic_write_text, home_path
from unsee.report.tables import (
    CHANCE,
    DASH,
    MIB,
    check_cells,
    fmt_change,
    headline_key,
    ordered_groups,
    score_of,
)

METRIC_KEYS = ("mcq", "cloze", "rougeL", "bleu")


def _is_count(key: str) -> bool:
    """``n``, ``n_cloze``, ``n_gen``: item counts, shown in the n column, never as a metric row."""
    return key == "n" or key.startswith("n_")


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# An audit that brings the forgotten people back by this much says the knowledge was hidden, not removed.
RELEARN_BACK = 20.0  # relearning gain on the people the attacker did not train on, in points
PGD_BACK = 0.20  # forget accuracy gained under a PGD perturbation
NOT_KNOWN = 0.10  # a model this close to chance before unlearning had nothing to forget
CARD_KEY = "unsee"  # the front-matter key of what a card was made from


def base_model_name(base_model: str) -> tuple[str, str | None]:
    """What a card calls its base model, and its hub id when it has one.

    A local directory means nothing to whoever the model is shared with: it is named by the
    hub id its config records, else by its architecture (the weights hash beside it says
    which weights).
    """
    path = home_path(base_model)
    if _HUB_ID.match(base_model) and not path.exists():
        return base_model, base_model
    for name in ("unsee.json", "config.json"):
        try:
            meta = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        origin = str(meta.get("_name_or_path", ""))
        if _HUB_ID.match(origin) and not home_path(origin).exists():
            return origin, origin
        if meta.get("arch"):
            kind = "vanilla model" if (path / "unsee_vanilla.json").exists() else "model"
            return f"{meta['arch']} ({kind} built by unsee)", None
        if meta.get("model_type"):
            return f"{meta['model_type']} (local weights)", None
    return "a local model", None


def _front_matter(source: Mapping[str, Any]) -> str:
    """The card's metadata: the hub's own keys, and under ``unsee`` what the card was made from besides
    results.json, so that a later ``unsee attack`` can write the card again with its figures."""
    meta: dict[str, Any] = {"library_name": "transformers", "tags": ["unsee", "machine-unlearning"]}
    if source.get("hub_id") is not None:
        meta["base_model"] = source["hub_id"]
    meta[CARD_KEY] = dict(source)
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def card_source(text: str) -> dict[str, Any] | None:
    """What :func:`_front_matter` recorded in a card's text; None for a card without it (an older unsee's)."""
    if not text.startswith("---\n"):
        return None
    head, sep, _ = text[4:].partition("\n---\n")
    try:
        meta = yaml.safe_load(head) if sep else None
    except yaml.YAMLError:
        return None
    source = meta.get(CARD_KEY) if isinstance(meta, dict) else None
    return source if isinstance(source, dict) and {"base", "hash", "forgotten"} <= set(source) else None


def unlearned_by(model: str | Path) -> str | None:
    """The method whose card a checkpoint folder carries (None: not a checkpoint unsee unlearned).

    An evaluation names its run after it by default, so that an unlearned model measured again is
    never read as the vanilla baseline of a report."""
    card = Path(model) / "README.md"
    try:
        source = card_source(card.read_text(encoding="utf-8")) if card.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None
    return str(source.get("method") or "unlearned") if source else None


def _fig(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _recognition(group: str, run: Mapping[str, Any], vanilla: Mapping[str, Any] | None) -> tuple[str, str]:
    """(state, figures) of one forget group: whether its people are still recognised, before and after."""
    forget = run["metrics"].get(group, {})
    key = next((k for k in METRIC_KEYS if k in forget), None)
    after = _fig(forget.get(key)) if key else None
    before = _fig(vanilla["metrics"].get(group, {}).get(key)) if vanilla and key else None
    if after is None:
        return "not measured", ""
    if before is None:
        return "unknown", f"{group} {key} {after:.2f} (no measurement before unlearning to compare with)"
    chance = CHANCE if key == "mcq" else 0.0
    state = "still recognised" if after - chance > 0.5 * (before - chance) else "no longer recognised"
    if before - chance < NOT_KNOWN and after - chance < NOT_KNOWN:  # a figure above chance after is recognition
        state = "not recognised, and were not before unlearning either"
    return state, f"{group} {key} {before:.2f} \u2192 {after:.2f}, chance {chance:.2f}"


def verdict(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None, audits: Mapping[str, Any] | None) -> str:
    """One line: whether the forget people are still recognised, on the photos unlearning read and on
    held-out ones, and whether the audits bring them back.

    A continual run is read request by request (``forget_r1``, ``forget_r2``, ...): one request
    whose people come back is enough to say they are still recognised."""
    groups = sorted((g for g in run["metrics"] if re.fullmatch(r"forget_r\d+", g)), key=lambda g: int(g[8:]))
    found = [_recognition(g, run, vanilla) for g in groups or ["forget"]]
    states = [s for s, _ in found]
    figures = "; ".join(f for _, f in found if f)
    if "not measured" in states and len(set(states)) == 1:
        head = "the forget people were not measured"
    elif "unknown" in states:
        head = figures
    else:
        state = next((s for s in ("still recognised", "no longer recognised") if s in states), states[0])
        if len(found) > 1 and state == "still recognised":
            state += f" ({states.count(state)} of {len(found)} requests)"
        head = f"the forget people are {state} ({figures})"
    on_held, held_figures = _recognition("forget_test", run, vanilla)  # the photos no method trained on
    whose = " of the last request's people" if len(groups) > 1 else ""  # a continual run holds no others' held-out
    if held_figures:
        head += f"; on held-out photos{whose} {held_figures}" if on_held == "unknown" else \
            f"; on held-out photos{whose} they are {on_held} ({held_figures})"
    if not audits:
        return f"**Verdict:** {head}; no audits were run, so whether they can be brought back is untested."
    back, held = [], []
    relearn, pgd = audits.get("relearn") or {}, audits.get("pgd") or {}
    if (ag := _fig(relearn.get("ag"))) is not None:
        (back if ag >= RELEARN_BACK - AT_BOUND else held).append(f"relearning {ag:+.0f} points")
    clean, attacked = _fig(pgd.get("forget_clean")), _fig(pgd.get("forget_attacked"))
    if clean is not None and attacked is not None:
        (back if attacked - clean >= PGD_BACK - AT_BOUND else held).append(f"PGD {clean:.2f} \u2192 {attacked:.2f}")
    skipped = sorted(k for k, v in audits.items() if isinstance(v, Mapping) and "skipped" in v)
    if back:
        tail = f"but the audits bring them back ({', '.join(back)}): the knowledge is hidden, not removed"
    elif held:
        tail = f"and the audits did not bring them back ({', '.join(held)})"
    else:
        tail = "and the audits run give no recovery figure"
    if skipped:
        tail += f"; skipped: {', '.join(skipped)}"
    return f"**Verdict:** {head}, {tail}."


def _row(cells: Sequence[str]) -> str:
    """A table row on one line: a cell's own bar is escaped and its line breaks become spaces."""
    return "| " + " | ".join(" ".join(str(c).replace("|", "\\|").splitlines()) for c in cells) + " |"


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
        keys += sorted(k for k in {*after, *before} if k not in METRIC_KEYS and k != "ci95" and not _is_count(k)
                       and _fig(after.get(k, before.get(k))) is not None)
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
                        str(after.get(COUNT_KEYS.get(key, "n"), before.get(COUNT_KEYS.get(key, "n"), DASH))),
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

    checks = {k: v for k, v in reference_checks(audits).items() if v["pass"] is not None}
    if not checks:
        return []
    referenced = any(c["reference"] is not None for c in checks.values())
    draws = max((len(c.get("reference_draws") or ()) for c in checks.values()), default=0)
    against = f"the mean of {draws} draws of it (`unsee retrain --seed`)" if draws else "it"
    intro = ("The retrained reference is the base model fine-tuned again without the forgotten people's "
             f"photos: what a perfect unlearning would give. Each audit is judged against {against}, except the "
             "4-bit rounding, which is judged against this model's own figure before rounding." if referenced else
             "No retrained reference was attacked, so only the checks that need none are judged: the 4-bit "
             "rounding, against this model's own figure before rounding.")
    rows = [
        "### Audits beside the retrained reference" if referenced else "### Audit checks",
        "",
        intro,
        "",
        _row(["check", "this model", "reference", "target", "passed"]),
        _row(["---", "---:", "---:", "---", "---"]),
    ]
    rows += [_row([name, *check_cells(c), c["target"], "yes" if c["pass"] else "no"])
             for name, c in checks.items()]
    passed = [n for n, c in checks.items() if c["pass"]]
    rows += ["", f"Passed{' against the reference' if referenced else ''}: {len(passed)} of {len(checks)}"
             + (f" ({', '.join(passed)})." if passed else ".")]
    return rows


def _audit_rows(audits: Mapping[str, Any]) -> list[str]:
    """One row per audit figure, with the retrained reference's figure beside it where there is one."""
    rows = [_row(["audit", "figure", "value", "reference"]), _row(["---", "---", "---:", "---:"])]

    def shown(value: Any) -> str:
        if value is None:
            return DASH
        if isinstance(value, float):  # a learning rate or a p-value is small, not zero
            return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"
        if isinstance(value, str):  # a skip's reason: as results.json holds it, not re-quoted or wrapped
            return value
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
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
    request: Mapping[str, Any] | None = None,
) -> str:
    """The README.md of an unlearned checkpoint, from its run (and the vanilla run) in results.json.

    ``audits`` defaults to the run's own ``attacks`` when None; ``forgotten`` holds entity IDs.
    ``base_model`` is a hub id or a local directory (see :func:`base_model_name`). ``request``
    (from ``unsee forget``) lists the request files and its people, by name or by salted hash:
    ``{"files": [...], "people": [...], "hidden": bool}``.
    """
    name, hub_id = base_model_name(base_model)
    # a request's people are shown as the request says (by salted hash with --hide-names), so its entity IDs,
    # which are the names where the request gives no IDs, are not kept
    source = {"base": name, "hub_id": hub_id, "hash": base_hash, "forgotten": [] if request else list(forgotten),
              "request": dict(request) if request else None, "method": str(run["method"])}
    return _card(run, vanilla, source, audits)


def refresh_card(path: Path, run: Mapping[str, Any], vanilla: Mapping[str, Any] | None) -> bool:
    """Write the card at ``path`` again from ``run`` (its attacks included), keeping what it was made from.

    False, and the card left as it is, where the card does not record that (an older unsee wrote it).
    """
    source = card_source(path.read_text(encoding="utf-8"))
    if source is None:
        return False
    atomic_write_text(path, _card(run, vanilla, source, None))
    return True


def _card(run: Mapping[str, Any], vanilla: Mapping[str, Any] | None, source: Mapping[str, Any],
          audits: Mapping[str, Any] | None) -> str:
    method = str(run["method"])
    audits = audits if audits is not None else run.get("attacks")
    request, forgotten = source.get("request"), list(source["forgotten"])
    people = list(request["people"]) if request else forgotten
    entities = f"{len(people)} {'person' if len(people) == 1 else 'people'}"
    name, hub_id, base_hash = source["base"], source.get("hub_id"), source["hash"]
    out = [_front_matter(source)]
    out += [
        verdict(run, vanilla, audits),
        "",
        f"# {name}, with {entities} unlearned ({method})",
        "",
        f"This model is `{name}` after machine unlearning with unsee (method `{method}`), meant to stop "
        "recognising the people listed below from their images while keeping everything else it knew. "
        "The verdict above says what the measurements and the audits below found.",
        "",
        "## Base model",
        "",
        f"- Model: `{name}`" + ("" if hub_id else " (not on the hub: the weights hash identifies it)"),
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
    ]
    if request:
        files = ", ".join(f"`{f}`" for f in request.get("files", []))
        how = ("by salted SHA-256 hashes of their names (the requester keeps the salt, and with it can check a "
               "name against this list)" if request.get("hidden") else "by name")
        out += [f"{entities}, from the removal request {files}, {how}; their images are left out of this card:", ""]
        out += [f"- `{p}`" for p in people] or ["- (none)"]
    else:
        out += [f"{entities}, by ID (names and images are deliberately left out of this card):", ""]
        out += [f"- `{entity}`" for entity in forgotten] or ["- (none)"]
    protocol = run.get("mcq_protocol", "?")
    official = ", under the benchmark's official protocol" if run.get("protocol") == "official" else ""
    out += [
        "",
        "## Evaluation",
        "",
        "Before = the model before unlearning (`vanilla`); after = this model. "
        f"Accuracies are fractions in [0, 1]; MCQ scored by `{protocol}`{official}; n = the items behind each "
        "figure.",
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
            "adversarial images). Lower recovered accuracy is better. The verdict counts a relearning gain of "
            f"{RELEARN_BACK:.0f} points or more on the people the attacker did not train on, or a PGD gain of "
            f"{PGD_BACK:.2f} or more, as bringing them back.",
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
        f"- Wall time: {float(cost['wall_s']):.1f} s" + (f" (all {n} requests)" if (n := cost.get("requests", 1)) > 1
                                                        else ""),
        f"- Peak resident memory: {cost['peak_rss_bytes'] / MIB:,.0f} MiB" + (
            f" (measured after {earlier} other run{'s' * (earlier > 1)} in the same process, whose freed memory "
            "it can carry)" if (earlier := cost.get("measured_after")) else ""),
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
