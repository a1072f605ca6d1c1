"""What each cached training stage is keyed on, declared in one place.

A trained stage is reused from the cache (``~/.cache/unsee`` or ``$UNSEE_CACHE``) when its key
matches. The key hashes, and nothing else:

- the stage's name and its ``version`` (the stage's STAGE_VERSION), an int bumped by hand
  when the stage trains differently on the same inputs (its loop, loss, schedule or
  augmentation); ``tests/test_stage_keys.py`` pins each stage's first losses next to the
  version they were recorded at, and fails until a change of them comes with a bump;
- the recipe options the stage reads (``options``);
- a fingerprint of its starting weights;
- a fingerprint of its data: every turn's text and image in training order, and the
  tensors the adapter builds for a fixed sample of the turns (:func:`turns_fingerprint`),
  so that an edit of the data loaders, of label masking or of the processor retrains,
  while an edit of code training never runs (generation, a docstring) keeps the stage;
- the numeric environment (:func:`numerics`): torch's version, the device (a CPU's model and
  vector instructions) and the thread count. The same recipe trained at one thread and at
  two, or on two CPUs, gives other weights (a sum split or vectorised differently rounds
  differently), so a stage trained in one must not stand in for the other.

No source file is hashed: hashing whole modules retrained the default vanilla model (25
minutes) for a docstring and missed the modules that shape the labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from unsee.engine.distributed import launch_mixed_precision
from unsee.io import content_hash
from unsee.models import adapter_class
from unsee.models.base import Adapter, Turn
from unsee.numerics import PORTABLE_DEVICE, portable
from unsee.provenance import device_name

# Which recipe options determine which stage of the vanilla model. Each stage also hashes the
# key of the stage it starts from, so stage 3 depends on BASE_KEYS through stage 2.
# ``tests/test_finetune.py`` checks that every option of ``FinetuneConfig`` is listed once.
VISION_KEYS = ("vision_seed", "vision_steps", "vision_batch", "vision_lr", "cosface_margin", "cosface_scale",
               "vision_general", "vision_general_weight")
BASE_KEYS = ("base_steps", "base_lr", "vision_lr_factor", "batch_size", "augment", "warmup_ratio", "seed", "pack",
             "group_by_length")
FT_KEYS = ("ft_steps", "ft_lr", "ft_vision_lr_factor", "image_oversample", "replay", "ft_augment")
UNHASHED_KEYS = ("checkpoint_every", "progress")
# The options of a public benchmark's fine-tune (``BenchFinetuneConfig``), all of which shape it.
BENCH_KEYS = ("epochs", "max_steps", "lr", "batch_size", "scope", "lora_r", "lora_alpha", "lora_dropout", "schedule",
              "warmup_ratio", "weight_decay", "grad_clip", "text_qa", "dtype", "gradient_checkpointing",
              "group_by_length", "seed")
BENCH_UNHASHED_KEYS = ("checkpoint_every", "progress")

# How many turns besides the first (and the first of each kind) the data fingerprint tokenizes.
SAMPLE_TURNS = 6


@dataclass(frozen=True)
class StageKey:
    """One cached stage: its name, its STAGE_VERSION and the recipe options it reads; ``on_cpu`` where it trains
    on the CPU even on a machine with a GPU (stage 1), so that its key holds the thread count there too."""

    name: str
    version: int
    options: tuple[str, ...]
    on_cpu: bool = False

    def key(self, recipe: Mapping[str, Any], *, weights: str, data: str, extra: Any = None,
            threads: int | None = None) -> str:
        """The cache key: version, options, starting weights' and data's fingerprints, the numeric
        environment (and ``extra``); ``threads`` names another CPU thread count than this process's."""
        return content_hash(self.name, self.version, {k: recipe[k] for k in self.options}, weights, data,
                            numerics(threads, on_cpu=self.on_cpu), extra)


def thread_counts() -> list[int]:
    """The CPU thread counts a cached stage may have trained at, this process's first: a stage's key holds
    its count, and a process under ``accelerate launch`` runs one thread, so a lookup (a reference for an
    audit) tries each power of two up to the machine's cores, and the cores. On a GPU, this process's."""
    now, cores = torch.get_num_threads(), os.cpu_count() or 1
    if torch.cuda.is_available():
        return [now]
    return list(dict.fromkeys([now, *(2 ** i for i in range(cores.bit_length()) if 2 ** i <= cores), cores]))


def draw_seeds(first: int, n: int) -> list[int | None]:
    """The seeds of the first ``n`` draws of a retrained reference: None for the recipe's own draw (seed
    ``first``, keyed as the recipe is), then ``unsee retrain --seed first+1`` .. ``first+n-1``."""
    return [None, *range(first + 1, first + n)]


