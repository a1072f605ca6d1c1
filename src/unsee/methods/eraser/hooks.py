"""Applying a steering: forward hooks on the decoder layers during the prefill pass.

The hooks add ``s * (h_last @ W_l)`` to every prompt position of layer ``l``'s output;
decode steps through a filled cache are left alone, so the effect reaches the answer
through the KV cache. :func:`steer` switches them on for a block and off after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from unsee.data.schema import Suite
from unsee.errors import ConfigError
from unsee.methods.eraser.steering import Steering
from unsee.models.base import IGNORE, Adapter, Turn

if TYPE_CHECKING:
    from unsee.methods.artifact import Artifact


def hidden_of(output: Any) -> torch.Tensor:
    """Decoder layers return a tensor (transformers 5) or a tuple whose first item is it."""
    return output[0] if isinstance(output, tuple) else output


def last_real(mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Index of each row's last non-pad token: ``length - 1`` under left padding, or without a mask."""
    if mask is None or mask.dim() != 2 or tuple(mask.shape) != (batch, length):
        return torch.full((batch,), length - 1, dtype=torch.long, device=device)
    return (length - 1 - mask.flip(-1).to(torch.long).argmax(-1)).to(device)



def generation_marker(adapter: Adapter) -> torch.Tensor | None:
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
    last = last_real(mask, batch, length, ids.device)
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

    def __init__(self, adapter: Adapter, steering: Steering, anchor: torch.Tensor | None) -> None:
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
            h = hidden_of(output)
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
    adapter: Adapter, steering: Steering, *, anchor: torch.Tensor | None = None, force: bool = False
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



def prompt_ends(batch: Any) -> torch.Tensor:
    """Index of each row's last prompt token in a ``training_batch`` (the token before the first label)."""
    return (batch["labels"] != IGNORE).to(torch.long).argmax(-1) - 1



def generation_overhead(adapter: Adapter, suite: Suite, artifact: Artifact, *, prompts: int = 16,
                        new_tokens: int = 16) -> dict[str, Any]:
    """Greedy generation time with the artifact applied (the steering's hooks), relative to without: the
    same forget prompts and a fixed answer length, best of three after a warm-up, so that only the hooks differ."""
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
    with artifact.applied(adapter):
        timed()
        steered = min(timed() for _ in range(3))
    return {"prompts": len(turns), "new_tokens": new_tokens, "plain_s": round(plain, 3),
            "steered_s": round(steered, 3), "overhead": round(steered / plain - 1, 4)}
