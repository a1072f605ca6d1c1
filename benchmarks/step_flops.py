"""The arithmetic of a training step: FLOPs counted, where wall time is only measured.

A method's wall time on a shared CPU moved by a fifth between days; its FLOPs do not move.
This counts them (torch's ``FlopCounterMode``: matrix products, convolutions and attention),
in two parts:

1. **The tiny architectures, whole runs.** Each method trains from the untrained tiny model
   for 2 and for 4 steps under the counter, after one uncounted warm-up run; half the
   difference is one step's FLOPs (the mean of steps 3 and 4: GradDiff's batches pad to their
   longest item, so its steps differ a little), and the rest of the 2-step run is what a run does once
   (NCU's covariances, the reference's neutral photos, the one-item evaluation). With the
   number of steps a full run takes, this gives the ratio of ``cvf_ncu``'s arithmetic to
   GradDiff's, to read beside ``arch_profile.py``'s wall ratio.
2. **The hub shapes, per item.** One image through the visual module, ``V``, and one item's
   tokens through the language model and its head, ``L``, counted on random-weight copies of
   the hub configs cut to two and three layers: every layer of a tower has the same shape, so
   the full depth is the cut one plus the per-layer difference times the missing layers.
   Each method's step on a tiny model is ``k_c V`` (``cvf_ncu``: the visual module alone) and
   ``k_g (V + L)`` (GradDiff: the whole model); the ``k`` counted there carry to the hub
   shape of the same family, and give the ratio a 7B model would see at the same number of
   steps. That is an estimate, and is labelled one: the step counts are the built-in
   world's, GradDiff trains the whole model (its shipped scope; with LoRA its backward
   computes fewer weight gradients), and the layers are counted at one image size
   (``shapes.IMAGE_SIDE``).

    python benchmarks/step_flops.py --world default --threads 2

Writes ``benchmarks/results/step_flops_<world>.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import ONE_ITEM_EVAL as EVAL
from common import arch_list, measure, positive_int, suite_or_exit, untrained_options
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from unsee.data.collate import qa_turns
from unsee.demo import DemoConfig, prepare_init
from unsee.finetune import cache_root
from unsee.io import atomic_write_json
from unsee.models import adapter_class, load_adapter
from unsee.models.base import Adapter
from unsee.models.shapes import IMAGE_SIDE, TINY_SIDE, build_shaped, depths, hub_config, shrink
from unsee.provenance import environment

# Each tiny architecture's hub counterpart, whose layers are the same kind.
HUB = {"tiny-llava": "llava-1.5-7b", "tiny-qwen2-vl": "qwen2-vl-7b"}
METHODS = ("cvf_ncu", "graddiff")


def counted(fn: Callable[[], Any]) -> tuple[int, Any]:
    """The FLOPs ``fn`` runs, and what it returns."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
    return int(counter.get_total_flops()), out


def run_flops(method: str, init: Path, suite: Any, forget: str, overrides: list[str], seed: int) -> dict[str, Any]:
    """A step's FLOPs and a run's once-only FLOPs, from runs of 2 and 4 steps (after a warm-up)."""
    run = lambda n: measure(method, init, suite, forget, [*overrides, f"max_steps={n}"], seed, EVAL)  # noqa: E731
    run(1)  # whatever a first run in this process caches, the counted runs find cached
    (two, _), (four, _) = counted(lambda: run(2)), counted(lambda: run(4))
    step = (four - two) / 2
    return {"step_flops": step, "once_flops": two - 2 * step}


def full_steps(method: str, init: Path, suite: Any, forget: str, overrides: list[str], seed: int) -> int:
    """The steps a full run of ``method`` takes: one uncounted run, whose last logged step is its last."""
    run, _, _ = measure(method, init, suite, forget, overrides, seed, EVAL)
    return int(run["history"][-1]["step"])


def item_flops(adapter: Adapter, image: Image.Image, text_tokens: int) -> dict[str, int]:
    """``V``: one image through the visual module; ``L``: its tokens and ``text_tokens`` more
    through the language model and its head."""
    with torch.no_grad():
        inputs = adapter.image_inputs([image])
        vis, tokens = counted(lambda: adapter.visual_features(inputs))
        n_image = tokens[0].shape[0]
        (owner, name), (head_owner, head_name) = adapter.language_slots()
        language, head = getattr(owner, name), getattr(head_owner, head_name)
        embeds = torch.zeros(1, n_image + text_tokens, adapter.model.get_input_embeddings().embedding_dim)
        lm, _ = counted(lambda: head(language(inputs_embeds=embeds).last_hidden_state))
    return {"V": vis, "L": lm, "image_tokens": int(n_image), "text_tokens": text_tokens}


