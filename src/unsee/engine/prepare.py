"""What the training loop prepares before its first step: its random streams, frozen references, parked
language models, fp32 master weights, LoRA, the optimiser and the learning-rate schedule.

Each is a small function of the adapter and a few options, so that the loop in
:mod:`unsee.engine.trainer` reads as the steps of a run, and stage code (the vanilla recipe)
can share the optimiser without the loop.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from unsee.models.base import Adapter


class LoraOptions(Protocol):
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    master_weights: str


class ScheduleOptions(Protocol):
    warmup_ratio: float
    schedule: str


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's random streams seeded, and torch's deterministic kernels on, for the rest
    of the process (a script's); a run inside a process that goes on takes :func:`seeded`."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """A run's random streams (Python's, numpy's, torch's) seeded from ``seed``, with torch's deterministic
    kernels where it has them. The caller's streams and setting are put back after it: a run left them seeded,
    and a notebook's own draws after it came out the same every time. Of the GPUs', the one the caller has
    drawn on is put back: saving every GPU's would open a context on each from every process of a launch."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    python, numpy = random.getstate(), np.random.get_state()
    strict = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
            torch.use_deterministic_algorithms(strict, warn_only=warn_only)


def frozen_copy(adapter: Adapter, visual_only: bool, device: torch.device | str | None = None) -> Adapter:
    """A frozen reference. With ``visual_only`` its language model is never copied,
    which keeps the reference of a 7B model to the size of its vision tower. On another
    ``device`` it hands its outputs back on the model's device."""
    held = {}
    if visual_only:
        for owner, attr in adapter.language_slots():
            held[(owner, attr)] = getattr(owner, attr)
            setattr(owner, attr, nn.Identity())
    try:
        model = copy.deepcopy(adapter.model)
    finally:
        for (owner, attr), mod in held.items():
            setattr(owner, attr, mod)
    model.eval().requires_grad_(False)
    ref = type(adapter)(model, adapter.processor, source=adapter.source)
    if device is not None and torch.device(device) != adapter.device:
        model.to(device)
        ref.output_device = adapter.device
    return ref


def park_language(adapter: Adapter, device: torch.device, uses_language: bool) -> list[nn.Module] | None:
    """Move the language model and head to the CPU for a method that never runs them, on an accelerator
    (``None`` where nothing moves).

    CVF and VKD read only the visual module; a 7B LM's 13 GB of weights would sit idle on
    the GPU for the whole run.
    """
    if device.type == "cpu" or uses_language:
        return None
    parked = [getattr(owner, attr) for owner, attr in adapter.language_slots()]
    for module in parked:
        module.to("cpu")
    return parked


def unpark(parked: list[nn.Module], device: torch.device) -> None:
    for module in parked:
        module.to(device)


LOW_PRECISION = (torch.bfloat16, torch.float16)


def upcast(params: list[nn.Parameter]) -> dict[nn.Parameter, torch.dtype]:
    """fp32 master copies of low-precision trained weights, in place; returns what to cast back.

    Adam's moments and small updates are lost in bf16; the frozen bulk of a 7B model stays
    in bf16, so only the trained part pays for fp32.
    """
    held = {}
    for p in params:
        if p.dtype in LOW_PRECISION:
            held[p] = p.dtype
            p.data = p.data.float()
    return held


def adamw(groups: list[dict[str, Any]], **kwargs: Any) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel for every parameter.

    The default per-tensor loop launches a dozen small ops for each of a model's hundred-odd
    tensors; on the tiny models that was an eighth of a training step (35 ms against 7 ms fused,
    on 2 CPU cores).
    """
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) \
        and len({p.device for p in params}) == 1
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def one_cycle(opt: torch.optim.Optimizer, lr: float, steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """torch's one-cycle schedule with a tenth of the steps warming up; at 10 steps a fifth does, as
    torch's warm-up would end at step 0 there and divide by zero."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                               pct_start=0.2 if steps == 10 else 0.1)


def apply_lora(adapter: Adapter, cfg: LoraOptions) -> None:
    """peft LoRA on every linear layer of the language model and projector (docs/methods.md), its factors
    at the precision ``master_weights`` asks for.

    Targets are full module names: a suffix such as ``0`` (a Sequential merger's first
    linear) would also match the decoder layer ``layers.0``.
    """
    from peft import LoraConfig, get_peft_model

    names = [n for n, m in adapter.linear_modules("language") + adapter.linear_modules("projector")
             if isinstance(m, nn.Linear) and "lm_head" not in n]
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=names)
    # peft makes the factors fp32 by itself; master_weights=model keeps them at the model's precision
    adapter.model = get_peft_model(adapter.model, lcfg, autocast_adapter_dtype=cfg.master_weights != "model")


def merge_lora(adapter: Adapter) -> None:
    """Fold a LoRA run's adapters into the weights, in place, so the model saves and loads without peft."""
    if hasattr(adapter.model, "merge_and_unload"):
        adapter.model = adapter.model.merge_and_unload()


@contextlib.contextmanager
def plain_if_stopped(adapter: Adapter, lora: bool) -> Iterator[None]:
    """A LoRA run that fails or is stopped leaves a plain model with its last good state, as any other run
    does: left wrapped in peft, it neither saved as a model nor trained again."""
    try:
        yield
    except BaseException:
        if lora:
            merge_lora(adapter)
        raise


def lr_lambda(cfg: ScheduleOptions, total: int) -> Callable[[int], float]:
    """Linear warm-up, then the schedule's decay, as a multiplier of the base learning rate.

    The warm-up's W steps are the ratio of the run's rounded to the nearest step (a third of three epochs
    is one epoch, not one step less), at multipliers 1/W, 2/W, ..., 1: no step runs at a rate of zero; the
    decay then starts from the peak."""
    warm = math.floor(cfg.warmup_ratio * total + 0.5)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        rest = max(1, total - warm)
        t = (step - warm) / rest
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "linear":
            return max(0.0, 1 - t)
        return 1.0

    return f
