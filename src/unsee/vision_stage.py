"""Stage 1 of the vanilla recipe: the visual module learns to tell identities apart (and to read the
general scenes) on fresh renders of a pre-training pool, before any language is involved.

Its key reads the vision options alone (:data:`unsee.stage_keys.STAGE1`), so every world built with
the same pool shares it; :func:`pretrain_vision` reads them through :class:`VisionOptions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unsee.bars import bar as progress_bar
from unsee.data.identity import Identity
from unsee.data.render import pretrain_batch
from unsee.data.scenes import GENERAL_COLOURS, GENERAL_POSITIONS, GENERAL_SHAPES, render_general, sample_general_item
from unsee.engine.checkpoint import has_checkpoint, load_checkpoint, resumed, save_checkpoint
from unsee.engine.prepare import adamw, one_cycle, seeded
from unsee.errors import ConfigError
from unsee.io import content_hash
from unsee.models.base import Adapter
from unsee.stage_keys import image_fingerprint


class VisionOptions(Protocol):
    """The recipe's options stage 1 reads (``FinetuneConfig`` has them all)."""

    vision_seed: int
    vision_steps: int
    vision_batch: int
    vision_lr: float
    cosface_margin: float
    cosface_scale: float
    vision_general: int
    vision_general_weight: float
    checkpoint_every: int
    progress: bool


def visual_state(adapter: Adapter) -> dict[str, torch.nn.Parameter]:
    """The visual module (vision tower and projector) by parameter name: what stage 1 trains."""
    return {n: p for n, p in adapter.model.named_parameters() if adapter.group_of(n) != "language"}


# Config entries that name or store a checkpoint and change no computation
_NO_COMPUTATION = ("transformers_version", "architectures", "dtype", "torch_dtype")


def _computing(config: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _computing(v) if isinstance(v, dict) else v for k, v in config.items()
            if not str(k).startswith("_") and k not in _NO_COMPUTATION}


def visual_config(adapter: Adapter) -> dict[str, Any]:
    """What shapes the visual module's forward pass besides its weights: the vision tower's config, the block
    and projector the language model reads (``vision_*``, ``projector_*``, ``multimodal_*``), and the image
    processor that makes its pixels. Token ids are left out: they follow the world's vocabulary."""
    config = adapter.model.config.to_dict()
    kept = {k: v for k, v in config.items() if k == "vision_config" or (
        k.startswith(("vision_", "projector", "multimodal")) and not k.endswith(("_token_id", "_token_index")))}
    processor = getattr(adapter.processor, "image_processor", None)
    return {**_computing(kept), "image_processor": _computing(processor.to_dict()) if processor is not None else None}


def visual_fingerprint(adapter: Adapter) -> str:
    """Content hash of the visual module (its weights and :func:`visual_config`), so that stage 1 is keyed on
    what it starts from and not on the language model, whose vocabulary differs from world to world."""
    h = hashlib.sha256(adapter.model.config.model_type.encode())
    h.update(content_hash(visual_config(adapter)).encode())
    for name, p in sorted(visual_state(adapter).items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def pool_fingerprint(identities: list[Identity]) -> str:
    """Content hash of a pre-training pool: the same identities give the same stage 1."""
    return content_hash([dataclasses.asdict(i) for i in identities])


class _GeneralHeads(torch.nn.Module):
    """Stage 1's second task: linear heads that read colour, shape, count and position of a
    general scene from its visual tokens, concatenated, so that position stays readable.

    A CLIP-like encoder knows colours and shapes before any MLLM training; one trained on
    identities alone, under colour jitter, learns to discard them (a linear probe on its pooled
    features read the shape of a held-out scene at 0.22, chance 0.17)."""

    def __init__(self, tokens: int, dim: int) -> None:

        super().__init__()
        self.classes = {"colour": list(GENERAL_COLOURS), "shape": list(GENERAL_SHAPES),
                        "count": ["1", "2", "3", "4"], "position": list(GENERAL_POSITIONS)}
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(tokens * dim, len(v)) for k, v in self.classes.items()})

    def loss(self, feats: list[torch.Tensor], items: list[Any]) -> tuple[torch.Tensor, float]:
        """Mean cross-entropy over the four attributes (position only where the scene has one) and accuracy."""
        x = torch.stack([f.flatten() for f in feats])
        losses, hits, n = [], 0, 0
        for kind, classes in self.classes.items():
            values = [str(getattr(it, kind)) for it in items]
            keep = [i for i, v in enumerate(values) if v]
            if not keep:
                continue
            y = torch.tensor([classes.index(values[i]) for i in keep])
            logits = self.heads[kind](x[keep])
            losses.append(F.cross_entropy(logits, y))
            hits += int((logits.argmax(-1) == y).sum())
            n += len(keep)
        return torch.stack(losses).mean(), hits / max(n, 1)


def _ema(running: float, value: float, step: int) -> float:
    """The progress bar's running figure: the first value, then an exponential average over ~20 steps."""
    return value if step == 0 else 0.95 * running + 0.05 * value


def general_batch(rng: np.random.Generator, batch: int, size: int = 64) -> tuple[list[Image.Image], list[Any]]:
    """Fresh general scenes, drawn by stage 1's own generator: never the world's items."""

    items = [sample_general_item(rng) for _ in range(batch)]
    return [render_general(it, size) for it in items], items


