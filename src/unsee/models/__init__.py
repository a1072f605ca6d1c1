"""Load any supported checkpoint as an :class:`~unsee.models.base.Adapter`.

The registry maps a ``model_type`` from ``config.json`` to ``"module:Class"`` and imports
lazily, so that adding an architecture is one line here and one small file.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from unsee.errors import ModelError
from unsee.models.base import SCOPES, Adapter, HFAdapter, Turn, model_fingerprint
from unsee.models.fingerprint import PICKLE_WEIGHTS
from unsee.numerics import check as check_numerics

REGISTRY: dict[str, str] = {
    "llava": "unsee.models.llava:LlavaAdapter",
    "qwen2_vl": "unsee.models.qwen_vl:Qwen2VLAdapter",
    "qwen2_5_vl": "unsee.models.qwen_vl:Qwen25VLAdapter",
}

__all__ = ["REGISTRY", "SCOPES", "Adapter", "HFAdapter", "Turn", "adapter_class", "check_model_dir",
           "check_safetensors", "load_adapter", "model_fingerprint"]


def adapter_class(model_type: str) -> type[HFAdapter]:
    if model_type not in REGISTRY:
        raise ModelError(
            f"unknown model type {model_type!r}; unsee supports {', '.join(sorted(REGISTRY))}"
        )
    module, name = REGISTRY[model_type].split(":")
    return getattr(importlib.import_module(module), name)


# any one of these holds a tokenizer that transformers can build (fast, SentencePiece or byte-level BPE)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _check_local(path: Path, allow_pickle: bool) -> None:
    if not path.is_dir():
        raise ModelError(f"model directory {path} " + ("is a file, not a model folder" if path.exists() else
                                                       "does not exist"))
    if not (path / "config.json").exists():
        raise ModelError(f"{path} holds no model: config.json is missing")
    has_safe = any(not f.name.startswith("adapter_model") for f in path.glob("*.safetensors"))
    has_pickle = any(f for kind in PICKLE_WEIGHTS for f in path.glob(kind))
    if not has_safe and (path / "adapter_config.json").is_file():
        raise ModelError(f"{path} is a PEFT adapter, not a model: merge it into its base model (merge_and_unload, "
                         "then save_pretrained) and pass that folder")
    if not has_safe and has_pickle and not allow_pickle:
        raise ModelError(
            f"{path} has only pickle weights (.bin/.pt), which can run arbitrary code when loaded; "
            "convert them to safetensors (save_pretrained), or, if you trust the source, pass allow_pickle=True "
            "(--allow-pickle, on unlearn, forget, eval and attack; finetune and retrain read safetensors only)"
        )
    if not has_safe and not has_pickle:
        raise ModelError(f"{path} holds no weights (*.safetensors)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{path} holds no tokenizer ({', '.join(TOKENIZER_FILES)}); copy the model again, with "
                         "the files save_pretrained writes beside its weights")
    if not any((path / f).is_file() for f in PROCESSOR_FILES):
        raise ModelError(f"{path} holds no image processor ({' or '.join(PROCESSOR_FILES)}); copy the model again, "
                         "with the files its processor's save_pretrained writes")
    if not _has_chat_template(path):
        raise ModelError(f"{path} has no chat template (chat_template.jinja, or chat_template in its tokenizer or "
                         "processor config), and unsee builds every prompt with it; save the processor of the model "
                         "it was fine-tuned from beside its weights")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelError(f"cannot read {index} ({e}); copy the model again") from None
        if missing := sorted(f for f in shards if not (path / f).is_file()):
            raise ModelError(f"{path} lacks the weight shard(s) {', '.join(missing)} its {index.name} names; copy "
                             "the model again")
    for f in sorted(path.glob("*.safetensors")):
        check_safetensors(f)


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def _has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return True
    for name in ("tokenizer_config.json", "processor_config.json"):
        try:
            if (path / name).is_file() and json.loads((path / name).read_text()).get("chat_template"):
                return True
        except (OSError, ValueError, AttributeError):
            continue  # unreadable here: loading it names the problem
    return False


def check_model_dir(model: str | Path, *, allow_pickle: bool = False) -> None:
    """What :func:`load_adapter` checks before it reads a weight, for a model that loads only later (the
    retrained reference, read after the unlearning has trained): a broken one is refused before any work."""
    from transformers import AutoConfig

    path = Path(model)
    _check_local(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of {path}: {str(e).splitlines()[0] if str(e) else e}") from None
    adapter_class(config.model_type)


def check_safetensors(path: Path) -> None:
    """Refuse a weight file whose header is unreadable or whose tensors run past its end.

    A copy cut short (a full disk, an interrupted download) otherwise fails deep inside
    ``from_pretrained`` with a traceback; the header says how long the file must be, so
    reading 8 bytes and the header is enough to tell.
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if size < 8 or not 2 <= n <= min(size - 8, 100_000_000):
                raise ValueError("bad header length")
            header = json.loads(fh.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise ModelError(f"{path} is not a readable safetensors file (corrupt header); copy the model again") \
            from None
    if 8 + n + end > size:
        raise ModelError(f"{path} is truncated: its header describes {8 + n + end} bytes, the file has {size}; "
                         "copy the model again")


DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """``bf16``, ``fp16``, ``fp32`` (or a torch dtype); None is fp32, what the tiny models train in."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of bf16, fp16, fp32")
    return DTYPES[dtype]


def load_adapter(
    model: str | Path,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **kw: Any,
) -> HFAdapter:
    """Load a local directory or a hub id, refusing pickle weights unless explicitly allowed. Every model unsee
    trains or scores comes through here, so this is where portable numerics are checked (:mod:`unsee.numerics`)."""
    from transformers import AutoConfig

    check_numerics()

    path = Path(model)
    local = path.exists() or str(model).startswith((".", "/"))
    if local:
        _check_local(path, allow_pickle)
    try:
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code, **kw)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the config of {model}: {e}") from e
    cls = adapter_class(config.model_type)
    try:
        processor = cls.load_processor(str(model), config, trust_remote_code=trust_remote_code, **kw)
        hf, loading = cls.model_class().from_pretrained(
            str(model),
            dtype=resolve_dtype(dtype),
            use_safetensors=None if allow_pickle else True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **kw,
        )
    except RuntimeError as e:  # transformers' refusal of a weight whose shape is not the config's
        if "mismatched" not in str(e):
            raise
        raise ModelError(f"cannot load {model}: its weights do not have the shapes its config.json describes; is "
                         "config.json the one saved with them?") from e
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelError(f"cannot load {model}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    missing = sorted(loading.get("missing_keys") or [])
    if missing:  # transformers would start them from random values, and the run would look like any other
        raise ModelError(f"cannot load {model}: its weights lack {len(missing)} tensor(s) the config needs, e.g. "
                         f"{missing[0]}; the checkpoint is incomplete")
    if device is not None:
        hf.to(device)
    return cls(hf, processor, source=str(model))
