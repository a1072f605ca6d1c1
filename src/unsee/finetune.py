"""The vanilla model: teach a tiny MLLM the built-in world, in the stages of a real MLLM's life.

1. **Vision pre-training on other identities** (the analogue of CLIP pre-training): a
   CosFace identity classifier on pooled visual tokens, over a pool of identities that
   are rendered fresh at every step and never belong to the world.
2. **Base MLLM training**: known people (image and text), general visual items, and
   unknown identities answered "I don't know who this is.".
3. **The fictitious fine-tune** (MLLMU-Bench's ``ft_Data``): each person's fixed training
   views and text QA, with replay of stage 2 so that it is not forgotten.

Each stage is cached by a content hash of what determines it, so the demo and the
benchmarks train it once; an interrupted run resumes at the first stage not cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from unsee.config import load_config, opt, to_dict
from unsee.data.augment import augment
from unsee.data.collate import qa_turn
from unsee.data.schema import Example
from unsee.engine.trainer import TrainConfig, seed_everything, train
from unsee.io import atomic_dir, check_output_dir
from unsee.methods.base import BaseMethod, nll
from unsee.models import load_adapter, model_fingerprint
from unsee.models.base import HFAdapter, Turn


@dataclass
class FinetuneConfig:
    """The recipe. Shipped as ``configs/finetune/{default,quick}.yaml``."""

    pretrain_identities: int = opt(400, "stage 1: size of the pool of other identities")
    pretrain_seed: int = opt(1234, "stage 1: seed of that pool (shared by every world seed)")
    vision_steps: int = opt(500, "stage 1 steps")
    vision_batch: int = opt(64, "stage 1 batch size")
    vision_lr: float = opt(1e-3, "stage 1 learning rate")
    cosface_margin: float = opt(0.35, "stage 1 CosFace margin")
    cosface_scale: float = opt(30.0, "stage 1 CosFace scale")
    base_steps: int = opt(300, "stage 2 steps")
    base_lr: float = opt(1e-3, "stage 2 learning rate")
    ft_steps: int = opt(1500, "stage 3 steps")
    ft_lr: float = opt(1e-3, "stage 3 learning rate")
    vision_lr_factor: float = opt(0.2, "stages 2-3: the visual module's learning rate as a fraction of the LM's")
    batch_size: int = opt(16, "stages 2-3 batch size")
    image_oversample: int = opt(2, "stage 3: repeat image questions this many times per text question")
    replay: float = opt(0.3, "stage 3: fraction of stage-2 items mixed in")
    augment: float = opt(1.0, "stages 2-3: augmentation strength of training images (0: off)")
    warmup_ratio: float = opt(0.05, "stages 2-3 warm-up")
    seed: int = opt(0, "seed of stages 2 and 3")
    progress: bool = opt(True, "progress bars")


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def world_fingerprint(data: str | Path) -> str:
    """Content hash of a world directory (world.json and every parquet file)."""
    h = hashlib.sha256()
    for f in sorted(Path(data).rglob("*")):
        if f.is_file() and f.suffix in (".parquet", ".json"):
            h.update(f.relative_to(data).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---- stage 1 -----------------------------------------------------------------------------
def pretrain_vision(adapter: HFAdapter, cfg: FinetuneConfig) -> dict[str, float]:
    """CosFace over fresh renders of other identities; trains the visual module only."""
    from unsee.data.render import pretrain_batch, pretrain_identities

    seed_everything(cfg.pretrain_seed)
    idents = pretrain_identities(cfg.pretrain_identities, cfg.pretrain_seed)
    rng = np.random.default_rng(cfg.pretrain_seed)
    params = adapter.set_scope("visual")
    dim = adapter.model.config.get_text_config().hidden_size
    head = torch.nn.Parameter(torch.randn(len(idents), dim) * 0.01)
    opt_ = torch.optim.AdamW([*params, head], lr=cfg.vision_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt_, max_lr=cfg.vision_lr, total_steps=cfg.vision_steps,
                                                pct_start=0.1)
    adapter.model.train()
    acc_ema, loss_ema = 0.0, 0.0
    bar = tqdm(range(cfg.vision_steps), desc="stage 1: vision pre-training", disable=not cfg.progress)
    for step in bar:
        arrays, labels = pretrain_batch(idents, rng, cfg.vision_batch)
        images = [Image.fromarray(a) for a in arrays]
        feats = adapter.visual_features(adapter.image_inputs(images))
        z = F.normalize(torch.stack([f.mean(0) for f in feats]), dim=-1)
        cos = z @ F.normalize(head, dim=-1).T
        y = torch.as_tensor(labels)
        logits = cfg.cosface_scale * (cos - cfg.cosface_margin * F.one_hot(y, len(idents)))
        loss = F.cross_entropy(logits, y)
        opt_.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_.step()
        sched.step()
        acc = (cos.argmax(-1) == y).float().mean().item()
        acc_ema = acc if step == 0 else 0.95 * acc_ema + 0.05 * acc
        loss_ema = loss.item() if step == 0 else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.2f}")
    adapter.model.eval()
    return {"loss": loss_ema, "train_acc": acc_ema}


# ---- stages 2 and 3 ----------------------------------------------------------------------
class _Augmented(BaseMethod):
    """Supervised fine-tuning with fresh augmentation of each training image."""

    name = "sft"
    streams = ("train",)

    def __init__(self, strength: float, seed: int) -> None:
        super().__init__()
        self.strength = strength
        self.rng = np.random.default_rng(seed)

    def loss(self, ctx: Any, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        turns = batch["train"]
        if self.strength > 0:
            turns = [Turn(augment(t.image, self.rng, self.strength), t.prompt, t.answer)
                     if t.image is not None else t for t in turns]
        loss = nll(ctx.adapter, turns)
        return loss, {"nll": loss.item()}


def _sft(adapter: HFAdapter, examples: list[Example], steps: int, lr: float, cfg: FinetuneConfig,
         desc: str) -> dict[str, float]:
    """One SFT stage; the visual module trains at ``vision_lr_factor`` of the LM's rate."""
    from unsee.data.schema import Suite

    turns = [qa_turn(e) for e in examples]
    tcfg = TrainConfig(scope="full", lr=lr, max_steps=steps, batch_size=cfg.batch_size, seed=cfg.seed,
                       warmup_ratio=cfg.warmup_ratio, schedule="cosine", progress=cfg.progress, grad_clip=1.0,
                       visual_lr_scale=cfg.vision_lr_factor)
    res = train(_Augmented(cfg.augment, cfg.seed), adapter, Suite("finetune", {}), {"train": turns}, tcfg,
                desc=desc)
    tail = res.losses[-max(1, len(res.losses) // 10):]
    return {"final_nll": float(np.mean(tail)), "steps": res.steps}


def _stage2_examples(suite: Any) -> list[Example]:
    return [*suite.groups.get("train_known", []), *suite.groups.get("train_general", []),
            *suite.groups.get("unknown", [])]


def _stage3_examples(suite: Any, cfg: FinetuneConfig) -> list[Example]:
    images = [*suite.group("train_forget"), *suite.group("train_retain")]
    text = suite.groups.get("train_text", [])
    base = _stage2_examples(suite)
    rng = np.random.default_rng(cfg.seed)
    n_replay = int(cfg.replay * (len(images) * cfg.image_oversample + len(text)))
    replay = [base[i] for i in rng.integers(len(base), size=n_replay)] if base and n_replay else []
    return images * cfg.image_oversample + list(text) + replay


def default_cache() -> Path:
    import os

    return Path(os.environ.get("UNSEE_CACHE", Path.home() / ".cache" / "unsee"))


def finetune(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | dict | None = "default",
    overrides: Any = (),
    seed: int | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """``unsee finetune``: model directory + world -> the vanilla model at ``out``."""
    from unsee.data.mllmu import load_mllmu

    cfg = load_config(FinetuneConfig, config, overrides, kind="finetune")
    if seed is not None:
        cfg.seed = seed
    check_output_dir(out, overwrite=overwrite)
    cache = Path(cache_dir) if cache_dir else default_cache()
    suite = load_mllmu(data, "forget_10")
    base_fp = model_fingerprint(model)
    rc = to_dict(cfg)
    vision_keys = ("pretrain_identities", "pretrain_seed", "vision_steps", "vision_batch", "vision_lr",
                   "cosface_margin", "cosface_scale")
    h1 = _hash("vision", base_fp, {k: rc[k] for k in vision_keys})
    h2 = _hash("base", h1, world_fingerprint(data), rc)
    h3 = _hash("ft", h2, rc)
    stages = [
        (cache / f"stage1-{h1}", lambda a: pretrain_vision(a, cfg)),
        (cache / f"stage2-{h2}", lambda a: _sft(a, _stage2_examples(suite), cfg.base_steps, cfg.base_lr, cfg,
                                                 "stage 2: base MLLM")),
        (cache / f"stage3-{h3}", lambda a: _sft(a, _stage3_examples(suite, cfg), cfg.ft_steps, cfg.ft_lr, cfg,
                                                 "stage 3: fictitious fine-tune")),
    ]
    src = Path(model)
    for path, run in stages:
        if (path / "unsee_stage.json").exists():
            src = path
            continue
        adapter = load_adapter(src)
        stats = run(adapter)
        with atomic_dir(path, overwrite=True) as tmp:
            adapter.save(tmp)
            (tmp / "unsee_stage.json").write_text(json.dumps({"stage": path.name, "stats": stats,
                                                              "config": rc}, indent=2))
        src = path
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in src.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "unsee_vanilla.json").write_text(json.dumps({
            "base_model": str(model), "base_fingerprint": base_fp, "world": str(data),
            "world_fingerprint": world_fingerprint(data), "recipe": rc, "stages": [p.name for p, _ in stages],
        }, indent=2))
    return Path(out)

