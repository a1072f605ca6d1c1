"""The adapter: the one interface between unsee and a Hugging Face multimodal model.

Every method and the evaluator talk to a model only through :class:`Adapter`, so that
LLaVA, Qwen2-VL and Qwen2.5-VL (and any architecture added later) plug in by writing one
small subclass of :class:`HFAdapter`. The adapter owns the things that differ between
architectures: where the vision tower, projector and language model live, how the chat
template and processor build a batch, and where the image tokens are.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature, PreTrainedModel

from unsee.bars import bar as progress_bar
from unsee.errors import ConfigError, ModelError
from unsee.models.fingerprint import model_fingerprint

Scope = Literal["full", "visual", "projector", "language", "lora", "vision_tower"]
SCOPES: tuple[str, ...] = ("full", "visual", "projector", "language", "lora", "vision_tower")
IGNORE = -100


@dataclass(frozen=True)
class Turn:
    """One (image or none, prompt, answer) triple; the unit every batch is built from.

    ``follow`` continues the conversation about the same image with more (prompt, answer)
    exchanges, as LLaVA's instruction data does: one pass over the image tokens then
    supervises several answers. Only :meth:`HFAdapter.training_batch` reads it.
    """

    image: Image.Image | None
    prompt: str
    answer: str = ""
    follow: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class Adapter(Protocol):
    """What everything outside ``unsee.models`` may use of a model: methods, the engine, the evaluator,
    the audits and the recipes type their models with this, and nothing reaches past it to a concrete
    class (``tests/test_architecture.py`` checks that every attribute used is listed here)."""

    arch: str
    model: PreTrainedModel
    processor: Any
    tokenizer: Any
    source: str
    output_device: torch.device | None

    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    def groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]: ...
    def group_of(self, name: str) -> str: ...
    def set_scope(self, scope: str) -> list[nn.Parameter]: ...
    def language_slots(self) -> list[tuple[nn.Module, str]]: ...
    def training_batch(self, turns: Sequence[Turn]) -> BatchFeature: ...
    def training_lengths(self, turns: Sequence[Turn]) -> list[int]: ...
    def generation_batch(self, turns: Sequence[Turn]) -> BatchFeature: ...
    def text_ids(self, text: str) -> torch.Tensor: ...
    def answer_text(self, answer: str) -> str: ...
    def to_device(self, batch: BatchFeature) -> BatchFeature: ...
    def forward(self, batch: BatchFeature, **kw: Any) -> Any: ...
    def answer_positions(self, batch: BatchFeature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def generate(self, turns: Sequence[Turn], *, max_new_tokens: int = 32, batch_size: int = 16,
                 progress: bool = False, desc: str = "generate") -> list[str]: ...
    def answer_logprobs(self, batch: BatchFeature) -> torch.Tensor: ...
    def option_logprobs(self, turns: Sequence[Turn], options: Sequence[Sequence[str]]) -> list[list[float]]: ...
    def image_inputs(self, images: Sequence[Image.Image]) -> BatchFeature: ...
    def visual_features(self, image_inputs: BatchFeature) -> list[torch.Tensor]: ...
    def decoder_layers(self) -> list[nn.Module]: ...
    def linear_modules(self, group: str) -> list[tuple[str, nn.Module]]: ...
    def save(self, out: str | Path) -> None: ...
    def fingerprint(self) -> str: ...
    def eval_mode(self) -> AbstractContextManager[None]: ...


class HFAdapter:
    """Shared implementation over a ``*ForConditionalGeneration`` model and its processor.

    Subclasses set the module-name prefixes of the three parameter groups, the text that
    sits between the generation prompt and the answer, and how a processor is assembled.
    """

    arch: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    vision_prefixes: ClassVar[tuple[str, ...]] = ()
    projector_prefixes: ClassVar[tuple[str, ...]] = ()
    answer_prefix: ClassVar[str] = ""

    def __init__(self, model: PreTrainedModel, processor: Any, *, source: str = "") -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.padding_side = self.tokenizer.padding_side  # as loaded: batching moves it, a saved copy must not
        self.source = source
        # Where results go when the model lives elsewhere (a reference offloaded to the CPU).
        self.output_device: torch.device | None = None
        self.pad_borrowed = self.tokenizer.pad_token_id is None  # batching needs one; a saved copy does not
        if self.pad_borrowed and self.tokenizer.eos_token is None:
            raise ModelError(f"{source or 'the model'}: its tokenizer has neither a pad nor an end token (is its "
                             "tokenizer_config.json missing?); batches cannot be padded")
        if self.pad_borrowed:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.end_of_answer = self._end_of_answer_token()

    # ---- loading -----------------------------------------------------------------
    @classmethod
    def load_processor(cls, path: str, config: Any, **kw: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def model_class(cls) -> type[PreTrainedModel]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _end_of_answer_token(self) -> str:
        return self.tokenizer.eos_token

    # ---- parameter groups and scopes ----------------------------------------------
    def groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Split every parameter into ``vision``, ``projector`` or ``language`` by name."""
        out: dict[str, list[tuple[str, nn.Parameter]]] = {"vision": [], "projector": [], "language": []}
        for name, p in self.model.named_parameters():
            out[self.group_of(name)].append((name, p))
        return out

    def group_of(self, name: str) -> str:
        bare = _strip_peft(name)
        if any(bare.startswith(pre) for pre in self.projector_prefixes):
            return "projector"
        if any(bare.startswith(pre) for pre in self.vision_prefixes):
            return "vision"
        return "language"

    def set_scope(self, scope: str) -> list[nn.Parameter]:
        """Freeze everything outside ``scope`` and return the trainable parameters.

        ``lora`` expects the model to be wrapped by peft already: only adapter weights train.
        On a model without them it raises rather than freeze everything, since a run with
        nothing to train would otherwise fail later, far from its cause, or silently do nothing.
        """
        wanted = {
            "full": {"vision", "projector", "language"},
            "visual": {"vision", "projector"},
            "vision_tower": {"vision"},
            "projector": {"projector"},
            "language": {"language"},
        }
        if scope == "lora":
            if not any("lora_" in name for name, _ in self.model.named_parameters()):
                others = ", ".join(s for s in SCOPES if s != "lora")
                raise ConfigError(
                    f"scope 'lora' found no LoRA parameters (none has 'lora_' in its name) in "
                    f"{self.source or 'the model'}: wrap the model with peft first (unsee's training engine does "
                    f"this for scope=lora), or choose another scope: {others}"
                )
            for name, p in self.model.named_parameters():
                p.requires_grad_("lora_" in name)
        elif scope in wanted:
            for name, p in self.model.named_parameters():
                p.requires_grad_(self.group_of(name) in wanted[scope])
        else:
            raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
        return [p for p in self.model.parameters() if p.requires_grad]

    def linear_modules(self, group: str) -> list[tuple[str, nn.Module]]:
        """``nn.Linear`` and ``nn.Conv*`` layers of one group, for masks and null-space projection."""
        out = []
        for name, mod in self.model.named_modules():
            if isinstance(mod, nn.Linear | nn.Conv2d | nn.Conv3d) and self.group_of(name + ".") == group:
                out.append((name, mod))
        return out

    def decoder_layers(self) -> list[nn.Module]:
        return list(self._core().language_model.layers)

    def _core(self) -> nn.Module:
        """The inner ``*Model`` (vision tower, projector, LM), also under a peft wrapper."""
        m = self.model
        if hasattr(m, "get_base_model"):
            m = m.get_base_model()
        return m.model

    def language_slots(self) -> list[tuple[nn.Module, str]]:
        """Where the language model and its head hang, so a visual-only copy can skip them."""
        m = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return [(m.model, "language_model"), (m, "lm_head")]

    # ---- batches -----------------------------------------------------------------
    def prompt_text(self, turn: Turn) -> str:
        content: list[dict[str, str]] = []
        if turn.image is not None:
            content.append({"type": "image"})
        content.append({"type": "text", "text": turn.prompt})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _process_prompts(self, turns: Sequence[Turn], padding_side: str) -> BatchFeature:
        texts = [self.prompt_text(t) for t in turns]
        images = [t.image for t in turns if t.image is not None]
        self.tokenizer.padding_side = padding_side
        return self.processor(
            text=texts, images=images or None, return_tensors="pt", padding=True, padding_side=padding_side
        )

    def image_inputs(self, images: Sequence[Image.Image]) -> BatchFeature:
        """Pixel inputs of the image processor alone, for the visual-module-only methods."""
        return self.processor.image_processor(images=list(images), return_tensors="pt")

    def generation_batch(self, turns: Sequence[Turn]) -> BatchFeature:
        return self._process_prompts(turns, "left")

    def training_batch(self, turns: Sequence[Turn]) -> BatchFeature:
        """Prompt through the processor, answer tokens appended; loss only on the answer.

        The answer is tokenised on its own and concatenated, so the boundary between what
        is masked and what is learnt is exact whatever the tokenizer merges. Every other
        key of the processor output (``pixel_values``, ``image_grid_thw``...) passes
        through untouched.
        """
        enc = self._process_prompts(turns, "right")
        pad = self.tokenizer.pad_token_id
        rows, labels = [], []
        for i, t in enumerate(turns):
            pieces = [enc["input_ids"][i][enc["attention_mask"][i].bool()], self.text_ids(self.answer_text(t.answer))]
            for prompt, answer in t.follow:
                pieces += [self.text_ids(self._follow_prompt(prompt)), self.text_ids(self.answer_text(answer))]
            rows.append(torch.cat(pieces))
            # every second piece is an answer: the loss falls on those alone
            labels.append(torch.cat([p if k % 2 else torch.full_like(p, IGNORE) for k, p in enumerate(pieces)]))
        input_ids, mask = _right_pad(rows, pad)
        label_t, _ = _right_pad(labels, IGNORE)
        enc["input_ids"], enc["attention_mask"], enc["labels"] = input_ids, mask, label_t
        if "mm_token_type_ids" in enc:  # Qwen's M-RoPE marks image tokens; rebuild it for the new rows
            enc["mm_token_type_ids"] = (input_ids == self.image_token_id).long()
        return enc

    def training_lengths(self, turns: Sequence[Turn]) -> list[int]:
        """The token count of each turn's :meth:`training_batch` row, for grouping batches by length.

        Exact, since it is that method's own output; turns alike in image size and text are
        measured once, which makes ten thousand turns a second's work.
        """
        measured: dict[tuple, int] = {}
        out = []
        for t in turns:
            key = (None if t.image is None else t.image.size, t.prompt, t.answer, t.follow)
            if key not in measured:
                measured[key] = int(self.training_batch([t])["attention_mask"].sum())
            out.append(measured[key])
        return out

    def text_ids(self, text: str) -> torch.Tensor:
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]

    def answer_text(self, answer: str) -> str:
        return self.answer_prefix + answer + self.end_of_answer

    def _follow_prompt(self, prompt: str) -> str:
        """The chat template's text between one answer's end token and the next answer."""
        head, tail = self._follow_template
        return head + prompt + tail

    @functools.cached_property
    def _follow_template(self) -> tuple[str, str]:
        """What the template puts before and after a follow-up prompt, rendered once per adapter.

        Rendered from the template itself (a two-exchange conversation, cut after the first
        answer's end token), so it is right for any model's template.
        """
        mark, slot = "\x00answer\x00", "\x00prompt\x00"
        messages = [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": mark}]},
                    {"role": "user", "content": [{"type": "text", "text": slot}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        cut = text.index(mark) + len(mark)
        if not text.startswith(self.end_of_answer, cut):
            raise ConfigError(f"the chat template does not end an answer with {self.end_of_answer!r}; "
                              "multi-exchange turns cannot be built for this model")
        head, _, tail = text[cut + len(self.end_of_answer):].partition(slot)
        return head, tail

    # ---- model calls ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to_device(self, batch: BatchFeature) -> BatchFeature:
        return batch.to(self.device)

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.output_device is None else t.to(self.output_device)

    def forward(self, batch: BatchFeature, **kw: Any) -> Any:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.model(**inputs, **kw)

    def answer_logprobs(self, batch: BatchFeature) -> torch.Tensor:
        """Per-sequence sum of the answer tokens' log-probabilities (differentiable)."""
        logits, mask, labels = self.answer_positions(batch)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return self._out((logp * mask).sum(-1))

    def answer_logits(self, batch: BatchFeature) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at the positions that predict answer tokens (any row's), and the mask of each row's own."""
        logits, mask, _ = self.answer_positions(batch)
        return self._out(logits), self._out(mask)

    def answer_positions(self, batch: BatchFeature) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, mask and targets at just the positions that predict some row's answer token.

        The vocabulary projection and the softmax run only there (``logits_to_keep``), not over
        the image tokens and the prompt: the same numbers at a fraction of the cost.
        """
        batch = self.to_device(batch)
        labels = batch["labels"][:, 1:]
        keep = torch.nonzero((labels != IGNORE).any(0)).squeeze(1)
        logits = self.forward(batch, logits_to_keep=keep).logits.float()
        labels = labels[:, keep]
        return logits, labels != IGNORE, labels

    @torch.no_grad()
    def generate(self, turns: Sequence[Turn], *, max_new_tokens: int = 32, batch_size: int = 16,
                 progress: bool = False, desc: str = "generate") -> list[str]:
        """Greedy, batched, left-padded; the same text as generating one at a time. ``progress`` shows a bar
        over the batches: decoding is the slow part of an evaluation on a CPU."""
        out: list[str] = [""] * len(turns)
        order = sorted(range(len(turns)), key=lambda i: len(turns[i].prompt))
        was_training = self.model.training
        self.model.eval()
        try:
            for start in progress_bar(range(0, len(order), batch_size), desc=desc, show=progress, leave=False):
                idx = order[start : start + batch_size]
                batch = self.to_device(self.generation_batch([turns[i] for i in idx]))
                gen = self.model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.convert_tokens_to_ids(self.end_of_answer),
                )
                new = gen[:, batch["input_ids"].shape[1] :]
                for i, text in zip(idx, self.tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                    out[i] = text.strip()
        finally:
            self.model.train(was_training)
        return out

    @torch.no_grad()
    def option_logprobs(self, turns: Sequence[Turn], options: Sequence[Sequence[str]]) -> list[list[float]]:
        """Summed log-probability of each option as the answer to its turn's prompt.

        The prompt (image included) is encoded once and its key/value cache is shared by the
        options, which are a few tokens each: the same figures as scoring every
        (prompt, option) sequence on its own, for about one prompt's compute instead of four.
        """
        prefix = self.to_device(self.generation_batch(turns))
        out = self.forward(prefix, use_cache=True)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        owner = torch.tensor([i for i, opts in enumerate(options) for _ in opts], device=self.device)
        rows = [self.text_ids(self.answer_text(o)) for opts in options for o in opts]
        ids, keep = (t.to(self.device) for t in _right_pad(rows, self.tokenizer.pad_token_id))
        # transformers 5.24 renamed past_key_values to cache (the old name warns, then goes in 5.40);
        # the output says which name this version takes, also through a PEFT wrapper
        name = "cache" if "cache" in getattr(type(out), "__dataclass_fields__", {}) else "past_key_values"
        cache = getattr(out, name)
        cache.batch_select_indices(owner)
        mask = torch.cat([prefix["attention_mask"][owner], keep], dim=1)
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=True, **{name: cache},
                            **self._continuation_kwargs(mask, owner, ids.shape[1])).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        total = first[owner].gather(-1, ids[:, :1]).squeeze(-1) + (logp * keep[:, 1:]).sum(-1)
        flat = iter(total.tolist())
        return [[next(flat) for _ in opts] for opts in options]

    def _continuation_kwargs(self, mask: torch.Tensor, owner: torch.Tensor, width: int) -> dict[str, Any]:
        """Extra inputs for tokens that continue a cached prompt; rotary positions simply go on."""
        return {}

    def visual_features(self, image_inputs: BatchFeature) -> list[torch.Tensor]:
        """Projector output at the image-token positions, one ``[tokens, d]`` tensor per image.

        This needs only the visual module: no language-model compute, no gradient there.
        """
        inputs = self.to_device(image_inputs)
        kw = {k: v for k, v in inputs.items() if k in ("image_grid_thw", "image_sizes")}
        feats = self._core().get_image_features(pixel_values=inputs["pixel_values"], **kw)
        pooled = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        return [self._out(f) for f in pooled]

    def image_token_hidden(self, batch: BatchFeature, layer: int) -> list[torch.Tensor]:
        """The language model's hidden states at the image-token positions at ``layer``."""
        batch = self.to_device(batch)
        out = self.forward(batch, output_hidden_states=True)
        hs = out.hidden_states[layer]
        pos = batch["input_ids"] == self.image_token_id
        return [hs[i][pos[i]] for i in range(hs.shape[0])]

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def save(self, out: str | Path) -> None:
        """A standard checkpoint: safetensors weights, config, processor, chat template.

        The tokenizer is saved as it was loaded: batching sets its padding side and leaves the fast
        tokenizer's padding on, which would otherwise reach ``tokenizer.json`` and pad every batch of
        whoever loads the checkpoint on the other side; a pad token borrowed for batching is not saved.
        """
        self.model.save_pretrained(out, safe_serialization=True)
        side, pad = self.tokenizer.padding_side, self.tokenizer.pad_token
        self.tokenizer.padding_side = self.padding_side
        if self.pad_borrowed:
            self.tokenizer.pad_token = None
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
        try:
            self.processor.save_pretrained(out)
        finally:
            self.tokenizer.padding_side, self.tokenizer.pad_token = side, pad

    def fingerprint(self) -> str:
        return model_fingerprint(self.source) if self.source and Path(self.source).is_dir() else self.source

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)


def check_processor(path: str, found: Mapping[str, Any], tower: Mapping[str, Any]) -> None:
    """The processor's image settings against the vision tower's: a mismatch fails only at the first
    batch, with counts of image tokens that do not say why."""
    wrong = [f"{k} {found[k]} (the tower's {tower[k]})" for k in tower if found.get(k) not in (None, tower[k])]
    if wrong:
        raise ModelError(f"{path}: the processor's {', '.join(wrong)}; processor_config.json does not belong "
                         "with config.json")


def _right_pad(rows: Sequence[torch.Tensor], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids as one right-padded ``[batch, width]`` tensor, and its attention mask."""
    padded = nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)
    mask = nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0)
    return padded, mask


def _strip_peft(name: str) -> str:
    """peft wraps names as ``base_model.model.<name>`` and ``<layer>.base_layer``; undo both."""
    for pre in ("base_model.model.",):
        if name.startswith(pre):
            name = name[len(pre) :]
    return name.replace(".base_layer", "")


def joined(parts: list[BatchFeature]) -> BatchFeature:
    """Image processor outputs as one batch: each key concatenated along its first axis, which is how the
    processor batches images (pixel rows, or patch rows with their grids)."""
    return BatchFeature({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
