"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, MLP projector, Llama LM."""

from __future__ import annotations

from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

from unsee.models.base import HFAdapter


class LlavaAdapter(HFAdapter):
    arch = "llava"
    model_types = ("llava",)
    vision_prefixes = ("model.vision_tower.", "vision_tower.")
    projector_prefixes = ("model.multi_modal_projector.", "multi_modal_projector.")
    answer_prefix = " "

    @classmethod
    def model_class(cls) -> type[LlavaForConditionalGeneration]:
        return LlavaForConditionalGeneration

    @classmethod
    def load_processor(cls, path: str, **kw: Any) -> LlavaProcessor:
        """Assembled from its parts: the same code serves a hub checkpoint and a tiny local one."""
        image_processor = AutoImageProcessor.from_pretrained(path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        return LlavaProcessor.from_pretrained(path, image_processor=image_processor, tokenizer=tokenizer, **kw)
