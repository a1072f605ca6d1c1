"""A public benchmark's own vanilla model, and its retrained reference.

MLLMU-Bench, CLEAR and UMU-bench all unlearn from a model first fine-tuned on their fictitious
people: without that step the forget accuracy is at chance before any unlearning and every
method's efficacy is zero by construction. This is that fine-tune, with each benchmark's
recipe (data, epochs, learning rate, LoRA) taken from its authors' code and shipped as
``configs/finetune/{mllmu,clear,umu}.yaml``; docs/reproduce.md cites the sources.

It runs through the one training engine, so every supported architecture, bf16, gradient
checkpointing, LoRA (merged on save), several processes under ``accelerate launch`` and
mid-run checkpoints come with it. The result is cached under the key
:data:`unsee.stage_keys.BENCHMARK` declares (the base model, the recipe, the turns it trains on
and the stage's STAGE_VERSION): an interrupted run resumes from its last checkpoint, a
finished one is copied. The built-in world has its own staged recipe in :mod:`unsee.finetune`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsee.bench_recipe import (
    BenchFinetuneConfig,
    cache_entries,
    load_recipe,
    recipe_of,
    split_name,
    training_pairs,
    vanilla_record,
)
from unsee.config import check_seed, to_dict
from unsee.data.detect import NAMES, DataRef, data_fingerprint
from unsee.data.schema import Suite
from unsee.engine.checkpoint import remove_checkpoint, resumed
from unsee.engine.distributed import is_main_process
from unsee.engine.trainer import TrainConfig, train
from unsee.finetune import STAGE_FILE, VANILLA_FILE, local_model, partial_dir, train_once
from unsee.io import atomic_dir, check_output_dir, copy_entry
from unsee.methods.base import BaseMethod, nll
from unsee.models import load_adapter, model_fingerprint
from unsee.models.base import Adapter, Turn
from unsee.retrain import RETRAINED_FILE
from unsee.runs import model_name, save_model
from unsee.stage_keys import numerics


class _SFT(BaseMethod):
    """Plain supervised fine-tuning: the answer's negative log-likelihood.

    Every trained parameter takes part in every step's loss, with weight zero where the batch
    does not reach it (the projector's LoRA on a text-only batch): under several processes
    each one's slice of a mixed batch may hold no image, and the gradient average needs the
    same tensors from every process. One process gets the same zero gradients, as DDP gives
    the benchmarks' own scripts.
    """

    name = "finetune"
    streams = ("train",)

    def setup(self, ctx: Any) -> None:
        self.params = [p for p in ctx.adapter.model.parameters() if p.requires_grad]

    def loss(self, ctx: Any, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = nll(ctx.adapter, batch["train"])
        touch = sum((p.reshape(-1)[:1].sum() for p in self.params), torch.zeros((), device=loss.device))
        return loss + 0.0 * touch, {"nll": loss.item()}


def _train(model: str | Path, turns: list[Turn], cfg: BenchFinetuneConfig, path: Path, desc: str) -> None:
    """Fine-tune ``model`` on ``turns`` into the cache entry ``path`` (the first process of a launch saves it).

    The checkpoint beside the entry makes an interrupted run resume where it stopped.
    """

    adapter: Adapter = load_adapter(model, dtype=cfg.dtype)
    tcfg = TrainConfig(scope=cfg.scope, lr=cfg.lr, epochs=cfg.epochs, max_steps=cfg.max_steps,
                       batch_size=cfg.batch_size, schedule=cfg.schedule, warmup_ratio=cfg.warmup_ratio,
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, bf16=cfg.dtype != "fp32",
                       gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora_r,
                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, seed=cfg.seed,
                       group_by_length=cfg.group_by_length, progress=cfg.progress,
                       checkpoint_dir=str(partial_dir(path)), checkpoint_every=cfg.checkpoint_every,
                       keep_checkpoint=True)  # until the entry is saved: a kill mid-save resumes
    tcfg.validate()
    t0 = time.perf_counter()
    res = train(_SFT(), adapter, Suite("finetune", {}), {"train": turns}, tcfg, desc=desc)
    if not is_main_process():
        return
    tail = res.losses[-max(1, len(res.losses) // 10):]
    stats = {"first_nll": float(res.losses[0]), "final_nll": float(np.mean(tail)), "steps": res.steps,
             "trainable_params": res.trainable_params, **resumed(res.resumed_s)}
    with atomic_dir(path, overwrite=True, mine=True) as tmp:
        save_model(adapter, tmp, model_name(model))  # LoRA merged: the entry loads without peft
        (tmp / STAGE_FILE).write_text(json.dumps({"stage": path.name, "stats": stats, "config": to_dict(cfg),
                                                  "seconds": time.perf_counter() - t0 + res.resumed_s,
                                                  "numerics": numerics()},
                                                 indent=2))
    remove_checkpoint(partial_dir(path))


def _publish(entry: Path, out: str | Path, record: dict[str, Any], name: str, overwrite: bool) -> Path:
    """Copy a cache entry to ``out`` with its record, atomically; under a launch the first process alone, as
    when it trained the entry (the others would each find the output the first had just written)."""
    if not is_main_process():
        return Path(out)
    meta = json.loads((entry / STAGE_FILE).read_text())
    with atomic_dir(out, overwrite=overwrite) as tmp:
        copy_entry(entry, tmp, but=(STAGE_FILE,))
        (tmp / name).write_text(json.dumps({**record, "entry": entry.name, "seconds": meta.get("seconds"),
                                            "stats": meta.get("stats"), "numerics": meta.get("numerics")}, indent=2))
    return Path(out)


def finetune_benchmark(model: str | Path, ref: DataRef, kind: str, out: str | Path, *,
                       config: str | Path | dict | None = None, overrides: Any = (), seed: int | None = None,
                       overwrite: bool = False, cache_dir: str | Path | None = None,
                       forget: str | None = None) -> Path:
    """``unsee finetune`` on MLLMU-Bench, CLEAR or UMU-bench: ``model`` taught the benchmark's people.

    With ``forget`` it is the retrained reference instead: the same recipe without that split's
    people's image rows. Every input is checked (output, recipe, data split, images) before
    the model loads.
    """
    check_output_dir(out, overwrite=overwrite)
    cfg = load_recipe(kind, config, overrides)
    if seed is not None:
        cfg.seed = check_seed(seed)
    forget = None if forget is None else split_name(kind, forget)  # one cache entry and record for each split
    pairs = training_pairs(ref, kind, cfg, forget)
    given, model = str(model), local_model(model)
    (entry,), split, turns = cache_entries(model, pairs, kind, cfg, forget, cache_dir), pairs.split, pairs.turns
    desc = f"{NAMES[kind]} fine-tune" + (f" without {forget}'s photos" if forget else "")
    cached = not train_once(entry, lambda: _train(model, turns, cfg, entry, desc))
    if not cached and not is_main_process():  # under `accelerate launch` the first process writes the output
        return Path(out)
    record: dict[str, Any] = {
        "benchmark": kind, "base_model": str(model), "base_model_given": given,
        "base_fingerprint": model_fingerprint(model),
        "data": ref.record(), "split": split, "split_fingerprint": data_fingerprint(ref.path, [split]),
        "pairs": len(turns), "recipe": to_dict(cfg), "cached": cached,
    }
    if forget is None:
        return _publish(entry, out, record, VANILLA_FILE, overwrite)
    record.update(forget=forget, dropped_pairs=pairs.dropped, pairs_without_photo=pairs.as_text)
    return _publish(entry, out, record, RETRAINED_FILE, overwrite)


def retrain_benchmark(vanilla: str | Path, ref: DataRef, kind: str, out: str | Path, *, forget: str,
                      overwrite: bool = False, cache_dir: str | Path | None = None, seed: int | None = None) -> Path:
    """``unsee retrain`` on a benchmark: the vanilla model's recipe again, from its base model, without
    ``forget``'s image rows (with ``seed``, drawn with another seed). The vanilla directory's record says
    which base model and recipe."""
    meta = vanilla_record(vanilla, ref, kind)
    return finetune_benchmark(meta["base_model"], ref, kind, out, config=recipe_of(meta), overwrite=overwrite,
                              cache_dir=cache_dir, forget=forget, seed=seed)
