"""Every method on one removal request: metrics, unlearning score and cost, with a fair sweep.

    python benchmarks/unlearn.py --out benchmarks/results/unlearn_default.json
    python benchmarks/unlearn.py --world quick --methods cvf_ncu,graddiff,eraser --out /tmp/unlearn_quick.json

Each training method runs at its shipped setting and, with ``--lr-scales``/``--epoch-scales``,
at multiples of the shipped learning rate and epochs (``--sweep`` picks which methods get the
sweep, to bound the time on the default world); the best setting by unlearning score
is the method's row (the whole sweep is kept in the JSON). ``eraser`` runs at its shipped
setting and with ``sweep=true`` (layers and strength picked on training QA). The selection
uses the reported groups themselves, as public unlearning benchmarks do; `forget_test`
(held-out views and paraphrases) is never trained on. A results.json of the vanilla model
and each method's best run is written beside, for ``unsee report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from common import ALL, check, eval_kw, mcq, measure, parser, retrained_model, score, vanilla_model

from unsee import api
from unsee.eval.results import new_results, write_results
from unsee.io import atomic_write_json
from unsee.methods import method_class
from unsee.methods.artifact import Artifact
from unsee.models import HFAdapter, load_adapter
from unsee.provenance import environment


def settings(method: str, args: argparse.Namespace) -> list[list[str]]:
    """The override lists a method is run with: the shipped setting first."""
    swept = args.sweep == "all" or method in args.sweep.split(",")
    cls = method_class(method)
    if not cls.trains_weights:  # a test-time method: its shipped setting and its own sweep, if it has one
        own_sweep = "sweep" in {f.name for f in dataclasses.fields(cls.Config)}
        return [[], ["sweep=true"]] if swept and own_sweep and args.lr_scales != [1.0] else [[]]
    if not swept:
        return [list(args.train_set)]
    tcfg, _, _ = api.method_configs(method, None, [])
    out = []
    for ls in args.lr_scales:
        for es in args.epoch_scales:
            ov = [] if ls == 1.0 else [f"lr={tcfg.lr * ls:.3g}"]
            ov += [] if es == 1.0 else [f"epochs={tcfg.epochs * es:g}"]
            out.append(ov)
    return [[*args.train_set, *ov] for ov in sorted(out, key=len)]


def targets(best: dict[str, dict], vanilla: dict[str, Any], rows: list[dict]) -> dict[str, dict[str, Any]]:
    """The headline and MLLMEraser targets, checked on the best rows."""
    out: dict[str, dict[str, Any]] = {}
    v = {g: mcq(vanilla, g) for g in ("retain", "text_forget", "known", "general")}
    graddiff = best.get("graddiff")
    if "cvf_ncu" in best:
        m, row = best["cvf_ncu"]["metrics"], best["cvf_ncu"]
        t = {
            "forget": check(mcq(m, "forget"), "<=", 0.30),
            "forget_test": check(mcq(m, "forget_test"), "<=", 0.35),
            "text_forget": check(mcq(m, "text_forget"), ">=", (v["text_forget"] or 0) - 0.02),
            "retain": check(mcq(m, "retain"), ">=", 0.97 * (v["retain"] or 0)),
            "known": check(mcq(m, "known"), ">=", 0.97 * (v["known"] or 0)),
            "general": check(mcq(m, "general"), ">=", 0.98 * (v["general"] or 0)),
            "score_highest": {"value": row["score"]["score"],
                              "pass": row["score"]["score"] is not None and all(
                                  (r["score"]["score"] or 0) <= row["score"]["score"] for r in best.values())},
        }
        if graddiff:
            t["wall_s"] = check(row["cost"]["wall_s"], "<=", 0.5 * graddiff["cost"]["wall_s"])
            t["peak_rss_bytes"] = check(row["cost"]["peak_rss_bytes"], "<=", graddiff["cost"]["peak_rss_bytes"])
        out["cvf_ncu"] = t
    for method in (name for name in best if not method_class(name).trains_weights):  # MLLMEraser's targets
        m, row = best[method]["metrics"], best[method]
        t = {
            "forget": check(mcq(m, "forget"), "<=", 0.30),
            "forget_test": check(mcq(m, "forget_test"), "<=", 0.40),
            "retain": check(mcq(m, "retain"), ">=", 0.95 * (v["retain"] or 0)),
            "text_forget": check(mcq(m, "text_forget"), ">=", 0.95 * (v["text_forget"] or 0)),
            "general": check(mcq(m, "general"), ">=", 0.97 * (v["general"] or 0)),
        }
        shipped = next((r for r in rows if r["method"] == method and not r["overrides"]), None)
        if graddiff and shipped:  # the documented default's build; the sweep is a one-off choice
            t["build_s"] = check(shipped["cost"]["wall_s"], "<=", 0.1 * graddiff["cost"]["wall_s"])
        if "generation" in row:
            t["generation_overhead"] = check(row["generation"]["overhead"], "<=", 0.15)
        out[method] = t
    return out


def keep(out: Path, adapter: HFAdapter, artifact: Artifact, row: dict[str, Any]) -> None:
    """A method's best model as audits.py reads it (:func:`unsee.methods.artifact.load_result`): ``model/``,
    beside it the artifact of a method that trains no weights (``steering.safetensors``), and the row."""
    if out.exists():
        shutil.rmtree(out)
    adapter.save(out / "model")
    if not method_class(row["method"]).trains_weights:
        artifact.save(out)
    atomic_write_json(out / "row.json", {k: row[k] for k in ("method", "overrides", "score")})


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods=",".join(ALL), out="benchmarks/results/unlearn.json")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--lr-scales", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    p.add_argument("--epoch-scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="save each method's best model (and steering file) to DIR/METHOD, for audits.py --models")
    p.add_argument("--sweep", default="all",
                   help="comma list of the methods that get the sweep; the others run at their shipped setting")
    args = p.parse_args(argv)
    world, vanilla = vanilla_model(args)
    suite = api.load_suite(world, args.forget, seed=args.seed)
    kw = eval_kw(args)
    start = time.perf_counter()
    v_metrics = api.evaluate_adapter(load_adapter(vanilla), suite, **kw)
    v_run = api.make_run("vanilla", v_metrics, model=args.arch, suite=suite, forget=args.forget, seed=args.seed)
    v_run["eval_s"] = round(time.perf_counter() - start, 1)
    reference: dict[str, Any] = {}
    if args.retrained:
        r_metrics = api.evaluate_adapter(load_adapter(retrained_model(args, world, vanilla, args.forget)), suite, **kw)
        reference = {"retrained": {"metrics": r_metrics, "score": score(v_metrics, {"metrics": r_metrics})}}
        print(f"{'retrained':12s} {'(reference)':28s} score={reference['retrained']['score']['score']} "
              f"forget={mcq(r_metrics, 'forget')} retain={mcq(r_metrics, 'retain')}", flush=True)
    rows: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    best_runs: dict[str, dict] = {}
    out = Path(args.out)

    def write(complete: bool) -> dict[str, Any]:
        """The JSON so far: a long sweep that stops early keeps the rows it finished."""
        result = {
            "benchmark": "unlearn", "world": args.world, "arch": args.arch, "forget": args.forget,
            "seed": args.seed, "complete": complete, "eval": kw, "vanilla": v_metrics, **reference, "rows": rows,
            "best": best,
            "targets": targets(best, v_metrics, rows), "environment": environment(),
        }
        atomic_write_json(out, result)
        write_results(out.with_suffix(".results.json"), new_results([v_run, *best_runs.values()]), overwrite=True)
        return result

    for method in args.methods.split(","):
        for overrides in settings(method, args):
            run, adapter, artifact = measure(method, vanilla, suite, args.forget, overrides, args.seed, kw)
            row = {"method": method, "overrides": overrides, "score": score(v_metrics, run),
                   "metrics": run["metrics"], "cost": run["cost"]}
            if not method_class(method).trains_weights:  # its hooks cost time at every generation
                from unsee.methods.eraser import generation_overhead

                row["generation"] = generation_overhead(load_adapter(vanilla), suite, artifact)
            rows.append(row)
            print(f"{method:12s} {' '.join(overrides) or '(shipped)':28s} score={row['score']['score']} "
                  f"forget={mcq(run['metrics'], 'forget')} retain={mcq(run['metrics'], 'retain')} "
                  f"wall={run['cost']['wall_s']:.1f}s", flush=True)
            if method not in best or (row["score"]["score"] or 0) > (best[method]["score"]["score"] or 0):
                best[method], best_runs[method] = row, run
                if args.keep:
                    keep(Path(args.keep) / method, adapter, artifact, row)
            write(complete=False)
    result = write(complete=True)
    print(f"wrote {out} and {out.with_suffix('.results.json')}")
    return result


if __name__ == "__main__":
    main()
