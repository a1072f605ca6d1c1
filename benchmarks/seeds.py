"""One method at one or more settings, over several unlearning seeds: metrics, audits and their spread.

    python benchmarks/seeds.py --methods cvf_ncu --seeds 0,1,2 \
        --variant shipped: --variant relearn3:relearn_sim_steps=3 --out benchmarks/results/seeds_cvf_ncu.json

The other benchmarks train each setting once. On the tiny models a different unlearning seed
(the order of the batches, the crops) moves ``forget`` by a few items and the relearning gain
by tens of points, so a comparison of two settings needs several seeds before it says
anything. Each seed trains a fresh copy of the same vanilla model (``--seed`` still picks the
world, the vanilla model and the audits' own seed, which stay fixed), is scored as
``unlearn.py`` scores it, and audited as ``audits.py`` audits it (with ``--retrained``, beside
the retrained reference, attacked once). The JSON holds the vanilla model's figures on the
same split, every run with its unlearning score against them (the figure ``unlearn.py`` picks
settings by, so that a pick made here can be checked from the JSON), and, per setting, the
mean, standard deviation, smallest and largest value of each figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import (
    attack_options,
    eval_kw,
    mcq,
    measure,
    parser,
    retrained_model,
    score,
    seed_list,
    spread,
    vanilla_model,
)

from unsee import api
from unsee.audit.quant import changed_linears, weight_digests
from unsee.audit.verdicts import audit_figures
from unsee.data.world import load_world_info
from unsee.engine.prepare import frozen_copy
from unsee.io import atomic_write_json
from unsee.models import load_adapter
from unsee.provenance import environment

GROUPS = ("forget", "forget_test", "retain", "text_forget", "known", "known_test", "general")


def variant(text: str) -> tuple[str, list[str]]:
    """``NAME:KEY=VALUE,KEY=VALUE`` (``NAME:`` alone: the shipped config) as a name and its overrides."""
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: give it a name, as in relearn3:relearn_sim_steps=3")
    return name, [kv for kv in rest.split(",") if kv]


def figures(run: dict, attacks: dict, vanilla: dict) -> dict[str, float | None]:
    """The numbers a setting is judged by: each group's MCQ accuracy, the unlearning score against ``vanilla``'s
    metrics, wall time, and the audit figures."""
    out: dict[str, float | None] = {g: mcq(run["metrics"], g) for g in GROUPS}
    out["score"] = score(vanilla, run)["score"]
    out["wall_s"] = run["cost"]["wall_s"]
    return {**out, **audit_figures(attacks)}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods="cvf_ncu", out="benchmarks/results/seeds.json")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--seeds", default="0,1,2", help="comma list of unlearning seeds, or N for --seed .. --seed+N-1")
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                   help="a setting to run (repeatable); default: the shipped config alone")
    attack_options(p)
    args = p.parse_args(argv)
    seeds = seed_list(args.seeds, args.seed)
    variants = [variant(v) for v in args.variant] or [("shipped", [])]
    world, vanilla = vanilla_model(args)
    # a validation request (val_X) is scored without X's people among its retained ones, as unlearn.py's picks
    # are: no choice is made on the reported people at all (a world without X reports none)
    info = load_world_info(world)
    reported = args.forget.removeprefix("val_")
    blind = [reported] if args.forget != reported and reported in {**info["splits"], **info.get("known_splits", {})} \
        else []
    suite = api.load_suite(world, args.forget, seed=args.seed, retain_exclude=blind)
    kinds = list(args.attacks)
    if "mia" in kinds:
        cfg = api.audit_config(args.attack_set, args.seed)
        suite = api.attach_holdout(suite, world, cfg.mia_holdout, args.seed)
    base = load_adapter(vanilla)
    v_metrics = api.evaluate_adapter(base, suite, **eval_kw(args))
    before = frozen_copy(base, visual_only=True)
    digests = weight_digests(base)
    reference = (retrained_model(args, world, vanilla, args.forget) if args.retrained else None)
    results: dict[str, Any] = {}
    for method in args.methods.split(","):
        for name, overrides in variants:
            runs = []
            for seed in seeds:
                run, adapter, artifact = measure(method, vanilla, suite, args.forget, [*args.train_set, *overrides],
                                                 seed, eval_kw(args))
                attacks = api.audit_adapter(adapter, suite, kinds=kinds, artifact=artifact, vanilla=before,
                                            seed=args.seed, overrides=args.attack_set, strict=False,
                                            changed=changed_linears(digests, adapter), reference=reference,
                                            cache_dir=args.cache_dir) if kinds else {}
                runs.append({"seed": seed, "figures": figures(run, attacks, v_metrics), "attacks": attacks})
                print(method, name, seed, runs[-1]["figures"], flush=True)
            results[f"{method}/{name}"] = {"method": method, "overrides": [*args.train_set, *overrides], "runs": runs,
                                           "spread": spread([r["figures"] for r in runs])}
    out = {"benchmark": "seeds", "world": args.world, "seed": args.seed, "arch": args.arch, "forget": args.forget,
           "retain_exclude": blind,
           "seeds": seeds, "train_set": args.train_set,
           "vanilla": {g: mcq(v_metrics, g) for g in GROUPS}, "results": results, "environment": environment()}
    atomic_write_json(Path(args.out), out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
