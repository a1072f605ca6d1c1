"""NCU: null-space constrained updates of the visual module (docs/methods.md, "NCU").

For each linear layer (and the unfolded patch-embedding conv) of the vision tower and
projector we hook the layer's input ``k`` on retained images, accumulate ``C = sum k k^T / n``,
and keep the eigenvectors ``U0`` of its smallest eigenvalues. Projecting each update
``dW -> dW U0 U0^T`` makes ``dW k ~ 0`` for every retained input, so each layer's output on
retained data is unchanged to first order. The engine applies the projection to Adam's
*update*, after the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torch import nn

from unsee.config import opt
from unsee.engine.constraints import unfold_conv_input
from unsee.engine.trainer import Context, unique_images
from unsee.errors import ConfigError
from unsee.models.base import Adapter


@dataclass
class NCUConfig:
    """The null space's options: all of ``ncu_only``'s, and ``cvf_ncu``'s besides CVF's."""

    energy: float = opt(0.01, "NCU: keep the eigen-directions holding at most this fraction of the energy")
    ncu_images: int = opt(256, "NCU: retained images used for the covariance")
    forgotten_images: list = opt([], "images of already-forgotten targets", set_by="the continual driver")
    subspace: Literal["null", "contrast"] = opt(
        "null", "NCU: 'null' confines updates to the retained photos' null space; 'contrast' to the directions "
        "where the forget photos' layer inputs are largest against the retained ones', which the inputs of faces "
        "the run never sees (people learned before the fine-tune) barely reach (docs/methods.md, \"NCU\")")
    contrast_rank: float = opt(0.02, "NCU 'contrast': the fraction of each layer's input dimensions updates may use")

    def validate(self) -> None:
        """Read when the config is loaded, before any model is: a count below one would slice the retained
        photos from the end, and an energy outside [0, 1] keeps no directions or all of them."""
        if not 0 < self.contrast_rank <= 1:
            raise ConfigError(f"contrast_rank must be in (0, 1], got {self.contrast_rank}")
        if not 0 <= self.energy <= 1:
            raise ConfigError(f"energy is a fraction of the spectrum, in [0, 1]; got {self.energy}")
        if self.ncu_images < 1:
            raise ConfigError(f"ncu_images must be at least 1, got {self.ncu_images}")
        getattr(super(), "validate", lambda: None)()  # cvf_ncu's CVF options

    def check_train(self, train: Any) -> None:
        """The null space constrains each weight's update; under LoRA it would land on the low-rank factors,
        and the merged update (the new factors' product against the old) leaves it."""
        if train.scope == "lora" and getattr(self, "ncu", True):  # cvf_ncu's ncu=false is cvf_only, which may
            raise ConfigError("the null-space constraint (NCU) holds each linear weight's update, which LoRA's "
                              "low-rank factors cannot carry: use scope visual or full")
        getattr(super(), "check_train", lambda _: None)(train)  # cvf_ncu's other options (the hardening's)


def constrain_to_retained(ctx: Context, cfg: NCUConfig, known: bool = True) -> None:
    """Confine every visual update to the null space of the retained photos' layer inputs.

    The covariance takes the retained photos, then the known people's (unless ``known`` is off)
    and the general ones where the method reads them, up to ``ncu_images``; in continual runs
    the already-forgotten targets' photos are added, so that a later request does not move them
    either. With ``subspace: contrast`` the
    updates are confined instead to the directions the forget photos use most against those
    retained ones.
    """
    # each photo once: a stream of questions (ncu_only's) holds a photo once per question asked about it, and the
    # cap would otherwise fill with a few photos asked many times
    retain, kept, general = ([t.image for t in unique_images(ctx.streams[k].turns)] if k in ctx.streams
                             else [] for k in ("retain", "known", "general"))
    images = (retain + (kept if known else []) + general)[: cfg.ncu_images]
    covs = input_covariances(ctx.adapter, ctx.shard(images), ctx=ctx)
    if cfg.forgotten_images:
        done = ctx.shard(cfg.forgotten_images)
        covs = add_covariances(covs, input_covariances(ctx.adapter, done, ctx=ctx))
    if cfg.subspace == "contrast":
        forget = [t.image for t in unique_images(ctx.streams["forget"].turns)]
        fcovs = input_covariances(ctx.adapter, ctx.shard(forget), ctx=ctx)
        projs = {k: contrast_space(covs[k], fcovs[k], cfg.contrast_rank) for k in covs if k in fcovs}
    else:
        projs = {k: null_space(*v, cfg.energy) for k, v in covs.items()}
    ctx.info["null_space_rank"] = install_projections(ctx, projs)


@torch.no_grad()
def input_covariances(adapter: Adapter, images: Sequence[Image.Image], *, batch_size: int = 32,
                      ctx: Context | None = None) -> dict[str, tuple[torch.Tensor, int]]:
    """Uncentred input covariance sum and row count per visual layer, over ``images``."""
    layers = adapter.linear_modules("vision") + adapter.linear_modules("projector")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str, mod: nn.Module):  # noqa: ANN202
        def fn(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            x = args[0]
            rows = unfold_conv_input(mod, x) if isinstance(mod, nn.Conv2d | nn.Conv3d) else x.reshape(-1, x.shape[-1])
            rows = rows.double()
            sums[name] = sums.get(name, 0) + rows.T @ rows
            counts[name] = counts.get(name, 0) + rows.shape[0]
        return fn

    for name, mod in layers:
        hooks.append(mod.register_forward_hook(hook(name, mod)))
    try:
        with adapter.eval_mode():
            for i in range(0, len(images), batch_size):
                adapter.visual_features(adapter.image_inputs(images[i : i + batch_size]))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, mod in layers:  # every layer, in one order: a process whose share of photos is empty joins each sum
        if name not in sums and ctx is None:
            continue
        width = mod.in_channels // mod.groups * math.prod(mod.kernel_size) if isinstance(
            mod, nn.Conv2d | nn.Conv3d) else mod.in_features
        s = sums.get(name, torch.zeros(width, width, dtype=torch.float64, device=adapter.device))
        n = torch.tensor(float(counts.get(name, 0)), dtype=torch.float64, device=s.device)
        if ctx is not None:
            ctx.all_reduce_(s)
            ctx.all_reduce_(n)
        if n.item() > 0:
            out[name] = (s, int(n.item()))
    return out


