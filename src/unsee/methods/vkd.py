"""VKD: visual knowledge distillation with the language model frozen (docs/methods.md, "VKD").

The student's intermediate visual features (projector tokens) are distilled from the
teacher on retained images, while forget images are driven to the teacher's mean feature
of neutral identities. A Fisher-ratio saliency mask, computed from the same feature-level
signals, confines the updates to the visual weights that matter more to the forget images
than to the retained ones; no language-model pass is needed at any point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unsee.config import opt
from unsee.engine.constraints import masked_fraction
from unsee.engine.trainer import Context
from unsee.errors import ConfigError, DataError
from unsee.methods.base import (
    BaseMethod,
    images_of,
    keep_to_visual,
    linear_weights,
    squared_gradients,
    token_features,
    token_mse,
)
from unsee.models.base import Turn


@dataclass
class VKDConfig:
    retain_weight: float = opt(1.0, "weight of the retain distillation")
    saliency: bool = opt(True, "restrict updates to visual weights with Fisher ratio >= threshold")
    threshold: float = opt(1.0, "saliency threshold on F_forget / F_retain")
    fisher_batches: int = opt(4, "batches per set for the feature-level Fisher diagonals")

    def __post_init__(self) -> None:
        if self.fisher_batches < 1:  # no batch: a Fisher of zeros opens every weight of the saliency mask
            raise ConfigError(f"fisher_batches must be at least 1, got {self.fisher_batches}")

    def check_train(self, train: Any) -> None:
        """The saliency mask selects single weights, which LoRA's low-rank factors cannot carry."""
        if self.saliency and train.scope == "lora":
            raise ConfigError("vkd's saliency masks single weights of the linear layers, which LoRA's low-rank "
                              "factors cannot carry: use scope visual, or saliency=false")


class VKD(BaseMethod):
    name = "vkd"
    streams = ("forget", "retain", "neutral")
    images_only = True  # streams hold each distinct image once
    uses_language = False
    reference = "visual"
    default_scope = "visual"
    Config = VKDConfig

    def setup(self, ctx: Context) -> None:
        keep_to_visual(ctx, self.name)
        with torch.no_grad():
            neutral = token_features(ctx.reference, images_of(ctx.streams["neutral"].turns))
        _one_grid(neutral[1:], neutral[0], "never-taught photos")
        self.target = torch.stack([n.float() for n in neutral]).mean(0)
        if not self.cfg.saliency:
            return
        params = [w for w in linear_weights(ctx.adapter, ("vision", "projector")) if w.requires_grad]

        def energy(turns: list[Turn]) -> tuple[torch.Tensor, int]:
            feats = token_features(ctx.adapter, images_of(turns))
            return torch.stack([f.float().pow(2).mean() for f in feats]).mean(), len(feats)

        def sensitivity(stream: str) -> list[torch.Tensor]:
            batches = ctx.streams[stream].preview(self.cfg.fisher_batches)
            return squared_gradients(energy, params, batches, ctx)

        ff, fr = sensitivity("forget"), sensitivity("retain")
        masks = {p: (a + 1e-15) / (b + 1e-15) >= self.cfg.threshold for p, a, b in zip(params, ff, fr, strict=True)}
        # the mask covers the linear weights alone; the rest (biases, norms, the patch embedding) never moves, so it is
        # frozen rather than masked to nothing, and the trainable count is what the mask chooses from
        ctx.constraints.frozen.update(p for p in ctx.adapter.model.parameters() if p.requires_grad and p not in masks)
        ctx.constraints.masks = masks
        ctx.info["mask_fraction"] = masked_fraction(masks)

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                              dict[str, float]]:
        a, ref = ctx.adapter, ctx.reference
        assert ref is not None
        f_img, r_img = images_of(batch["forget"]), images_of(batch["retain"])
        with torch.no_grad():
            teacher_r = token_features(ref, r_img)
        student_r = token_features(a, r_img)
        student_f = token_features(a, f_img)
        target = self.target.to(student_f[0].device)
        _one_grid(student_f, target, "forget photos")
        l_f = torch.stack([F.mse_loss(s.float(), target) for s in student_f]).mean()
        l_r = token_mse(student_r, teacher_r)
        return l_f, self.cfg.retain_weight * l_r, {"forget_mse": l_f.item(), "retain_mse": l_r.item()}


def _one_grid(maps: list[torch.Tensor], like: torch.Tensor, what: str) -> None:
    """vkd compares visual tokens position by position; a model that reads a photo of another size as
    another token grid (Qwen-VL) cannot be compared so, and says it in one line rather than mid-way in a
    tensor error."""
    other = next((tuple(m.shape) for m in maps if m.shape != like.shape), None)
    if other is not None:
        raise DataError(f"vkd compares visual tokens position by position, and the {what} give token grids of "
                        f"other sizes on this model ({other} against {tuple(like.shape)}): give photos of one size "
                        "(the never-taught ones too), or use cvf_ncu")
