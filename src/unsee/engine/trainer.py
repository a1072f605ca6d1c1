"""The one training loop. A method supplies its loss (and, optionally, constraints);
the engine does the rest: scope, optimiser, masks and projections, accelerate,
progress, NaN guard and cost accounting. It reads top to bottom in one sitting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from unsee.bars import bar as progress_bar
from unsee.config import check_seed, opt
from unsee.data.collate import Stream
from unsee.data.schema import Suite
from unsee.engine.checkpoint import (
    check_checkpoint_dir,
    checkpoint_key,
    has_checkpoint,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from unsee.engine.constraints import Constraints
from unsee.engine.distributed import Sharded, check_launch, fsdp_version, launch_mixed_precision, training_accelerator
from unsee.engine.gradients import clip_gradients, share_gradients, uphill_backward
from unsee.engine.prepare import (
    LOW_PRECISION,
    adamw,
    apply_lora,
    frozen_copy,
    lr_lambda,
    park_language,
    plain_if_stopped,
    seeded,
    unpark,
    upcast,
)
from unsee.engine.tracking import Trackers, check_trackers, history
from unsee.errors import ConfigError, TrainingError, UnseeError
from unsee.models.base import SCOPES, Adapter
from unsee.provenance import optimizer_state_bytes


@dataclass
class TrainConfig:
    """Options every training method shares. Method-specific options live in the method's config."""

    scope: str = opt("full", "parameters to train: full, visual, vision_tower, projector, language, lora")
    lr: float = opt(1e-5, "AdamW learning rate")
    epochs: float = opt(1.0, "passes over the forget stream (fractions allowed)")
    max_steps: int = opt(0, "stop after this many steps (0: from epochs)")
    min_steps: int = opt(
        0, "at least this many steps (all of a run's steps, a method's retain steps included), however few "
        "forget images a request has: a schedule tuned on a large request otherwise gives a small one too few "
        "updates (0: off; max_steps wins)")
    batch_size: int = opt(8, "global batch size of each stream")
    group_by_length: bool = opt(
        False, "batch turns of similar token length together (shuffled within windows of 50 batches): less "
        "padding, faster steps, another data order, and an epoch's last, incomplete batch read in the next epoch")
    visual_lr_scale: float = opt(1.0, "learning rate of the visual module as a fraction of lr")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip the gradient norm (0: off)")
    sam_rho: float = opt(
        0.0, "sharpness-aware steps: the gradient is taken again after moving the weights this far (L2, over every "
        "trained weight) uphill, so that the update lowers the loss around the weights, not only at them; a "
        "forgetting that sits in a flat region is harder for a few relearning steps to undo. Twice the cost "
        "of a step (0: off)")
    sam_terms: Literal["all", "forget"] = opt(
        "all", "what the sharpness-aware step smooths: the whole objective, or the forgetting terms alone, the "
        "retaining terms' gradient taken at the weights themselves, so that the uphill move follows the forgetting "
        "and the kept knowledge is not pulled along with it (methods that give their loss in these two parts)")
    warmup_ratio: float = opt(0.0, "linear warm-up fraction of the steps")
    schedule: Literal["constant", "cosine", "linear"] = opt("constant", "learning-rate schedule after warm-up")
    bf16: bool = opt(False, "bf16 mixed precision (autocast); on by itself for a model loaded in bf16/fp16")
    master_weights: Literal["fp32", "model"] = opt(
        "fp32", "dtype of the trained weights during the run: fp32 masters (a bf16 model's trained part is "
        "upcast, then cast back when saved) or the model's own dtype (less memory, coarser updates)")
    reference_device: Literal["same", "cpu"] = opt(
        "same", "where the frozen reference lives: beside the model, or offloaded to the CPU to save GPU memory")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    lora_r: int = opt(16, "LoRA rank (scope lora)")
    lora_alpha: int = opt(16, "LoRA alpha (scope lora)")
    lora_dropout: float = opt(0.05, "LoRA dropout (scope lora)")
    seed: int = opt(0, "seed for data order and initialisation")
    log_every: int = opt(10, "steps between records of the loss and its terms (progress bar, run.json history, "
                         "trackers)")
    report_to: str = opt("", "also send the losses to these Accelerate trackers: tensorboard, wandb (comma-separated)")
    logging_dir: str = opt("", "where a tracker writes its logs (tensorboard: DIR/tensorboard/RUN)")
    eval_every: int = opt(0, "every N steps, record the forget and retain MCQ accuracy in the run's info.evals "
                             "(0: off)")
    progress: bool = opt(True, "show a progress bar")
    checkpoint_dir: str = opt("", "directory of the periodic checkpoint; a run that finds one there resumes from it")
    checkpoint_every: int = opt(0, "steps between checkpoints (0: none)")
    keep_checkpoint: bool = opt(
        False, "keep the last checkpoint after the run finishes (by default it is removed, and a checkpoint "
        "resumes only the run it was written by: same config, data and model)")

    def validate(self) -> None:
        if self.scope not in SCOPES:
            raise ConfigError(f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")
        if self.lr <= 0 or self.batch_size <= 0 or self.epochs < 0 or self.max_steps < 0 or self.min_steps < 0:
            raise ConfigError("lr and batch_size must be positive; epochs, max_steps and min_steps non-negative")
        if self.epochs == 0 and self.max_steps == 0 and self.min_steps == 0:  # once taken as one step, silently
            raise ConfigError("epochs 0 with no max_steps or min_steps: nothing would train; give epochs > 0 "
                              "or max_steps N")
        if self.sam_rho < 0:
            raise ConfigError(f"sam_rho must not be negative, got {self.sam_rho}")
        # a negative rate, decay or clip would train uphill or fail deep in torch; a warm-up past 1 never ends
        if not self.visual_lr_scale > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError(f"visual_lr_scale must be positive, weight_decay and grad_clip not negative, got "
                              f"{self.visual_lr_scale}, {self.weight_decay} and {self.grad_clip}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.lora_r < 1 or self.lora_alpha < 1 or not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"LoRA needs lora_r and lora_alpha >= 1 and lora_dropout in [0, 1), got "
                              f"{self.lora_r}, {self.lora_alpha} and {self.lora_dropout}")
        check_seed(self.seed)
        if self.log_every < 1 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ConfigError("log_every must be at least 1, eval_every and checkpoint_every not negative")
        check_trackers(self.report_to)


class Method(Protocol):
    """A method is its loss, the streams it reads, and optionally the constraints it sets up.

    This is everything the engine reads of a method; ``unsee.methods.base.BaseMethod`` gives
    each a default.
    """

    name: str
    streams: tuple[str, ...]  # the batches of every step; the first one's length sets the epochs
    optional_streams: tuple[str, ...]  # also read when the benchmark has them
    images_only: bool  # True: each stream holds each distinct image once (the loss reads only images)
    reference: Literal["none", "full", "visual"]  # the frozen copy the loss compares with, if any
    uses_language: bool  # False: the loss never runs the language model, which may then leave the GPU
    cfg: Any  # the method's own options; part of what a checkpoint belongs to

    def setup(self, ctx: Context) -> None: ...
    def step_multiplier(self, ctx: Context) -> int: ...
    def step_streams(self, ctx: Context) -> tuple[str, ...] | None: ...  # what a step reads (None: all), alone advanced
    def loss(self, ctx: Context, batch: dict[str, list]) -> tuple[torch.Tensor, dict[str, float]]: ...
    # The loss as its forgetting part and its retaining part (None: none) with the logged terms; None where the
    # method does not separate them. Read only by sharpness-aware steps on the forgetting alone.
    split_loss: Callable[[Context, dict[str, list]], tuple[torch.Tensor, torch.Tensor | None, dict[str, float]]] | None
    def forget_loss(self, ctx: Context, batch: dict[str, list]) -> torch.Tensor: ...  # split_loss's first part
    def state_dict(self) -> Any: ...  # what a mid-run checkpoint keeps of the method (None: nothing)
    def load_state_dict(self, state: Any) -> None: ...
    def finish(self, ctx: Context) -> None: ...  # after the last step, before the model is checked and kept


@dataclass
class Context:
    """What a method may read during ``setup`` and ``loss``."""

    adapter: Adapter
    suite: Suite
    cfg: TrainConfig
    streams: dict[str, Stream]
    constraints: Constraints = field(default_factory=Constraints)
    reference: Adapter | None = None
    accelerator: Any = None
    step: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    autocast: bool = False  # bf16 autocast around the loss: asked for, or the model is low-precision

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    def shard(self, items: list) -> list:
        """This process's share of a list that every process holds whole (covariance images)."""
        return items[self.rank :: self.world]

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over processes in place (covariances, Fisher diagonals)."""
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    @torch.no_grad()
    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The rows of a tensor that every process computed for its slice of a batch, in the global
        batch's order (process r holds rows r, r + world, ...): what one process would hold.
        For terms that compare a batch's items with each other (contrastive negatives)."""
        if self.world == 1:
            return t
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, n)
        most = int(max(sizes))
        padded = torch.cat([t, t.new_zeros(most - t.shape[0], *t.shape[1:])]) if t.shape[0] < most else t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded.contiguous())
        return torch.stack([parts[r][i] for i in range(most) for r in range(self.world) if i < int(sizes[r])])

    def gathered_index(self, i: int) -> int:
        """Where this process's row ``i`` sits in :meth:`gather`'s result (equal slices)."""
        return i * self.world + self.rank