def render_fingerprint(identities: list[Identity], cfg: VisionOptions, n: int = 8) -> str:
    """Content hash of a fixed sample of what stage 1 renders (``n`` identity views and, with
    ``vision_general``, a few general scenes, with their labels), so that an edit of the renderer
    moves stage 1's key as an edit of the data loaders moves the later stages'."""

    if not identities:
        return ""
    rng = np.random.default_rng(cfg.vision_seed)
    arrays, labels = pretrain_batch(identities, rng, n)
    parts = [np.asarray(labels).tolist(), *(hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
                                            for a in arrays)]
    if cfg.vision_general > 0:
        scenes, items = general_batch(rng, min(cfg.vision_general, 4))
        parts += [repr(items), *(image_fingerprint(img) for img in scenes)]
    return content_hash(*parts)


def pretrain_vision(adapter: Adapter, cfg: VisionOptions, identities: list[Identity],
                    checkpoint: str | Path | None = None, *,
                    on_step: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """CosFace over fresh renders of ``identities``; trains the visual module only, on random streams of its
    own (:func:`unsee.engine.prepare.seeded`).

    With ``checkpoint``, the state is saved every ``cfg.checkpoint_every`` steps and a run
    that finds a checkpoint there resumes from it, with the same result as an uninterrupted run.
    ``on_step(step, loss)`` sees each step's loss, as the engine's per-step losses show those of
    stages 2 and 3 (``tests/test_stage_keys.py`` pins the first ones).

    The loop is its own, not the engine's (:func:`unsee.engine.trainer.train`), because the engine
    could not give the same numbers: it has no one-cycle schedule, draws batches from a fixed
    list of turns rather than fresh renders from this stage's generator, and trains only the
    model's parameters, not a CosFace head and general heads beside it.
    """

    with seeded(cfg.vision_seed):
        return _pretrain_vision(adapter, cfg, identities, checkpoint, on_step)


def _pretrain_vision(adapter: Adapter, cfg: VisionOptions, identities: list[Identity], checkpoint: str | Path | None,
                     on_step: Callable[[int, float], None] | None) -> dict[str, float]:
    if not identities:
        raise ConfigError("stage 1 needs a pre-training pool; the world was built with n_pretrain=0")
    rng = np.random.default_rng(cfg.vision_seed)
    named = visual_state(adapter)
    params = adapter.set_scope("visual")
    dim = adapter.model.config.get_text_config().hidden_size
    head = torch.nn.Parameter(torch.randn(len(identities), dim) * 0.01)
    extra: list[torch.nn.Parameter] = []
    general = None
    if cfg.vision_general > 0:
        probe, _ = general_batch(np.random.default_rng(cfg.vision_seed), 1)
        with torch.no_grad():
            tokens = adapter.visual_features(adapter.image_inputs(probe))[0].shape[0]
        general = _GeneralHeads(tokens, dim)
        extra = list(general.parameters())
    opt_ = adamw([{"params": [*params, head, *extra]}], lr=cfg.vision_lr, weight_decay=0.01)
    sched = one_cycle(opt_, cfg.vision_lr, cfg.vision_steps)
    saved = {**named, "cosface.head": head}
    if general is not None:
        saved.update({f"general.{k}": v for k, v in general.named_parameters()})
    start, acc_ema, loss_ema, g_ema, resumed_s, clock = 0, 0.0, 0.0, 0.0, 0.0, time.perf_counter()
    if checkpoint is not None and has_checkpoint(checkpoint):
        start, _, meta = load_checkpoint(checkpoint, params=saved, optimizer=opt_, scheduler=sched)
        rng.bit_generator.state = meta["rng"]
        acc_ema, loss_ema, g_ema = meta["acc_ema"], meta["loss_ema"], meta.get("general_ema", 0.0)
        resumed_s = float(meta.get("seconds", 0.0))
    adapter.model.train()
    bar = progress_bar(range(start, cfg.vision_steps), desc="stage 1: vision pre-training", initial=start,
                       total=cfg.vision_steps, show=cfg.progress)
    for step in bar:
        arrays, labels = pretrain_batch(identities, rng, cfg.vision_batch)
        images = [Image.fromarray(a) for a in arrays]
        feats = adapter.visual_features(adapter.image_inputs(images))
        z = F.normalize(torch.stack([f.mean(0) for f in feats]), dim=-1)
        cos = z @ F.normalize(head, dim=-1).T
        y = torch.as_tensor(labels)
        logits = cfg.cosface_scale * (cos - cfg.cosface_margin * F.one_hot(y, len(identities)))
        loss = F.cross_entropy(logits, y)
        if general is not None:
            scenes, items = general_batch(rng, cfg.vision_general)
            g_loss, g_acc = general.loss(adapter.visual_features(adapter.image_inputs(scenes)), items)
            loss = loss + cfg.vision_general_weight * g_loss
            g_ema = _ema(g_ema, g_acc, step)
        opt_.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_.step()
        sched.step()
        acc = (cos.argmax(-1) == y).float().mean().item()
        acc_ema, loss_ema = _ema(acc_ema, acc, step), _ema(loss_ema, loss.item(), step)
        if on_step is not None:
            on_step(step, loss.item())
        bar.set_postfix(loss=f"{loss_ema:.3f}", acc=f"{acc_ema:.2f}",
                        **({"general": f"{g_ema:.2f}"} if general is not None else {}))
        done = step + 1
        if checkpoint is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 \
                and done < cfg.vision_steps:
            save_checkpoint(checkpoint, step=done, params=saved, optimizer=opt_, scheduler=sched,
                            meta={"rng": rng.bit_generator.state, "acc_ema": acc_ema, "loss_ema": loss_ema,
                                  "general_ema": g_ema, "seconds": resumed_s + time.perf_counter() - clock})
    adapter.model.eval()
    return {"loss": loss_ema, "train_acc": acc_ema, **({"general_acc": g_ema} if general is not None else {}),
            **resumed(resumed_s)}
