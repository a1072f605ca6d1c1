"""The two hooks every constrained method plugs into, so no method rewrites the loop.

* A **gradient mask** (before the optimiser step): a boolean per parameter element;
  masked-out elements get no gradient, and with their optimiser state never fed they stay put.
* An **update projection** (after the step): the update is recomputed as ``new - old`` and
  replaced by its projection ``dW @ P`` onto a subspace of the layer's input space. Applying
  it to the optimiser's *update* rather than the raw gradient is what Adam needs
  (Adam-NSCL): Adam's per-element scaling would otherwise push the step out of the subspace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from unsee.engine.distributed import local, shard_like


@dataclass
class Constraints:
    masks: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    projections: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)
    frozen: set[nn.Parameter] = field(default_factory=set)
    masks_on: bool = True
    clip_first: bool = False  # the masks take the clipped gradient, not the one the clip measures
    _before: dict[nn.Parameter, torch.Tensor] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.masks or self.projections or self.frozen)

    def shard(self, new_of: Callable[[nn.Parameter], nn.Parameter | None]) -> None:
        """Key the constraints by the sharded parameters ``new_of(p)`` gives, masks cut to the local rows.

        Frozen parameters are dropped: under FSDP they take no gradient and no optimiser step.
        """
        self.masks = {q: shard_like(m, q) for p, m in self.masks.items() if (q := new_of(p)) is not None}
        self.projections = {q: proj for p, proj in self.projections.items() if (q := new_of(p)) is not None}
        self.frozen = set()

    @torch.no_grad()
    def mask_gradients(self, after_clip: bool = False) -> None:
        """Mask the gradients where the method asks: as soon as they are shared (the frozen ones are dropped
        then), or with ``clip_first`` once they are clipped."""
        for p, m in self.masks.items() if self.masks_on and after_clip == self.clip_first else ():
            if p.grad is not None:
                g = local(p.grad)
                g.mul_(m.to(g.dtype))
        for p in self.frozen if not after_clip else ():
            p.grad = None

    def snapshot(self) -> None:
        """Remember the parameters whose update will be projected or must not move."""
        self._before = {p: local(p).detach().clone() for p in (*self.projections, *self.masks, *self.frozen)}

    @torch.no_grad()
    def project_updates(self) -> None:
        for p, proj in self.projections.items():
            old, w = self._before[p], local(p)
            delta = (w - old).reshape(-1, proj.shape[0])
            w.copy_(old + (delta @ proj.to(delta.dtype)).reshape(w.shape))
        # Adam's momentum can move an element whose gradient is masked now; pin it.
        for p, m in self.masks.items() if self.masks_on else ():
            w = local(p)
            w.copy_(torch.where(m.bool(), w, self._before[p]))
        for p in self.frozen:
            local(p).copy_(self._before[p])
        self._before = {}


def masked_fraction(masks: dict[nn.Parameter, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return float(sum(m.sum().item() for m in masks.values()) / total) if total else 0.0


def conv_as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A conv kernel as the (out, in * k * k) matrix of its unfolded form."""
    return weight.reshape(weight.shape[0], -1)


def unfold_conv_input(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Inputs of a patch-embedding conv, unfolded to rows that multiply ``conv_as_matrix``."""
    if isinstance(mod, nn.Conv2d):
        cols = torch.nn.functional.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                                          stride=mod.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if isinstance(mod, nn.Conv3d):
        # Qwen's patch embed: kernel == stride over the whole input patch, so each row is one patch.
        k = mod.weight[0].numel()
        return x.reshape(-1, k)
    raise TypeError(f"not a convolution: {type(mod).__name__}")
