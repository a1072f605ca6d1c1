"""MLLMEraser: training-free, test-time erasure by steering the residual stream.

No weight changes. From a handful of forward passes we build, for each chosen decoder
layer ``l``, a ``d x d`` map ``W_l`` that sends the last-token activation of a *forget*
prompt to the erasure direction ``r_l`` (recall minus erasure) and a *retain* prompt to
about zero. At inference a hook adds ``s * (h_last @ W_l)`` to every position of the
layer's output during the prefill pass, with ``s < 0``: forget prompts are pushed away
from "recall", retain prompts barely move. The effect reaches decoding through the KV
cache. The maps and ``s`` live in one safetensors file (``steering.safetensors``) that
:func:`steer` switches on and off; see ``docs/methods.md`` ("MLLMEraser").

Sign convention: ``W_l`` maps a forget activation to ``+r_l`` (towards "recall"), so the
injected ``s * r_l`` with ``s < 0`` moves it towards the erasure inputs.

The module touches a model only through the adapter (``generation_batch``,
``training_batch``, ``forward``, ``answer_logprobs``, ``decoder_layers()``, ``fingerprint()``,
the processor's ``image_mean``/``image_std`` for PGD) and forward hooks.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from unsee import __version__
from unsee.config import opt
from unsee.data.schema import Example, Suite
from unsee.errors import ConfigError, DataError, ModelError
from unsee.eval.attacks import pgd_pixels as attack_pgd_pixels
from unsee.eval.metrics import loglik_choice
from unsee.io import atomic_write_bytes, check_output_dir
from unsee.models.base import IGNORE, HFAdapter, Turn
from unsee.provenance import environment

FORMAT = "unsee.steering/1"
STEERING_FILE = "steering.safetensors"
# The erasure prompt when no neutral identities are at hand: same image, same question,
# but the model is told to say it does not know, which is the behaviour we steer towards.
REFUSAL_SUFFIX = "You do not know who this person is. Answer that you do not know."

MCQItem = tuple[list[Turn], int]
"""One multiple-choice question: a turn per option (same prompt, the option as answer), and the correct index."""


# ---------------------------------------------------------------------------- config


@dataclass
class EraserConfig:
    """Options of MLLMEraser. The defaults are the published construction (docs/methods.md); the shipped
    ``configs/unlearn/eraser.yaml`` is the setting the sweep chose (docs/methods.md says why)."""

    layers: list[int] = opt([], "decoder-layer indices to steer; empty = the span given by depth")
    depth: list[float] = opt(
        [1 / 3, 2 / 3], "with no layers, steer those in [lo*L, hi*L): by default the middle third, where "
        "identity features are formed but the output is not yet decided")
    strength: float = opt(-0.3, "s in h <- h + s*(h_last @ W_l); negative subtracts the recall direction")
    fit: Literal["joint", "nullspace"] = opt(
        "nullspace", "how W_l is fitted: 'nullspace' as published (least squares inside the null space of the kept "
        "activations); 'joint' one ridge least squares that sends forget activations to r_l and kept ones to 0")
    keep: list[str] = opt(
        ["train_retain"],
        "training groups whose prompts must not move (H_r); groups the suite lacks are skipped, "
        "train_retain is required")
    gate: float = opt(
        0.0, "threshold tau on c = <h_last W_l, r_l>/|r_l|^2 (c ~ 1 on forget, ~ 0 on kept prompts): the "
        "injection is s * max(c - tau, 0)/(1 - tau) * r_l, so kept prompts a linear map leaks onto are not "
        "steered; 0 = the published linear injection")
    null_ratio: float = opt(0.3, "fraction of the hidden size taken as the retain null space (last singular vectors)")
    lam: float = opt(0.1, "ridge weight lambda of the least-squares map")
    erasure: Literal["neutral", "refusal"] = opt(
        "neutral", "erasure inputs: forget prompts on neutral identities' images, or with a refusal instruction"
    )
    use_pgd: bool = opt(
        False, "strengthen recall with PGD-perturbed forget images (towards the correct answer) when computing r_l"
    )
    pgd_eps: float = opt(8 / 255, "PGD L-inf radius in [0,1] pixel units (scaled by the processor's image_std)")
    pgd_step: float = opt(2 / 255, "PGD step in [0,1] pixel units")
    pgd_steps: int = opt(10, "PGD iterations")
    max_items: int | None = opt(
        None, "use at most this many examples per group (forget, neutral, each keep group): a seeded draw")
    erasure_items: int = opt(64, "forget prompts that get an erasure counterpart (only their mean enters r_l)")
    batch_size: int = opt(32, "prompts per forward pass while collecting activations")
    sweep: bool = opt(
        False, "pick layers and strength by a grid on a validation slice built from the training QA "
        "(never the test items); the winner drops forget accuracy most while keeping retain")
    sweep_strengths: list[float] = opt([-2.0, -4.0, -6.0, -8.0], "strengths the sweep tries")
    sweep_gates: list[float] = opt([0.4, 0.5, 0.6], "gates the sweep tries")
    sweep_items: int = opt(
        96, "validation MCQ items per side (forget, retain) for the sweep, held out of the fit; fewer make "
        "its 95% retain bar a matter of one or two items")

    def validate(self) -> None:
        if not 0.0 < self.null_ratio < 1.0:
            raise ConfigError(f"null_ratio must be in (0, 1), got {self.null_ratio}")
        if self.lam < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")
        if not 0.0 <= self.gate < 1.0:
            raise ConfigError(f"gate must be in [0, 1), got {self.gate}")
        if "train_retain" not in self.keep:
            raise ConfigError(f"keep must include train_retain, got {self.keep}")
        if self.erasure_items < 1:
            raise ConfigError(f"erasure_items must be >= 1, got {self.erasure_items}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max_items must be >= 1 or null, got {self.max_items}")
        if self.sweep and (not self.sweep_strengths or not self.sweep_gates or self.sweep_items < 1):
            raise ConfigError("the sweep needs at least one strength, one gate and sweep_items >= 1")
        if any(not 0.0 <= g < 1.0 for g in self.sweep_gates):
            raise ConfigError(f"sweep_gates must lie in [0, 1), got {self.sweep_gates}")
        if len(self.depth) != 2 or not 0.0 <= self.depth[0] < self.depth[1] <= 1.0:
            raise ConfigError(f"depth must be [lo, hi] with 0 <= lo < hi <= 1, got {self.depth}")
        if any(i < 0 for i in self.layers):
            raise ConfigError(f"layers must be non-negative indices, got {self.layers}")
        if self.use_pgd and (self.pgd_eps < 0 or self.pgd_step <= 0 or self.pgd_steps < 1):
            raise ConfigError("PGD needs pgd_eps >= 0, pgd_step > 0 and pgd_steps >= 1")


def layer_span(n_layers: int, lo: float = 1 / 3, hi: float = 2 / 3) -> list[int]:
    """Layers ``[int(lo*L), int(hi*L))``, at least one: by default the middle third."""
    first = min(n_layers - 1, int(lo * n_layers + 1e-9))
    return list(range(first, max(first + 1, int(hi * n_layers + 1e-9))))


# ---------------------------------------------------------------------------- the steering state


@dataclass
class Steering:
    """Everything :func:`steer` needs, and what makes a file safe to apply to a model.

    ``weights[l]`` is ``W_l`` (``d x d``, float32, CPU). ``fingerprint`` and ``arch`` tie
    the maps to the checkpoint they were computed on: activations of another model live
    in another basis, so applying them there would be silent nonsense. A ``gate`` above 0
    needs ``directions[l]`` (``r_l``) to read how much of ``r_l`` a prompt's map gives.
    """

    weights: dict[int, torch.Tensor]
    strength: float
    arch: str
    fingerprint: str
    model_name: str = ""
    version: str = __version__
    info: dict[str, Any] = field(default_factory=dict)
    gate: float = 0.0
    directions: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gate and sorted(self.directions) != self.layers:
            raise ModelError(f"a gated steering needs r_l for layers {self.layers}; it has {sorted(self.directions)}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.weights)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.weights.values())).shape[0])

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "strength": self.strength,
            "layers": self.layers,
            "arch": self.arch,
            "fingerprint": self.fingerprint,
            "model_name": self.model_name,
            "version": self.version,
            "hidden_size": self.hidden_size,
            "gate": self.gate,
            "info": self.info,
        }

    def select(self, layers: Sequence[int] | None = None, strength: float | None = None,
               gate: float | None = None) -> Steering:
        """The same maps on a subset of layers and/or with another strength or gate (for sweeps)."""
        keep = self.layers if layers is None else list(layers)
        if not keep:
            raise ConfigError("a steering needs at least one layer")
        missing = [i for i in keep if i not in self.weights]
        if missing:
            raise ConfigError(f"steering has no map for layers {missing}; it has {self.layers}")
        return replace(self, weights={i: self.weights[i] for i in keep},
                       strength=self.strength if strength is None else float(strength), info=dict(self.info),
                       gate=self.gate if gate is None else float(gate),
                       directions={i: self.directions[i] for i in keep if i in self.directions})

    def save(self, path: str | Path) -> Path:
        """Tensors ``layer.{i}``; the header as JSON in the (strings-only) safetensors metadata. Atomic."""
        path = Path(path)
        tensors = {f"{kind}.{i}": w.detach().to("cpu", torch.float32).contiguous()
                   for kind, maps in (("layer", self.weights), ("direction", self.directions)) for i, w in maps.items()}
        metadata = {"format": FORMAT, "header": json.dumps(self.header(), sort_keys=True)}
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Steering:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"steering file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise ModelError(f"cannot read steering file {path}: {e}") from e
        if meta.get("format") != FORMAT or "header" not in meta:
            raise ModelError(f"{path} is not an unsee steering file (format {meta.get('format')!r}, expected {FORMAT})")
        try:
            header = json.loads(meta["header"])
            weights = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")}
            directions = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("direction.")}
        except ValueError as e:
            raise ModelError(f"{path}: corrupt steering header or tensor names: {e}") from e
        if not weights or sorted(weights) != header.get("layers"):
            raise ModelError(
                f"{path}: tensors for layers {sorted(weights)} do not match the header's {header.get('layers')}"
            )
        return cls(
            weights=weights,
            strength=float(header["strength"]),
            arch=header["arch"],
            fingerprint=header["fingerprint"],
            model_name=header.get("model_name", ""),
            version=header.get("version", ""),
            info=header.get("info", {}),
            gate=float(header.get("gate", 0.0)),
            directions=directions,
        )

    def check_compatible(self, adapter: HFAdapter, *, force: bool = False) -> None:
        """Refuse a model this steering was not computed on. ``force`` skips only the fingerprint check."""
        if adapter.arch != self.arch:
            raise ModelError(
                f"steering was computed on a {self.arch!r} model ({self.model_name}); "
                f"this model is {adapter.arch!r}. Rebuild the steering on this model."
            )
        d = _hidden_size(adapter)
        if d != self.hidden_size:
            raise ModelError(f"steering maps are {self.hidden_size}-dimensional but the model's hidden size is {d}")
        n = len(adapter.decoder_layers())
        if self.layers and max(self.layers) >= n:
            raise ModelError(f"steering uses layers {self.layers} but the model has only {n} decoder layers")
        fp = adapter.fingerprint()
        if not force and fp != self.fingerprint:
            raise ModelError(
                f"steering was computed on model fingerprint {self.fingerprint} ({self.model_name}); "
                f"this model's fingerprint is {fp}. Rebuild the steering on this model (unsee unlearn --method "
                "eraser); from Python, force=True skips this check when you know the weights are the same."
            )


def _hidden_size(adapter: HFAdapter) -> int:
    return int(adapter.model.config.get_text_config().hidden_size)


# ---------------------------------------------------------------------------- activations


def _hidden(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is it."""
    return output[0] if isinstance(output, tuple) else output


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _last_real(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Index of each row's last non-pad token: ``length - 1`` under left padding, or without a mask."""
    if mask is None or mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    return (length - 1 - mask.flip(-1).to(torch.long).argmax(-1)).to(device)


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Dropout off while we read activations; the caller's train/eval state comes back after."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class _Collected(Exception):
    """Raised by the deepest hook of :func:`collect_last_token` to end the forward pass there."""


@torch.no_grad()
def collect_last_token(
    adapter: HFAdapter,
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
            h = _hidden(output)
            last = _last_real(mask[0], h.shape[0], h.shape[1], h.device)
            found[i].append(h[torch.arange(h.shape[0], device=h.device), last].detach().to("cpu", torch.float64))
            if i == deepest:
                raise _Collected

        return hook

    handles = [blocks[i].register_forward_hook(hook_for(i)) for i in layers]
    try:
        with _eval(adapter.model):
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


def pgd_pixels(adapter: HFAdapter, turns: Sequence[Turn], cfg: EraserConfig) -> torch.Tensor:
    """PGD towards the correct answer, with the eraser's budget (:func:`unsee.eval.attacks.pgd_pixels`)."""
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
    adapter: HFAdapter, forget: Sequence[Turn], neutral: Sequence[Turn], retain: Sequence[Turn], cfg: EraserConfig
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


# ---------------------------------------------------------------------------- applying it


def generation_marker(adapter: HFAdapter) -> torch.Tensor | None:
    """Token ids every prompt ends with (the template's assistant header), e.g. ``ASSISTANT:``.

    Found as the common tail of two one-word prompts, so it comes from the adapter's own
    template and tokenizer with no per-architecture table. ``None`` if there is none.
    """
    a = adapter.generation_batch([Turn(None, "a.")])["input_ids"][0].tolist()
    b = adapter.generation_batch([Turn(None, "b?")])["input_ids"][0].tolist()
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return torch.tensor(a[len(a) - n :], dtype=torch.long) if n else None


def find_prompt_ends(ids: torch.Tensor, mask: torch.Tensor | None, marker: torch.Tensor | None) -> torch.Tensor:
    """Each row's last prompt token: the end of the last ``marker`` occurrence, else the last non-pad token.

    A generation batch ends with the marker, so this is its last token; a training batch
    (prompt + answer) ends its prompt with the marker, so the answer tokens lie after it.
    """
    batch, length = ids.shape
    last = _last_real(mask, batch, length, ids.device)
    m = 0 if marker is None else marker.numel()
    if m == 0 or m > length:
        return last
    hits = (ids.unfold(1, m, 1) == marker.to(ids.device)).all(-1)  # [batch, length - m + 1]
    starts = torch.arange(hits.shape[1], device=ids.device)
    hits &= starts[None, :] + m - 1 <= last[:, None]  # ignore right padding
    found = hits.any(-1)
    end = (hits * (starts + 1)).argmax(-1) + m - 1  # the last hit's start, plus m - 1
    return torch.where(found, end, last)


class _Steerer:
    """The hooks behind :func:`steer`.

    Prefill is detected by a forward pre-hook on the top model: a call with no cache, or an
    empty one, is a prefill (a plain forward, or the first step of ``generate``); a call with
    a filled cache is a decode step and is left alone. This is exact where "sequence length
    > 1" is not: a one-token prompt is still a prefill, and assisted decoding feeds several
    tokens through a filled cache. The same pre-hook reads ``input_ids`` and the attention
    mask to find each row's last prompt token (see :func:`find_prompt_ends`).
    """

    def __init__(self, adapter: HFAdapter, steering: Steering, anchor: torch.Tensor | None) -> None:
        self.adapter = adapter
        self.steering = steering
        self.anchor = None if anchor is None else anchor.to(torch.long)
        self.marker = generation_marker(adapter) if anchor is None else None
        self.prefill = True
        self.ends: torch.Tensor | None = None
        # moved to each layer's device on first use (_on)
        self.maps = {i: w.to(torch.float32) for i, w in steering.weights.items()}
        self.directions = {i: r.to(torch.float32) for i, r in steering.directions.items()}
        self.handles: list[Any] = []

    def __enter__(self) -> _Steerer:
        try:
            self.handles.append(self.adapter.model.register_forward_pre_hook(self._pre, with_kwargs=True))
            blocks = self.adapter.decoder_layers()
            for i in self.steering.layers:
                self.handles.append(blocks[i].register_forward_hook(self._hook_for(i)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # renamed in transformers 5.24
        self.prefill = cache is None or _cache_length(cache) == 0
        if not self.prefill:
            return
        if self.anchor is not None:
            self.ends = self.anchor
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.ends = None
        if isinstance(ids, torch.Tensor) and ids.dim() == 2:
            self.ends = find_prompt_ends(ids, mask if isinstance(mask, torch.Tensor) else None, self.marker)

    def _prompt_ends(self, h: torch.Tensor) -> torch.Tensor:
        batch, length = h.shape[:2]
        if self.ends is None or self.ends.shape != (batch,):
            if self.anchor is not None:
                raise ConfigError(f"anchor has shape {tuple(self.anchor.shape)}; the batch has {batch} rows")
            return torch.full((batch,), length - 1, dtype=torch.long, device=h.device)
        return self.ends.to(h.device).clamp(max=length - 1)

    def _injection(self, i: int, h_last: torch.Tensor) -> torch.Tensor:
        """``h_last @ W_l``, or with a gate, ``max(c - tau, 0)/(1 - tau) * r_l`` where ``h_last @ W_l = c r_l``."""
        v = h_last.float() @ _on(self.maps, i, h_last.device)
        tau = self.steering.gate
        if not tau:
            return v
        r = _on(self.directions, i, h_last.device)
        c = (v @ r) / (r @ r)
        return ((c - tau).clamp(min=0) / (1 - tau))[:, None] * r[None, :]

    def _hook_for(self, i: int) -> Callable[..., Any]:
        s = self.steering.strength

        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.prefill:
                return None
            h = _hidden(output)
            end = self._prompt_ends(h)
            h_last = h[torch.arange(h.shape[0], device=h.device), end]
            shift = (s * self._injection(i, h_last)).to(h.dtype)[:, None, :]
            # positions after the prompt (answer tokens scored in the same pass) stay unsteered,
            # as they are when generation decodes them through the cache
            prompt = torch.arange(h.shape[1], device=h.device)[None, :] <= end[:, None]
            new = h + shift * prompt[..., None].to(h.dtype)
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook


def _on(tensors: dict[int, torch.Tensor], i: int, device: torch.device) -> torch.Tensor:
    """``tensors[i]`` on ``device``, moved there once: with a device_map, layers live apart."""
    if tensors[i].device != device:
        tensors[i] = tensors[i].to(device)
    return tensors[i]


def _cache_length(cache: Any) -> int:
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, tuple | list):  # legacy tuple-of-tuples cache
        return 0 if len(cache) == 0 else int(cache[0][0].shape[-2])
    return 0


@contextmanager
def steer(
    adapter: HFAdapter, steering: Steering, *, anchor: torch.Tensor | None = None, force: bool = False
) -> Iterator[Steering]:
    """Apply a steering while the block runs; hooks are removed on exit, even on an exception.

    Nothing is written to the model, so it is bit-identical afterwards. ``h_last`` is each
    row's last prompt token: position -1 of a left-padded generation batch; in a training
    batch (prompt + answer, right padded) the token before the answer, found from the
    template's assistant header. Every prompt position gets ``s * (h_last @ W_l)``; answer
    positions are left alone, so scoring an answer in one pass matches cached generation.
    ``anchor`` (a ``[batch]`` tensor of last-prompt-token indices) overrides the search.
    """
    steering.check_compatible(adapter, force=force)
    with _Steerer(adapter, steering, anchor):
        yield steering


# ---------------------------------------------------------------------------- choosing s and layers


def prompt_ends(batch: Any) -> torch.Tensor:
    """Index of each row's last prompt token in a ``training_batch`` (the token before the first label)."""
    return (batch["labels"] != IGNORE).to(torch.long).argmax(-1) - 1


@torch.no_grad()
def mcq_accuracy(
    adapter: HFAdapter, items: Sequence[MCQItem], steering: Steering | None = None, *, batch_size: int = 16
) -> float:
    """Log-likelihood MCQ accuracy: the option whose answer tokens score highest, optionally steered."""
    if not items:
        raise DataError("MCQ accuracy needs at least one item")
    flat = [t for options, _ in items for t in options]
    scores: list[float] = []
    with _eval(adapter.model):
        for chunk in _batches(flat, batch_size):
            batch = adapter.training_batch(chunk)
            ctx = nullcontext() if steering is None else steer(adapter, steering, anchor=prompt_ends(batch))
            with ctx:
                scores.extend(adapter.answer_logprobs(batch).float().cpu().tolist())
    correct, at = 0, 0
    for options, gold in items:
        correct += int(loglik_choice(scores[at : at + len(options)]) == gold)
        at += len(options)
    return correct / len(items)


@dataclass
class SweepResult:
    """The grid, the unsteered baseline, and the chosen steering (``None`` if no setting kept retain)."""

    best: Steering | None
    rows: list[dict[str, Any]]
    base_forget: float
    base_retain: float


def sweep(
    adapter: HFAdapter,
    steering_builder_inputs: tuple[Sequence[Turn], Sequence[Turn], Sequence[Turn]],
    val_forget: Sequence[MCQItem],
    val_retain: Sequence[MCQItem],
    strengths: Sequence[float],
    layer_sets: Sequence[Sequence[int]],
    score_fn: Callable[[HFAdapter, Sequence[MCQItem], Steering | None], float] = mcq_accuracy,
    cfg: EraserConfig | None = None,
    *,
    gates: Sequence[float] | None = None,
    retain_keep: float = 0.95,
) -> SweepResult:
    """Grid over (layers, gate, strength) on a validation slice; never pass test items.

    The maps are built once on the union of ``layer_sets`` (``W_l`` of one layer does not
    depend on the others), then each setting is scored. The winner maximises the drop of
    forget accuracy among settings whose retain accuracy is at least ``retain_keep`` times
    the unsteered one; ties go to the higher retain accuracy, then the weaker strength, then
    fewer layers, so the gentlest sufficient intervention wins. ``gates`` defaults to ``cfg.gate``.
    """
    cfg = cfg or EraserConfig()
    if not strengths or not layer_sets or any(not ls for ls in layer_sets):
        raise ConfigError("sweep needs at least one strength and non-empty layer sets")
    forget, neutral, retain = steering_builder_inputs
    union = sorted({i for ls in layer_sets for i in ls})
    full = build_steering(adapter, forget, neutral, retain, replace(cfg, layers=union))
    base_forget = score_fn(adapter, val_forget, None)
    base_retain = score_fn(adapter, val_retain, None)
    rows: list[dict[str, Any]] = []
    best_key: tuple[float, float, float, int] | None = None
    best: Steering | None = None
    for ls, gate, s in product(layer_sets, [cfg.gate] if gates is None else gates, strengths):
        candidate = full.select(sorted(set(ls)), s, gate)
        f_acc = score_fn(adapter, val_forget, candidate)
        r_acc = score_fn(adapter, val_retain, candidate)
        ok = r_acc >= retain_keep * base_retain
        rows.append({"layers": candidate.layers, "gate": candidate.gate, "strength": float(s), "forget_acc": f_acc,
                     "retain_acc": r_acc, "forget_drop": base_forget - f_acc, "admissible": ok})
        key = (base_forget - f_acc, r_acc, -abs(float(s)), -len(candidate.layers))
        if ok and (best_key is None or key > best_key):
            best_key, best = key, candidate
    if best is not None:
        best.info["sweep"] = {"base_forget": base_forget, "base_retain": base_retain, "rows": rows}
    return SweepResult(best=best, rows=rows, base_forget=base_forget, base_retain=base_retain)


# ---------------------------------------------------------------------------- entry point


def _turns(examples: Sequence[Example]) -> list[Turn]:
    return [Turn(e.pil_image() if e.has_image else None, e.question, e.answer) for e in examples]


def erasure_turns(forget: Sequence[Example], neutral: Sequence[Example], mode: str) -> list[Turn]:
    """Each forget prompt paired with a neutral identity's image (cycled), or with a refusal instruction."""
    if mode == "refusal":
        return [Turn(e.pil_image(), f"{e.question} {REFUSAL_SUFFIX}") for e in forget]
    pool = [e for e in neutral if e.has_image]
    if not pool:
        raise DataError("the suite has no neutral identities with images; use erasure=refusal")
    return [Turn(pool[i % len(pool)].pil_image(), e.question) for i, e in enumerate(forget)]


def run_eraser(
    adapter: HFAdapter, suite: Suite, out_dir: str | Path, cfg: EraserConfig, *, overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Build the steering from ``train_forget``, ``neutral`` and the ``cfg.keep`` groups; write only the steering file.

    The model's weights are never written: the result of MLLMEraser is the base model plus
    ``out_dir/steering.safetensors``. ``max_items`` caps each group by a seeded draw, so that
    a capped group still holds every person rather than the first few.
    """
    start = time.perf_counter()
    out = Path(out_dir) / STEERING_FILE
    check_output_dir(Path(out_dir), overwrite=overwrite, marker=STEERING_FILE)
    forget = [e for e in suite.group("train_forget") if e.has_image]
    if not forget:
        raise DataError(f"suite {suite.name!r}: train_forget has no examples with images; MLLMEraser needs them")
    retain = suite.group("train_retain")
    if not retain:
        raise DataError(f"suite {suite.name!r}: train_retain is empty; MLLMEraser needs prompts that must not move")
    validation = None
    if cfg.sweep:
        (forget, val_f), (retain, val_r) = (_hold_out(g, cfg.sweep_items, seed) for g in (forget, retain))
        validation = _validation(suite, val_f, val_r, cfg.sweep_items, seed)
    neutral = suite.group("neutral") if cfg.erasure == "neutral" else []
    forget = draw(forget, cfg.max_items, seed)
    groups = {g: suite.groups.get(g, []) for g in cfg.keep} | {"train_retain": retain}  # a suite may lack some
    kept = [e for g in cfg.keep for e in draw(groups[g], cfg.max_items, seed)]
    # the erasure inputs only give r_l's mean: a seeded share of the forget prompts is enough
    recall = draw(forget, cfg.erasure_items, seed)
    inputs = (_turns(forget), erasure_turns(recall, draw(neutral, cfg.max_items, seed), cfg.erasure), _turns(kept))
    steering = _swept(adapter, inputs, validation, cfg) if validation else build_steering(adapter, *inputs, cfg)
    steering.info.update({
        "suite": suite.name,
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_memory_mb": _peak_memory_mb(),
        "trainable_parameters": 0,
        "environment": environment(),
    })
    return steering.save(out)


def draw(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """At most ``n`` examples, a seeded draw kept in their original order (all of them when ``n`` is None)."""
    if n is None or len(examples) <= n:
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _hold_out(examples: Sequence[Example], n: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Split off a seeded validation slice (twice ``n``, since not every example makes an MCQ item),
    at most half of the group, so that the maps are never fitted on what the sweep scores."""
    held = {id(e) for e in draw(examples, min(2 * n, len(examples) // 2), seed + 1)}
    return [e for e in examples if id(e) not in held], [e for e in examples if id(e) in held]


def layer_candidates(n_layers: int) -> list[list[int]]:
    """Layer sets the sweep tries: the middle third, a wider middle half, and single layers at
    1/3, 1/2, 2/3 and 3/4 of the depth (on a small model the late layers separate identities best)."""
    sets = [layer_span(n_layers), layer_span(n_layers, 1 / 4, 3 / 4),
            *([min(n_layers - 1, (k * n_layers) // m)] for k, m in ((1, 3), (1, 2), (2, 3), (3, 4)))]
    unique: list[list[int]] = []
    for ls in sets:
        if ls not in unique:
            unique.append(ls)
    return unique


def validation_items(examples: Sequence[Example], pool: Sequence[Example], n: int, seed: int = 0) -> list[MCQItem]:
    """Four-option MCQ from training QA: the true answer and three other people's answers (from
    ``pool``) to the same question. Built from what a method may train on, so the sweep never
    sees a test item."""
    by_question: dict[str, set[str]] = {}
    for e in pool:
        by_question.setdefault(e.question, set()).add(e.answer)
    rng = random.Random(seed)
    items: list[MCQItem] = []
    for e in examples:
        others = sorted(by_question[e.question] - {e.answer})
        if not e.has_image or len(others) < 3:
            continue
        options = rng.sample(others, 3)
        gold = rng.randrange(4)
        options.insert(gold, e.answer)
        image = e.pil_image()
        items.append(([Turn(image, e.question, o) for o in options], gold))
        if len(items) == n:
            break
    return items


def _validation(suite: Suite, forget: Sequence[Example], retain: Sequence[Example], n: int,
                seed: int) -> tuple[list[MCQItem], list[MCQItem]]:
    pool = suite.group("train_forget") + suite.group("train_retain")  # distractors from everyone's answers
    val_forget, val_retain = (validation_items(g, pool, n, seed) for g in (forget, retain))
    if not val_forget or not val_retain:
        raise DataError("the sweep found no training questions shared by four people to build validation MCQ from; "
                        "set layers and strength by hand (sweep=false)")
    return val_forget, val_retain


def _swept(adapter: HFAdapter, inputs: tuple[list[Turn], list[Turn], list[Turn]],
           validation: tuple[list[MCQItem], list[MCQItem]], cfg: EraserConfig) -> Steering:
    """The sweep's winner, with the grid in its header; a clear error when no setting keeps retain."""
    layer_sets = [cfg.layers] if cfg.layers else layer_candidates(len(adapter.decoder_layers()))
    result = sweep(adapter, inputs, *validation, cfg.sweep_strengths, layer_sets, cfg=cfg, gates=cfg.sweep_gates)
    if result.best is None:
        raise DataError(
            f"no swept setting kept validation retain accuracy within 95% of {result.base_retain:.3f}; "
            "try weaker sweep_strengths"
        )
    return result.best


def generation_overhead(adapter: HFAdapter, suite: Suite, steering: Steering, *, prompts: int = 16,
                        new_tokens: int = 16) -> dict[str, Any]:
    """Greedy generation time with the steering on, relative to off: the same forget prompts and a
    fixed answer length, best of three after a warm-up, so that only the hooks differ."""
    turns = [Turn(e.pil_image(), e.question) for e in suite.group("forget") if e.has_image][:prompts]
    batch = adapter.to_device(adapter.generation_batch(turns))
    cuda = adapter.device.type == "cuda"

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            adapter.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                   pad_token_id=adapter.tokenizer.pad_token_id)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed()
    plain = min(timed() for _ in range(3))
    with steer(adapter, steering):
        timed()
        steered = min(timed() for _ in range(3))
    return {"prompts": len(turns), "new_tokens": new_tokens, "plain_s": round(plain, 3),
            "steered_s": round(steered, 3), "overhead": round(steered / plain - 1, 4)}


def _peak_memory_mb() -> float:
    """Peak accelerator memory if there is one, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
