"""Continual unlearning: five requests of two people, one after another, through the driver.

    python benchmarks/continual.py --seeds 0,1,2 --out benchmarks/results/continual.json
    python benchmarks/continual.py --methods cvf_ncu --config cvf_ncu_hardened --seeds 0,1,2 --out ...

For each method (``cvf_ncu``, ``cvf_only``, ``graddiff`` by default) the requests
``forget_r1`` ... ``forget_rN`` of the world run in order; after each, every earlier forget
set is measured again. The targets: after the last request every earlier forget set is at
most 0.35 and ``retain`` is at least 0.95 x vanilla, read on the mean over the unlearning
seeds (``--seeds``; ``--seed`` picks the world and its vanilla model). The groups no target
covers (``known``, ``known_test``, ``general``, ``text_forget``) are reported beside them:
requests that each cost the other people a little add up. Writes the JSON, a results.json
with every seed's runs and ``continual.png`` (every group against the request number, the
mean over the seeds).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from common import check, eval_kw, mcq, parser, seed_list, spread, vanilla_model

from unsee import api
from unsee.errors import ConfigError
from unsee.eval.results import load_results, new_results, write_results
from unsee.io import atomic_write_json
from unsee.models import load_adapter
from unsee.provenance import environment
from unsee.report.plots import plot_continual
from unsee.runs import check_launch

# Reported after the last request beside the targeted groups; no target covers them.
OTHERS = ("text_forget", "known", "known_test", "general")


def requests_of(world: Path) -> list[str]:
    """The world's removal requests in order (``forget_r1``, ``forget_r2``, ...)."""
    names = json.loads((world / "world.json").read_text())["requests"]
    return sorted(names, key=lambda r: int(r.removeprefix("forget_r")))


def after_last(runs: list[dict], groups: list[str]) -> dict[str, float | None]:
    """Each of ``groups`` as the last request left it, and the time of all the requests."""
    last = runs[-1]["metrics"]
    return {**{g: mcq(last, g) for g in groups}, "wall_s": round(sum(r["cost"]["wall_s"] for r in runs), 1)}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods="cvf_ncu,cvf_only,graddiff", out="benchmarks/results/continual.json", retrained=False)
    p.add_argument("--seeds", default="1", help="comma list of unlearning seeds, or N for --seed .. --seed+N-1")
    p.add_argument("--config", default=None,
                   help="a config file or a shipped config's name (such as cvf_ncu_hardened) for every method, "
                        "in place of each method's own; --train-set overrides it")
    args = p.parse_args(argv)
    seeds = seed_list(args.seeds, args.seed)
    for method in args.methods.split(","):  # a wrong option fails now, not after the vanilla model's build
        try:
            check_launch(method, args.config, args.train_set)
        except ConfigError as e:
            p.error(str(e))
    world, vanilla = vanilla_model(args)
    requests = requests_of(world)
    kw = eval_kw(args)
    first = api.load_suite(world, requests[0], retain_exclude=requests, seed=args.seed)
    v_eval = api.evaluation(load_adapter(vanilla), first, **kw)
    v_metrics = v_eval.metrics
    # named, scored and with the retained set of the continual runs, so that `unsee report` reads them against it
    runs = [api.make_run("vanilla", v_eval, model=api.model_name(vanilla), suite=first, forget=requests[0],
                         seed=args.seed, retain_without=list(requests))]
    forgets = [f"forget_r{j}" for j in range(1, len(requests) + 1)]
    groups = [*forgets, "retain", *OTHERS]
    summary = {}
    for method in args.methods.split(","):
        rows = []
        for seed in seeds:
            with tempfile.TemporaryDirectory() as d:
                out = api.continual(method, vanilla, world, Path(d) / method, requests, config=args.config,
                                    overrides=args.train_set, seed=seed, overwrite=False, allow_pickle=False,
                                    eval_kw=kw, data_seed=args.seed)  # every seed asked the same items
                mine = load_results(out / "results.json")["runs"]
            runs += mine
            rows.append({"seed": seed, **after_last(mine, groups)})
            print(method, rows[-1], flush=True)
        spreads = spread([{k: v for k, v in r.items() if k != "seed"} for r in rows])
        means = {k: v["mean"] for k, v in spreads.items()}
        summary[method] = {
            "seeds": seeds,
            "after_last": {k: means.get(k) for k in groups},
            "targets": {**{k: check(means.get(k), "<=", 0.35) for k in forgets},
                        "retain": check(means.get("retain"), ">=", 0.95 * (mcq(v_metrics, "retain") or 0))},
            "per_seed": rows,
            "spread": spreads,
            "wall_s": means["wall_s"],
        }
    out = Path(args.out)
    results = new_results(runs)
    write_results(out.with_suffix(".results.json"), results, overwrite=True)
    plot_continual(results, out.with_name(out.stem + ".png"))
    result = {"benchmark": "continual", "world": args.world, "seed": args.seed, "arch": args.arch,
              "config": args.config, "train_set": args.train_set, "requests": requests,
              "eval": kw, "vanilla": v_metrics, "methods": summary, "environment": environment()}
    atomic_write_json(out, result)
    print(f"wrote {out}, {out.with_suffix('.results.json')} and {out.with_name(out.stem + '.png')}")
    return result


if __name__ == "__main__":
    main()
