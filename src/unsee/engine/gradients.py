"""What the engine does to the gradients between the backward pass and the step.

The mean over processes, the masks, the clip and the second pass of a sharpness-aware step: kept apart
from the training loop, which calls them in the same order for every method. Also the gradient
after a simulated relearning, which a method's loss takes (``after_relearning``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from unsee.errors import TrainingError

if TYPE_CHECKING:
    from unsee.engine.distributed import Sharded
    from unsee.engine.trainer import Context


def share_gradients(ctx: Context, params: list[nn.Parameter], sharded: Sharded | None) -> None:
    """The gradients as one process would hold them over the whole batch, masked."""
    if ctx.world > 1 and sharded is None:
        average_gradients(params, ctx.world)
    ctx.constraints.mask_gradients()


def clip_gradients(ctx: Context, params: list[nn.Parameter], name: str, step: int) -> None:
    """Clip the gradient norm, then apply the masks a method asks to take the clipped gradient (MMUnlearner's
    forget step: the whole gradient clipped to norm 1, then masked)."""
    if ctx.cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, ctx.cfg.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if not torch.isfinite(norm):
            raise TrainingError(f"{name}: non-finite gradient at step {step}; the model is unchanged")
    ctx.constraints.mask_gradients(after_clip=True)


def uphill_backward(ctx: Context, params: list[nn.Parameter], direction: list[torch.Tensor | None],
                     objective: Callable[[], torch.Tensor]) -> None:
    """Add to the gradients the one of ``objective`` at ``w + rho * d / |d|`` (sharpness-aware minimisation).

    The weights move uphill along ``d`` (a masked gradient), the objective is taken again on the
    same batch, and the weights come back exactly: the update then follows the worst loss near
    the weights. Unlearning that minimises it lands where a small step, such as a few relearning
    updates, does not climb back out. A zero or non-finite ``d`` leaves the weights where they are.
    """
    with torch.no_grad():
        moved = [(p, d) for p, d in zip(params, direction, strict=True) if d is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for _, d in moved])) if moved \
            else None
        if norm is None or not torch.isfinite(norm) or norm == 0:
            moved = []
        saved = [p.detach().clone() for p, _ in moved]
        for p, d in moved:
            p.add_(d, alpha=float(ctx.cfg.sam_rho / norm))
    with torch.autocast(ctx.accelerator.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
        loss = objective()
    loss.backward()
    with torch.no_grad():
        for (p, _), old in zip(moved, saved, strict=True):
            p.copy_(old)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average gradients over the processes, as one process would see the whole batch.

    A process whose slice of the batch never reaches a parameter (text-only rows and the
    visual module, say) has no gradient for it; the others do. Every process first agrees on
    which parameters any of them reached, so all take part in the same reductions, and a
    parameter that no process reached keeps no gradient, as in a single process.
    """
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    torch.distributed.all_reduce(reached)
    for p, hit in zip(params, reached.tolist(), strict=True):
        if not hit:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def after_relearning(params: list[torch.nn.Parameter], restore: Callable[[], torch.Tensor],
                     forget: Callable[[], torch.Tensor], steps: int, eps: float) -> torch.Tensor:
    """``forget()`` after a simulated relearning, with its gradient carried back to the weights.

    A relearning attack fine-tunes the visual module a little way on some forget people, and
    the rest come back with them: on the shipped model, relearning the visual module alone
    gained more than relearning all of it (docs/results.md). So the weights first take
    ``steps`` sign-gradient steps down ``restore()`` (those people back to their reference
    features), each weight moving by ``eps / steps`` as an Adam step would, and ``forget()``
    is taken there. Its gradient at the moved weights is applied to the current ones (first
    order, as in first-order MAML) through a surrogate whose value is ``forget()``'s. The
    weights are put back before returning, whatever happens.
    """
    saved = [p.detach().clone() for p in params]
    try:
        with torch.enable_grad():
            for _ in range(steps):
                grads = torch.autograd.grad(restore(), params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        if g is not None:
                            p.sub_(g.sign() * (eps / steps))
            value = forget()
            grads = torch.autograd.grad(value, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
    surrogate = sum(((p * g.to(p.dtype)).sum() for p, g in zip(params, grads, strict=True) if g is not None),
                    torch.zeros(()))
    return value.detach() + surrogate - surrogate.detach()
