"""MMUnlearner: Fisher-ratio saliency masks, masked forget steps, unmasked retain steps.

Two masks (docs/methods.md): over the visual module with ``D_r`` as the data to preserve, and
over the language model with ``D_r + D_t``. A weight element of a linear layer is updated by
forgetting only where it matters more to the forget set than to what must be preserved. The
masks are keyed by parameter *object*; a failing step raises, it is never skipped. LoRA is
refused: a per-weight mask has no counterpart on low-rank factors. A forget step reads the
forget stream alone and a retain step the retain stream alone, so one epoch reads each forget
question once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unsee.config import opt
from unsee.engine.constraints import masked_fraction
from unsee.engine.prepare import LOW_PRECISION
from unsee.engine.trainer import Context
from unsee.errors import ConfigError
from unsee.methods.base import BaseMethod, linear_weights, nll, squared_gradients
from unsee.models.base import Adapter, Turn


@dataclass
class MMUnlearnerConfig:
    fisher_batches: int = opt(8, "batches of each set for the Fisher diagonals")
    threshold: float = opt(1.0, "mask where F_forget / F_preserve >= threshold")
    max_retain_ratio: int = opt(9, "retain steps per forget step: |D_r|/|D_f|, capped here")

    def __post_init__(self) -> None:
        if self.fisher_batches < 1 or self.max_retain_ratio < 1:  # no batch: a Fisher of zeros opens every weight
            raise ConfigError(f"fisher_batches and max_retain_ratio must be at least 1, got {self.fisher_batches} "
                              f"and {self.max_retain_ratio}")

    def check_train(self, train: Any) -> None:
        """The masks select single weights; LoRA trains low-rank factors, and ``lora_B`` starts at zero, so
        ``lora_A`` has no gradient to rank when the masks are taken."""
        if train.scope == "lora":
            raise ConfigError("mmunlearner masks single weights of the linear layers, which LoRA's low-rank factors "
                              "cannot carry: use scope full, visual or language")


def fisher(adapter: Adapter, params: list[nn.Parameter], batches: list[list[Turn]], ascent: bool,
           ctx: Context | None = None) -> list[torch.Tensor]:
    """Diagonal Fisher of the (ascent or descent) answer NLL over ``batches``."""
    sign = -1.0 if ascent else 1.0
    return squared_gradients(lambda turns: (sign * nll(adapter, turns), len(turns)), params, batches, ctx)


def ratio_masks(adapter: Adapter, forget: list[list[Turn]], preserve_v: list[list[Turn]],
                preserve_l: list[list[Turn]], threshold: float = 1.0,
                ctx: Context | None = None) -> dict[nn.Parameter, torch.Tensor]:
    """``m = (F_f + 1e-15) / (F_p + 1e-15) >= threshold`` on weights of linear layers."""
    masks: dict[nn.Parameter, torch.Tensor] = {}
    for group, preserve in (("visual", preserve_v), ("language", preserve_l)):
        names = ("vision", "projector") if group == "visual" else ("language",)
        params = [w for w in linear_weights(adapter, names) if w.requires_grad]
        if not params:
            continue
        # Held in the model's own precision while F_p accumulates: for a bf16 7B model that
        # halves 26 GB, and bf16 is ample for a ratio test.
        ff = [f.to(p.dtype) if p.dtype in LOW_PRECISION else f
              for p, f in zip(params, fisher(adapter, params, forget, ascent=True, ctx=ctx), strict=True)]
        fp = fisher(adapter, params, preserve, ascent=False, ctx=ctx)
        for p, a, b in zip(params, ff, fp, strict=True):
            masks[p] = (a.float() + 1e-15) / (b + 1e-15) >= threshold
    return masks


class MMUnlearner(BaseMethod):
    name = "mmunlearner"
    streams = ("forget", "retain", "text")
    Config = MMUnlearnerConfig

    def setup(self, ctx: Context) -> None:
        s = ctx.streams
        k = self.cfg.fisher_batches
        forget, retain, text = (s[name].preview(k) for name in ("forget", "retain", "text"))
        masks = ratio_masks(ctx.adapter, forget, retain, retain + text, self.cfg.threshold, ctx)
        # Everything outside the linear weights (norms, embeddings, biases) stays out of forget steps.
        for p in ctx.adapter.model.parameters():
            if p.requires_grad and p not in masks:
                masks[p] = torch.zeros_like(p, dtype=torch.bool)
        ctx.constraints.masks, ctx.constraints.clip_first = masks, True  # a forget step clips, then masks
        linear = set(linear_weights(ctx.adapter, ("vision", "projector", "language")))
        ctx.info["mask_fraction"] = masked_fraction({p: m for p, m in masks.items() if p in linear})
        self.ratio = max(1, min(self.cfg.max_retain_ratio, len(s["retain"]) // max(1, len(s["forget"]))))
        ctx.info["retain_steps_per_forget_step"] = self.ratio

    def step_multiplier(self, ctx: Context) -> int:
        return 1 + self.ratio

    def _forget_step(self, ctx: Context) -> bool:
        return ctx.step % (1 + self.ratio) == 0

    def step_streams(self, ctx: Context) -> tuple[str, ...]:
        return ("forget",) if self._forget_step(ctx) else ("retain",)

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        forget_step = self._forget_step(ctx)
        ctx.constraints.masks_on = forget_step
        if forget_step:
            f = nll(ctx.adapter, batch["forget"])
            return -f, {"nll_f": f.item()}
        r = nll(ctx.adapter, batch["retain"])
        return r, {"nll_r": r.item()}