def null_space(cov_sum: torch.Tensor, n: int, energy: float) -> torch.Tensor:
    """``U0 U0^T`` for the eigen-directions that together hold at most ``energy`` of the spectrum."""
    c = cov_sum / max(1, n)
    s, u = torch.linalg.eigh(c)  # ascending
    cum = torch.cumsum(s.clamp(min=0), 0) / s.clamp(min=0).sum().clamp(min=1e-30)
    keep = cum <= energy
    if not keep.any():
        keep[0] = True
    u0 = u[:, keep]
    return (u0 @ u0.T).float()


def contrast_space(retained: tuple[torch.Tensor, int], forget: tuple[torch.Tensor, int], rank: float) -> torch.Tensor:
    """The projector onto the directions ``u`` with the largest ``u^T C_f u / u^T C_r u``.

    The retained null space holds every direction the retained photos barely use, and any
    other face uses those about as much as the forget photos do. Ranking directions by the
    forget photos' energy over the retained photos' (the generalized eigenproblem, solved
    through the Cholesky factor of ``C_r``, slightly ridged) keeps the ones particular to
    the forget people; ``rank`` is the fraction of the layer's input dimensions kept.
    """
    c_r = retained[0] / max(1, retained[1])
    c_f = forget[0] / max(1, forget[1])
    d = c_r.shape[0]
    ridge = 1e-6 * torch.trace(c_r).clamp(min=1e-30) / d
    inv_l = torch.linalg.inv(torch.linalg.cholesky(c_r + ridge * torch.eye(d, dtype=c_r.dtype, device=c_r.device)))
    _, vecs = torch.linalg.eigh(inv_l @ c_f @ inv_l.T)  # ascending
    basis, _ = torch.linalg.qr(inv_l.T @ vecs[:, -max(1, round(rank * d)):])
    return (basis @ basis.T).float()


def add_covariances(a: dict[str, tuple[torch.Tensor, int]],
                    b: dict[str, tuple[torch.Tensor, int]]) -> dict[str, tuple[torch.Tensor, int]]:
    return {k: (a[k][0] + b[k][0], a[k][1] + b[k][1]) if k in b else a[k] for k in a}


def install_projections(ctx: Context, projs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Project every visual linear weight's update onto ``projs``; freeze everything else in the visual module."""
    adapter = ctx.adapter
    ranks: dict[str, int] = {}
    projected = set()
    for name, mod in adapter.linear_modules("vision") + adapter.linear_modules("projector"):
        if name not in projs or not mod.weight.requires_grad:
            continue
        proj = projs[name].to(mod.weight.device)
        ctx.constraints.projections[mod.weight] = proj
        ranks[name] = int(round(torch.trace(proj).item()))
        projected.add(mod.weight)
    for p in adapter.model.parameters():
        if p.requires_grad and p not in projected:
            ctx.constraints.frozen.add(p)
    return ranks
