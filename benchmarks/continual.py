"""Continual unlearning: five requests of two people, one after another, through the driver.

    python benchmarks/continual.py --out benchmarks/results/continual.json

For each method (``cvf_ncu``, ``cvf_only``, ``graddiff`` by default) the requests
``forget_r1`` ... ``forget_rN`` of the world run in order; after each, every earlier forget
set is measured again. The targets: after the last request every earlier forget set is at
most 0.35 and ``retain`` is at least 0.95 x vanilla. Writes the JSON, a results.json and
``continual.png`` (every group against the request number).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import check, eval_kw, mcq, parser, vanilla_model

from unsee import api
from unsee.eval.results import load_results, new_results, write_results
from unsee.io import atomic_write_json
from unsee.models import load_adapter
from unsee.provenance import environment
from unsee.report.plots import plot_continual


def requests_of(world: Path) -> list[str]:
    """The world's removal requests in order (``forget_r1``, ``forget_r2``, ...)."""
    names = json.loads((world / "world.json").read_text())["requests"]
    return sorted(names, key=lambda r: int(r.removeprefix("forget_r")))


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods="cvf_ncu,cvf_only,graddiff", out="benchmarks/results/continual.json")
    args = p.parse_args(argv)
    world, vanilla = vanilla_model(args)
    requests = requests_of(world)
    kw = eval_kw(args)
    first = api.load_suite(world, requests[0], retain_exclude=requests, seed=args.seed)
    v_metrics = api.evaluate_adapter(load_adapter(vanilla), first, **kw)
    runs = [api.make_run("vanilla", v_metrics, model=args.arch, suite=first, forget=requests[0], seed=args.seed)]
    summary = {}
    for method in args.methods.split(","):
        with tempfile.TemporaryDirectory() as d:
            out = api.continual(method, vanilla, world, Path(d) / method, requests, config=None,
                                overrides=args.train_set, seed=args.seed, overwrite=False, allow_pickle=False,
                                eval_kw=kw)
            mine = load_results(out / "results.json")["runs"]
        runs += mine
        last = mine[-1]["metrics"]
        earlier = {f"forget_r{j}": mcq(last, f"forget_r{j}") for j in range(1, len(requests) + 1)}
        summary[method] = {
            "after_last": {**earlier, "retain": mcq(last, "retain")},
            "targets": {**{k: check(v, "<=", 0.35) for k, v in earlier.items()},
                        "retain": check(mcq(last, "retain"), ">=", 0.95 * (mcq(v_metrics, "retain") or 0))},
            "wall_s": round(sum(r["cost"]["wall_s"] for r in mine), 1),
        }
        print(method, summary[method]["after_last"], flush=True)
    out = Path(args.out)
    results = new_results(runs)
    write_results(out.with_suffix(".results.json"), results, overwrite=True)
    plot_continual(results, out.with_name(out.stem + ".png"))
    result = {"benchmark": "continual", "world": args.world, "arch": args.arch, "requests": requests,
              "eval": kw, "vanilla": v_metrics, "methods": summary, "environment": environment()}
    atomic_write_json(out, result)
    print(f"wrote {out}, {out.with_suffix('.results.json')} and {out.with_name(out.stem + '.png')}")
    return result


if __name__ == "__main__":
    main()
