"""Evaluator throughput on the quick world: MCQ option log-likelihood and greedy generation, items per second.

    python benchmarks/eval_speed.py --out benchmarks/results/eval_speed.json

The timed calls are the evaluator's own building blocks (``option_logprobs`` and
``adapter.generate``), on a fixed, deterministic sample of every metric group of the quick
world (image and text-only questions alike), at batch sizes 1, 8 and 16 (items), beside
the plain loop that an evaluator without batching or a shared prompt runs: every
(question, option) sequence through the model on its own (``mcq_per_sequence_loop``).
The target (batched evaluation >= 5x a one-by-one loop, with the same answers) is checked
against that loop and, more strictly, against the evaluator itself at batch size 1. The model is a
freshly initialised tiny one: speed does not depend on what it has learnt, except that an
untrained model rarely stops before ``max_new_tokens``, so generation here is the worst case.
Each figure is the median of ``--repeats`` timed passes, after a short untimed warm-up.

``whole_evaluation`` times :func:`~unsee.eval.evaluator.run_evaluation` over every metric group, as
a run's evaluation calls it (every MCQ item), beside the same groups evaluated one at a time
(``groups=[g]`` each): what asking every group's cloze and generation items in one decoding pass a
reply budget saves, at ``--gen-caps`` items a group (2 is a removal request's small groups; 24 the
demo's cap), with the records of both checked equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unsee.data import prompts
from unsee.data.collate import image_of
from unsee.data.mllmu import load_mllmu
from unsee.data.schema import METRIC_GROUPS, Example, Suite
from unsee.data.world import build_world
from unsee.eval import metrics
from unsee.eval.evaluator import option_logprobs, run_evaluation
from unsee.io import atomic_write_json
from unsee.models import HFAdapter, Turn, load_adapter
from unsee.models.tiny import init_model
from unsee.provenance import environment

BATCH_SIZES = (1, 8, 16)


def sample(suite: Suite, tasks: tuple[str, ...], per_group: int) -> list[Example]:
    """The first ``per_group`` items of each task in every metric group: the evaluator's own capping rule."""
    out: list[Example] = []
    for group in METRIC_GROUPS:
        for task in tasks:
            out += [e for e in suite.groups.get(group, []) if e.task == task and (task != "mcq" or e.options)][
                :per_group]
    return out


def generation_turns(items: list[Example]) -> list[Turn]:
    """Cloze and generation prompts exactly as :func:`unsee.eval.evaluator.evaluate` builds them."""
    return [Turn(image_of(e), prompts.cloze_prompt(e.question) if e.task == "cloze"
                 else prompts.gen_prompt(e.question, e.has_image)) for e in items]


def per_sequence_loop(adapter: HFAdapter, items: list[Example]) -> list[list[float]]:
    """The reference: each (question, option) sequence scored in full, one forward pass each."""
    with adapter.eval_mode(), torch.no_grad():
        return [[float(adapter.answer_logprobs(adapter.training_batch(
            [Turn(image_of(e), prompts.qa_prompt(e.question), o)]))[0]) for o in e.options] for e in items]


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(adapter: HFAdapter, mcq: list[Example], gen: list[Example], *, max_new_tokens: int,
            repeats: int) -> list[dict]:
    """Median seconds per pass for each (kind, batch size).

    The repeats go round all batch sizes in turn rather than one size at a time, so that a
    change in the machine's load during the run falls on every size alike.
    """
    n_options = sum(len(e.options) for e in mcq)
    turns = generation_turns(gen)
    runs: dict[tuple[str, int], Callable[[], object]] = {}
    runs["mcq_per_sequence_loop", 1] = lambda: per_sequence_loop(adapter, mcq)
    for bs in BATCH_SIZES:
        runs["mcq_loglik", bs] = lambda bs=bs: option_logprobs(adapter, mcq, batch_size=bs)
        runs["generation", bs] = lambda bs=bs: adapter.generate(turns, max_new_tokens=max_new_tokens, batch_size=bs)
    # warm-up: first-call allocations and lazy initialisation are not the evaluator's steady state
    option_logprobs(adapter, mcq[:2], batch_size=max(BATCH_SIZES))
    adapter.generate(turns[:2], max_new_tokens=max_new_tokens, batch_size=2)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            times[key].append(timed(run))
    rows = []
    for (kind, bs), ts in sorted(times.items()):
        s = statistics.median(ts)
        n = len(turns) if kind == "generation" else len(mcq)
        row = {"kind": kind, "batch_size": bs, "items": n, "seconds": round(s, 3), "items_per_s": round(n / s, 2)}
        if kind != "generation":
            row.update(options=n_options, options_per_s=round(n_options / s, 2))
        else:
            row.update(max_new_tokens=max_new_tokens)
        rows.append({**row, "runs_s": [round(t, 3) for t in ts]})
        print(rows[-1])
    return rows