def unique_images(turns: list) -> list:
    """One turn per distinct image: methods that read only images (CVF, VKD) would otherwise
    revisit a photo once for every question asked about it."""
    seen: set[int] = set()
    out = []
    for t in turns:
        if t.image is not None and id(t.image) not in seen:
            seen.add(id(t.image))
            out.append(t)
    return out


def make_streams(turns: dict[str, list], cfg: TrainConfig, rank: int = 0, world: int = 1,
                 lengths_of: Callable[[list], list[int]] | None = None) -> dict[str, Stream]:
    """One seeded stream per data source; ``lengths_of`` measures turns when batches group by length."""
    measure = lengths_of if cfg.group_by_length else None
    return {
        name: Stream(items, cfg.batch_size, seed=cfg.seed * 1000 + i, rank=rank, world=world,
                     lengths=measure(items) if measure else None)
        for i, (name, items) in enumerate(sorted(turns.items()))
        if items
    }


def _named_trainable(adapter: Adapter, params: list[nn.Parameter]) -> dict[str, nn.Parameter]:
    """The trained parameters by name: what a checkpoint stores (frozen weights never change)."""
    wanted = {id(p) for p in params}
    return {n: p for n, p in adapter.model.named_parameters() if id(p) in wanted}


def check_finite(adapter: Adapter, params: list[nn.Parameter], turns: list, name: str, steps: int) -> None:
    """No model with non-finite weights or outputs leaves a run.

    The loss guard stops before an update that would apply a non-finite loss, but a huge
    learning rate makes finite losses give weights of 1e12 whose logits overflow: the trained
    tensors are checked, and the model's answers on a few training turns.
    """
    bad = next((i for i, p in enumerate(params) if not bool(torch.isfinite(p).all())), None)
    outputs_ok = True
    if bad is None and turns:
        with torch.no_grad(), adapter.eval_mode():
            outputs_ok = bool(torch.isfinite(adapter.answer_logprobs(adapter.training_batch(turns[:2]))).all())
    if bad is not None or not outputs_ok:
        what = "trained weights" if bad is not None else "answers (log-probabilities)"
        raise TrainingError(f"{name}: after its last step (step {steps}) the model's {what} are not finite; "
                            "it is not kept. Lower lr.")


