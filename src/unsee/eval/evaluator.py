"""The evaluator: every metric group of results.json, batched, from any benchmark Suite.

MCQ is scored by option log-likelihood (one teacher-forced pass per option, batched),
and optionally by the first letter of a generated reply; cloze and generation items are
answered by batched greedy generation. It is a plain function so a training loop can
call it between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from unsee.data.collate import image_of
from unsee.data.schema import METRIC_GROUPS, Example, Suite
from unsee.eval import metrics, prompts
from unsee.models.base import HFAdapter, Turn


def _cap(items: list[Example], max_items: int | None) -> list[Example]:
    return items if max_items is None or len(items) <= max_items else items[:max_items]


@torch.no_grad()
def option_logprobs(adapter: HFAdapter, items: Sequence[Example], *, batch_size: int = 16,
                    progress: bool = False, desc: str = "mcq") -> list[list[float]]:
    """Log-likelihood of each option's text as the answer to the plain question.

    ``batch_size`` items share a pass; each item's prompt is encoded once for all its
    options (:meth:`HFAdapter.option_logprobs`). Items are sorted by length so that a batch
    wastes little on padding; the scores come back in the items' order.
    """
    order = sorted(range(len(items)), key=lambda i: (not items[i].has_image, len(items[i].question)))
    scores: list[list[float]] = [[] for _ in items]
    with adapter.eval_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            idx = [i for i in order[start : start + batch_size] if items[i].options]
            if not idx:
                continue
            turns = [Turn(image_of(items[i]), prompts.qa_prompt(items[i].question)) for i in idx]
            for i, lp in zip(idx, adapter.option_logprobs(turns, [items[i].options for i in idx]), strict=True):
                scores[i] = lp
    return scores


def mcq_loglik(adapter: HFAdapter, items: Sequence[Example], **kw: Any) -> list[bool]:
    return [metrics.loglik_choice(s) == ex.correct
            for s, ex in zip(option_logprobs(adapter, items, **kw), items, strict=True)]


def mcq_letter(adapter: HFAdapter, items: Sequence[Example], *, batch_size: int = 16) -> list[bool]:
    turns = [Turn(image_of(e), prompts.mcq_prompt(e.question, e.options)) for e in items]
    replies = adapter.generate(turns, max_new_tokens=8, batch_size=batch_size)
    return [metrics.letter_correct(r, e.correct_letter or "") for r, e in zip(replies, items, strict=True)]


def evaluate(
    adapter: HFAdapter,
    suite: Suite,
    *,
    groups: Sequence[str] = METRIC_GROUPS,
    letter: bool = False,
    generation: bool = True,
    max_items: int | None = None,
    max_gen_items: int | None = 40,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Fill each group's figures: ``mcq`` (log-likelihood) with ``ci95``, its 95% bootstrap interval over
    the items, ``cloze``, ``rougeL``, ``bleu``, ``n``.

    Generation is the slow part on CPU; ``max_gen_items`` caps the cloze and generation
    items per group (``None``: all). The cap takes the first items, so it is deterministic.
    """
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        items = suite.groups.get(g, [])
        if not items:
            continue
        mcq = _cap([e for e in items if e.task == "mcq" and e.options], max_items)
        cloze = _cap([e for e in items if e.task == "cloze"], max_gen_items)
        gen = _cap([e for e in items if e.task == "gen"], max_gen_items)
        fig: dict[str, Any] = {"n": len(mcq)}
        if mcq:
            ok = mcq_loglik(adapter, mcq, batch_size=batch_size, progress=progress, desc=f"eval {g}")
            fig["mcq"] = sum(ok) / len(ok)
            fig["ci95"] = metrics.bootstrap_ci([float(o) for o in ok])
            if letter:
                fig["mcq_letter"] = sum(mcq_letter(adapter, mcq)) / len(mcq)
        if generation and cloze:
            turns = [Turn(image_of(e), prompts.cloze_prompt(e.question)) for e in cloze]
            replies = adapter.generate(turns, max_new_tokens=max_new_tokens, batch_size=batch_size)
            fig["cloze"] = sum(metrics.cloze_correct(r, e.answer) for r, e in zip(replies, cloze, strict=True)) / len(
                cloze)
            fig["n_cloze"] = len(cloze)
        if generation and gen:
            turns = [Turn(image_of(e), prompts.gen_prompt(e.question, e.has_image)) for e in gen]
            replies = adapter.generate(turns, max_new_tokens=max_new_tokens, batch_size=batch_size)
            pairs = list(zip(replies, gen, strict=True))
            fig["rougeL"] = sum(metrics.rouge_l(r, e.answer) for r, e in pairs) / len(gen)
            fig["bleu"] = sum(metrics.bleu(r, e.answer) for r, e in pairs) / len(gen)
            fig["n_gen"] = len(gen)
        out[g] = fig
    return out


def answers(adapter: HFAdapter, items: Sequence[Example], *, max_new_tokens: int = 16) -> list[str]:
    """Free answers to the plain questions: what a person reads in the examples page."""
    return adapter.generate([Turn(image_of(e), prompts.qa_prompt(e.question)) for e in items],
                            max_new_tokens=max_new_tokens)
