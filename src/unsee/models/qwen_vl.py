"""Qwen2-VL and Qwen2.5-VL: a ViT whose ``merger`` is the projector, and a Qwen2 LM.

``AutoProcessor`` for Qwen builds a video processor, which needs torchvision; unsee
assembles the processor from the image processor and the tokenizer instead, so that the
same code loads a real checkpoint on a user's machine and a tiny one here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)
from transformers import Qwen2_5_VLProcessor as _HFQwen25Processor
from transformers import Qwen2VLProcessor as _HFQwen2Processor
from transformers.processing_utils import ProcessorMixin
from transformers.utils import cached_file

from unsee.io import atomic_write_json
from unsee.models.base import HFAdapter, Turn, check_processor


def _image_only(base: type) -> type:
    """The HF processor without its video half, which needs torchvision.

    The class keeps the HF name, so a saved ``processor_config.json`` names the standard
    processor; with the video settings :func:`add_video_processor` writes beside it,
    ``AutoProcessor`` loads the directory on a machine with torchvision.
    """

    def __init__(self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                 **kwargs: Any) -> None:
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.video_processor = None
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__, "__doc__": base.__doc__})


Qwen2VLProcessor = _image_only(_HFQwen2Processor)
Qwen2_5_VLProcessor = _image_only(_HFQwen25Processor)


# Settings a video processor shares with the image processor of the same checkpoint.
_SHARED = ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std", "merge_size",
           "patch_size", "resample", "rescale_factor", "temporal_patch_size")


def add_video_processor(out: Path, source: str = "") -> None:
    """Give a saved Qwen processor the video processor the image-only one leaves out.

    ``AutoProcessor`` builds every part a processor class names, so a directory without the video
    processor's settings does not load with it, torchvision or not. They come from ``source`` (the
    checkpoint loaded) where it has them, else from the image processor's own.
    """
    path = out / "processor_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("processor_class") not in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor") or "video_processor" in cfg:
        return
    video = _video_settings(Path(source)) if source else None
    if video is None:
        image = cfg.get("image_processor", {})
        video = {"video_processor_type": "Qwen2VLVideoProcessor", **{k: image[k] for k in _SHARED if k in image}}
        if "size" in image:
            video["size"] = image["size"]
    cfg["video_processor"] = video
    atomic_write_json(path, cfg)


def _video_settings(source: Path) -> dict[str, Any] | None:
    for name, key in (("processor_config.json", "video_processor"), ("video_preprocessor_config.json", None)):
        try:
            cfg = json.loads((source / name).read_text())
        except (OSError, ValueError):
            continue
        found = cfg.get(key) if key else cfg
        if isinstance(found, dict) and found:
            return found
    return None


def _chat_template(path: str, **kw: Any) -> str | None:
    for name in ("chat_template.jinja", "chat_template.json"):
        try:
            f = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **kw)
        except OSError:
            f = None
        if f:
            text = Path(f).read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


class Qwen2VLAdapter(HFAdapter):
    arch = "qwen2_vl"
    model_types = ("qwen2_vl",)
    vision_prefixes = ("model.visual.", "visual.")
    projector_prefixes = ("model.visual.merger.", "visual.merger.")
    answer_prefix = ""
    processor_class: Any = Qwen2VLProcessor

    @classmethod
    def model_class(cls) -> type:
        return Qwen2VLForConditionalGeneration

    def _end_of_answer_token(self) -> str:
        return "<|im_end|>"

    def option_logprobs(self, turns: Sequence[Turn], options: Sequence[Sequence[str]]) -> list[list[float]]:
        # The model keeps the last prompt's M-RoPE offsets; a text-only prompt batch sets none,
        # so clear them first rather than read a previous batch's.
        self._core().rope_deltas = None
        return super().option_logprobs(turns, options)

    def _continuation_kwargs(self, mask: torch.Tensor, owner: torch.Tensor, width: int) -> dict[str, Any]:
        """M-RoPE positions of text after a cached prompt: the text position plus the prompt's
        offset, which the model kept from encoding it (as its own ``generate`` does)."""
        deltas = self._core().rope_deltas
        if deltas is None:  # a text-only prompt batch: plain positions, which simply go on
            return {}
        text = (mask.long().cumsum(-1) - 1)[:, -width:]
        mrope = (text + deltas[owner]).unsqueeze(0).expand(3, -1, -1)
        return {"position_ids": torch.cat([text.unsqueeze(0), mrope])}

    def save(self, out: str | Path) -> None:
        super().save(out)
        add_video_processor(Path(out), self.source)

    @classmethod
    def load_processor(cls, path: str, config: Any, **kw: Any) -> Any:
        image_processor = AutoImageProcessor.from_pretrained(path, **kw)
        tower = config.vision_config
        check_processor(path, {k: getattr(image_processor, k, None) for k in ("patch_size", "merge_size",
                                                                            "temporal_patch_size")},
                        {"patch_size": tower.patch_size, "merge_size": tower.spatial_merge_size,
                         "temporal_patch_size": tower.temporal_patch_size})
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        template = _chat_template(path, **kw) or tokenizer.chat_template
        return cls.processor_class(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


class Qwen25VLAdapter(Qwen2VLAdapter):
    arch = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    processor_class = Qwen2_5_VLProcessor

    @classmethod
    def model_class(cls) -> type:
        return Qwen2_5_VLForConditionalGeneration
