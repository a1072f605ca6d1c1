"""Can a linear probe read the general scenes' colour, shape, count and position from a model's visual features?

The diagnostic behind stage 1's general scenes: for each general question, a probe is fitted on
the pooled visual features of the world's general *training* scenes and tested on its held-out
general MCQ scenes (the label is the correct option). If the features cannot tell a shape
apart, no amount of language-model training answers "what shape is this?".

    python benchmarks/general_probe.py --world default
    python benchmarks/general_probe.py --world default --model ~/.cache/unsee/vanilla-tiny-llava-7458df106bcc7569

Writes ``benchmarks/results/general_probe_<world>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from common import vanilla_model

from unsee import api
from unsee.data.collate import image_of
from unsee.eval.attacks import pooled_features, probe_predict
from unsee.eval.results import environment
from unsee.io import atomic_write_json
from unsee.models import load_adapter


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="default", help="world config: quick or default")
    p.add_argument("--model", default=None, help="a model directory to probe (default: the world's vanilla model)")
    p.add_argument("--steps", type=int, default=300, help="full-batch steps of the logistic regression")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ns = argparse.Namespace(threads=args.threads, world=args.world, recipe=None, world_set=[], recipe_set=[],
                            cache_dir=args.cache_dir, arch="tiny-llava", seed=args.seed)
    world, vanilla = vanilla_model(ns)
    model = Path(args.model or vanilla)
    suite = api.load_suite(world, "forget_10", seed=args.seed)
    adapter = load_adapter(model)
    fit, test = defaultdict(list), defaultdict(list)
    for e in suite.groups.get("train_general", []):
        fit[e.question].append(e)
    for e in suite.groups.get("general", []):
        if e.options:
            test[e.question].append(e)
    rows = {}
    for question in sorted(set(fit) & set(test)):
        classes = sorted({e.answer for e in fit[question]})
        items = [e for e in test[question] if e.options[e.correct] in classes]
        x_fit = pooled_features(adapter, [image_of(e) for e in fit[question]]).float()
        x_test = pooled_features(adapter, [image_of(e) for e in items]).float()
        y_fit = torch.tensor([classes.index(e.answer) for e in fit[question]])
        y_test = torch.tensor([classes.index(e.options[e.correct]) for e in items])
        pred = probe_predict(x_fit, y_fit, x_test, len(classes), args.steps, args.seed)
        rows[question] = {"test_acc": float((pred == y_test).float().mean()), "n_fit": len(y_fit),
                          "n_test": len(y_test), "classes": len(classes), "chance": round(1 / len(classes), 4)}
        print(f"{question:45s} {rows[question]['test_acc']:.3f}  (chance {1 / len(classes):.3f}, "
              f"{len(y_fit)} fit, {len(y_test)} test)", flush=True)
    result = {"benchmark": "general_probe", "world": args.world, "model": str(model), "probe_steps": args.steps,
              "seed": args.seed, "questions": rows, "environment": environment()}
    out = Path(args.out or f"benchmarks/results/general_probe_{args.world}.json")
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
