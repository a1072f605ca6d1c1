"""Output-level baselines: GA, GradDiff, KL-Min and NPO (docs/methods.md, "Baselines").

Each is its loss and nothing else; the engine handles scope, optimiser and guards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unsee.config import opt
from unsee.engine.distributed import batch_mean
from unsee.engine.trainer import Context
from unsee.errors import ConfigError
from unsee.methods.base import BaseMethod, nll, seq_nll
from unsee.models.base import Turn


class GA(BaseMethod):
    """Gradient ascent on the forget answers: the simplest forgetting, and the least selective."""

    name = "ga"
    streams = ("forget",)

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, None, dict[str, float]]:
        f = nll(ctx.adapter, batch["forget"])
        return -f, None, {"nll_f": f.item()}


@dataclass
class GradDiffConfig:
    retain_weight: float = opt(1.0, "weight of the retain NLL")


class GradDiff(BaseMethod):
    """Ascend on forget, descend on retain: the retain term anchors everything else."""

    name = "graddiff"
    streams = ("forget", "retain")
    Config = GradDiffConfig

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                              dict[str, float]]:
        f = nll(ctx.adapter, batch["forget"])
        r = nll(ctx.adapter, batch["retain"])
        return -f, self.cfg.retain_weight * r, {"nll_f": f.item(), "nll_r": r.item()}


@dataclass
class KLConfig:
    kl_weight: float = opt(1.0, "weight of the KL to the reference on retain answers")


class KLMin(BaseMethod):
    """Ascend on forget while matching the reference's answer distribution on retain."""

    name = "kl"
    streams = ("forget", "retain")
    reference = "full"
    Config = KLConfig

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                              dict[str, float]]:
        a, ref = ctx.adapter, ctx.reference
        assert ref is not None
        f = nll(a, batch["forget"])
        rb = a.training_batch(batch["retain"])
        logits, mask = a.answer_logits(rb)
        with torch.no_grad():
            ref_logits, _ = ref.answer_logits(rb)
        kl = F.kl_div(
            torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1), log_target=True, reduction="none"
        ).sum(-1)
        kl = batch_mean((kl * mask).sum(), mask.sum(), ctx.world)  # per token, over the whole batch
        return -f, self.cfg.kl_weight * kl, {"nll_f": f.item(), "kl_r": kl.item()}


@dataclass
class NPOConfig:
    beta: float = opt(0.1, "NPO temperature; MLLMU-Bench's code uses 0.4 on a batch-mean NLL")
    retain_weight: float = opt(1.0, "weight of the optional retain NLL (0: pure NPO)")

    def __post_init__(self) -> None:
        if self.beta <= 0:  # the loss divides by it; below 0 its ascent is no longer bounded
            raise ConfigError(f"beta must be positive, got {self.beta}")


class NPO(BaseMethod):
    """Negative preference optimisation, per sequence: a bounded, slower-diverging ascent.

    ``L = -(2/beta) mean log sigmoid(beta * (NLL_M - NLL_ref))``. Minimising it raises the
    model's NLL above the reference's; the loss saturates instead of diverging like GA.
    """

    name = "npo"
    streams = ("forget", "retain")
    reference = "full"
    Config = NPOConfig

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                              dict[str, float]]:
        a, ref = ctx.adapter, ctx.reference
        assert ref is not None
        cur = seq_nll(a, batch["forget"])
        with torch.no_grad():
            old = seq_nll(ref, batch["forget"])
        npo = -(2.0 / self.cfg.beta) * F.logsigmoid(self.cfg.beta * (cur - old)).mean()
        parts = {"npo": npo.item(), "nll_f": cur.mean().item()}
        if self.cfg.retain_weight <= 0:
            return npo, None, parts
        r = nll(a, batch["retain"])
        parts["nll_r"] = r.item()
        return npo, self.cfg.retain_weight * r, parts


class SFT(BaseMethod):
    """Plain supervised fine-tuning on every stream given: how the vanilla model learns the world."""

    name = "sft"
    streams = ("train",)

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = nll(ctx.adapter, batch["train"])
        return loss, {"nll": loss.item()}
