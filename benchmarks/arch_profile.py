"""Where a method's time goes on each architecture: one profiled run per architecture and method.

A step's cost depends on the model's shapes, not on its weights, and the number of steps on
the method's settings and the request, so each architecture starts from its untrained tiny
model (the tokenizer trained on the world): no vanilla model is trained, and a Qwen
architecture is profiled in minutes. Accuracy is not the point here and is not reported.

    python benchmarks/arch_profile.py --world quick --threads 2

Writes ``benchmarks/results/arch_profile_<world>.json``: per architecture and method the wall
time of the unlearning, its steps and seconds a step, and the seconds inside the parts of a
step that a profiler can name (the visual module's forward passes, student's and reference's;
the backward pass; the null-space projection; the optimizer), with the rest as ``other``.
Times under a profiler run 10-20% longer than without one; ``wall_s`` is the run's own clock.
With ``--repeats N`` each architecture also runs every method N more times without the
profiler, in turn (A B A B ...), and writes the ratio of each round's pair: a machine whose
speed drifts between minutes moves both runs of a round alike, so the median of those ratios
says more than one run of each.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
from pathlib import Path
from typing import Any

import torch
from common import ONE_ITEM_EVAL as EVAL
from common import arch_list, measure, suite_or_exit, untrained_options

from unsee.demo import DemoConfig, prepare_init
from unsee.finetune import cache_root
from unsee.io import atomic_write_json
from unsee.models.tiny import ARCHS
from unsee.provenance import environment

# The named parts of a step: (label, file suffix, function name, which time). ``cum`` counts the
# function with everything it calls; ``tot`` the function alone (a C entry point).
PARTS: tuple[tuple[str, str, str, str], ...] = (
    ("visual_forward", "unsee/models/base.py", "visual_features", "cum"),
    ("backward", "~", "<method 'run_backward' of 'torch._C._EngineBase' objects>", "tot"),
    ("null_space_projection", "unsee/engine/constraints.py", "project_updates", "cum"),
    ("optimizer", "~", "<built-in method torch._fused_adamw_>", "tot"),
)
TRAIN = ("unsee/engine/trainer.py", "train")


def seconds(stats: pstats.Stats, suffix: str, name: str, which: str) -> float:
    """The profiled seconds of every function ``name`` in a file ending in ``suffix``."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    col = 3 if which == "cum" else 2
    return sum(v[col] for (file, _, func), v in table.items() if func == name and file.endswith(suffix))


def profile(method: str, model: Path, suite: Any, forget: str, overrides: list[str], seed: int) -> dict[str, Any]:
    """One unlearning run under cProfile: its own cost record and the seconds of each named part."""
    prof = cProfile.Profile()
    prof.enable()
    run, _, _ = measure(method, model, suite, forget, overrides, seed, EVAL)
    prof.disable()
    stats = pstats.Stats(prof)
    train = seconds(stats, *TRAIN, "cum")
    parts = {label: round(seconds(stats, suffix, name, which), 2) for label, suffix, name, which in PARTS}
    steps = int(run["history"][-1]["step"]) if run.get("history") else None
    return {"wall_s": run["cost"]["wall_s"], "steps": steps,
            "s_per_step": round(run["cost"]["wall_s"] / steps, 4) if steps else None,
            "trainable_params": run["cost"]["trainable_params"], "profiled_train_s": round(train, 2),
            "parts_s": {**parts, "other": round(train - sum(parts.values()), 2)}}


def timed(methods: list[str], model: Path, suite: Any, forget: str, overrides: list[str], seed: int,
          repeats: int) -> dict[str, Any]:
    """``repeats`` unprofiled runs of every method, in turn, with their median; against GradDiff, the
    ratio of each round's pair and the median, least and largest of those ratios."""
    walls: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            run, _, _ = measure(m, model, suite, forget, overrides, seed, EVAL)
            walls[m].append(run["cost"]["wall_s"])
    out: dict[str, Any] = {m: {"wall_s": w, "median_s": statistics.median(w)} for m, w in walls.items()}
    if {"cvf_ncu", "graddiff"} <= walls.keys():
        pairs = [a / b for a, b in zip(walls["cvf_ncu"], walls["graddiff"], strict=True)]
        out["cvf_ncu_over_graddiff"] = {"pairs": [round(r, 3) for r in pairs],
                                        "median": round(statistics.median(pairs), 3),
                                        "min": round(min(pairs), 3), "max": round(max(pairs), 3)}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    untrained_options(p, world="quick", archs=ARCHS)
    p.add_argument("--methods", default="cvf_ncu,graddiff", help="comma list (training methods)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/arch_profile_<world>.json")
    p.add_argument("--repeats", type=int, default=0,
                   help="unprofiled runs of every method in turn after the profiled one, for the time ratio (0: none)")
    args = p.parse_args(argv)
    archs = arch_list(p, args.archs)
    if args.repeats < 0:
        p.error(f"--repeats must not be negative, got {args.repeats}")
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(world=args.world, recipe=args.world, world_overrides=args.world_set)
    rows: dict[str, dict[str, Any]] = {}
    repeated: dict[str, dict[str, Any]] = {}
    methods = args.methods.split(",")
    for arch in archs:
        world, init, _ = prepare_init(cfg, arch, args.seed, cache_root(args.cache_dir))
        suite = suite_or_exit(p, world, args.forget)
        rows[arch] = {m: profile(m, init, suite, args.forget, args.train_set, args.seed) for m in methods}
        for m, r in rows[arch].items():
            print(arch, m, r, flush=True)
        if args.repeats:
            repeated[arch] = timed(methods, init, suite, args.forget, args.train_set, args.seed, args.repeats)
            print(arch, "unprofiled", repeated[arch], flush=True)
    ratios = {arch: round(r["cvf_ncu"]["wall_s"] / r["graddiff"]["wall_s"], 3)
              for arch, r in rows.items() if {"cvf_ncu", "graddiff"} <= r.keys()}
    result = {"benchmark": "arch_profile", "world": args.world, "forget": args.forget, "seed": args.seed,
              "train_set": args.train_set, "threads": args.threads, "rows": rows,
              "cvf_ncu_over_graddiff_wall": ratios, "repeats": args.repeats, "unprofiled": repeated,
              "environment": environment()}
    out = Path(args.out or f"benchmarks/results/arch_profile_{args.world}.json")
    atomic_write_json(out, result)
    return result


if __name__ == "__main__":
    main()
