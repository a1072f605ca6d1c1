"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP tower, MLP projector, Llama LM."""

from __future__ import annotations

from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor

from unsee.models.base import HFAdapter, check_processor


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
    def load_processor(cls, path: str, config: Any, **kw: Any) -> LlavaProcessor:
        """Assembled from its parts: the same code serves a hub checkpoint and a tiny local one; ``config``,
        the model's, fills in what an older processor lacks and checks what it has."""
        image_processor = AutoImageProcessor.from_pretrained(path, **kw)
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        processor = LlavaProcessor.from_pretrained(path, image_processor=image_processor, tokenizer=tokenizer, **kw)
        if processor.chat_template is None:  # an older checkpoint keeps it in its tokenizer's config alone
            processor.chat_template = tokenizer.chat_template
        patch = config.vision_config.patch_size
        check_processor(path, {"patch_size": processor.patch_size}, {"patch_size": patch})
        if processor.patch_size is None:
            # Saved before processors expanded the image token (many LLaVA-1.5 fine-tunes): the model's config
            # knows the patch and the strategy, and a CLIP tower's class token is the one extra token.
            processor.patch_size = patch
            processor.vision_feature_select_strategy = config.vision_feature_select_strategy
            processor.num_additional_image_tokens = int(config.vision_config.model_type == "clip_vision_model")
        return processor
