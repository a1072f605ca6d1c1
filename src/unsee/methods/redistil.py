"""Noise-and-distil hardening of a visual-only forgetting run (``redistil_steps``).

A relearning attack that fine-tunes a few forget people back brings the others back too: the
forgetting is a small move of the visual weights, and a few steps find the way back. Moving
the weights part of the way to a fresh initialisation and distilling the forgotten model's
tokens back into them (the unlearning literature's noise-then-distil recipe) keeps what the
forgotten model does while leaving it far from the weights that recognised the people.
Only the visual module moves, so the language model still never runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unsee.bars import bar as progress_bar
from unsee.config import opt
from unsee.data.augment import augment
from unsee.engine.distributed import fsdp_version
from unsee.engine.prepare import adamw, frozen_copy, one_cycle
from unsee.engine.trainer import Context
from unsee.errors import ConfigError, TrainingError
from unsee.methods.base import token_mse
from unsee.models.base import Adapter

# Each batch's shares of the photos distilled; a missing stream's share goes to the retained photos.
# In a continual run the earlier requests' forget photos have a share of their own (``redistil_earlier``),
# so that the people already forgotten are not diluted into this request's.
SHARES = {"retain": 0.5, "general": 0.25, "neutral": 0.125, "forget": 0.125}
TEACHERS = ("forgotten", "start")
# Runs at least this long are checked for convergence: the mean MSE of their last tenth of steps must
# be below that of their first tenth (shorter runs are too noisy to judge).
CONVERGENCE_STEPS = 50


@dataclass
class RedistilConfig:
    redistil_steps: int = opt(
        0, "hardening against relearning: after the forgetting, the visual module moves redistil_alpha of the way to "
        "a fresh initialisation and is distilled back onto the forgotten model's tokens for this many steps, so that "
        "a short fine-tune finds no nearby way back to the forgotten people (0: off)")
    redistil_alpha: float = opt(0.3, "hardening: how far the visual weights move towards a fresh initialisation")
    redistil_lr: float = opt(1e-3, "hardening: the distillation's peak learning rate (one-cycle schedule)")
    redistil_batch: int = opt(32, "hardening: photos a distillation step: half retained, a quarter general "
                              "scenes, an eighth each neutral and forget photos (in a continual run redistil_earlier "
                              "of it for the earlier requests' photos, from the retained half), freshly cropped")
    redistil_earlier: float = opt(
        0.125, "hardening, continual runs: the share of each batch for the earlier requests' forget photos, "
        "taken from the retained photos' half")
    redistil_teacher: str = opt(
        "start", "hardening: whose tokens the photos to keep (retained, general, neutral) are distilled onto: "
        "'start', the model at the start of this run, which undoes what the forgetting moved on them (picked on "
        "the validation request; in a continual run the earlier requests' forget photos go onto it too, as they "
        "were left), or 'forgotten', the model after the forgetting; this request's forget photos always go onto "
        "the forgotten model")

    def validate(self) -> None:
        """Read when the config is loaded, before any model is, and again when a run starts."""
        if self.redistil_steps < 0 or self.redistil_batch < 1 or self.redistil_lr <= 0:
            raise ConfigError("redistil_steps must not be negative, redistil_batch and redistil_lr must be positive")
        if not 0 <= self.redistil_earlier <= SHARES["retain"]:
            raise ConfigError(f"redistil_earlier must lie in [0, {SHARES['retain']}], the retained photos' share, "
                              f"got {self.redistil_earlier}")
        if not 0 < self.redistil_alpha <= 1:
            raise ConfigError(f"redistil_alpha must lie in (0, 1], got {self.redistil_alpha}")
        if self.redistil_teacher not in TEACHERS:
            raise ConfigError(f"redistil_teacher must be one of {', '.join(TEACHERS)}, got {self.redistil_teacher!r}")

    def check_train(self, train: Any) -> None:
        """The hardening distils the whole visual module: a narrower scope would move weights it keeps."""
        if self.redistil_steps and train.scope not in WHOLE_VISUAL:
            raise ConfigError(f"redistil_steps moves the whole visual module (tower and projector), and scope "
                              f"{train.scope!r} keeps part of it fixed: use scope visual, or redistil_steps=0")

    def check_launch(self, world: int) -> None:
        if self.redistil_steps and fsdp_version() and world > 1:
            raise ConfigError("redistil_steps is not supported under FSDP: every process distils a whole copy of the "
                              "visual module")


WHOLE_VISUAL = ("visual", "full")  # scopes under which the forgetting itself trains the whole visual module


def visual_roots(adapter: Adapter) -> list[str]:
    """The outermost modules whose parameters all belong to the visual module (tower and projector)."""
    roots: list[str] = []
    for name, module in adapter.model.named_modules():
        names = [n for n, _ in module.named_parameters(prefix=name)]
        if name and names and all(adapter.group_of(n) != "language" for n in names) \
                and not any(name.startswith(r + ".") for r in roots):
            roots.append(name)
    return roots


@torch.no_grad()
def fresh_visual(adapter: Adapter, seed: int) -> dict[str, torch.Tensor]:
    """A fresh initialisation of every visual parameter by the model class's own ``_init_weights``, seeded.

    Copies of the visual modules are re-initialised, never the model's own; a parameter the
    class's initialiser leaves alone (some embeddings, on some classes) keeps its value.
    """
    fresh: dict[str, torch.Tensor] = {}
    # ``manual_seed`` seeds every device's generator: each is restored, so the run's own draws go on as before
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for root in visual_roots(adapter):
            module = copy.deepcopy(adapter.model.get_submodule(root))
            module.apply(adapter.model._init_weights)
            fresh.update({n: p.detach() for n, p in module.named_parameters(prefix=root)})
    return fresh


def distil_pools(ctx: Context, forgotten: list) -> dict[str, list]:
    """The photos of each share. In a continual run the earlier requests' photos are distilled too:
    the student learns to read faces again, and only what it is shown stays forgotten."""
    pools = {k: [t.image for t in ctx.streams[k].turns if t.image is not None] if k in ctx.streams else []
             for k in SHARES}
    pools["earlier"] = list(forgotten)
    return pools


def distil_batch(pools: dict[str, list], batch: int, rng: np.random.Generator,
                 earlier: float) -> list[tuple[str, Any]]:
    """One batch of freshly cropped photos with their shares, each share's part of it (the retained
    photos take a missing one's); ``earlier`` is the earlier requests' share."""
    shares = {**SHARES, "earlier": earlier}
    counts = {k: int(round(batch * s)) if pools[k] else 0 for k, s in shares.items() if k != "retain"}
    counts["retain"] = batch - sum(counts.values())
    return [(k, augment(pools[k][int(i)], rng, 1.0)) for k, n in counts.items() if n > 0
            for i in rng.integers(len(pools[k]), size=n)]


def redistil(ctx: Context, cfg: RedistilConfig, seed: int, forgotten: list) -> dict[str, float]:
    """Move the visual weights towards a fresh initialisation and distil the forgotten model back into them.

    Every process does the same seeded work on its own copy, so their weights stay equal
    without communication.
    """
    adapter = ctx.adapter
    pools = distil_pools(ctx, forgotten)
    if not pools["retain"]:
        raise ConfigError("redistil_steps distils onto retained photos, and this run has none")
    teacher = frozen_copy(adapter, visual_only=True)
    keep = ctx.reference if cfg.redistil_teacher == "start" else teacher
    if keep is None:
        raise ConfigError("redistil_teacher=start distils onto the run's reference, and this run has none")
    fresh = fresh_visual(adapter, seed)
    visual = {n: p for group in ("vision", "projector") for n, p in adapter.groups()[group]}
    params = list(visual.values())
    with torch.no_grad():
        for n, p in visual.items():
            p.mul_(1 - cfg.redistil_alpha).add_(fresh[n].to(p.device, p.dtype), alpha=cfg.redistil_alpha)
            p.requires_grad_(True)
    opt_ = adamw([{"params": params}], lr=cfg.redistil_lr, weight_decay=0.0)
    sched = one_cycle(opt_, cfg.redistil_lr, cfg.redistil_steps)
    rng = np.random.default_rng(seed + 104729)
    adapter.model.train()
    losses: list[float] = []
    bar = progress_bar(range(cfg.redistil_steps), desc="hardening", show=ctx.cfg.progress and ctx.rank == 0,
                       leave=False)
    for step in bar:
        sources, images = zip(*distil_batch(pools, cfg.redistil_batch, rng, cfg.redistil_earlier), strict=True)
        x = adapter.image_inputs(list(images))
        # under the run's autocast: NCU's fp32 master weights sit beside bf16 norms, in the copies too
        with torch.autocast(adapter.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
            with torch.no_grad():
                target = teacher.visual_features(x)
                if keep is not teacher:
                    kept = keep.visual_features(x)
                    # this request's forget photos are read by the forgotten model, all others by the start
                    target = [t if k == "forget" else r for k, t, r in zip(sources, target, kept, strict=True)]
            loss = token_mse(adapter.visual_features(x), target)
        if not torch.isfinite(loss):
            raise TrainingError(f"hardening: the distillation loss is not finite at step {step}; the model is not "
                                "kept. Lower redistil_lr.")
        opt_.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt_.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(mse=f"{losses[-1]:.4f}")
    adapter.model.eval()
    check_converged(losses)
    return {"steps": cfg.redistil_steps, "alpha": cfg.redistil_alpha, "teacher": cfg.redistil_teacher,
            "first_mse": losses[0], "last_mse": losses[-1], "params": sum(p.numel() for p in params)}


def check_converged(losses: list[float]) -> None:
    """Refuse a distillation that ended further from its teachers than it began.

    The student then reads no face as its teachers do, and the model it leaves can have lost
    every group (a continual run's fifth request once ended at retain 0.30, from 1.00), with a
    finite loss throughout, so nothing else would stop it.
    """
    if len(losses) < CONVERGENCE_STEPS:
        return
    n = len(losses) // 10
    head, tail = float(np.mean(losses[:n])), float(np.mean(losses[-n:]))
    if tail >= head:
        raise TrainingError(f"hardening: the distillation did not converge (its MSE was {head:.4f} over the first "
                            f"{n} steps and {tail:.4f} over the last {n}); the model is not kept. Lower redistil_lr.")
