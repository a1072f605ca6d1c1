"""Robustness audits of every method under one protocol: relearning, PGD, image shifts, feature probe.

    python benchmarks/audits.py --out benchmarks/results/audits.json
    python benchmarks/unlearn.py --keep /tmp/best && python benchmarks/audits.py --models /tmp/best

Each method runs at its shipped setting on ``forget_10`` (a fresh copy of the vanilla model
each time) or, with ``--models DIR``, the best models that ``unlearn.py --keep DIR`` saved
are audited as they are (same world, forget split and seed): the audit then covers the tuned
settings the unlearning table reports, without training them again. The four attacks of
:mod:`unsee.eval.attacks` run on each model, the probe's baseline being the vanilla model's
visual module; the vanilla model itself is attacked too, as the reference row, and with
``--retrained`` the model fine-tuned without the forget people's photos, which is what a
perfect visual unlearning would give. Targets
(``cvf_ncu``): relearning AG <= 10 points, forget accuracy under PGD <= 0.40, probe accuracy
on forget identities falling toward chance: at least halfway from the vanilla model's to chance.
"""

from __future__ import annotations

import json
from pathlib import Path

from common import (
    TRAINING,
    attack_options,
    audit_figures,
    check,
    eval_kw,
    measure,
    parser,
    retrained_model,
    vanilla_model,
)

from unsee import api
from unsee.engine.trainer import frozen_copy
from unsee.eval.results import environment
from unsee.io import atomic_write_json
from unsee.methods.eraser import STEERING_FILE
from unsee.models import load_adapter


def probe_check(probe: dict) -> dict:
    """The probe target: forget-people accuracy at least halfway from the vanilla model's down to chance.

    Any drop at all would pass a model whose features still name the people: 1.00 -> 0.97 is one
    photo in 30."""
    value, vanilla, chance = probe.get("forget_acc"), probe.get("vanilla_forget_acc"), probe.get("chance")
    if value is None or vanilla is None or chance is None:
        return {"value": value, "vanilla": vanilla, "chance": chance, "target": None, "pass": None}
    bound = round((vanilla + chance) / 2, 4)
    return {"value": value, "vanilla": vanilla, "chance": chance, "target": f"<= {bound}", "pass": value <= bound}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods=",".join([*TRAINING, "eraser"]), out="benchmarks/results/audits.json")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--models", default=None, metavar="DIR", help="audit the models unlearn.py --keep saved here")
    attack_options(p)
    args = p.parse_args(argv)
    world, vanilla = vanilla_model(args)
    suite = api.load_suite(world, args.forget, seed=args.seed)
    base = load_adapter(vanilla)
    before = frozen_copy(base, visual_only=True)
    kinds = args.attacks.split(",")
    rows = {"vanilla": api.audit_adapter(base, suite, kinds=kinds, vanilla=before, seed=args.seed,
                                         overrides=args.attack_set, strict=False)}
    print("vanilla", rows["vanilla"], flush=True)
    if args.retrained:
        rows["retrained"] = api.audit_adapter(load_adapter(retrained_model(args, world, vanilla, args.forget)), suite,
                                              kinds=kinds, vanilla=before, seed=args.seed, overrides=args.attack_set,
                                              strict=False)
        print("retrained", rows["retrained"], flush=True)
    settings = {}
    for method in args.methods.split(","):
        if args.models:
            kept = Path(args.models) / method
            if not (kept / "row.json").is_file():
                raise SystemExit(f"{kept}: no model saved by unlearn.py --keep for {method}")
            adapter = load_adapter(kept / "model")
            steering = kept / STEERING_FILE if (kept / STEERING_FILE).is_file() else None
            settings[method] = json.loads((kept / "row.json").read_text())["overrides"]
        else:
            overrides = [] if method == "eraser" else args.train_set
            _, adapter, steering = measure(method, vanilla, suite, args.forget, overrides, args.seed,
                                           {**eval_kw(args), "groups": ("forget",)})
            settings[method] = overrides
        rows[method] = api.audit_adapter(adapter, suite, kinds=kinds, steering=steering, vanilla=before,
                                         seed=args.seed, overrides=args.attack_set, strict=False)
        print(method, rows[method], flush=True)
    targets = {}
    if "cvf_ncu" in rows:
        mine = audit_figures(rows["cvf_ncu"])
        targets["cvf_ncu"] = {
            "relearn_ag": check(mine["relearn_ag"], "<=", 10.0),
            "pgd_forget": check(mine["pgd_forget"], "<=", 0.40),
            "probe_forget_toward_chance": probe_check(rows["cvf_ncu"].get("probe", {})),
        }
        if "retrained" in rows:  # what the model that never saw the photos gives, beside each target
            ref = audit_figures(rows["retrained"])
            for key, figure in zip(targets["cvf_ncu"], ("relearn_ag", "pgd_forget", "probe_forget"), strict=True):
                targets["cvf_ncu"][key]["retrained"] = ref[figure]
    result = {"benchmark": "audits", "world": args.world, "arch": args.arch, "forget": args.forget,
              "settings": settings, "attacks": rows, "targets": targets, "environment": environment()}
    atomic_write_json(Path(args.out), result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
