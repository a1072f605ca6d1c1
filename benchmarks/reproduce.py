"""Does the vanilla model come back bit for bit when trained again from an empty cache?

Every method table rests on one vanilla model, and a cache key that changes (new code, a
new version of unsee) trains it again. This trains the world, the initial model and the
three stages into a fresh cache and compares every tensor with the model already in the
shared cache (or ``--against``). Equality holds on CPU at a fixed thread count.

    python benchmarks/reproduce.py --world default --threads 2

Writes ``benchmarks/results/reproduce_<world>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import model_options, vanilla_model
from safetensors.torch import load_file

from unsee.io import atomic_write_json
from unsee.provenance import environment

WEIGHTS = "model.safetensors"


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Tensor by tensor: which differ, and by how much at most."""
    x, y = load_file(str(a / WEIGHTS)), load_file(str(b / WEIGHTS))
    if set(x) != set(y):
        return {"identical": False, "n_tensors": len(x), "differing": sorted(set(x) ^ set(y)), "max_abs_diff": None}
    differing = sorted(k for k in x if not torch.equal(x[k], y[k]))
    diff = max(((x[k].float() - y[k].float()).abs().max().item() for k in differing), default=0.0)
    return {"identical": not differing, "n_tensors": len(x), "differing": differing, "max_abs_diff": diff}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--against", default=None, help="a model directory to compare with (default: the cached one)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    against = Path(args.against) if args.against else vanilla_model(args)[1]
    with tempfile.TemporaryDirectory(prefix="unsee-reproduce-") as fresh:
        t0 = time.perf_counter()
        _, again = vanilla_model(argparse.Namespace(**{**vars(args), "cache_dir": fresh}))
        seconds = time.perf_counter() - t0
        result = {"benchmark": "reproduce", "world": args.world, "arch": args.arch, "seed": args.seed,
                  "threads": torch.get_num_threads(), "against": str(against), "seconds_from_empty_cache": seconds,
                  **compare(against, again), "environment": environment()}
    out = Path(args.out or f"benchmarks/results/reproduce_{args.world}.json")
    atomic_write_json(out, result)
    print(f"identical: {result['identical']} ({result['n_tensors']} tensors, max abs diff "
          f"{result['max_abs_diff']}), {seconds:.0f} s from an empty cache; wrote {out}")
    return result


if __name__ == "__main__":
    main()
