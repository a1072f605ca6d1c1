"""Adversarial steps on pixel inputs, shared by the PGD audit and the methods that perturb images.

They sit here, below both methods and evaluation, so that a method (CVF's adversarial
features, MLLMEraser's PGD-strengthened recall) does not import the audits that judge it.
Only the adapter is touched: the image processor's statistics and the model's answer scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from unsee.errors import ConfigError, DataError
from unsee.models.base import Adapter, Turn


def _channel_view(vec: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-channel vector over ``pixel_values``.

    LLaVA-style processors give ``[B, C, H, W]``; Qwen-VL gives flattened patches
    ``[N, C*T*P*P]`` with the channel as the slowest-varying axis of each row.
    """
    c = vec.numel()
    if pixel_values.dim() == 4 and pixel_values.shape[1] == c:
        return vec.view(1, c, 1, 1)
    if pixel_values.dim() == 2 and pixel_values.shape[1] % c == 0:
        return vec.repeat_interleave(pixel_values.shape[1] // c).view(1, -1)
    raise ConfigError(f"PGD does not know the channel layout of pixel_values with shape {tuple(pixel_values.shape)}")


def pixel_bounds(adapter: Adapter, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel ``(mean, std)`` of the processor, broadcast over ``pixel_values``."""
    ip = adapter.processor.image_processor
    if getattr(ip, "image_mean", None) is None or getattr(ip, "image_std", None) is None:
        raise ConfigError("PGD needs the image processor's image_mean and image_std")
    kw = {"dtype": pixel_values.dtype, "device": pixel_values.device}
    return (_channel_view(torch.tensor(ip.image_mean, **kw), pixel_values),
            _channel_view(torch.tensor(ip.image_std, **kw), pixel_values))


def linf_ascent(adapter: Adapter, clean: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor],
                eps: float, step: float, steps: int) -> torch.Tensor:
    """Sign-gradient ascent of ``objective(pixel_values)`` inside an L-inf ball, on the processor's output.

    Re-running the image processor on a perturbed PIL image is not differentiable, so the
    *normalised* output is perturbed instead: a radius ``e`` in [0, 1] pixel units is
    ``e / std_c`` there, and channel ``c`` stays in ``[(0 - mean_c) / std_c, (1 - mean_c) / std_c]``,
    the same L-inf ball as perturbing the resized pixels. No random start: the result is
    deterministic. (Qwen-VL repeats each frame ``temporal_patch_size`` times inside a patch;
    the copies move independently.) Only the pixels get a gradient; no parameter's ``.grad`` moves.
    """
    clean = clean.detach()
    mean, std = pixel_bounds(adapter, clean)
    radius, stride = eps / std, step / std
    lo, hi = (0 - mean) / std, (1 - mean) / std
    delta = torch.zeros_like(clean)
    with torch.enable_grad():
        for _ in range(steps):
            pv = (clean + delta).requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(pv), pv)
            delta = torch.maximum(torch.minimum(delta + stride * grad.sign(), radius), -radius)
            delta = torch.maximum(torch.minimum(clean + delta, hi), lo) - clean
    return (clean + delta).detach()


def pgd_pixels(adapter: Adapter, turns: Sequence[Turn], eps: float, step: float, steps: int) -> torch.Tensor:
    """PGD towards each turn's answer: :func:`linf_ascent` of the answers' log-likelihood."""
    if any(t.image is None or not t.answer for t in turns):
        raise DataError("PGD needs an image and the correct answer on every prompt")
    batch = adapter.to_device(adapter.training_batch(turns))

    def answers(pv: torch.Tensor) -> torch.Tensor:
        batch["pixel_values"] = pv
        return adapter.answer_logprobs(batch).sum()

    with adapter.eval_mode():
        return linf_ascent(adapter, batch["pixel_values"], answers, eps, step, steps)
