"""Models with the exact structure of the checkpoints users run, built offline.

``HUB_CONFIGS`` holds the ``config.json`` of each supported hub checkpoint, key for key,
including the legacy flat layout of the Qwen configs. Building from them exercises the
same config parsing, module tree and processor settings as the real download, so the code
path that serves ``--model llava-hf/llava-1.5-7b-hf`` is tested without the weights:

- ``tiny=True`` keeps every key and the structure (feature layer, window attention,
  full-attention blocks, M-RoPE, merger) but shrinks widths and depths, for CPU tests (at
  the tiny image side, Qwen2.5-VL's window covers the whole image: windowing is not exercised);
- ``tiny=False`` is the full size with random weights, for the GPU benchmark.

Token ids follow the locally trained tokenizer rather than the hub's, since its
vocabulary is the one at hand; every other number is the hub's.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import CONFIG_MAPPING, PretrainedConfig, PreTrainedModel

from unsee.config import check_seed
from unsee.errors import ModelError
from unsee.io import atomic_dir
from unsee.models import adapter_class
from unsee.models.qwen_vl import add_video_processor
from unsee.models.tiny import (
    LLAVA_SPECIALS,
    QWEN_SPECIALS,
    llava_processor,
    llava_tokenizer,
    qwen_processor,
    qwen_token_ids,
    qwen_tokenizer,
    train_tokenizer,
)

_LLAVA_VISION = {
    "hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
    "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000,
}


def _llava(hidden: int, intermediate: int, layers: int, heads: int, base: str) -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "ignore_index": -100,
        "image_token_index": 32000,
        "model_type": "llava",
        "pad_token_id": 32001,
        "projector_hidden_act": "gelu",
        "text_config": {
            "_name_or_path": base, "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "intermediate_size": intermediate, "max_position_embeddings": 4096, "model_type": "llama",
            "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": heads,
            "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064,
        },
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "vision_config": dict(_LLAVA_VISION),
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "vocab_size": 32064,
    }


def _qwen(model_type: str, vision: dict[str, Any], max_positions: int) -> dict[str, Any]:
    arch = "Qwen2_5_VLForConditionalGeneration" if model_type == "qwen2_5_vl" else "Qwen2VLForConditionalGeneration"
    return {
        "architectures": [arch], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
        "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu", "hidden_size": 3584,
        "initializer_range": 0.02, "intermediate_size": 18944, "max_position_embeddings": max_positions,
        "max_window_layers": 28, "model_type": model_type, "num_attention_heads": 28, "num_hidden_layers": 28,
        "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
        "vision_config": vision, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vocab_size": 152064,
    }


HUB_CONFIGS: dict[str, dict[str, Any]] = {
    "llava-hf/llava-1.5-7b-hf": _llava(4096, 11008, 32, 32, "lmsys/vicuna-7b-v1.5"),
    "llava-hf/llava-1.5-13b-hf": _llava(5120, 13824, 40, 40, "lmsys/vicuna-13b-v1.5"),
    "Qwen/Qwen2-VL-7B-Instruct": _qwen("qwen2_vl", {
        "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3, "hidden_size": 3584,
        "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
    }, 32768),
    "Qwen/Qwen2.5-VL-7B-Instruct": _qwen("qwen2_5_vl", {
        "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
        "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
        "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
        "temporal_patch_size": 2,
    }, 128000),
}

SHAPES: dict[str, str] = {
    "llava-1.5-7b": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b": "llava-hf/llava-1.5-13b-hf",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
}

# Image side the processor is pinned to. LLaVA-1.5 always sees 336 px (576 tokens); Qwen
# takes any size, and 448 px (256 merged tokens) is a typical portrait at its default limits.
IMAGE_SIDE = {"llava": 336, "qwen2_vl": 448, "qwen2_5_vl": 448}
TINY_SIDE = 56


def hub_config(shape: str) -> dict[str, Any]:
    """The hub ``config.json`` of a shape name (``llava-1.5-7b``) or hub id, as a fresh dict."""
    hub_id = SHAPES.get(shape, shape)
    if hub_id not in HUB_CONFIGS:
        raise ModelError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    return copy.deepcopy(HUB_CONFIGS[hub_id])


def shrink(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same keys and structure with CPU-sized widths and depths.

    Depths keep what the structure depends on: LLaVA's second-to-last feature layer, and
    Qwen2.5-VL's alternation of window and full-attention blocks.
    """
    cfg = copy.deepcopy(cfg)
    v = cfg["vision_config"]
    if cfg["model_type"] == "llava":
        v.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3,
                 image_size=TINY_SIDE, projection_dim=32)
        cfg["text_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=2, num_key_value_heads=2)
        return cfg
    # Qwen: head_dim stays 128 so that the hub's mrope_section (which sums to head_dim / 2) holds.
    cfg.update(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_window_layers=2)
    if cfg["model_type"] == "qwen2_5_vl":
        v.update(depth=4, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=256,
                 fullatt_block_indexes=[1, 3])
    else:
        v.update(depth=2, embed_dim=64, num_heads=2, hidden_size=256)
    return cfg


def _with_token_ids(cfg: dict[str, Any], hf_tok: Any) -> dict[str, Any]:
    if cfg["model_type"] == "llava":
        cfg["image_token_index"] = hf_tok.convert_tokens_to_ids("<image>")
        cfg["pad_token_id"] = hf_tok.pad_token_id
        cfg["text_config"].update(bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                                  pad_token_id=hf_tok.pad_token_id)
    else:
        cfg.update(qwen_token_ids(hf_tok), vision_token_id=hf_tok.convert_tokens_to_ids("<|vision_start|>"))
    return cfg


def _depth_slots(cfg: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """Where a hub config keeps its visual and its language depth: (the dict, the key), in that order."""
    if cfg["model_type"] == "llava":
        return [(cfg["vision_config"], "num_hidden_layers"), (cfg["text_config"], "num_hidden_layers")]
    return [(cfg["vision_config"], "depth"), (cfg, "num_hidden_layers")]


def depths(cfg: dict[str, Any]) -> tuple[int, int]:
    """The visual and the language depth of a hub config."""
    (vision, v_key), (language, l_key) = _depth_slots(cfg)
    return vision[v_key], language[l_key]


def shaped_config(shape: str, *, tiny: bool = False, hf_tok: Any = None, layers: int | None = None) -> PretrainedConfig:
    """The HF config object, parsed from the hub layout exactly as ``from_pretrained`` would.

    ``layers`` cuts both towers to that many layers, which have the shapes of the full ones:
    a layer's cost is then counted without building the whole model."""
    if layers is not None and layers < 1:  # a tower of no layers builds, and counts nothing
        raise ModelError(f"layers must be at least 1, got {layers}")
    cfg = hub_config(shape)
    if tiny:
        cfg = shrink(cfg)
        if hf_tok is not None:  # the embedding only needs to hold the local vocabulary
            size = len(hf_tok)
            cfg["vocab_size"] = size
            if "text_config" in cfg:
                cfg["text_config"]["vocab_size"] = size
    if layers is not None:
        for section, key in _depth_slots(cfg):
            section[key] = layers
    if hf_tok is not None:
        cfg = _with_token_ids(cfg, hf_tok)
    model_type = cfg.pop("model_type")
    return CONFIG_MAPPING[model_type](**cfg)


def build_shaped(shape: str, *, tiny: bool = False, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", seed: int = 0,
                 layers: int | None = None) -> tuple[PreTrainedModel, Any]:
    """``(model, processor)`` of a hub shape with random weights, created directly on ``device``
    (``layers``: as in :func:`shaped_config`)."""

    model_type = hub_config(shape)["model_type"]
    llava = model_type == "llava"
    hf_tok = (llava_tokenizer if llava else qwen_tokenizer)(train_tokenizer([], LLAVA_SPECIALS if llava
                                                                            else QWEN_SPECIALS, 1024))
    config = shaped_config(shape, tiny=tiny, hf_tok=hf_tok, layers=layers)
    side = TINY_SIDE if tiny else IMAGE_SIDE[model_type]
    if llava:
        processor = llava_processor(hf_tok, side, config.vision_config.patch_size)
    else:
        processor = qwen_processor(hf_tok, side, config.vision_config.patch_size, model_type == "qwen2_5_vl")
    torch.manual_seed(seed)
    with torch.device(device):
        model = adapter_class(model_type).model_class()._from_config(config, dtype=dtype)
    model.config.name_or_path = shape
    return model, processor


def init_shaped(shape: str, out: str | Path, *, tiny: bool = True, seed: int = 0, overwrite: bool = False) -> Path:
    """Save a random-weight checkpoint of a hub shape, laid out as the hub's; ``from_pretrained`` loads it."""
    check_seed(seed)
    # full size in the hub's own precision (the 7B checkpoints' ~14 GB), tiny in fp32 for CPU tests
    dtype = torch.float32 if tiny else getattr(torch, hub_config(shape).get("torch_dtype", "float32"))
    model, processor = build_shaped(shape, tiny=tiny, seed=seed, dtype=dtype)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        add_video_processor(tmp)
        (tmp / "unsee.json").write_text(f'{{"shape": "{shape}", "tiny": {str(tiny).lower()}, "seed": {seed}}}\n')
    return Path(out)
