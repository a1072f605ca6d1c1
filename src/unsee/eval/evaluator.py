"""The evaluator: every metric group of results.json, batched, from any benchmark Suite.

Under the ``loglik`` protocol MCQ is scored by option log-likelihood (one teacher-forced
pass per option, batched); under ``official`` each benchmark's own prompts and reply
reading apply (:mod:`unsee.eval.protocols`). Cloze and generation items are answered by
batched greedy generation. Every scored item leaves a record (samples.jsonl), and the
figures are computed from those records, so a figure can always be traced to its items.
It is a plain function so a training loop can call it between epochs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from unsee.bars import bar as progress_bar
from unsee.data import prompts
from unsee.data.collate import image_of
from unsee.data.schema import LETTERS, METRIC_GROUPS, Example, Suite
from unsee.errors import ModelError, UnseeError
from unsee.eval import metrics, protocols
from unsee.models.base import Adapter, Turn


def _cap(items: list[Example], max_items: int | None) -> list[Example]:
    """At most ``max_items``, evenly spaced over the group: a group lists its people one after another,
    so its first items would be a few people's, where a spaced pick reads every person."""
    if max_items is None or len(items) <= max_items:
        return items
    return [items[i * len(items) // max_items] for i in range(max_items)]


@torch.no_grad()
def option_logprobs(adapter: Adapter, items: Sequence[Example], *, batch_size: int = 16,
                    progress: bool = False, desc: str = "mcq") -> list[list[float]]:
    """Log-likelihood of each option's text as the answer to the plain question.

    ``batch_size`` items share a pass; each item's prompt is encoded once for all its
    options (:meth:`Adapter.option_logprobs`). Items are sorted by length so that a batch
    wastes little on padding; the scores come back in the items' order.
    """
    order = sorted(range(len(items)), key=lambda i: (not items[i].has_image, len(items[i].question)))
    scores: list[list[float]] = [[] for _ in items]
    with adapter.eval_mode():
        for start in progress_bar(range(0, len(order), batch_size), desc=desc, show=progress, leave=False):
            idx = [i for i in order[start : start + batch_size] if items[i].options]
            if not idx:
                continue
            turns = [Turn(image_of(items[i]), prompts.qa_prompt(items[i].question)) for i in idx]
            for i, lp in zip(idx, adapter.option_logprobs(turns, [items[i].options for i in idx]), strict=True):
                scores[i] = lp
    broken = sum(1 for s in scores if not all(math.isfinite(x) for x in s))
    if broken:
        raise ModelError(f"{desc}: the model scores {broken} of {len(items)} items as NaN or infinite; its weights "
                         "are broken (a diverged run?) and figures ranked from such scores would mean nothing")
    return scores


def mcq_loglik(adapter: Adapter, items: Sequence[Example], **kw: Any) -> list[bool]:
    return [metrics.loglik_choice(s) == ex.correct
            for s, ex in zip(option_logprobs(adapter, items, **kw), items, strict=True)]


def mcq_letter(adapter: Adapter, items: Sequence[Example], *, batch_size: int = 16) -> list[bool]:
    turns = [Turn(image_of(e), prompts.mcq_prompt(e.question, e.options)) for e in items]
    replies = adapter.generate(turns, max_new_tokens=8, batch_size=batch_size)
    return [metrics.letter_correct(r, e.correct_letter or "") for r, e in zip(replies, items, strict=True)]


@dataclass
class Evaluation:
    """What one evaluation found: the figures of results.json and the item records behind them.

    ``samples`` holds one record per scored item (the lines of samples.jsonl, without the
    run fields), and ``metrics`` is computed from them by :func:`aggregate`, so the two can
    never disagree. ``scoring`` names the rule behind every figure of every group;
    ``max_new_tokens`` the reply budget of each task.
    """

    metrics: dict[str, dict[str, float | int]]
    samples: list[dict[str, Any]]
    protocol: str
    mcq_protocol: str
    scoring: dict[str, dict[str, str]]
    max_new_tokens: dict[str, int]
    max_items: int | None = None
    max_gen_items: int | None = None
    dtype: str | None = None  # the weights' precision (a bf16 model's figures are not an fp32 one's); None: none

    def record(self) -> dict[str, Any]:
        """The ``evaluation`` object of a results.json run."""
        return {"protocol": self.protocol, "max_items": self.max_items, "max_gen_items": self.max_gen_items,
                "max_new_tokens": self.max_new_tokens, "scoring": self.scoring,
                **({"dtype": self.dtype} if self.dtype else {})}


def _record(group: str, item: Example, prompt: str, rule: str) -> dict[str, Any]:
    return {
        "group": group, "uid": item.uid, "person": item.entity, "task": item.task, "image": item.has_image,
        "question": item.question, "options": list(item.options), "answer": item.answer,
        "gold": item.correct_letter if item.task == "mcq" else item.answer, "prompt": prompt, "rule": rule,
        "pair": item.pair_key,
    }


def _mcq_records(adapter: Adapter, group: str, items: list[Example], texts: list[str], rule: str, *,
                 replies: Sequence[str] | None, batch_size: int, progress: bool) -> list[dict[str, Any]]:
    """Records of one group's MCQs: by option log-likelihood, or read from ``replies`` under the official rules."""
    out = [_record(group, e, t, rule) for e, t in zip(items, texts, strict=True)]
    if rule == "loglik":
        for rec, e, s in zip(out, items, option_logprobs(adapter, items, batch_size=batch_size, progress=progress,
                                                        desc=f"eval {group}"), strict=True):
            choice = metrics.loglik_choice(s)
            rec.update(scores=[float(x) for x in s], reply=None, extracted=LETTERS[choice],
                       correct=choice == e.correct)
        return out
    for rec, e, reply in zip(out, items, replies or (), strict=True):
        extracted, ok = protocols.read_mcq(rule, reply, e)
        rec.update(reply=reply, extracted=extracted, correct=ok)
    return out


def _free_records(group: str, items: list[Example], texts: list[str], replies: Sequence[str]) -> list[dict[str, Any]]:
    """Records of one group's cloze or generation items, from the replies to them."""
    rule = protocols.CLOZE_RULE if items and items[0].task == "cloze" else "rougeL"
    out = [_record(group, e, t, rule) for e, t in zip(items, texts, strict=True)]
    for rec, e, reply in zip(out, items, replies, strict=True):
        if e.task == "cloze":
            rec.update(reply=reply, extracted=reply, correct=metrics.cloze_correct(reply, e.answer))
        else:
            rec.update(reply=reply, extracted=reply, correct=None, rougeL=metrics.rouge_l(reply, e.answer),
                       bleu=metrics.bleu(reply, e.answer))
    return out


@dataclass
class _Task:
    """One task of one group as it is asked: its items, the exact texts sent, its reply budget and, once
    generated, the replies."""

    group: str
    items: list[Example]
    texts: list[str]
    budget: int
    generated: bool  # answered by generation (cloze, open answers, MCQ under the official rules)
    replies: list[str] | None = None


def _task(bench: str, protocol: str, group: str, items: list[Example], budget: int, generated: bool) -> _Task:
    return _Task(group, items, [protocols.prompt(bench, protocol, e) for e in items], budget, generated)


def _generate_all(adapter: Adapter, tasks: Sequence[_Task], batch_size: int, progress: bool) -> None:
    """The replies of every generated task, asked together, one pass per reply budget.

    Decoding costs a forward pass per token whatever the batch holds: a group of two items asked on
    its own pays the whole budget for two replies, and a removal request's dozen small groups would
    pay it a dozen times. Greedy decoding gives each item the same reply in any batch
    (:meth:`Adapter.generate`), so asking them together changes no figure.
    """
    by_budget: dict[int, list[_Task]] = {}
    for task in tasks:
        if task.generated and task.items:
            by_budget.setdefault(task.budget, []).append(task)
    for budget, asked in by_budget.items():
        turns = [Turn(image_of(e), t) for task in asked for e, t in zip(task.items, task.texts, strict=True)]
        replies = iter(adapter.generate(turns, max_new_tokens=budget, batch_size=batch_size, progress=progress,
                                        desc=f"eval answers ({budget} tokens)"))
        for task in asked:
            task.replies = [next(replies) for _ in task.items]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _person(record: Mapping[str, Any], fallback: object) -> str:
    """Whom an item asks about; a record of an older run names no one and counts as a person of its own."""
    return str(record.get("person", record.get("uid", fallback)))


def aggregate(samples: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each group's figures from its item records: the one place where results.json's numbers come from.

    ``mcq`` and ``cloze`` are the fractions correct, ``ci95`` the 95% bootstrap interval of
    ``mcq`` over the items (a 45-item group moves 2 points per item, so a figure needs its
    interval) and ``ci95_people`` the one over people (their items resampled together, which
    is what a new draw of people would move), ``rougeL`` and ``bleu`` the means over generation
    items; ``n``, ``n_cloze`` and ``n_gen`` count them. Where an image group and
    its ``text_`` twin hold the two forms of the same questions (UMU-bench's ``pair``), the
    image group also gets UMU's modality-alignment figures (:func:`all_modal`).
    """
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for rec in samples:
        by_group.setdefault(rec["group"], []).append(rec)
    out: dict[str, dict[str, Any]] = {}
    for group, recs in by_group.items():
        mcq = [r for r in recs if r["task"] == "mcq"]
        cloze = [r for r in recs if r["task"] == "cloze"]
        gen = [r for r in recs if r["task"] == "gen"]
        fig: dict[str, Any] = {"n": len(mcq)}
        if mcq:
            right = [float(bool(r["correct"])) for r in mcq]
            fig["mcq"] = _mean(right)
            fig["ci95"] = metrics.bootstrap_ci(right)
            fig["ci95_people"] = metrics.cluster_bootstrap_ci(right, [_person(r, i) for i, r in enumerate(mcq)])
            if people := _by_person(group, [(r.get("person"), float(r["correct"])) for r in mcq]):
                fig["people"] = people
        if cloze:
            fig["cloze"] = _mean([bool(r["correct"]) for r in cloze])
            fig["n_cloze"] = len(cloze)
        if gen:
            fig["rougeL"] = _mean([float(r["rougeL"]) for r in gen])
            fig["bleu"] = _mean([float(r["bleu"]) for r in gen])
            fig["n_gen"] = len(gen)
        out[group] = fig
    for group, fig in out.items():
        twin = by_group.get(f"text_{group}")
        if twin is not None and not group.startswith("text_"):
            fig.update(all_modal(by_group[group], twin, forget=group.startswith("forget")))
    return out


def aggregate_seeds(runs: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Each group's MCQ figures over several unlearning seeds of one setting, from their item records.

    ``mcq`` is the mean over seeds; ``ci95`` resamples the items, each scored by the fraction of
    seeds that got it right, so that the interval carries the item noise of the group and the
    seeds' disagreement on each item, and ``ci95_people`` resamples the people instead; ``seeds``
    is the spread of the per-seed figures. A target
    read as a mean over seeds is judged on these. Items are matched by ``uid``; a group whose
    items differ between seeds is refused, since its mean would mix two question sets.
    """
    if not runs:
        raise UnseeError("aggregate_seeds needs at least one run")
    per_run = [{(r["group"], r["uid"]): bool(r["correct"]) for r in samples if r["task"] == "mcq"}
               for samples in runs]
    person = {(r["group"], r["uid"]): _person(r, r["uid"]) for samples in runs for r in samples if r["task"] == "mcq"}
    named = {(r["group"], r["uid"]): r.get("person") for samples in runs for r in samples if r["task"] == "mcq"}
    out: dict[str, dict[str, Any]] = {}
    for group in sorted({g for items in per_run for g, _ in items}):
        keys = [{k for k in items if k[0] == group} for items in per_run]
        if any(k != keys[0] for k in keys):
            raise UnseeError(f"group {group!r} holds other items in some seeds; its seeds cannot be averaged")
        order = sorted(keys[0])
        item_means = [_mean([items[k] for items in per_run]) for k in order]
        seed_figures = [_mean([items[k] for k in order]) for items in per_run]
        out[group] = {"n": len(order), "mcq": _mean(item_means), "ci95": metrics.bootstrap_ci(item_means),
                      "ci95_people": metrics.cluster_bootstrap_ci(item_means, [person[k] for k in order]),
                      "seeds": metrics.spread(seed_figures)}
        if people := _by_person(group, [(named[k], m) for k, m in zip(order, item_means, strict=True)]):
            out[group]["people"] = people
    return out


def _by_person(group: str, scored: Sequence[tuple[Any, float]]) -> dict[str, float]:
    """A forget group's MCQ accuracy per person, from (person, score) pairs (``{}`` for other groups; a pair
    that names no one, a record of an older run, counts for no one).

    A request is answered only when each of its people is forgotten, and a mean over them can hide
    one who is still recognised; the other groups' people are many and are read as a whole.
    """
    if not group.startswith("forget"):
        return {}
    right: dict[str, list[float]] = {}
    for who, score in scored:
        if who is not None:
            right.setdefault(str(who), []).append(score)
    return {p: _mean(v) for p, v in sorted(right.items())}


def all_modal(image: Sequence[Mapping[str, Any]], text: Sequence[Mapping[str, Any]], *,
              forget: bool) -> dict[str, float]:
    """UMU-bench's modality alignment over the questions asked both with and without the image.

    ``all_modal_acc``/``all_modal_err`` (MCQ) and ``cloze_all_modal_acc``/``_err``: the fraction
    of pairs answered right in both forms / wrong in both. ``rougeL_all_modal``: the mean over
    pairs of (a^2 + b^2) / (a + b) on a forget group and 2ab / (a + b) elsewhere, a and b the
    two ROUGE-L scores, as UMU-bench's eval.py combines them.
    """
    twins = {(r["task"], r["pair"]): r for r in text if r.get("pair")}
    out: dict[str, float] = {}
    for task, prefix in (("mcq", ""), ("cloze", "cloze_")):
        pairs = {r["pair"]: (bool(twins[(task, r["pair"])]["correct"]), bool(r["correct"]))
                 for r in image if r["task"] == task and (task, r.get("pair")) in twins}
        if pairs:
            figures = metrics.all_modal(pairs)
            out[f"{prefix}all_modal_acc"] = figures["all_modal_acc"]
            out[f"{prefix}all_modal_err"] = figures["all_modal_err"]
    combined = []
    for r in image:
        t = twins.get(("gen", r.get("pair")))
        if r["task"] != "gen" or t is None:
            continue
        a, b = float(r["rougeL"]), float(t["rougeL"])
        combined.append(0.0 if a + b == 0 else ((a * a + b * b) if forget else 2 * a * b) / (a + b))
    if combined:
        out["rougeL_all_modal"] = _mean(combined)
    return out


def item_correctness(samples: Sequence[Mapping[str, Any]], group: str, task: str = "mcq") -> list[bool]:
    """Per-item right/wrong of one group and task, in evaluation order: what an interval over items resamples."""
    return [bool(r["correct"]) for r in samples if r["group"] == group and r["task"] == task]


def run_evaluation(
    adapter: Adapter,
    suite: Suite,
    *,
    groups: Sequence[str] = METRIC_GROUPS,
    protocol: str = "loglik",
    benchmark: str | None = None,
    generation: bool = True,
    max_items: int | None = None,
    max_gen_items: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: bool = True,
) -> Evaluation:
    """Score every item of ``groups`` under ``protocol`` (:mod:`unsee.eval.protocols`).

    ``max_items`` caps each task of each group (evenly spaced items, so the choice is
    deterministic and reads every person); ``max_gen_items`` further caps cloze and generation, which are the slow
    part on a CPU. ``max_new_tokens`` overrides the benchmark's own reply budget for every
    task.
    """
    protocols.check_protocol(protocol)
    bench = protocols.benchmark_of(benchmark or suite.info.get("benchmark", suite.name))
    budget = {t: protocols.max_new_tokens(bench, t, max_new_tokens) for t in ("mcq", "cloze", "gen")}
    plan: list[tuple[str, str, list[_Task]]] = []  # each group's MCQ rule, and its MCQ, cloze and generation
    for g in groups:
        items = suite.groups.get(g, [])
        if not items:
            continue
        mcq = _cap([e for e in items if e.task == "mcq" and e.options], max_items)
        cloze = _cap(_cap([e for e in items if e.task == "cloze"], max_items), max_gen_items) if generation else []
        gen = _cap(_cap([e for e in items if e.task == "gen"], max_items), max_gen_items) if generation else []
        rule = protocols.mcq_rule(bench, protocol, g)
        plan.append((g, rule, [_task(bench, protocol, g, mcq, budget["mcq"], rule != "loglik"),
                               _task(bench, protocol, g, cloze, budget["cloze"], True),
                               _task(bench, protocol, g, gen, budget["gen"], True)]))
    # the MCQs first: broken weights (a diverged run) are refused before the long decoding starts
    mcq_records = {g: _mcq_records(adapter, g, mcq_task.items, mcq_task.texts, rule, replies=None,
                                   batch_size=batch_size, progress=progress)
                   for g, rule, (mcq_task, *_) in plan if mcq_task.items and rule == "loglik"}
    _generate_all(adapter, [t for *_, three in plan for t in three], batch_size, progress)
    samples: list[dict[str, Any]] = []
    scoring: dict[str, dict[str, str]] = {}
    for g, rule, (mcq_task, cloze_task, gen_task) in plan:
        rules: dict[str, str] = {}
        if mcq_task.items:
            samples += mcq_records.get(g) or _mcq_records(adapter, g, mcq_task.items, mcq_task.texts, rule,
                                                          replies=mcq_task.replies, batch_size=batch_size,
                                                          progress=progress)
            rules["mcq"] = rule
        if cloze_task.items:
            samples += _free_records(g, cloze_task.items, cloze_task.texts, cloze_task.replies or [])
            rules["cloze"] = protocols.CLOZE_RULE
        if gen_task.items:
            samples += _free_records(g, gen_task.items, gen_task.texts, gen_task.replies or [])
            rules.update(protocols.GEN_RULES)
        scoring[g] = rules
    figures = aggregate(samples)
    # a group with items but nothing scored (generation off, no MCQ) still reports n = 0
    ordered = {g: dict(figures.get(g, {"n": 0})) for g in groups if g in scoring}
    mcq_protocol = protocols.mcq_rule(bench, protocol, "forget")
    return Evaluation(metrics=ordered, samples=samples, protocol=protocol, mcq_protocol=mcq_protocol,
                      scoring=scoring, max_new_tokens=budget, max_items=max_items, max_gen_items=max_gen_items,
                      dtype=_precision(adapter))


def _precision(adapter: Adapter) -> str | None:
    """The torch name of the weights' dtype; None for an adapter without weights (a scripted one)."""
    dtype = getattr(adapter, "dtype", None)
    return None if dtype is None else str(dtype).removeprefix("torch.")


def evaluate(adapter: Adapter, suite: Suite, **kw: Any) -> dict[str, dict[str, float | int]]:
    """The figures of :func:`run_evaluation` alone: ``mcq``, ``cloze``, ``rougeL``, ``bleu`` and counts per group."""
    return run_evaluation(adapter, suite, **kw).metrics


def answers(adapter: Adapter, items: Sequence[Example], *, max_new_tokens: int = 16) -> list[str]:
    """Free answers to the plain questions: what a person reads in the examples page."""
    return adapter.generate([Turn(image_of(e), prompts.qa_prompt(e.question)) for e in items],
                            max_new_tokens=max_new_tokens)
