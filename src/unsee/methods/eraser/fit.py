"""Building MLLMEraser's steering: activations, the per-layer maps, and the entry points.

No weight changes. From a handful of forward passes we build, for each chosen decoder
layer ``l``, a ``d x d`` map ``W_l`` that sends the last-token activation of a *forget*
prompt to the erasure direction ``r_l`` (recall minus erasure) and a *retain* prompt to
about zero (see ``docs/methods.md``, "MLLMEraser"). Sign convention: ``W_l`` maps a forget
activation to ``+r_l`` (towards "recall"), so the injected ``s * r_l`` with ``s < 0`` moves
it towards the erasure inputs.

The module touches a model only through the adapter (``generation_batch``,
``training_batch``, ``forward``, ``answer_logprobs``, ``decoder_layers()``, ``fingerprint()``,
the processor's ``image_mean``/``image_std`` for PGD) and forward hooks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from typing import Any

import torch
from torch import nn

from unsee.data.prompts import qa_prompt
from unsee.data.schema import Example
from unsee.engine.adversarial import pgd_pixels as attack_pgd_pixels
from unsee.errors import ConfigError, DataError
from unsee.methods.eraser.config import EraserConfig, layer_span
from unsee.methods.eraser.hooks import hidden_of, last_real
from unsee.methods.eraser.steering import Steering
from unsee.models.base import Adapter, Turn

# The erasure prompt when no neutral identities are at hand: same image, same question,
# but the model is told to say it does not know, which is the behaviour we steer towards.
REFUSAL_SUFFIX = "You do not know who this person is. Answer that you do not know."


# ---------------------------------------------------------------------------- activations


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Collected(Exception):
    """Raised by the deepest hook of :func:`collect_last_token` to end the forward pass there."""


@torch.no_grad()
def collect_last_token(
    adapter: Adapter,
    turns: Sequence[Turn],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    pixels: Callable[[Sequence[Turn]], torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Hidden state of the last prompt token after each layer in ``layers``: ``{l: [n, d] float64, CPU}``.

    The last prompt token is where the answer is generated from. ``generation_batch`` pads
    on the left, so it is position -1; it is read from the attention mask all the same.
    ``pixels`` may replace a batch's ``pixel_values`` (PGD-perturbed images). The forward
    pass stops after the deepest layer asked for: the rest of the stack and the head would
    be computed for nothing.
    """
    if not turns:
        raise DataError("no prompts to collect activations from")
    blocks = adapter.decoder_layers()
    found: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    mask: list[torch.Tensor | None] = [None]

    deepest = max(layers)
    reading = [False]  # PGD runs the model too, between our forward passes

    def hook_for(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not reading[0]:
                return
            h = hidden_of(output)
            last = last_real(mask[0], h.shape[0], h.shape[1], h.device)
            found[i].append(h[torch.arange(h.shape[0], device=h.device), last].detach().to("cpu", torch.float64))
            if i == deepest:
                raise _Collected

        return hook

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        with adapter.eval_mode():
            for chunk in _batches(turns, batch_size):
                batch = adapter.to_device(adapter.generation_batch(chunk))
                if pixels is not None:
                    batch["pixel_values"] = pixels(chunk).to(batch["pixel_values"])
                mask[0], reading[0] = batch.get("attention_mask"), True
                with suppress(_Collected):
                    adapter.forward(batch, use_cache=False)
                reading[0] = False
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(found[i]) for i in layers}


def pgd_pixels(adapter: Adapter, turns: Sequence[Turn], cfg: EraserConfig) -> torch.Tensor:
    """PGD towards the correct answer, with the eraser's budget (:func:`unsee.engine.adversarial.pgd_pixels`)."""
    return attack_pgd_pixels(adapter, turns, cfg.pgd_eps, cfg.pgd_step, cfg.pgd_steps)


# ---------------------------------------------------------------------------- the maps


def layer_map(h_forget: torch.Tensor, h_retain: torch.Tensor, r: torch.Tensor, null_ratio: float,
              lam: float) -> torch.Tensor:
    """``W = Proj pinv(X^T X + lam Proj^T Proj) X^T (1 r^T)`` with ``X = H_f Proj`` (float64).

    ``Proj`` projects onto the last ``null_ratio * d`` right-singular vectors of ``H_r``:
    directions retain activations (almost) do not use, so ``h_r @ W ~ 0``. Within that
    subspace ``Delta`` is the ridge least-squares solution of ``X Delta = 1 r^T``, so
    ``h_f @ W ~ r`` for forget activations. (``W`` has rank one, ``u r^T``; it is kept as
    ``d x d`` to follow the specification.)
    """
    d = h_retain.shape[1]
    k = max(1, round(null_ratio * d))
    _, _, vh = torch.linalg.svd(h_retain, full_matrices=True)
    q = vh[-k:].T  # d x k, the smallest singular directions of H_r
    proj = q @ q.T
    x = h_forget @ proj
    a = x.T @ x + lam * (proj.T @ proj)
    target = torch.ones(x.shape[0], 1, dtype=x.dtype) @ r.view(1, -1)  # 1 r^T, one row per forget item
    delta = torch.linalg.pinv(a, hermitian=True) @ x.T @ target
    return proj @ delta


