"""Pieces every method shares: the answer NLL, pooled visual features, and the base class."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from unsee.engine.trainer import Context
from unsee.errors import ConfigError
from unsee.models.base import Adapter, Turn


@dataclass
class MethodConfig:
    """Methods without options of their own use this empty config."""


class BaseMethod:
    """The defaults of everything the engine reads of a method (:class:`unsee.engine.trainer.Method`)."""

    name: ClassVar[str] = ""
    streams: ClassVar[tuple[str, ...]] = ("forget",)
    optional_streams: ClassVar[tuple[str, ...]] = ()
    reference: ClassVar[Literal["none", "full", "visual"]] = "none"
    default_scope: ClassVar[str] = "full"
    images_only: ClassVar[bool] = False
    trains_weights: ClassVar[bool] = True  # its result is the changed weights (unsee.methods.artifact)
    uses_language: bool = True
    Config: ClassVar[type] = MethodConfig

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    def setup(self, ctx: Context) -> None:
        """Nothing to prepare by default."""

    def step_multiplier(self, ctx: Context) -> int:
        return 1

    def step_streams(self, ctx: Context) -> tuple[str, ...] | None:
        """Every stream at every step by default."""
        return None

    def needs_neutral(self) -> str | None:
        """How the method does without never-taught photos, or None when it cannot: a training method that
        reads the ``neutral`` stream has no other way."""
        return "" if "neutral" not in self.streams else None

    def state_dict(self) -> Any:
        """Nothing of the method's own to resume by default: its config and the data order are kept anyway."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Nothing to restore by default."""

    def finish(self, ctx: Context) -> None:
        """Nothing after the last step by default."""

    # A method whose loss is a forgetting part plus a retaining part defines
    # ``split_loss(ctx, batch) -> (forget, retain or None, logged terms)`` and inherits ``loss``;
    # sharpness-aware steps can then smooth the forgetting alone (``sam_terms: forget``).
    split_loss: Callable[[Context, dict[str, list[Turn]]], tuple[torch.Tensor, torch.Tensor | None,
                                                                dict[str, float]]] | None = None

    def forget_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> torch.Tensor:
        """The forgetting part alone, which a sharpness-aware step takes again at the moved weights:
        ``split_loss``'s first part, unless a method can skip computing the other."""
        assert self.split_loss is not None
        return self.split_loss(ctx, batch)[0]

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The two parts of ``split_loss`` summed."""
        if self.split_loss is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither loss nor split_loss")
        forget, retain, parts = self.split_loss(ctx, batch)
        return (forget if retain is None else forget + retain), parts


def per_image(cache: dict[int, tuple[Any, Any]], images: list, compute: Callable[[list], list]) -> list:
    """``compute`` of each image, looked up by ``id`` and computed once for the images not seen yet.

    The image is kept beside its value so that its ``id`` cannot be reused by another object.
    """
    missing = list({id(im): im for im in images if id(im) not in cache}.values())
    if missing:
        for im, value in zip(missing, compute(missing), strict=True):
            cache[id(im)] = (im, value)
    return [cache[id(im)][1] for im in images]


def seq_nll(adapter: Adapter, turns: Sequence[Turn]) -> torch.Tensor:
    """Per-sequence NLL of the answer tokens (prompt and image tokens masked out)."""
    return -adapter.answer_logprobs(adapter.training_batch(turns))


def nll(adapter: Adapter, turns: Sequence[Turn]) -> torch.Tensor:
    """``NLL(x, y)`` of docs/methods.md: summed per sequence, averaged over the batch."""
    return seq_nll(adapter, turns).mean()


def squared_gradients(
    loss_of: Callable[[Any], tuple[torch.Tensor, int]],
    params: Sequence[torch.nn.Parameter],
    batches: Sequence[Any],
    ctx: Context | None = None,
) -> list[torch.Tensor]:
    """Diagonal Fisher: the mean over batches of the squared gradient of each batch's mean loss.

    ``loss_of(batch)`` gives the batch's mean loss and its item count. With several
    processes each holds a slice of every batch; the slices' gradients are summed,
    weighted by size, before squaring, so every process gets exactly the single-process
    Fisher of the whole batches (and the same saliency masks).
    """
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    distributed = ctx is not None and ctx.world > 1
    for batch in batches:
        loss, n = loss_of(batch)
        grads = torch.autograd.grad(loss * n, list(params), allow_unused=True)
        count = torch.tensor(float(n), device=params[0].device)
        if distributed:
            ctx.all_reduce_(count)  # type: ignore[union-attr]
        for a, p, g in zip(acc, params, grads, strict=True):
            g = torch.zeros_like(p, dtype=torch.float32) if g is None else g.float()
            if distributed:
                ctx.all_reduce_(g)  # type: ignore[union-attr]
            a += (g / count) ** 2
    return [a / max(1, len(batches)) for a in acc]


def keep_to_visual(ctx: Context, method: str) -> list[torch.nn.Parameter]:
    """The visual module's trainable weights; whatever else the scope opened is frozen.

    A method whose loss reads the visual module alone moves nothing else: the trainable count it
    reports is what moves, and a scope with no visual weight (``language``) is refused in one line
    rather than failing inside autograd.
    """
    groups = ctx.adapter.groups()
    visual = [p for g in ("vision", "projector") for _, p in groups.get(g, []) if p.requires_grad]
    kept = {id(p) for p in visual}
    ctx.constraints.frozen.update(p for p in ctx.adapter.model.parameters() if p.requires_grad and id(p) not in kept)
    if not visual:
        raise ConfigError(f"scope {ctx.cfg.scope!r} leaves nothing to train for method {method!r}: it changes the "
                          "visual module alone")
    return visual


def linear_weights(adapter: Adapter, groups: Sequence[str]) -> list[torch.nn.Parameter]:
    """The weights of the linear layers of ``groups``, what saliency masks choose among (the specification's
    linear layers: the patch-embedding convolution is not one)."""
    return [m.weight for g in groups for _, m in adapter.linear_modules(g) if isinstance(m, torch.nn.Linear)]


def images_of(turns: Sequence[Turn]) -> list:
    return [t.image for t in turns if t.image is not None]


def token_features(adapter: Adapter, images: Sequence) -> list[torch.Tensor]:
    """Projector output per image ([tokens, d]); only the visual module runs."""
    return adapter.visual_features(adapter.image_inputs(images))


def token_mse(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
    """Token-level distillation: the per-image MSE between two models' visual tokens, averaged over images."""
    return torch.stack([F.mse_loss(s.float(), t.float()) for s, t in zip(student, teacher, strict=True)]).mean()


def pooled(feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over image tokens, L2-normalised: the ``z`` of CVF."""
    return F.normalize(torch.stack([f.float().mean(0) for f in feats]), dim=-1)
