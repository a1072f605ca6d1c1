"""Robustness audits of every method under one protocol, over unlearning seeds, judged against the retrained reference.

    python benchmarks/audits.py --retrained --seeds 3 --out benchmarks/results/audits.json \
        --table benchmarks/results/audits.md
    python benchmarks/unlearn.py --keep /tmp/best && python benchmarks/audits.py --models /tmp/best --retrained
    python benchmarks/audits.py --retrained --seeds 3 --picks benchmarks/results/unlearn_default_amd_val.json
    python benchmarks/audits.py --combine a.json b.json --out all.json --table all.md --plot all.png
    python benchmarks/audits.py --retrained --reference-draws 3 --methods cvf_ncu --seeds 3
    python benchmarks/audits.py --retrained --reference-draws 3 --against draws --methods cvf_ncu --seeds 3

Each method runs at its shipped setting on ``forget_10`` (a fresh copy of the vanilla model
each time, unlearning seeds ``--seed`` .. ``--seed + N - 1``; ``--picks FILE``: at the setting an
earlier ``unlearn.py`` run picked for it on its validation request; ``--method-set``: with
options of its own) or, with ``--models DIR``, the best models that ``unlearn.py --keep DIR``
saved are audited as they are (one seed: the one they were trained with). Every attack of
:mod:`unsee.audit.attacks` runs on each model: the probe's baseline is the vanilla model's
visual module, the quantization attack rounds the weights the method changed and all of them.
The vanilla model is attacked too, and with ``--retrained`` the model fine-tuned without the
forget people's photos, the reference every figure is set beside (attacked once, its figures
cached).

Targets (means over the seeds, every method; :func:`unsee.audit.verdicts.reference_checks`):
relearning AG <= the reference's + 5 points; forget accuracy under PGD <= the reference's + 0.05;
probe accuracy on the forget people <= the reference's + 0.05; forget accuracy after 4-bit
rounding <= before rounding + 0.05; each MIA AUC within 0.05 of the reference's; forget quality
(the KS p-value against the reference) >= 0.05. Without ``--retrained`` only the quantization
target can be judged. ``--reference-draws N`` also audits N - 1 more draws of the reference
(``unsee retrain --seed S``, S = ``--seed`` + 1 ... + N - 1; the first is the recipe's own, ``--seed``)
beside the first, as rows ``retrained [seed S]``: what never having seen the photos gives against itself,
the floor under every check. With ``--against draws`` every method is judged against the N draws read as
one reference (each figure their mean, forget quality against their items pooled) instead of against the
first draw alone, and every draw, the first too, is a row judged against the mean of the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common import (
    ALL,
    attack_options,
    check_last_seed,
    eval_kw,
    measure,
    method_option,
    method_sets,
    parser,
    positive_int,
    read_picks,
    retrained_model,
    vanilla_model,
)

from unsee import api
from unsee.audit.verdicts import mean_attacks, reference_checks
from unsee.engine.prepare import frozen_copy
from unsee.errors import DataError, UnseeError
from unsee.eval.metrics import spread
from unsee.io import atomic_write_json, atomic_write_text
from unsee.methods import method_class
from unsee.methods.artifact import load_result
from unsee.models import load_adapter, model_fingerprint
from unsee.provenance import environment
from unsee.report import plot_audits


def targets(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The reference checks on the seed means, each with the spread of its value over the seeds."""
    checks = reference_checks(mean_attacks(runs))
    for name, check in checks.items():
        per_seed = [reference_checks(r).get(name, {}).get("value") for r in runs]
        values = [v for v in per_seed if v is not None]
        if values:
            check["seeds"] = spread(values)
    return checks