def joint_map(h_forget: torch.Tensor, h_keep: torch.Tensor, r: torch.Tensor, lam: float) -> torch.Tensor:
    """``W = u r^T`` with ``u`` the ridge least squares of ``H_f u = 1`` and ``H_keep u = 0`` together (float64).

    The null-space map fits the forget rows only inside directions the kept activations
    barely use, and on a small model identities differ mostly outside them: kept prompts
    then get a third of ``r`` and forget prompts only half of it. Fitting both sides at
    once makes ``h @ u`` a linear read-out of "is this a forget prompt", and ``W`` a map
    that injects ``r`` in proportion to it.
    """
    d = h_forget.shape[1]
    a = h_forget.T @ h_forget + h_keep.T @ h_keep + lam * torch.eye(d, dtype=h_forget.dtype)
    u = torch.linalg.solve(a, h_forget.sum(0, keepdim=True).T)  # H_f^T 1
    return u @ r.view(1, -1)


def build_steering(
    adapter: Adapter, forget: Sequence[Turn], neutral: Sequence[Turn], retain: Sequence[Turn], cfg: EraserConfig
) -> Steering:
    """Collect activations and compute ``W_l`` for every chosen layer.

    ``forget`` are the recall inputs (forget prompts on their own images, answers needed
    only for PGD), ``neutral`` the erasure inputs, ``retain`` every prompt that must not
    move (``H_r``: retained people, and with ``cfg.keep`` general and text-only prompts).
    ``r_l = mean(recall) - mean(erasure)``; with PGD the recall mean uses perturbed images
    while ``H_f`` keeps the clean ones, which is what the model sees at test time.
    """
    for name, group in (("forget", forget), ("erasure", neutral), ("retain", retain)):
        if not group:
            raise DataError(f"MLLMEraser needs at least one {name} prompt")
    n_layers = len(adapter.decoder_layers())
    layers = sorted(set(cfg.layers)) if cfg.layers else layer_span(n_layers, *cfg.depth)
    if max(layers) >= n_layers:
        raise ConfigError(f"layers {layers} out of range: the model has {n_layers} decoder layers")
    bs = cfg.batch_size
    h_f = collect_last_token(adapter, forget, layers, batch_size=bs)
    recall = h_f
    if cfg.use_pgd:
        recall = collect_last_token(
            adapter, forget, layers, batch_size=bs, pixels=lambda chunk: pgd_pixels(adapter, chunk, cfg)
        )
    h_e = collect_last_token(adapter, neutral, layers, batch_size=bs)
    h_r = collect_last_token(adapter, retain, layers, batch_size=bs)
    weights, directions, r_norms = {}, {}, {}
    for i in layers:
        r = recall[i].mean(0) - h_e[i].mean(0)
        w = joint_map(h_f[i], h_r[i], r, cfg.lam) if cfg.fit == "joint" else layer_map(
            h_f[i], h_r[i], r, cfg.null_ratio, cfg.lam)
        weights[i], directions[i] = w.to(torch.float32), r.to(torch.float32)
        r_norms[str(i)] = float(r.norm())
    return Steering(
        weights=weights,
        strength=cfg.strength,
        arch=adapter.arch,
        fingerprint=adapter.fingerprint(),
        model_name=str(getattr(adapter.model, "name_or_path", "")),
        gate=cfg.gate,
        directions=directions,
        info={
            "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
            "counts": {"forget": len(forget), "erasure": len(neutral), "retain": len(retain)},
            "r_norm": r_norms,
        },
    )


# ---------------------------------------------------------------------------- entry points


def prompt_turns(examples: Sequence[Example]) -> list[Turn]:
    """Each example asked as it is scored (:func:`~unsee.data.prompts.qa_prompt`), where the steering acts."""
    return [Turn(e.pil_image() if e.has_image else None, qa_prompt(e.question), e.answer) for e in examples]


def erasure_turns(forget: Sequence[Example], neutral: Sequence[Example], mode: str) -> list[Turn]:
    """Each forget prompt paired with a neutral identity's image (cycled), or with a refusal instruction."""
    if mode == "refusal":
        return [Turn(e.pil_image(), f"{qa_prompt(e.question)} {REFUSAL_SUFFIX}") for e in forget]
    pool = [e for e in neutral if e.has_image]
    if not pool:
        raise DataError("the suite has no neutral identities with images; use erasure=refusal")
    return [Turn(pool[i % len(pool)].pil_image(), qa_prompt(e.question)) for i, e in enumerate(forget)]


def draw(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples, a seeded draw kept in their original order (all of them when ``n`` is None)."""
    if n is None or len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def peak_memory_mb() -> float:
    """Peak accelerator memory if there is one, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