def hub_item_flops(shape: str, text_tokens: int, tiny: bool = False) -> dict[str, Any]:
    """``V`` and ``L`` of a hub shape, counted at two and three layers and carried to its full depth
    (``tiny``: the shape shrunk as ``unsee model init --shape`` builds it by default, for tests)."""
    cfg = shrink(hub_config(shape)) if tiny else hub_config(shape)
    depth_v, depth_l = depths(cfg)
    side = TINY_SIDE if tiny else IMAGE_SIDE[cfg["model_type"]]
    image = Image.new("RGB", (side, side), (128, 96, 64))
    at = {}
    for layers in (2, 3):
        model, processor = build_shaped(shape, tiny=tiny, layers=layers)
        at[layers] = item_flops(adapter_class(cfg["model_type"])(model, processor), image, text_tokens)
        del model
    per_v, per_l = at[3]["V"] - at[2]["V"], at[3]["L"] - at[2]["L"]
    return {"V": at[2]["V"] + (depth_v - 2) * per_v, "L": at[2]["L"] + (depth_l - 2) * per_l,
            "image_tokens": at[2]["image_tokens"], "text_tokens": text_tokens, "depths": [depth_v, depth_l],
            "image_side": side}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    untrained_options(p, world="default", archs=list(HUB))
    p.add_argument("--hub", action=argparse.BooleanOptionalAction, default=True,
                   help="also count the hub shapes (a few GB of random weights, a minute or two)")
    p.add_argument("--hub-text-tokens", type=positive_int, default=64,
                   help="text tokens of a hub item beside its image tokens (a question and its answer)")
    p.add_argument("--out", default=None, help="default: benchmarks/results/step_flops_<world>.json")
    args = p.parse_args(argv)
    archs = arch_list(p, args.archs)
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(world=args.world, recipe=args.world, world_overrides=args.world_set)
    rows: dict[str, Any] = {}
    for arch in archs:
        world, init, _ = prepare_init(cfg, arch, args.seed, cache_root(args.cache_dir))
        suite = suite_or_exit(p, world, args.forget)
        adapter = load_adapter(init)
        turns = qa_turns(suite.groups["train_forget"][:8])
        batch = adapter.training_batch(turns)
        text = batch["attention_mask"].sum(1) - (batch["input_ids"] == adapter.image_token_id).sum(1)
        tiny = item_flops(adapter, turns[0].image, round(text.float().mean().item()))
        row: dict[str, Any] = {"item": tiny}
        for m in METHODS:
            row[m] = {**run_flops(m, init, suite, args.forget, args.train_set, args.seed),
                      "steps": full_steps(m, init, suite, args.forget, args.train_set, args.seed)}
            row[m]["run_flops"] = row[m]["step_flops"] * row[m]["steps"] + row[m]["once_flops"]
        c, g = row["cvf_ncu"], row["graddiff"]
        row["k_cvf"] = c["step_flops"] / tiny["V"]  # image passes a step, in units of one image's forward
        row["k_graddiff"] = g["step_flops"] / (tiny["V"] + tiny["L"])
        row["cvf_ncu_over_graddiff"] = {"step": c["step_flops"] / g["step_flops"],
                                        "run": c["run_flops"] / g["run_flops"]}
        if args.hub and arch in HUB:
            hub = hub_item_flops(HUB[arch], args.hub_text_tokens)
            est_c = (row["k_cvf"] * c["steps"] + c["once_flops"] / tiny["V"]) * hub["V"]
            est_g = (row["k_graddiff"] * g["steps"] + g["once_flops"] / (tiny["V"] + tiny["L"])) * (hub["V"] + hub["L"])
            row["hub"] = {"shape": HUB[arch], "item": hub, "estimated_ratio": est_c / est_g,
                          "visual_share_of_an_item": hub["V"] / (hub["V"] + hub["L"])}
        row["visual_share_of_an_item"] = tiny["V"] / (tiny["V"] + tiny["L"])
        rows[arch] = row
        print(arch, row, flush=True)
    result = {"benchmark": "step_flops", "world": args.world, "forget": args.forget, "seed": args.seed,
              "train_set": args.train_set, "rows": rows, "environment": environment()}
    atomic_write_json(Path(args.out or f"benchmarks/results/step_flops_{args.world}.json"), result)
    return result


if __name__ == "__main__":
    main()