def table(result: dict[str, Any]) -> str:
    """The target table of docs/results.md: one row per method, each figure beside the reference's."""
    def fmt(check: dict | None, digits: int = 3) -> str:
        if not check or check.get("value") is None:
            return "\u2014"
        s = check.get("seeds", {})
        text = f"{check['value']:.{digits}f}"
        if s and s["min"] != s["max"]:
            text += f" [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
        if check.get("reference") is not None:
            text += f" (ref {check['reference']:.{digits}f})"
        return text + {True: " \u2713", False: " \u2717", None: ""}[check.get("pass")]

    cols = [("relearn_ag", "relearn AG", 1), ("pgd_forget", "PGD forget", 3), ("probe_forget", "probe forget", 3),
            ("quant_int4_forget", "int4 forget", 3), ("mia_auc_loss", "MIA AUC loss", 3),
            ("mia_auc_mink_pp", "MIA AUC Min-K%++", 3), ("forget_quality", "forget quality p", 4)]
    lines = ["| method | seeds | " + " | ".join(c[1] for c in cols) + " | passed |",
             "|---|---|" + "---:|" * len(cols) + "---|"]
    for method, checks in result["targets"].items():
        judged = [c for c in checks.values() if c.get("pass") is not None]
        passed = f"{sum(bool(c['pass']) for c in judged)}/{len(judged)}"
        seeds = ",".join(str(s) for s in result["seeds_run"].get(method, []))
        lines.append(f"| {method} | {seeds} | " + " | ".join(fmt(checks.get(k), d) for k, _, d in cols)
                     + f" | {passed} |")
    return "\n".join(lines) + "\n"


def combined(p: Any, paths: list[str]) -> dict[str, Any]:
    """``--combine``: earlier runs of this benchmark as one result, running nothing. Methods audited in several
    sittings (one a night) make one table and one plot only where they were set beside the same thing: the same
    world, split, vanilla model and retrained reference, each figure of which must be equal, and their weights
    too where the runs recorded them (``models``: the fingerprints of both)."""
    try:
        parts = [json.loads(Path(f).read_text()) for f in paths]
        same = [(r["world"], r["seed"], r["arch"], r["forget"], r["attacks"]["vanilla"], r["attacks"].get("retrained"))
                for r in parts]
    except (OSError, ValueError, KeyError, TypeError) as e:
        p.error(f"--combine: not a JSON this benchmark wrote ({type(e).__name__}: {e})")
    if len({json.dumps(k, sort_keys=True) for k in same}) > 1:
        p.error("--combine: these runs were not set beside the same world, split, vanilla model and reference")
    if len({json.dumps(r["models"], sort_keys=True) for r in parts if "models" in r}) > 1:
        p.error("--combine: these runs audited other weights (their vanilla models' or references' fingerprints "
                "differ), though their figures agree")
    methods = [m for r in parts for m in r["per_seed"]]

    def row(m: str, r: dict[str, Any]) -> str:  # a method audited at several settings: a row for each
        return m if methods.count(m) == 1 else f"{m} [{', '.join(r['settings'][m]) or 'shipped'}]"

    rows = [row(m, r) for r in parts for m in r["per_seed"]]
    if twice := sorted({k for k in rows if rows.count(k) > 1}):
        p.error(f"--combine: {', '.join(twice)} audited at the same setting in more than one of them; keep one")
    out = {**parts[0], "combined": [{"file": str(f), "methods": [row(m, r) for m in r["per_seed"]],
                                     "environment": r.get("environment")} for f, r in zip(paths, parts, strict=True)]}
    for key in ("settings", "seeds_run", "per_seed"):
        out[key] = {row(m, r): r[key][m] for r in parts for m in r["per_seed"]}
    out["targets"] = {m: targets(runs) for m, runs in out["per_seed"].items()}  # judged as this code judges
    out["attacks"] = {**{k: parts[0]["attacks"][k] for k in ("vanilla", "retrained") if k in parts[0]["attacks"]},
                      **{row(m, r): r["attacks"][m] for r in parts for m in r["per_seed"]}}
    if any("picked_in" in r for r in parts):
        out["picked_in"] = [r.get("picked_in") for r in parts]
    return out