# Options that change nothing a checkpoint holds: a run differing only in these may resume it.
UNKEYED = ("progress", "log_every", "eval_every", "checkpoint_dir", "checkpoint_every", "keep_checkpoint",
           "report_to", "logging_dir")
# Of those, the ones a method that takes no step (the eraser) may be given: not the logging and evaluation of steps.
STEPLESS = tuple(k for k in UNKEYED if k not in ("log_every", "eval_every"))


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    logs: list[dict[str, float]]
    info: dict[str, Any]
    trainable_params: int
    optimizer_state_bytes: int
    history: list[dict[str, float]] = field(default_factory=list)  # every log_every steps, for run.json
    resumed_s: float = 0.0  # what a stopped run had trained, up to the checkpoint it resumed from: its cost counts it


def _step(method: Method, ctx: Context, optimizer: torch.optim.Optimizer,
          params: list[nn.Parameter], sharded: Sharded | None = None) -> tuple[float, dict[str, float]]:
    """One update: loss, NaN guard, backward, cross-process mean, masks, clip, step, projection.
    Under FSDP (``sharded``) the loss runs with the weights gathered and backward reduce-scatters."""
    accelerator, cfg, step = ctx.accelerator, ctx.cfg, ctx.step
    read = method.step_streams(ctx)
    batch = {name: next(s) for name, s in ctx.streams.items() if read is None or name in read}
    split = cfg.sam_rho > 0 and cfg.sam_terms == "forget"
    with torch.autocast(accelerator.device.type, dtype=torch.bfloat16, enabled=ctx.autocast):
        if split:
            assert method.split_loss is not None  # checked before training
            forget, kept, parts = method.split_loss(ctx, batch)
            loss = forget if kept is None else forget + kept
        else:
            loss, parts = sharded.run(lambda: method.loss(ctx, batch)) if sharded else method.loss(ctx, batch)
    value = float(accelerator.reduce(loss.detach().float(), "mean"))
    if ctx.world > 1 and parts:  # the terms of the whole batch, as one process would log them
        keys = sorted(parts)
        means = accelerator.reduce(torch.tensor([float(parts[k]) for k in keys], device=loss.device), "mean")
        parts = dict(zip(keys, means.tolist(), strict=True))
    if not math.isfinite(value):  # at the first step no update has been applied: the model given is broken
        raise TrainingError(f"{method.name}: the loss became {value} at step {step}; stopped before applying it, so "
                            "the model holds its last good state. " + ("Lower lr or check the data." if step else
                            "Nothing was trained yet: the model's weights or the data are broken."))
    optimizer.zero_grad(set_to_none=True)
    # with split, the forgetting's gradient alone sets the uphill direction, and the retaining terms' is kept
    # as taken at the weights
    (forget if split else loss).backward(retain_graph=split and kept is not None)
    share_gradients(ctx, params, sharded)
    if cfg.sam_rho > 0:
        direction = [p.grad for p in params]
        optimizer.zero_grad(set_to_none=True)
        if split and kept is not None:
            kept.backward()
            share_gradients(ctx, params, sharded)
        uphill_backward(ctx, params, direction,
                        lambda: method.forget_loss(ctx, batch) if split else method.loss(ctx, batch)[0])
        share_gradients(ctx, params, sharded)
    clip_gradients(ctx, params, method.name, step)
    if ctx.constraints:
        ctx.constraints.snapshot()
    optimizer.step()
    if ctx.constraints:
        ctx.constraints.project_updates()
    return value, {k: float(v) for k, v in parts.items()}


