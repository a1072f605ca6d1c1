"""The quantization attack: does the forgetting survive rounding the weights?

An unlearned model is deployed quantized more often than not. Unlearning by small weight
changes can sit below the rounding step of a 4-bit grid, and quantizing then rounds the
model back to the vanilla weights it came from (arXiv 2410.16454 saw forgotten knowledge
come back from 21% to 83% at 4 bits). The attack here is round-to-nearest, weight-only,
symmetric, per group of input columns, written in torch so that it runs on a CPU; where
``bitsandbytes`` is installed with a GPU, its 4-bit NF4 rounding is measured as a second path.
The output head (``lm_head``) stays in full precision, as the usual int4/int8 recipes keep it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import nn

from unsee.audit.common import accuracy, check_bits, image_mcq
from unsee.data.schema import Suite
from unsee.errors import DataError
from unsee.models.base import Adapter

if TYPE_CHECKING:
    from unsee.audit.common import AttackConfig
    from unsee.methods.artifact import Artifact

GROUPS = ("forget", "forget_test", "retain")


def linear_weights(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` but the output head, by module name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"}


def weight_digests(adapter: Adapter, dtype: torch.dtype | None = None) -> dict[str, str]:
    """A hash of each linear weight (at ``dtype`` where given): taken before unlearning, it says afterwards
    which ones the method changed."""
    out = {}
    for name, mod in linear_weights(deployed(adapter).model).items():
        w = mod.weight.detach().cpu().to(dtype or mod.weight.dtype).contiguous()
        out[name] = hashlib.sha256(w.view(torch.uint8).numpy().tobytes()).hexdigest()
    return out


def changed_linears(before: dict[str, str], adapter: Adapter, dtype: torch.dtype | None = None) -> list[str]:
    """The linear weights whose bytes differ from ``before`` (:func:`weight_digests` of the base model)."""
    after = weight_digests(adapter, dtype)
    return sorted(n for n, h in after.items() if before.get(n) != h)


SAVED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


def saved_dtype(model: str | Path) -> torch.dtype | None:
    """The precision a checkpoint's weights were saved in (its first floating tensor's), None where no
    safetensors say. A model unlearned in bf16 and loaded in fp32 is compared with its base at bf16:
    rounded alike, the weights the method left alone are equal byte for byte."""
    for f in sorted(Path(model).glob("*.safetensors")):
        with safe_open(f, "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not iterable
                found = SAVED_DTYPES.get(fh.get_slice(key).get_dtype())
                if found is not None:
                    return found
    return None


def deployed(adapter: Adapter) -> Adapter:
    """The model as it would be saved: a LoRA-wrapped one merged on a copy, anything else as it is."""
    if not hasattr(adapter.model, "merge_and_unload"):
        return adapter
    merged = copy.deepcopy(adapter.model).merge_and_unload()
    return type(adapter)(merged, adapter.processor, source=adapter.source)


def rtn(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest onto a symmetric grid of ``2**(bits-1) - 1`` steps each side, one scale per
    ``group_size`` input columns (the last group padded), dequantized back to ``weight``'s dtype."""
    check_bits([bits])
    qmax = 2 ** (bits - 1) - 1
    rows, cols = weight.shape
    x = weight.detach().float()
    pad = (-cols) % group_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    g = x.view(rows, -1, group_size)
    scale = g.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(g / safe).clamp(-qmax, qmax) * scale
    return q.view(rows, -1)[:, :cols].to(weight.dtype)


def bnb_nf4(weight: torch.Tensor, group_size: int) -> torch.Tensor:  # pragma: no cover - needs a GPU
    """bitsandbytes' 4-bit NF4 blockwise rounding, quantized and dequantized on the GPU."""
    import bitsandbytes.functional as bnbf

    w = weight.detach().to("cuda", torch.float16)
    q, state = bnbf.quantize_4bit(w, blocksize=min(group_size, 128), quant_type="nf4")
    return bnbf.dequantize_4bit(q, state).to(weight.device, weight.dtype)


def bnb_available() -> bool:
    """The second path runs only where bitsandbytes can use a GPU."""
    if not torch.cuda.is_available():
        return False
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # an install without its CUDA library fails at import
        return False
    return True


@contextmanager
def quantized(adapter: Adapter, names: Collection[str], bits: int | str, group_size: int) -> Iterator[Adapter]:
    """The model with ``names``' weights rounded, restored bit for bit on exit (only those weights are
    held aside, on the host, so a large model is not copied whole). ``bits`` is 4, 8 or ``"nf4"``
    (bitsandbytes)."""
    mods = linear_weights(adapter.model)
    held: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for name in names:
                w = mods[name].weight
                held[name] = w.detach().to("cpu", copy=True)  # host memory: a 7B model's GPU is spared a copy
                w.copy_(bnb_nf4(w, group_size) if bits == "nf4" else rtn(w, int(bits), group_size))
        yield adapter
    finally:
        with torch.no_grad():
            for name, w in held.items():
                mods[name].weight.copy_(w)


def quant(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None,
          changed: Collection[str] | None = None) -> dict[str, Any]:
    """Forget, forget_test and retain MCQ accuracy after quantizing the changed linear weights, and all of them.

    ``changed`` names the linear weights the method changed (None: unknown, as when no base
    model is given; that scope is then left out). Keys: ``<group>_clean`` and
    ``<group>_int<bits>_<scope>``, with ``<group>_nf4_all`` where bitsandbytes runs.
    """

    check_bits(cfg.quant_bits)
    cap = cfg.quant_max_items or None
    items = {g: image_mcq(suite, g)[:cap] for g in GROUPS}
    items = {g: v for g, v in items.items() if v}
    if "forget" not in items:
        raise DataError(f"suite {suite.name!r} has no image MCQ on the forget people to measure after quantizing")
    model = deployed(adapter)
    every = sorted(linear_weights(model.model))
    scopes: dict[str, list[str]] = {"all": every}
    if changed is not None:
        scopes = {"changed": [n for n in every if n in set(changed)], **scopes}
    out: dict[str, Any] = {"group_size": cfg.quant_group, "bits": list(cfg.quant_bits), "linears": len(every),
                           "linears_changed": None if changed is None else len(scopes["changed"])}
    for g, its in items.items():
        out[f"{g}_clean"] = accuracy(model, its, artifact)
        out[f"n_{g}"] = len(its)
    runs: list[tuple[str, int | str, list[str]]] = [(s, b, n) for s, n in scopes.items() for b in cfg.quant_bits]
    if bnb_available():  # pragma: no cover - needs a GPU
        runs.append(("all", "nf4", every))
    for scope, bits, names in runs:
        tag = f"int{bits}" if bits != "nf4" else "nf4"
        with quantized(model, names, bits, cfg.quant_group) as q:
            for g, its in items.items():
                out[f"{g}_{tag}_{scope}"] = accuracy(q, its, artifact)
    return out
