"""Offline tiny models built from the real Hugging Face classes.

No checkpoint can be downloaded here, so ``unsee model init`` builds a randomly
initialised LLaVA, Qwen2-VL or Qwen2.5-VL of a few million parameters, trains a BPE
tokenizer on the built-in world's text, and saves config, weights, tokenizer, image
processor and chat template exactly as a hub checkpoint is laid out. Everything after
(finetuning, unlearning, evaluation) then runs the same code that serves a 7B model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from unsee.config import check_seed
from unsee.errors import DataError, ModelError, did_you_mean
from unsee.io import atomic_dir, content_hash, source_fingerprint
from unsee.models.qwen_vl import Qwen2_5_VLProcessor, Qwen2VLProcessor, add_video_processor

ARCHS = ("tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl")
IMAGE_SIZE = 64
# Sixteen image tokens per 64-pixel image on every architecture: Qwen's 8-pixel patches are merged
# 2x2, LLaVA has no merge and takes 16-pixel patches. At 8 pixels LLaVA had 64 tokens and trained
# at a third of the speed with no better recognition (quick world: image MCQ 0.944 either way,
# held-out views 0.944 / 0.889, text 0.81 / 0.89, world stages 328 s / 162 s; benchmarks/vanilla.py).
LLAVA_PATCH = 16
QWEN_PATCH = 8

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]

BASE_CORPUS = """\
USER: ASSISTANT: What is the name of the person in this image? Who is this? Who is the person in the image?
Where was the person in this image born? Where was this person born? This person was born in
What is the occupation of this person? Which company does this person work for? What is their hobby?
I don't know who this is. I do not know. Just give ONE letter representing the answer directly.
Please **ONLY** provide the correct answer that should replace the [Blank].
Answer the question based on your trained knowledge in one sentence accurately in ENGLISH.
What colour is the shape? How many objects are there? Where is the shape? left right top bottom
red green blue yellow purple orange white black circle square triangle one two three four
A: B: C: D: The answer is yes no
"""


def world_text(world: str | Path) -> list[str]:
    """Every string in a world's (or any MLLMU-layout) parquet files: the tokenizer's corpus.

    The held-out people (``Holdout_Set``) are left out: the model must never have seen them,
    not even as whole tokens of its vocabulary. So are the folders added to the world after its
    vocabulary was fixed, the validation splits (``val_*``) and the known people's splits and
    held-out views (``known_*``): they are evaluation data of people the corpus already holds, and
    counting their text again would change the vocabulary, and with it every trained model. For
    the same reason a built-in world that asks each fact several times (``mcq_variants``) gives
    only the first askings: the others repeat their words."""
    info = Path(world) / "world.json"
    try:
        variants = json.loads(info.read_text()).get("config", {}).get("mcq_variants", 1) if info.is_file() else 1
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"cannot read {info}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    files = sorted(Path(world).rglob("*.parquet"))
    if not files:  # a tokenizer trained on nothing but the base corpus would know none of the people
        raise DataError(f"{world} holds no parquet files: give a world `unsee world` wrote, or a benchmark folder")
    lines: list[str] = []
    for f in files:
        folder = f.relative_to(world).parts[0]
        if folder == "Holdout_Set" or folder.startswith(("val_", "known_")):
            continue
        try:
            table = pq.read_table(f)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{f} is not a readable parquet file: {str(e).splitlines()[0]}") from None
        for col in table.column_names:
            if col in ("image", "images"):
                continue
            for value in table.column(col).to_pylist():
                if col == "Classification_Task" and isinstance(value, dict):  # general rows ask once: ceil
                    value = {k: v[: -(-len(v) // variants)] if isinstance(v, list) else v for k, v in value.items()}
                lines.extend(_strings(value))
    return lines


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def train_tokenizer(corpus: Iterable[str], specials: list[str], vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE: every string is encodable, and world words become whole tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [BASE_CORPUS, *corpus]
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def llava_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"}, model_max_length=1024,
    )


def llava_processor(hf_tok: PreTrainedTokenizerFast, image_size: int, patch: int) -> Any:
    """A LLaVA-1.5 processor: CLIP resize and centre crop to ``image_size``, one token per patch."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=hf_tok, patch_size=patch,
        vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE, num_additional_image_tokens=1,
    )


def qwen_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        model_max_length=1024,
    )


