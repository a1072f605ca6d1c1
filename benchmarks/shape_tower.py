"""Can the tiny visual module learn the general scenes' shapes at all, trained on nothing else?

``general`` on the default world stops near 0.77 because held-out shape reads about 0.33
(docs/results.md). This benchmark asks the question beneath: starting from the initial tiny
model, the visual module alone is trained on fresh general scenes, drawn by a generator of
its own as stage 1 draws them, with a classifier head on its tokens, and the head is scored
on held-out scenes every ``--eval-every`` steps. If the module cannot learn shape here, no
recipe of the later stages can teach it to the language model.

    python benchmarks/shape_tower.py --world default --steps 1500 --head concat
    python benchmarks/shape_tower.py --world default --steps 1500 --head attn --task general
    python benchmarks/shape_tower.py --world default --steps 1500 --train-scale 1,2.5

``--head``: ``concat`` is stage 1's linear head on the concatenated tokens; ``mlp`` puts a
hidden layer before it; ``attn`` pools the tokens with four learned attention queries, so the
head reads the object wherever it sits. ``--task general`` trains colour, count and position
heads beside the shape head, as stage 1 does. ``--train-scale LO,HI`` multiplies the radius of
each training object by a factor drawn from that range (a curriculum of larger objects); the
held-out scenes keep the world's size.

Writes ``benchmarks/results/shape_tower_<world>_<arch>_<head>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from common import model_options, scratch
from tqdm import tqdm
from transformers import AutoConfig

from unsee.data import scenes as general
from unsee.demo import DemoConfig, prepare_init
from unsee.engine.prepare import adamw, seed_everything
from unsee.finetune import cache_root
from unsee.io import atomic_write_json
from unsee.models import HFAdapter, load_adapter
from unsee.provenance import environment

CLASSES: dict[str, tuple[str, ...]] = {
    "colour": tuple(general.GENERAL_COLOURS), "shape": general.GENERAL_SHAPES,
    "count": ("1", "2", "3", "4"), "position": general.GENERAL_POSITIONS,
}


class AttnHead(torch.nn.Module):
    """Four learned queries pool the tokens, then an MLP classifies: position-free reading."""

    def __init__(self, dim: int, n: int, queries: int = 4) -> None:
        super().__init__()
        self.query = torch.nn.Linear(dim, queries)
        self.out = torch.nn.Sequential(torch.nn.Linear(queries * dim, 256), torch.nn.GELU(), torch.nn.Linear(256, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.query(x).softmax(1)
        return self.out(torch.einsum("btq,btd->bqd", weights, x).flatten(1))


class FlatHead(torch.nn.Module):
    """A head on the concatenated tokens (stage 1's, with ``hidden=0``)."""

    def __init__(self, tokens: int, dim: int, n: int, hidden: int = 0) -> None:
        super().__init__()
        self.net = (torch.nn.Linear(tokens * dim, n) if not hidden else torch.nn.Sequential(
            torch.nn.Linear(tokens * dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def make_head(kind: str, tokens: int, dim: int, n: int) -> torch.nn.Module:
    if kind == "attn":
        return AttnHead(dim, n)
    return FlatHead(tokens, dim, n, hidden=256 if kind == "mlp" else 0)


def scenes(rng: np.random.Generator, n: int, task: str, scale: tuple[float, float] | None = None) -> list[Any]:
    """``n`` general scenes as the world draws them (only shape scenes for ``task="shape"``),
    each object's radius multiplied by a factor drawn from ``scale`` when given."""
    items: list[Any] = []
    while len(items) < n:
        it = general.sample_general_item(rng)
        if task == "shape" and it.kind != "shape":
            continue
        if scale is not None:
            it = dataclasses.replace(it, radius=it.radius * float(rng.uniform(*scale)))
        items.append(it)
    return items


def labelled(items: list[Any], kind: str) -> tuple[list[int], torch.Tensor]:
    """Indices of the scenes that answer ``kind`` (position only at an edge), and their labels."""
    keep = [i for i, it in enumerate(items) if str(getattr(it, kind))]
    return keep, torch.tensor([CLASSES[kind].index(str(getattr(items[i], kind))) for i in keep], dtype=torch.long)


def rendered(items: list[Any]) -> list[Any]:
    return [general.render_general(it) for it in items]


def tokens_of(adapter: HFAdapter, images: list[Any]) -> torch.Tensor:
    return torch.stack(adapter.visual_features(adapter.image_inputs(images)))


def held_out_accuracy(adapter: HFAdapter, heads: torch.nn.ModuleDict, items: list[Any],
                      images: list[Any]) -> dict[str, float]:
    """Each head's accuracy on the held-out scenes (``images``, rendered once), each scored on its
    own question's scenes only, as the world's MCQ asks them."""
    adapter.model.eval()
    heads.eval()
    out = {}
    with torch.no_grad():
        x = torch.cat([tokens_of(adapter, images[i:i + 64]) for i in range(0, len(images), 64)])
        for kind, head in heads.items():
            keep = [i for i, it in enumerate(items) if it.kind == kind]
            _, y = labelled([items[i] for i in keep], kind)
            out[kind] = float((head(x[keep]).argmax(-1) == y).float().mean())
    adapter.model.train()
    heads.train()
    return out


def dct_patch_init(adapter: HFAdapter) -> None:
    """Set a CLIP patch embedding to low-frequency 2-D DCT filters, each on one colour-opponent
    channel (luminance, red-green, yellow-blue): an orthonormal, edge-preserving start like the
    first layer of a trained CLIP, instead of a random projection."""
    conv = adapter.model.model.vision_tower.embeddings.patch_embedding
    out, _, k, _ = conv.weight.shape
    n = torch.arange(k, dtype=torch.float64)
    basis = torch.cos(torch.pi * (n[None, :] + 0.5) * n[:, None] / k) * (2 / k) ** 0.5
    basis[0] /= 2 ** 0.5
    colours = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float64)
    colours = colours / colours.norm(dim=1, keepdim=True)
    freqs = sorted(((u, v) for u in range(k) for v in range(k)), key=lambda f: (f[0] + f[1], f))
    filters = [colours[c][:, None, None] * torch.outer(basis[u], basis[v])[None]
               for (u, v) in freqs[: -(-out // 3)] for c in range(3)][:out]
    with torch.no_grad():
        conv.weight.copy_(torch.stack(filters).to(conv.weight.dtype))


def with_patch_size(model: Path, patch: int) -> Path:
    """A copy of the tiny LLaVA ``model`` whose vision tower cuts ``patch``-pixel patches,
    freshly initialised (the patch embedding and position table change shape)."""
    import json
    import shutil

    from transformers import LlavaForConditionalGeneration

    out = scratch("shape-tower-") / "model"
    shutil.copytree(model, out)
    config = AutoConfig.from_pretrained(out)
    config.vision_config.patch_size = patch
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(out)
    processor = out / "processor_config.json"
    processor.write_text(json.dumps({**json.loads(processor.read_text()), "patch_size": patch}, indent=2))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_options(p)
    p.add_argument("--model", default=None, help="start from this model's visual module (default: the initial one)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak of a one-cycle schedule, as stage 1's")
    p.add_argument("--head", default="concat", choices=("concat", "mlp", "attn"))
    p.add_argument("--task", default="shape", choices=("shape", "general"),
                   help="shape: shape scenes and the shape head alone; general: every kind, as stage 1")
    p.add_argument("--train-scale", default=None, metavar="LO,HI", help="radius factor range of training objects")
    p.add_argument("--patch-init", default="model", choices=("model", "dct"),
                   help="the tiny LLaVA's patch embedding as the model has it, or low-frequency DCT filters")
    p.add_argument("--patch-size", type=int, default=None,
                   help="rebuild the tiny LLaVA's vision tower with this patch size (fresh weights)")
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--eval-scenes", type=int, default=400, help="held-out scenes of the task's kinds")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg = DemoConfig(world=args.world, world_overrides=args.world_set)
    model = Path(args.model) if args.model else prepare_init(cfg, args.arch, args.seed, cache_root(args.cache_dir))[1]
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    scale = tuple(float(v) for v in args.train_scale.split(",")) if args.train_scale else None
    if (args.patch_size or args.patch_init != "model") and AutoConfig.from_pretrained(model).model_type != "llava":
        p.error("--patch-size and --patch-init rebuild a CLIP tower: they need a tiny LLaVA model")
    adapter = load_adapter(with_patch_size(model, args.patch_size) if args.patch_size else model)
    if args.patch_init == "dct":
        dct_patch_init(adapter)
    params = adapter.set_scope("visual")
    kinds = ("shape",) if args.task == "shape" else tuple(CLASSES)
    rng, held_rng = np.random.default_rng(args.seed + 1), np.random.default_rng(args.seed + 99)
    held_out = scenes(held_rng, args.eval_scenes, args.task)
    held_images = rendered(held_out)
    with torch.no_grad():
        tokens, dim = tokens_of(adapter, held_images[:1]).shape[1:]
    heads = torch.nn.ModuleDict({k: make_head(args.head, tokens, dim, len(CLASSES[k])) for k in kinds})
    opt = adamw([{"params": [*params, *heads.parameters()]}], lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    curve: list[dict[str, Any]] = []
    adapter.model.train()
    start = time.perf_counter()
    bar = tqdm(range(1, args.steps + 1), desc=f"visual module, {args.task} heads ({args.head})")
    for step in bar:
        items = scenes(rng, args.batch, args.task, scale)
        x = tokens_of(adapter, rendered(items))
        losses = []
        for kind, head in heads.items():
            keep, y = labelled(items, kind)
            if keep:
                losses.append(F.cross_entropy(head(x[keep]), y))
        loss = torch.stack(losses).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            curve.append({"step": step, "loss": float(loss), "held_out": held_out_accuracy(adapter, heads, held_out,
                                                                                     held_images),
                          "seconds": time.perf_counter() - start})
            bar.write(f"step {step}: held-out {', '.join(f'{k} {v:.3f}' for k, v in curve[-1]['held_out'].items())}")
    res = {"benchmark": "shape_tower", "world": args.world, "arch": args.arch, "model": str(model),
           "task": args.task, "head": args.head, "steps": args.steps, "batch": args.batch, "lr": args.lr,
           "train_scale": list(scale) if scale else None, "patch_init": args.patch_init,
           "patch_size": adapter.model.config.vision_config.patch_size,
           "held_out_scenes": len(held_out),
           "chance": {k: 1 / len(CLASSES[k]) for k in kinds}, "curve": curve, "final": curve[-1]["held_out"],
           "seconds": time.perf_counter() - start, "threads": args.threads, "environment": environment()}
    out = Path(args.out or Path(__file__).parent / "results" / f"shape_tower_{args.world}_{args.arch}_{args.head}.json")
    atomic_write_json(out, res)
    print(f"held-out accuracy after {args.steps} steps: {res['final']} -> {out}")
    return res


if __name__ == "__main__":
    main()