def _save_progress(cfg: TrainConfig, step: int, method: Method, named: dict[str, nn.Parameter],
                   optimizer: torch.optim.Optimizer, scheduler: Any, streams: dict[str, Stream],
                   losses: list[float], logs: list[dict[str, float]], run_key: str, evals: list[dict],
                   seconds: float, *, write: bool) -> None:
    """A mid-run checkpoint: weights, optimiser, schedule, data order, the method's own state, and the figures
    taken so far (losses, logged terms, ``eval_every``'s evaluations, the ``seconds`` trained). Every process
    calls it, for sharded weights are gathered whole; the one with ``write`` writes."""
    states = {name: s.state_dict() for name, s in streams.items()}
    save_checkpoint(
        cfg.checkpoint_dir, step=step, params=named, optimizer=optimizer, scheduler=scheduler, run_key=run_key,
        write=write,
        tensors={f"stream.{name}": st[0] for name, st in states.items()},
        meta={"streams": {name: st[1] for name, st in states.items()}, "losses": losses, "logs": logs,
              "evals": evals, "method": method.state_dict(), "seconds": seconds},
    )


def train(method: Method, adapter: Adapter, suite: Suite, turns: dict[str, list], cfg: TrainConfig,
          **options: Any) -> TrainResult:
    """Run ``method`` on ``adapter`` in place. Raises :class:`TrainingError` on a non-finite loss,
    leaving the model at its last good state. ``options``: ``accelerator``, ``reference`` (a frozen
    copy the method reads), ``on_eval`` (called every ``eval_every`` steps in every process; under FSDP
    inside the root's forward, so that it sees the weights whole) and ``desc``. The run's random streams are its
    own (:func:`seeded`)."""
    with seeded(cfg.seed), plain_if_stopped(adapter, cfg.scope == "lora"):
        return _train(method, adapter, suite, turns, cfg, **options)