def numerics(threads: int | None = None, *, on_cpu: bool = False) -> dict[str, Any]:
    """What else a stage's weights depend on: torch's version, the device (on a CPU its model and
    vector instructions), on a CPU the thread count, and the mixed precision a launch (or the user's own
    Accelerator) asks for, under which the engine's stages train in bf16: named only where it is on, so
    that the keys of stages trained without it stay as they were.

    Training is bit-for-bit reproducible for a fixed value of these and not across them: after
    30 steps of stage 1 the visual weights at one thread differ from those at two, and over a
    whole stage the gap grows to another model. Under ``UNSEE_NUMERICS=portable`` a CPU is named by
    its pinned kernels instead of its model, so a stage trained on one CPU is found in the cache by
    another. On a GPU the CPU's threads do not touch the
    weights, so a fine-tune of hours is not trained again for a change of them; a stage that trains
    on the CPU there all the same (``on_cpu``) keeps its count.
    """
    device = device_name()
    # under portable numerics every CPU trains the same weights, so they share one key (unsee.numerics)
    found: dict[str, Any] = {"torch": torch.__version__,
                             "device": PORTABLE_DEVICE if portable() and device.startswith("cpu") else device}
    if on_cpu or not torch.cuda.is_available():
        found["threads"] = torch.get_num_threads() if threads is None else threads
    if (precision := launch_mixed_precision()) != "no":
        found["mixed_precision"] = precision
    return found


# STAGE_VERSION of each stage: bump it when the stage trains differently on the same inputs.
# vision pre-training (unsee.vision_stage.pretrain_vision), on the CPU wherever it runs
STAGE1 = StageKey("stage1", 1, VISION_KEYS, on_cpu=True)
STAGE2 = StageKey("stage2", 1, BASE_KEYS)  # base MLLM training
STAGE3 = StageKey("stage3", 1, FT_KEYS)  # the fictitious fine-tune
RETRAINED = StageKey("retrained", 1, FT_KEYS)  # stage 3 again without the forget photos (unsee.retrain)
# stages 2 and 3 again without the photos of known people (unsee.retrain, known_forget_X)
RETRAINED_KNOWN = StageKey("retrained-known", 1, BASE_KEYS + FT_KEYS)
BENCHMARK = StageKey("benchmark-finetune", 1, BENCH_KEYS)  # a public benchmark's fine-tune (unsee.finetune_bench)
STAGES = (STAGE1, STAGE2, STAGE3, RETRAINED, RETRAINED_KNOWN, BENCHMARK)


def batch_adapter(model: str | Path) -> Adapter:
    """The adapter of ``model`` with its processor and config but no weights, for building batches.

    A training batch depends on the processor, the chat template and the config's image token
    alone; loading a 7B model's weights only to tokenize a sample would take minutes.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model))
    cls = adapter_class(config.model_type)
    return cls(SimpleNamespace(config=config), cls.load_processor(str(model), config), source=str(model))  # type: ignore[arg-type]


def image_fingerprint(image: Any) -> str:
    """Content hash of a PIL image: mode, size and pixels."""
    h = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()[:16]


def tensors_fingerprint(batch: Mapping[str, Any]) -> str:
    """Content hash of a batch's tensors (name, dtype, shape and values), in name order."""
    h = hashlib.sha256()
    for name in sorted(batch):
        value = batch[name]
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(f"{name}:{value!r}".encode())
    return h.hexdigest()[:16]


def sample_turns(turns: Sequence[Turn], n: int = SAMPLE_TURNS, seed: int = 0) -> list[Turn]:
    """A fixed sample: the first turn, the first without an image, the first with follow-ups and
    ``n`` more drawn with ``seed``, in list order. The same list always gives the same sample."""
    if not turns:
        return []
    picks = {0}
    for wanted in (lambda t: t.image is None, lambda t: t.image is not None, lambda t: bool(t.follow)):
        first = next((i for i, t in enumerate(turns) if wanted(t)), None)
        if first is not None:
            picks.add(first)
    picks.update(int(i) for i in np.random.default_rng(seed).choice(len(turns), min(n, len(turns)), replace=False))
    return [turns[i] for i in sorted(picks)]


def turns_fingerprint(adapter: Adapter, turns: Sequence[Turn],
                      prepare: Callable[[list[Turn]], list[Turn]] | None = None) -> str:
    """What training sees of ``turns``: every turn's text and image in order, and the tensors
    ``adapter.training_batch`` builds for :func:`sample_turns` (input ids, labels, attention mask,
    pixels), after ``prepare`` (the stage's augmentation, with a fixed seed) where given."""
    h = hashlib.sha256()
    images: dict[int, str] = {}
    for t in turns:
        if t.image is not None and id(t.image) not in images:
            images[id(t.image)] = image_fingerprint(t.image)
        h.update(json.dumps([t.prompt, t.answer, [list(f) for f in t.follow],
                             None if t.image is None else images[id(t.image)]]).encode())
    sample = sample_turns(turns)
    if sample:
        h.update(tensors_fingerprint(adapter.training_batch(prepare(sample) if prepare else sample)).encode())
    return h.hexdigest()[:16]
