"""A removal request against its split: same figures, and how long `unsee forget` takes.

Two targets (docs/requests.md):

- a request made of a world's ``forget_10`` people and photos (the example ``unsee world``
  writes) gives the same figures as ``unsee unlearn --forget forget_10`` at the same seed,
  within 2 items per group: both models are measured on both suites (the split's groups and
  the request's), and the largest gap in items is reported per group;
- ``unsee forget`` on that example request, with the vanilla model cached, audits included,
  finishes in 3 minutes or less (2 torch threads).

    python benchmarks/request_split.py --world quick    # -> benchmarks/results/request_split_quick.json
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from common import model_options, scratch, vanilla_model

from unsee import api
from unsee.data.request import load_request_suite
from unsee.data.request_example import write_world_request
from unsee.models import load_adapter

GROUPS = ("forget", "forget_test", "retain", "text_forget", "text_retain", "known", "general", "retain_test")
TARGET_ITEMS, TARGET_SECONDS = 2, 180.0


def _cpu_s() -> float:
    """CPU seconds of this process, every thread: on a shared machine, wall time over-counts."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _weights_hash(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _figures(model: Path, suites: dict[str, Any], generation: bool) -> dict[str, dict[str, Any]]:
    adapter = load_adapter(model)
    return {name: api.evaluate_adapter(adapter, suite, groups=GROUPS, max_gen_items=8, generation=generation,
                                       progress=False)
            for name, suite in suites.items()}


def _gaps(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per group, the gap between two models' figures in items: |accuracy difference| x item count."""
    out: dict[str, dict[str, float]] = {}
    for group in sorted(set(a) & set(b)):
        row = {}
        for key, count in (("mcq", "n"), ("cloze", "n_cloze"), ("rougeL", "n_gen")):
            if key in a[group] and key in b[group]:
                row[key] = round(abs(a[group][key] - b[group][key]) * a[group][count], 3)
        out[group] = row
    return out


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--out", default=None, help="default: benchmarks/results/request_split_<world>.json")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of cvf_ncu for both runs, e.g. max_steps=10 for a short comparison")
    p.add_argument("--no-audit", action="store_true", help="unsee forget without its audits")
    p.add_argument("--no-generation", action="store_true", help="compare MCQ only (generation is slow on CPU)")
    p.add_argument("--time-only", action="store_true", help="only time unsee forget on the example (no comparison)")
    args = p.parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / f"request_split_{args.world}.json")
    load_start = os.getloadavg()
    world, vanilla = vanilla_model(args)
    tmp = scratch("request-")

    request = write_world_request(world, tmp / "request", forget="forget_10")
    start, cpu = time.perf_counter(), _cpu_s()
    api.forget(vanilla, request, tmp / "forgotten", seed=args.seed, overrides=args.train_set,
               audit=not args.no_audit, max_gen_items=0 if args.no_generation else 24)  # as shipped by default
    forget_s, forget_cpu = time.perf_counter() - start, _cpu_s() - cpu
    timing = {"forget_wall_s": round(forget_s, 1), "forget_cpu_s": round(forget_cpu, 1),
              "forget_cpu_s_per_thread": round(forget_cpu / max(1, args.threads), 1),
              "forget_cost": json.loads((tmp / "forgotten" / "forget.json").read_text())["cost"],
              "forget_time": {"bound_s": TARGET_SECONDS, "wall_s": round(forget_s, 1),
                              "cpu_s_per_thread": round(forget_cpu / max(1, args.threads), 1),
                              "met": forget_s <= TARGET_SECONDS,
                              "met_by_cpu_time": forget_cpu / max(1, args.threads) <= TARGET_SECONDS}}
    if args.time_only:
        _write(out, {"world": args.world, "arch": args.arch, "seed": args.seed, "threads": args.threads,
                     "train_set": args.train_set, "audit": not args.no_audit,
                     "command": "python benchmarks/request_split.py " + " ".join(sys.argv[1:]),
                     "load_average_start": load_start, "load_average_end": os.getloadavg(), **timing})
        return

    start = time.perf_counter()
    api.unlearn("cvf_ncu", vanilla, world, tmp / "split", forget="forget_10", seed=args.seed,
                overrides=args.train_set, evaluate_after=False)
    split_s = time.perf_counter() - start

    suites = {"split": api.load_suite(world, "forget_10", seed=args.seed),
              "request": load_request_suite(request, seed=args.seed)}
    figs = {"request_run": _figures(tmp / "forgotten" / "model", suites, not args.no_generation),
            "split_run": _figures(tmp / "split" / "model", suites, not args.no_generation)}
    gaps = {s: _gaps(figs["request_run"][s], figs["split_run"][s]) for s in suites}
    worst = max((v for s in gaps.values() for row in s.values() for v in row.values()), default=0.0)
    result = {
        "world": args.world, "arch": args.arch, "seed": args.seed, "threads": args.threads,
        "train_set": args.train_set, "audit": not args.no_audit, "generation": not args.no_generation,
        "command": "python benchmarks/request_split.py " + " ".join(sys.argv[1:]),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "same_weights": _weights_hash(tmp / "forgotten" / "model") == _weights_hash(tmp / "split" / "model"),
        "gap_items": gaps, "worst_gap_items": worst,
        "figures": figs,
        "unlearn_split_wall_s": round(split_s, 1), **timing,
        "targets": {"same_figures": {"bound_items": TARGET_ITEMS, "worst": worst, "met": worst <= TARGET_ITEMS},
                    "forget_time": timing["forget_time"]},
    }
    _write(out, result)


def _write(out: Path, result: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("figures", "gap_items", "forget_cost")}, indent=2))


if __name__ == "__main__":
    main()