def _train(
    method: Method,
    adapter: Adapter,
    suite: Suite,
    turns: dict[str, list],
    cfg: TrainConfig,
    *,
    accelerator: Any = None,
    reference: Adapter | None = None,
    on_eval: Callable[[int], dict] | None = None,
    desc: str | None = None,
) -> TrainResult:
    check_launch(method)
    getattr(method.cfg, "check_train", lambda _: None)(cfg)  # method options that depend on these ones
    if adapter.dtype == torch.float16:  # bf16 autocast cannot mix with it either
        raise ConfigError(f"{method.name}: the weights are fp16, which would need loss scaling to train; load "
                          "them in bf16 or fp32")
    if cfg.sam_rho > 0 and cfg.sam_terms == "forget" and getattr(method, "split_loss", None) is None:
        raise ConfigError(f"{method.name}: sam_terms=forget needs the loss in its forgetting and retaining parts, "
                          "which this method does not give; use sam_terms=all")
    # Autocast is ours, not the Accelerator's: accelerate keeps one process-wide state, and a
    # bf16 run would otherwise leave every later run in the process under bf16.
    accelerator = accelerator or training_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    if cfg.checkpoint_dir:
        check_checkpoint_dir(cfg.checkpoint_dir)
    missing = [s for s in method.streams if not turns.get(s)]
    if missing:
        raise UnseeError(f"method {method.name!r} needs data for {missing}, and the benchmark has none")
    wanted = (*method.streams, *method.optional_streams)
    if method.images_only:
        turns = {k: unique_images(v) for k, v in turns.items()}
    streams = make_streams({k: v for k, v in turns.items() if k in wanted}, cfg, rank, world,
                           lengths_of=adapter.training_lengths)
    adapter.model.to(accelerator.device)
    parked = park_language(adapter, accelerator.device, method.uses_language)

    if reference is None and method.reference != "none":
        reference = frozen_copy(adapter, visual_only=method.reference == "visual",
                                device="cpu" if cfg.reference_device == "cpu" else None)
    if cfg.scope == "lora":
        apply_lora(adapter, cfg)
    params = adapter.set_scope(cfg.scope)
    if cfg.gradient_checkpointing:
        adapter.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    low = adapter.dtype in LOW_PRECISION
    ctx = Context(adapter, suite, cfg, streams, reference=reference, accelerator=accelerator,
                  autocast=cfg.bf16 or low or launch_mixed_precision(accelerator) == "bf16")
    method.setup(ctx)
    params = [p for p in params if p.requires_grad and p not in ctx.constraints.frozen]
    if not params:
        raise UnseeError(f"scope {cfg.scope!r} leaves nothing to train for method {method.name!r}")
    n_forget = len(streams[method.streams[0]])
    total = cfg.max_steps or max(1, cfg.min_steps,  # a floor on all steps, a method's other steps counted too
                                 math.ceil(cfg.epochs * n_forget / cfg.batch_size) * method.step_multiplier(ctx))
    masters = upcast(params) if cfg.master_weights == "fp32" else {}
    run_key = ""
    if cfg.checkpoint_dir:  # what the checkpoint belongs to: options, data, weights (whole, before any sharding)
        run_key = checkpoint_key({k: v for k, v in vars(cfg).items() if k not in UNKEYED}, method.name,
                                 method.cfg, {n: s.turns for n, s in streams.items()},
                                 str(adapter.fingerprint()), dict(adapter.model.named_parameters()))
    sharded = None
    if fsdp_version() and world > 1:
        if cfg.sam_rho > 0:
            raise ConfigError("sam_rho is not supported under FSDP: its second pass would gather the weights again")
        sharded = Sharded(adapter.model, params, accelerator.device, ctx.constraints.frozen)
        ctx.info["fsdp_units"] = len(sharded.blocks) + 1
        new_of = dict(zip(map(id, params), sharded.params, strict=True))
        ctx.constraints.shard(lambda p: new_of.get(id(p)))
        names_of = dict(zip(map(id, params), sharded.names, strict=True))
        masters = {names_of[id(p)]: dtype for p, dtype in masters.items()}  # cast back by name when gathered
        params = sharded.params
        del new_of, names_of  # the unsharded weights are freed once nothing holds them
    visual = {id(p) for n, p in adapter.model.named_parameters() if adapter.group_of(n) != "language"}
    groups = [
        {"params": [p for p in params if id(p) not in visual], "lr": cfg.lr},
        {"params": [p for p in params if id(p) in visual], "lr": cfg.lr * cfg.visual_lr_scale},
    ]
    optimizer = adamw([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    adapter.model.train()

    losses: list[float] = []
    logs: list[dict[str, float]] = []
    named, start, resumed_s, clock = _named_trainable(adapter, params), 0, 0.0, time.perf_counter()
    if cfg.checkpoint_dir and has_checkpoint(cfg.checkpoint_dir):  # under FSDP each process takes its shards
        start, extra, meta = load_checkpoint(cfg.checkpoint_dir, params=named, optimizer=optimizer,
                                             scheduler=scheduler, run_key=run_key)
        for name, s in streams.items():
            s.load_state_dict(extra[f"stream.{name}"], meta["streams"][name])
        method.load_state_dict(meta["method"])
        losses, logs, resumed_s = list(meta["losses"]), list(meta["logs"]), float(meta.get("seconds", 0.0))
        if meta.get("evals"):
            ctx.info["evals"] = list(meta["evals"])
    bar = progress_bar(range(start, total), desc=desc or method.name, initial=start, total=total,
                       show=cfg.progress and accelerator.is_main_process, leave=False)
    trackers = Trackers(cfg.report_to, cfg.logging_dir, desc or method.name, dataclasses.asdict(cfg),
                        main=accelerator.is_main_process)
    try:
        for step in bar:
            ctx.step = step
            value, parts = _step(method, ctx, optimizer, params, sharded)
            scheduler.step()
            losses.append(value)
            logs.append(parts)
            if step % max(1, cfg.log_every) == 0 or step == total - 1:
                bar.set_postfix({k: f"{v:.3f}" for k, v in {"loss": value, **parts}.items()})
                trackers.log({"step": step + 1, "loss": value, **parts})
            if on_eval is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                if parked is not None:  # scoring answers runs the language model, parked on the CPU meanwhile
                    unpark(parked, accelerator.device)
                # under FSDP every process scores the same items, the weights gathered
                figures = sharded.evaluate(functools.partial(on_eval, step + 1)) if sharded else on_eval(step + 1)
                ctx.info.setdefault("evals", []).append({"step": step + 1, **figures})
                parked = park_language(adapter, accelerator.device, method.uses_language)
            if cfg.checkpoint_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 \
                    and step + 1 < total and (accelerator.is_main_process or sharded is not None):
                _save_progress(cfg, step + 1, method, named, optimizer, scheduler, streams, losses, logs, run_key,
                               ctx.info.get("evals", []), resumed_s + time.perf_counter() - clock,
                               write=accelerator.is_main_process)
        method.finish(ctx)
    except KeyboardInterrupt as e:
        if cfg.checkpoint_dir and has_checkpoint(cfg.checkpoint_dir):
            e.add_note(f"the checkpoint in {cfg.checkpoint_dir} is kept: the same command resumes from it")
        raise
    finally:  # also after a stopped run: the model goes back in its own dtype, mode and device
        bar.close()
        trackers.close()
        if parked is not None:
            unpark(parked, accelerator.device)
        if sharded is not None:
            params = sharded.unshard(masters)
        else:
            for p, dtype in masters.items():
                p.data = p.data.to(dtype)
        adapter.model.eval()
        if cfg.gradient_checkpointing:
            adapter.model.gradient_checkpointing_disable()
    check_finite(adapter, params, turns.get(method.streams[0], []), method.name, total)
    if cfg.checkpoint_dir and not cfg.keep_checkpoint and accelerator.is_main_process:
        remove_checkpoint(cfg.checkpoint_dir)
    return TrainResult(total, losses, logs, ctx.info, sum(p.numel() for p in params), optimizer_state_bytes(optimizer),
                       history(losses, logs, cfg.log_every), resumed_s)