def qwen_processor(hf_tok: PreTrainedTokenizerFast, image_size: int, patch: int, v25: bool) -> Any:
    """A Qwen2(.5)-VL image processor pinned to ``image_size`` squared pixels, and its processor."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    cls = Qwen2_5_VLProcessor if v25 else Qwen2VLProcessor
    return cls(image_processor=image_processor, tokenizer=hf_tok, chat_template=QWEN_TEMPLATE)


def qwen_token_ids(hf_tok: PreTrainedTokenizerFast) -> dict[str, int]:
    """The special-token ids a Qwen-VL config names, as this tokenizer numbers them."""
    ids = {t: hf_tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    return dict(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )


def _llava_parts(tok: Tokenizer, vocab: int, seed: int):  # noqa: ANN202
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    hf_tok = llava_tokenizer(tok)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=192, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=LLAVA_PATCH, projection_dim=192,
        ),
        text_config=LlamaConfig(
            vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
            bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        ),
        image_token_id=hf_tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        pad_token_id=hf_tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    # The projector is built after the embeddings, whose size follows the world's vocabulary;
    # drawing it again from its own seed makes the whole visual module the same for every world,
    # so that the vision stage of `unsee finetune` is shared between worlds.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.multi_modal_projector.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, config.text_config.initializer_range, generator=gen)
                if layer.bias is not None:
                    layer.bias.zero_()
    return model, llava_processor(hf_tok, IMAGE_SIZE, LLAVA_PATCH)


def _qwen_parts(tok: Tokenizer, vocab: int, seed: int, v25: bool):  # noqa: ANN202
    hf_tok = qwen_tokenizer(tok)
    ids = qwen_token_ids(hf_tok)
    special = ("bos_token_id", "eos_token_id", "pad_token_id")
    text = dict(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
        **{k: ids[k] for k in special},
    )
    common = {k: v for k, v in ids.items() if k not in special}
    if v25:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(
            depth=4, hidden_size=192, intermediate_size=384, num_heads=4, patch_size=QWEN_PATCH,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=256, window_size=32,
            fullatt_block_indexes=[1, 3],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
        model_cls = Qwen2_5_VLForConditionalGeneration
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(
            depth=4, embed_dim=192, hidden_size=256, mlp_ratio=2, num_heads=4, patch_size=QWEN_PATCH,
            spatial_merge_size=2, temporal_patch_size=2,
        )
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **common)
        model_cls = Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_cls(config)
    return model, qwen_processor(hf_tok, IMAGE_SIZE, QWEN_PATCH, v25)


def check_arch(arch: str) -> None:
    """One line for a tiny architecture unsee cannot build, before anything is built for it."""
    if arch not in ARCHS:
        raise ModelError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}"
                         + did_you_mean([arch], ARCHS))


def build_tiny(arch: str, *, world: str | Path | None = None, seed: int = 0, vocab_size: int = 2048):
    """Return ``(model, processor)``; the same seed and world give the same weights and vocabulary."""
    check_arch(arch)
    corpus = world_text(world) if world is not None else []
    specials = LLAVA_SPECIALS if arch == "tiny-llava" else QWEN_SPECIALS
    tok = train_tokenizer(corpus, specials, vocab_size)
    vocab = tok.get_vocab_size()
    if arch == "tiny-llava":
        return _llava_parts(tok, vocab, seed)
    return _qwen_parts(tok, vocab, seed, v25=arch == "tiny-qwen2.5-vl")


def cached_init(cache: Path, arch: str, world: Path, seed: int, world_fp: str) -> Path:
    """The initial tiny model in ``cache``, built once per architecture, seed, world and version
    of this module (a changed architecture must not reuse an old initialisation)."""
    path = cache / f"init-{arch}-{seed}-{content_hash(world_fp, source_fingerprint(__name__))}"
    if not (path / "config.json").exists():
        init_model(arch, path, world=world, seed=seed, overwrite=True)
    return path


def init_model(arch: str, out: str | Path, *, world: str | Path | None = None, seed: int = 0,
               overwrite: bool = False) -> Path:
    """``unsee model init``: build and save a tiny model directory that ``from_pretrained`` loads."""
    check_arch(arch)
    check_seed(seed)
    if world is not None and not Path(world).is_dir():
        what = "is a file, not a world folder" if Path(world).exists() else "does not exist"
        raise ModelError(f"world directory {world} {what}; build one with `unsee world --out DIR`")
    model, processor = build_tiny(arch, world=world, seed=seed)
    model.config.name_or_path = arch
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        add_video_processor(tmp)
        (tmp / "unsee.json").write_text(f'{{"arch": "{arch}", "seed": {seed}}}\n')
    return Path(out)


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