def draw_seeds(seed: int, n: int) -> list[int | None]:
    """The seeds of ``n`` draws of the reference of the vanilla model trained at ``seed``: the first is the recipe's
    own (None), the vanilla model's, so the others start after it (another draw at that seed would be the first)."""
    return [None, *range(seed + 1, seed + n)]


def overrides_of(method: str, args: Any) -> list[str]:
    """What ``method`` trains with: ``--train-set`` (for a training method), then its ``--method-set`` options."""
    own = [option for m, option in args.method_set if m == method]
    return [*(args.train_set if method_class(method).trains_weights else []), *own]


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods=",".join(ALL), out="benchmarks/results/audits.json")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--models", default=None, metavar="DIR", help="audit the models unlearn.py --keep saved here")
    p.add_argument("--seeds", type=positive_int, default=1, metavar="N",
                   help="unlearning seeds per method (--seed .. +N-1)")
    p.add_argument("--table", default=None, metavar="FILE", help="also write the target table as markdown")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also draw each method's figures beside what passes and the reference's (PNG)")
    p.add_argument("--picks", default=None, metavar="FILE",
                   help="run each method at the setting unlearn.py picked for it on its validation request")
    p.add_argument("--method-set", action="append", default=[], type=method_option, metavar="METHOD:KEY=VALUE",
                   help="an option of one method, after --train-set's and the pick's")
    p.add_argument("--reference-draws", type=positive_int, default=1, metavar="N",
                   help="with --retrained, also audit N-1 more draws of the reference (seeds --seed+1 .. --seed+N-1) "
                        "beside the first")
    p.add_argument("--against", choices=("first", "draws"), default="first",
                   help="judge every row against the first draw of the reference, or against the mean of the "
                        "--reference-draws N draws")
    p.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                   help="join earlier runs' JSONs (set beside the same reference) into --out, --table and --plot; "
                        "runs nothing")
    attack_options(p)
    args = p.parse_args(argv)
    if args.combine:
        return _write(combined(p, args.combine), args)
    check_last_seed(p, args.seed, args.seeds)
    if args.models and (args.picks or args.method_set):
        p.error("--models audits the kept models at the settings they were trained with: no --picks, no --method-set")
    picked_in = read_picks(p, args) if args.picks else None
    method_sets(p, args)
    for method in [] if args.models else args.methods.split(","):  # a wrong key, before the first audit
        try:
            api.method_configs(method, None, overrides_of(method, args))
        except UnseeError as e:
            p.error(f"{method}: {e}")
    if not args.attacks:
        p.error("--attacks none leaves this benchmark nothing to do; name at least one attack")
    if args.reference_draws > 1 and not args.retrained:
        p.error("--reference-draws sets more draws of the reference beside the first: add --retrained")
    if args.against == "draws" and args.reference_draws < 2:
        p.error("--against draws reads several draws of the reference as one: add --reference-draws N (N >= 2)")
    world, vanilla = vanilla_model(args)
    suite = api.load_suite(world, args.forget, seed=args.seed)
    kinds = list(args.attacks)
    cfg = api.audit_config(args.attack_set, args.seed)
    if "mia" in kinds:
        try:
            suite = api.attach_holdout(suite, world, cfg.mia_holdout, args.seed)
        except DataError as e:  # a world without held-out people: the other audits still run
            print(f"mia left out: {e}", flush=True)
            kinds.remove("mia")
    base = load_adapter(vanilla)
    before = frozen_copy(base, visual_only=True)

    def audit(adapter: Any, artifact: Any = None, changed: Any = None, reference: Any = None) -> dict:
        return api.audit_adapter(adapter, suite, kinds=kinds, artifact=artifact, vanilla=before, seed=args.seed,
                                 overrides=args.attack_set, strict=False, changed=changed, reference=reference,
                                 cache_dir=args.cache_dir)

    reference = None
    models = {"vanilla": model_fingerprint(vanilla)}  # what --combine compares, beside the figures
    rows: dict[str, Any] = {"vanilla": audit(base)}
    print("vanilla", rows["vanilla"], flush=True)
    if args.retrained:
        draws = [retrained_model(args, world, vanilla, args.forget, seed=s)
                 for s in draw_seeds(args.seed, args.reference_draws)]
        models["retrained"] = model_fingerprint(draws[0])
        each = [api.ReferenceAudits(d, suite, cfg, args.cache_dir) for d in draws]
        reference = each[0]
        if args.against == "draws":
            models["retrained_draws"] = [model_fingerprint(d) for d in draws]
            reference = api.ReferenceDraws(each)
        rows["retrained"] = {k: {n: v for n, v in reference(k).items() if n != "per_item"} for k in kinds}
        print("retrained", rows["retrained"], flush=True)
    settings, per_seed, seeds_run = {}, {}, {}
    from unsee.audit.quant import changed_linears, weight_digests

    digests = weight_digests(base)
    for method in args.methods.split(","):
        runs = []
        if args.models:
            kept = Path(args.models) / method
            if not (kept / "row.json").is_file():
                raise SystemExit(f"{kept}: no model saved by unlearn.py --keep for {method}")
            row = json.loads((kept / "row.json").read_text())
            trained = (row.get("vanilla"), row.get("forget"))
            if trained != (str(vanilla), args.forget):  # audited against another base, its figures would mean nothing
                p.error(f"{kept} was trained from {trained[0]} on {trained[1]}, not from {vanilla} on {args.forget}; "
                        "give the --world, --seed, --forget and recipe options unlearn.py --keep ran with")
            adapter, artifact = load_result(kept)
            settings[method] = row["overrides"]
            runs.append(audit(adapter, artifact, changed_linears(digests, adapter), reference))
            seeds_run[method] = [row["seed"]]
        else:
            overrides = overrides_of(method, args)
            settings[method] = overrides
            seeds_run[method] = list(range(args.seed, args.seed + args.seeds))
            for seed in seeds_run[method]:
                _, adapter, artifact = measure(method, vanilla, suite, args.forget, overrides, seed,
                                               {**eval_kw(args), "groups": ("forget",)})
                runs.append(audit(adapter, artifact, changed_linears(digests, adapter), reference))
                print(method, seed, runs[-1], flush=True)
        per_seed[method] = runs
        rows[method] = runs[0] if len(runs) == 1 else mean_attacks(runs)
    for k in range(0 if args.against == "draws" else 1, args.reference_draws):  # a draw judged as a method is
        name = f"retrained [seed {args.seed + k}]"
        again = load_adapter(draws[k])
        settings[name], seeds_run[name] = [f"seed={args.seed + k}"], [args.seed + k]
        others = reference if args.against == "first" else api.ReferenceDraws(each[:k] + each[k + 1:])
        per_seed[name] = [audit(again, None, changed_linears(digests, again), others)]
        rows[name] = per_seed[name][0]
        print(name, rows[name], flush=True)
    result = {"benchmark": "audits", "world": args.world, "seed": args.seed, "arch": args.arch, "forget": args.forget,
              "against": f"mean of {args.reference_draws} draws" if args.against == "draws" else "first draw",
              "settings": settings, **({"picked_in": picked_in} if picked_in else {}),
              "seeds_run": seeds_run, "attacks": rows, "per_seed": per_seed, "models": models,
              "targets": {m: targets(per_seed[m]) for m in per_seed}, "environment": environment()}
    return _write(result, args)


def _write(result: dict[str, Any], args: Any) -> dict[str, Any]:
    """The JSON, and the table and plot where asked."""
    atomic_write_json(Path(args.out), result)
    if args.table:
        atomic_write_text(Path(args.table), table(result))
    if args.plot:
        plot_audits(list(result["targets"].items()), args.plot)
    print(table(result))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