def whole_evaluation(adapter: HFAdapter, suite: Suite, *, caps: list[int], repeats: int) -> list[dict]:
    """Median seconds of a whole evaluation at each cap of cloze/generation items a group: every group at
    once, and each group on its own, in turn within each repeat (a change of load falls on both)."""
    rows = []
    groups = [g for g in METRIC_GROUPS if suite.groups.get(g)]
    for cap in caps:
        kw = {"max_gen_items": cap, "progress": False}

        def together(kw: dict = kw) -> list[dict]:
            return run_evaluation(adapter, suite, **kw).samples

        def alone(kw: dict = kw) -> list[dict]:
            return [r for g in groups for r in run_evaluation(adapter, suite, groups=[g], **kw).samples]

        same = together() == alone()  # also the warm-up
        times: dict[str, list[float]] = {"together": [], "alone": []}
        for _ in range(repeats):
            times["together"].append(timed(together))
            times["alone"].append(timed(alone))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"max_gen_items": cap, "groups": len(groups),
                     "together_s": round(med["together"], 3), "alone_s": round(med["alone"], 3),
                     "speedup": round(med["alone"] / med["together"], 2), "same_records": same,
                     "runs_s": {k: [round(t, 3) for t in v] for k, v in times.items()}})
        print(rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/eval_speed.json")
    p.add_argument("--arch", default="tiny-llava")
    p.add_argument("--mcq-per-group", type=int, default=6, help="MCQ items per metric group")
    p.add_argument("--gen-per-group", type=int, default=2, help="cloze and generation items each, per group")
    p.add_argument("--max-new-tokens", type=int, default=24, help="the evaluator's default")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gen-caps", type=int, nargs="+", default=[2, 24],
                   help="cloze/generation items a group, for the whole-evaluation timing")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        world = build_world(Path(d) / "world", seed=0, config="quick")
        adapter = load_adapter(init_model(a.arch, Path(d) / "model", world=world, seed=0))
        suite = load_mllmu(world, "forget_10", seed=0)
    mcq = sample(suite, ("mcq",), a.mcq_per_group)
    gen = sample(suite, ("cloze", "gen"), a.gen_per_group)
    load_before, start = os.getloadavg()[0], time.perf_counter()
    rows = measure(adapter, mcq, gen, max_new_tokens=a.max_new_tokens, repeats=a.repeats)
    seconds = {(r["kind"], r["batch_size"]): r["seconds"] for r in rows}
    best = min(BATCH_SIZES, key=lambda bs: seconds["mcq_loglik", bs])
    reference = per_sequence_loop(adapter, mcq)
    batched = option_logprobs(adapter, mcq, batch_size=best)
    same = [metrics.loglik_choice(r) for r in reference] == [metrics.loglik_choice(b) for b in batched]
    gap = max(abs(x - y) for r, b in zip(reference, batched, strict=True) for x, y in zip(r, b, strict=True))
    speedup = {
        "mcq_vs_per_sequence_loop": round(seconds["mcq_per_sequence_loop", 1] / seconds["mcq_loglik", best], 2),
        "mcq_vs_batch_1": round(seconds["mcq_loglik", 1] / seconds["mcq_loglik", best], 2),
        "generation_vs_batch_1": round(seconds["generation", 1] / min(seconds["generation", bs] for bs in BATCH_SIZES),
                                       2),
    }
    target = {"speedup": 5.0, "value": speedup["mcq_vs_per_sequence_loop"], "batch_size": best,
              "same_answers": same, "max_score_difference": gap,
              "pass": speedup["mcq_vs_per_sequence_loop"] >= 5.0 and same}
    print(speedup, target)
    whole = whole_evaluation(adapter, suite, caps=a.gen_caps, repeats=a.repeats)
    atomic_write_json(a.out, {
        "benchmark": "eval_speed", "arch": a.arch, "world": "quick", "forget": "forget_10",
        "mcq_items_with_image": sum(e.has_image for e in mcq), "gen_items_with_image": sum(e.has_image for e in gen),
        "repeats": a.repeats, "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - start, 1),
        # other work on the machine slows every figure; the 1-minute load average puts them in context
        "load_avg_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2),
                        "cpus": os.cpu_count()},
        "environment": environment(), "speedup": speedup, "target": target, "rows": rows,
        "whole_evaluation": whole,
    })


if __name__ == "__main__":
    main()
