"""Can a linear probe read the general scenes' colour, shape, count and position from a model's visual features?

The diagnostic behind stage 1's general scenes: for each general question, a probe is fitted on
the pooled visual features of the world's general *training* scenes and tested on its held-out
general MCQ scenes (the label is the correct option). If the features cannot tell a shape
apart, no amount of language-model training answers "what shape is this?".

    python benchmarks/general_probe.py --world default
    python benchmarks/general_probe.py --world default --model ~/.cache/unsee/vanilla-tiny-llava-7458df106bcc7569
    python benchmarks/general_probe.py --world default --finetune-steps 400 --finetune-scope language

With ``--finetune-steps``, a copy of the model is also fine-tuned on the general training
scenes' questions alone, and the held-out general MCQ is scored by kind before and after: if
a shape that the whole vanilla recipe did not teach is not learnt from those scenes either,
the scenes or the features are short, not the recipe's mixture.

Writes ``benchmarks/results/general_probe_<world>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import model_options, vanilla_model, write_result

from unsee import api
from unsee.audit.attacks import pooled_features, probe_predict
from unsee.data.collate import image_of, qa_turns
from unsee.data.schema import Suite
from unsee.engine.trainer import TrainConfig, train
from unsee.eval.evaluator import mcq_loglik
from unsee.methods.baselines import SFT
from unsee.models import HFAdapter, load_adapter
from unsee.models.base import SCOPES
from unsee.provenance import environment


def general_by_kind(adapter: HFAdapter, suite: Suite) -> dict[str, Any]:
    """Held-out general MCQ accuracy, pooled and by kind (``vanilla.by_kind``)."""
    from vanilla import by_kind

    items = [e for e in suite.groups.get("general", []) if e.options and e.has_image]
    ok = mcq_loglik(adapter, items, batch_size=64)
    return {"all": float(np.mean(ok)), "by_kind": by_kind(items, ok)}


def finetune_on_general(adapter: HFAdapter, suite: Suite, steps: int, scope: str, seed: int) -> dict[str, Any]:
    """The model (in place) fine-tuned on the general training scenes' questions alone, scored before and after."""
    before = general_by_kind(adapter, suite)
    cfg = TrainConfig(scope=scope, lr=5e-4, max_steps=steps, batch_size=16, seed=seed, schedule="cosine",
                      warmup_ratio=0.05, progress=False)
    res = train(SFT(), adapter, suite, {"train": qa_turns(suite.groups.get("train_general", []))}, cfg)
    return {"steps": steps, "scope": scope, "lr": cfg.lr, "final_nll": float(np.mean(res.losses[-20:])),
            "before": before, "after": general_by_kind(adapter, suite)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--model", default=None, help="a model directory to probe (default: the world's vanilla model)")
    p.add_argument("--steps", type=int, default=300, help="full-batch steps of the logistic regression")
    p.add_argument("--out", default=None)
    p.add_argument("--finetune-steps", type=int, default=0,
                   help="also fine-tune a copy on the general training scenes for this many steps (0: off)")
    p.add_argument("--finetune-scope", default="language", choices=SCOPES, help="what that fine-tune trains")
    args = p.parse_args(argv)
    world, vanilla = vanilla_model(args)
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
    if args.finetune_steps > 0:
        result["finetune"] = tuned = finetune_on_general(adapter, suite, args.finetune_steps, args.finetune_scope,
                                                         args.seed)
        for when in ("before", "after"):
            print(when, f"{tuned[when]['all']:.3f}",
                  {k: round(v["acc"], 2) for k, v in tuned[when]["by_kind"].items()}, flush=True)
    out = Path(args.out or f"benchmarks/results/general_probe_{args.world}.json")
    write_result(out, result)
    return result


if __name__ == "__main__":
    main()
