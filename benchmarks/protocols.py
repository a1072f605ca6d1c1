"""The two scoring protocols side by side: log-likelihood and the benchmark's own, on one world.

    python benchmarks/protocols.py --world quick --threads 2 --out benchmarks/results/protocols_quick.json

The vanilla model and each method's result (shipped settings) are scored twice from the
same weights: ``loglik`` (MCQ by the likeliest option text) and ``official`` (MCQ by the
letter of a generated reply, MLLMU-Bench's reading; cloze and generation are scored the
same way under both, so they differ only in their reply budget). For every MCQ group the
JSON gives both accuracies, the unlearning score under each, and where the two readings
disagree item by item: how many items one protocol counts right and the other wrong,
and, of the official misses, how many replies held no valid letter at all (the model did
not follow the answer format) rather than a wrong one. A results.json with both
protocols' runs (and their samples.jsonl) is written beside, for ``unsee report``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import measure, parser, vanilla_model

from unsee import api
from unsee.data.schema import LETTERS
from unsee.eval.metrics import unlearning_score
from unsee.eval.protocols import PROTOCOLS
from unsee.eval.results import SAMPLES_KEY, load_samples, new_results, write_results
from unsee.io import atomic_write_json
from unsee.models import load_adapter
from unsee.provenance import environment

MCQ_GROUPS = ("forget", "forget_test", "retain", "text_forget", "text_retain", "known", "general")


def agreement(loglik: Sequence[Mapping[str, Any]], official: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per MCQ group, how the two readings of the same items agree, and why official misses."""
    out: dict[str, Any] = {}
    ll = {(r["group"], r["uid"]): r for r in loglik if r["task"] == "mcq"}
    for group in MCQ_GROUPS:
        pairs = [(ll[(r["group"], r["uid"])], r) for r in official
                 if r["task"] == "mcq" and r["group"] == group and (r["group"], r["uid"]) in ll]
        if not pairs:
            continue
        misses = [o for _, o in pairs if not o["correct"]]
        valid = lambda o: o["extracted"] is not None and o["extracted"] in LETTERS[: len(o["options"])]  # noqa: E731
        out[group] = {
            "n": len(pairs),
            "both_right": sum(a["correct"] and b["correct"] for a, b in pairs),
            "only_loglik_right": sum(a["correct"] and not b["correct"] for a, b in pairs),
            "only_official_right": sum(b["correct"] and not a["correct"] for a, b in pairs),
            "both_wrong": sum(not a["correct"] and not b["correct"] for a, b in pairs),
            "official_no_valid_letter": sum(not valid(o) for o in misses),
            # the reply begins with an option's text instead of its letter: the answer, in the wrong format
            "official_reply_is_option_text": sum(_names_option(o) is not None for _, o in pairs),
            "official_reply_is_correct_text": sum(_names_option(o) == o["answer"] for _, o in pairs),
            "official_same_choice": sum(a["extracted"] == b["extracted"] for a, b in pairs),
            # a reply with no letter counts under "None"
            "official_letter_counts": {k: sum(str(b["extracted"]) == k for _, b in pairs)
                                       for k in sorted({str(b["extracted"]) for _, b in pairs})},
        }
    return out


def _names_option(rec: Mapping[str, Any]) -> str | None:
    """The option whose text the reply starts with (the longest such), or None."""
    reply = (rec.get("reply") or "").strip().casefold()
    hits = [o for o in rec["options"] if o and reply.startswith(o.strip().casefold())]
    return max(hits, key=len) if hits else None


def reanalyse(out: Path) -> dict:
    """Recompute the item-level agreement of a finished run from its samples.jsonl (no model needed)."""
    result = json.loads(out.read_text())
    lines = load_samples(out.with_suffix(".results.json"))
    for method, row in result["rows"].items():
        mine = {p: [ln for ln in lines if ln["method"] == method and ln["protocol"] == p] for p in PROTOCOLS}
        row["agreement"] = agreement(mine["loglik"], mine["official"])
    atomic_write_json(out, result)
    return result


def summary(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    return {g: (metrics.get(g) or {}).get("mcq") for g in MCQ_GROUPS}


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__, methods="cvf_ncu,graddiff", out="benchmarks/results/protocols_quick.json", retrained=False)
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--max-gen-items", type=int, default=0, help="cloze/generation items per group (0: all)")
    p.add_argument("--reanalyse", action="store_true",
                   help="only recompute the agreement figures of --out from its samples.jsonl")
    p.set_defaults(world="quick", max_items=0)
    args = p.parse_args(argv)
    if args.reanalyse:
        return reanalyse(Path(args.out))
    world, vanilla = vanilla_model(args)
    suite = api.load_suite(world, args.forget, seed=args.seed)
    kw = {"max_items": args.max_items or None, "max_gen_items": args.max_gen_items or None,
          "generation": args.generation, "progress": False}
    out = Path(args.out)
    rows: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    base: dict[str, dict[str, Any]] = {}

    for method in ["vanilla", *args.methods.split(",")]:
        start = time.perf_counter()
        if method == "vanilla":
            adapter, artifact, config, cost = load_adapter(vanilla), None, {}, None
        else:
            run, adapter, artifact = measure(method, vanilla, suite, args.forget, list(args.train_set), args.seed,
                                             {**kw, "groups": ()})  # scored below, under both protocols
            config, cost = run["config"], run["cost"]
        train_s = round(time.perf_counter() - start, 1)
        found: dict[str, Any] = {}
        for protocol in ("loglik", "official"):
            t0 = time.perf_counter()
            ev = api.evaluation(adapter, suite, artifact=artifact, protocol=protocol, **kw)
            found[protocol] = ev
            runs.append(api.make_run(method, ev, model=args.arch, suite=suite, forget=args.forget, seed=args.seed,
                                     config=config, cost=cost, eval_s=round(time.perf_counter() - t0, 1)))
        if method == "vanilla":
            base = {p: found[p].metrics for p in found}
        rows[method] = {
            "train_s": train_s,
            "mcq": {p: summary(found[p].metrics) for p in found},
            "metrics": {p: found[p].metrics for p in found},
            "eval_s": {r["protocol"]: r["eval_s"] for r in runs[-2:]},
            "score": {p: (None if method == "vanilla" else unlearning_score(base[p], found[p].metrics))
                      for p in found},
            "agreement": agreement(found["loglik"].samples, found["official"].samples),
        }
        print(f"{method:10s} loglik {summary(found['loglik'].metrics)}\n{'':10s} official "
              f"{summary(found['official'].metrics)}", flush=True)
        result = {"benchmark": "protocols", "world": args.world, "arch": args.arch, "forget": args.forget,
                  "seed": args.seed, "eval": kw, "rows": rows, "environment": environment()}
        atomic_write_json(out, result)
    write_results(out.with_suffix(".results.json"), new_results(runs), overwrite=True)
    assert all(SAMPLES_KEY in r for r in runs)
    return result


if __name__ == "__main__":
    main()
