"""How much of each photo group's layer inputs lies in the space NCU lets updates use.

An update confined to a subspace moves a layer's output on an input only through the part of
the input inside it, so the fraction of each group's input energy there says, to first order,
which photos a run can move. This compares NCU's two subspaces on the vanilla model: the
retained null space (``subspace: null``) and the forget-against-retained contrast space
(``subspace: contrast``), for the retained, forget, held-out, known, neutral and general photos.

    python benchmarks/subspace_energy.py --world default --threads 2

Writes ``benchmarks/results/subspace_energy_<world>.json``: per subspace, per group, the mean
fraction over the visual layers and the fractions of the last tower block's ``fc2`` and the
projector's last linear layer. No model is trained beyond the cached vanilla one.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from common import model_options, vanilla_model, write_result
from PIL import Image
from torch import nn

from unsee.engine.constraints import unfold_conv_input
from unsee.methods.ncu import contrast_space, input_covariances, null_space
from unsee.models import HFAdapter, load_adapter
from unsee.provenance import environment
from unsee.runs import load_suite

GROUPS = {"retain": "train_retain", "forget": "train_forget", "forget_test": "forget_test", "known": "train_known",
          "neutral": "neutral", "general": "general"}
PER_GROUP = 120  # photos a group is read on (every one where it has fewer)


def photos(examples: Sequence, limit: int | None = None) -> list[Image.Image]:
    """The distinct photos of a group, in order."""
    seen: dict[bytes, Image.Image] = {}
    for e in examples:
        if e.image is not None and e.image not in seen:
            seen[e.image] = Image.open(io.BytesIO(e.image)).convert("RGB")
    return list(seen.values())[:limit]


@torch.no_grad()
def energy_fractions(adapter: HFAdapter, images: list[Image.Image], projs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer: the share of the inputs' squared norm inside the layer's projector."""
    inside: dict[str, float] = {}
    total: dict[str, float] = {}

    def hook(name: str, mod: nn.Module) -> Callable:
        def fn(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0]
            rows = unfold_conv_input(mod, x) if isinstance(mod, nn.Conv2d | nn.Conv3d) else x.reshape(-1, x.shape[-1])
            rows = rows.float()
            inside[name] = inside.get(name, 0.0) + float(((rows @ projs[name]) * rows).sum())
            total[name] = total.get(name, 0.0) + float((rows * rows).sum())
        return fn

    layers = adapter.linear_modules("vision") + adapter.linear_modules("projector")
    hooks = [mod.register_forward_hook(hook(name, mod)) for name, mod in layers if name in projs]
    try:
        with adapter.eval_mode():
            for i in range(0, len(images), 32):
                adapter.visual_features(adapter.image_inputs(images[i : i + 32]))
    finally:
        for h in hooks:
            h.remove()
    return {k: inside[k] / total[k] for k in inside}


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--energy", type=float, default=0.01, help="the null space's energy (the shipped 0.01)")
    p.add_argument("--contrast-rank", type=float, default=0.02)
    p.add_argument("--ncu-images", type=int, default=1024, help="retained photos in the covariance (shipped 1024)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    world, vanilla = vanilla_model(args)
    adapter = load_adapter(vanilla)
    suite = load_suite(world, args.forget)
    base = (photos(suite.groups["train_retain"]) + photos(suite.groups.get("train_general", [])))[: args.ncu_images]
    retained = input_covariances(adapter, base)
    forget = input_covariances(adapter, photos(suite.groups["train_forget"]))
    spaces = {"null": {k: null_space(*v, args.energy) for k, v in retained.items()},
              "contrast": {k: contrast_space(v, forget[k], args.contrast_rank) for k, v in retained.items()}}
    last = [adapter.linear_modules("vision")[-1][0], adapter.linear_modules("projector")[-1][0]]
    out: dict = {"world": args.world, "forget": args.forget, "energy": args.energy,
                 "contrast_rank": args.contrast_rank, "covariance_photos": len(base), "last_layers": last,
                 "environment": environment(), "subspaces": {}}
    for space, projs in spaces.items():
        rows = {}
        for group, key in GROUPS.items():
            frac = energy_fractions(adapter, photos(suite.groups.get(key, []), PER_GROUP), projs)
            rows[group] = {"mean": sum(frac.values()) / len(frac), "last": [frac[n] for n in last]}
            tail = [round(v, 4) for v in rows[group]["last"]]
            print(f"{space:9s} {group:12s} mean {rows[group]['mean']:.4f}  last {tail}")
        out["subspaces"][space] = rows
    write_result(Path(args.out or f"benchmarks/results/subspace_energy_{args.world}.json"), out)
    return out


if __name__ == "__main__":
    main()
