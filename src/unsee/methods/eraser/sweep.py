"""Choosing MLLMEraser's layers, gate and strength on a validation slice of the training QA.

Every setting is scored the way the evaluator scores MCQ (option log-likelihood,
:func:`unsee.eval.evaluator.mcq_loglik`) with the steering on, so the sweep picks by the
figure that is later reported, on items no test group holds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from itertools import product
from typing import Any

from unsee.data.schema import Example, Suite
from unsee.errors import ConfigError, DataError
from unsee.eval.evaluator import mcq_loglik
from unsee.methods.eraser.config import EraserConfig, layer_span
from unsee.methods.eraser.fit import build_steering, draw
from unsee.methods.eraser.hooks import steer
from unsee.methods.eraser.steering import Steering
from unsee.models.base import Adapter, Turn


def mcq_accuracy(adapter: Adapter, items: Sequence[Example], steering: Steering | None = None, *,
                 batch_size: int = 16) -> float:
    """The evaluator's log-likelihood MCQ accuracy of ``items``, optionally steered."""
    if not items:
        raise DataError("MCQ accuracy needs at least one item")
    with nullcontext() if steering is None else steer(adapter, steering):
        ok = mcq_loglik(adapter, items, batch_size=batch_size)
    return sum(ok) / len(ok)


@dataclass
class SweepResult:
    """The grid, the unsteered baseline, and the chosen steering (``None`` if no setting kept retain)."""

    best: Steering | None
    rows: list[dict[str, Any]]
    base_forget: float
    base_retain: float


def sweep(
    adapter: Adapter,
    steering_builder_inputs: tuple[Sequence[Turn], Sequence[Turn], Sequence[Turn]],
    val_forget: Sequence[Example],
    val_retain: Sequence[Example],
    strengths: Sequence[float],
    layer_sets: Sequence[Sequence[int]],
    score_fn: Callable[[Adapter, Sequence[Example], Steering | None], float] = mcq_accuracy,
    cfg: EraserConfig | None = None,
    *,
    gates: Sequence[float] | None = None,
    retain_keep: float = 0.95,
) -> SweepResult:
    """Grid over (layers, gate, strength) on a validation slice; never pass test items.

    The maps are built once on the union of ``layer_sets`` (``W_l`` of one layer does not
    depend on the others), then each setting is scored. The winner maximises the drop of
    forget accuracy among settings whose retain accuracy is at least ``retain_keep`` times
    the unsteered one; ties go to the higher retain accuracy, then the weaker strength, then
    fewer layers, so the gentlest sufficient intervention wins. ``gates`` defaults to ``cfg.gate``.
    """
    cfg = cfg or EraserConfig()
    if not strengths or not layer_sets or any(not ls for ls in layer_sets):
        raise ConfigError("sweep needs at least one strength and non-empty layer sets")
    forget, neutral, retain = steering_builder_inputs
    union = sorted({i for ls in layer_sets for i in ls})
    full = build_steering(adapter, forget, neutral, retain, replace(cfg, layers=union))
    base_forget = score_fn(adapter, val_forget, None)
    base_retain = score_fn(adapter, val_retain, None)
    rows: list[dict[str, Any]] = []
    best_key: tuple[float, float, float, int] | None = None
    best: Steering | None = None
    for ls, gate, s in product(layer_sets, [cfg.gate] if gates is None else gates, strengths):
        candidate = full.select(sorted(set(ls)), s, gate)
        f_acc = score_fn(adapter, val_forget, candidate)
        r_acc = score_fn(adapter, val_retain, candidate)
        ok = r_acc >= retain_keep * base_retain
        rows.append({"layers": candidate.layers, "gate": candidate.gate, "strength": float(s), "forget_acc": f_acc,
                     "retain_acc": r_acc, "forget_drop": base_forget - f_acc, "admissible": ok})
        key = (base_forget - f_acc, r_acc, -abs(float(s)), -len(candidate.layers))
        if ok and (best_key is None or key > best_key):
            best_key, best = key, candidate
    if best is not None:
        best.info["sweep"] = {"base_forget": base_forget, "base_retain": base_retain, "rows": rows}
    return SweepResult(best=best, rows=rows, base_forget=base_forget, base_retain=base_retain)



def hold_out(examples: Sequence[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off a seeded validation slice (twice ``n``, since not every example makes an MCQ item),
    at most half of the group, so that the maps are never fitted on what the sweep scores."""
    held = {id(e) for e in draw(examples, min(2 * n, len(examples) // 2), seed + 1)}
    return [e for e in examples if id(e) not in held], [e for e in examples if id(e) in held]


def layer_candidates(n_layers: int) -> list[list[int]]:
    """Layer sets the sweep tries: the middle third, a wider middle half, and single layers at
    1/3, 1/2, 2/3 and 3/4 of the depth (on a small model the late layers separate identities best)."""
    sets = [layer_span(n_layers), layer_span(n_layers, 1 / 4, 3 / 4),
            *([min(n_layers - 1, (k * n_layers) // m)] for k, m in ((1, 3), (1, 2), (2, 3), (3, 4)))]
    unique: list[list[int]] = []
    for ls in sets:
        if ls not in unique:
            unique.append(ls)
    return unique


def validation_items(examples: Sequence[Example], pool: Sequence[Example], n: int, seed: int = 0) -> list[Example]:
    """Four-option MCQ from training QA: the true answer and three other people's answers (from
    ``pool``) to the same question, as evaluator items. Built from what a method may train on,
    so the sweep never sees a test item."""
    by_question: dict[str, set[str]] = {}
    for e in pool:
        by_question.setdefault(e.question, set()).add(e.answer)
    rng = random.Random(seed)
    items: list[Example] = []
    for e in examples:
        others = sorted(by_question[e.question] - {e.answer})
        if not e.has_image or len(others) < 3:
            continue
        options = rng.sample(others, 3)
        gold = rng.randrange(4)
        options.insert(gold, e.answer)
        items.append(replace(e, task="mcq", options=tuple(options), correct=gold))
        if len(items) == n:
            break
    return items


def validation(suite: Suite, forget: Sequence[Example], retain: Sequence[Example], n: int,
                seed: int) -> tuple[list[Example], list[Example]]:
    pool = suite.group("train_forget") + suite.group("train_retain")  # distractors from everyone's answers
    val_forget, val_retain = (validation_items(g, pool, n, seed) for g in (forget, retain))
    if not val_forget or not val_retain:
        raise DataError("the sweep found no training questions shared by four people to build validation MCQ from; "
                        "set layers and strength by hand (sweep=false)")
    return val_forget, val_retain


def swept(adapter: Adapter, inputs: tuple[list[Turn], list[Turn], list[Turn]],
           checks: tuple[list[Example], list[Example]], cfg: EraserConfig) -> Steering:
    """The sweep's winner, with the grid in its header; a clear error when no setting keeps retain."""
    layer_sets = [cfg.layers] if cfg.layers else layer_candidates(len(adapter.decoder_layers()))
    result = sweep(adapter, inputs, *checks, cfg.sweep_strengths, layer_sets, cfg=cfg, gates=cfg.sweep_gates)
    if result.best is None:
        raise DataError(
            f"no swept setting kept validation retain accuracy within 95% of {result.base_retain:.3f}; "
            "try weaker sweep_strengths"
        )
    return result.best

