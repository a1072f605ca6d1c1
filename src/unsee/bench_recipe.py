"""A public benchmark's fine-tune recipe, and the cache entry a fine-tune on it trains into.

Below the commands that train (:mod:`unsee.finetune_bench`), so that an audit can find the
retrained reference ``unsee retrain`` left in the cache without training anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from unsee.config import load_config, opt, to_dict
from unsee.data.clear import split_configs
from unsee.data.collate import qa_turns
from unsee.data.detect import NAMES, DataRef, data_fingerprint, resolve
from unsee.data.ftsets import finetune_examples, without_forget
from unsee.errors import ConfigError, DataError, ModelError
from unsee.finetune import cache_root, read_vanilla_record, stage_done
from unsee.models import model_fingerprint
from unsee.models.base import SCOPES, Turn
from unsee.stage_keys import BENCHMARK, batch_adapter, draw_seeds, thread_counts, turns_fingerprint

RECIPES = ("mllmu", "clear", "umu")
WORLD_RECIPES = ("default", "quick")


@dataclass
class BenchFinetuneConfig:
    """A benchmark's fine-tune recipe. Shipped as ``configs/finetune/{mllmu,clear,umu}.yaml``."""

    epochs: float = opt(5.0, "passes over the fine-tune split")
    max_steps: int = opt(0, "stop after this many steps (0: from epochs); for quick checks")
    lr: float = opt(2e-5, "AdamW learning rate")
    batch_size: int = opt(4, "global batch size (split across processes)")
    scope: str = opt("lora", "what trains: lora (merged into the weights on save), full, language, visual, ...")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA alpha")
    lora_dropout: float = opt(0.05, "LoRA dropout")
    schedule: Literal["constant", "cosine", "linear"] = opt("linear", "learning-rate schedule after warm-up")
    warmup_ratio: float = opt(0.0, "linear warm-up as a fraction of the steps")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(0.0, "clip the gradient norm (0: off)")
    text_qa: bool = opt(True, "also train on the split's text pairs (CLEAR's TOFU rows; UMU's UM_QA, asked with "
                                "the portrait as in its authors' data file)")
    dtype: Literal["bf16", "fp16", "fp32"] = opt("bf16", "dtype the model is loaded and saved in; trained "
                                                 "weights keep fp32 masters during the run")
    gradient_checkpointing: bool = opt(True, "recompute activations in the backward pass (7B models on one GPU)")
    group_by_length: bool = opt(False, "batch pairs of similar token length together")
    seed: int = opt(0, "seed of the data order, the LoRA initialisation and CLEAR's caption questions")
    checkpoint_every: int = opt(200, "steps between checkpoints; an interrupted run resumes from the last one")
    progress: bool = opt(True, "progress bar")

    def validate(self) -> None:
        if self.lr <= 0 or self.batch_size <= 0 or self.epochs < 0 or self.max_steps < 0:
            raise ConfigError("lr and batch_size must be positive; epochs and max_steps non-negative")
        if self.epochs == 0 and self.max_steps == 0:
            raise ConfigError("epochs and max_steps are both 0: nothing would train")
        if self.scope not in SCOPES:
            raise ConfigError(f"scope {self.scope!r} is not one of {', '.join(SCOPES)}")


def load_recipe(kind: str, config: str | Path | dict | None, overrides: Any = ()) -> BenchFinetuneConfig:
    """The recipe for ``kind``: its shipped preset unless a file, a name or a mapping is given."""
    if config in WORLD_RECIPES:
        raise ConfigError(f"recipe {config!r} trains the built-in world in stages; {NAMES[kind]} uses --config "
                          f"{kind} (or mllmu, clear, umu, or a file)")
    return load_config(BenchFinetuneConfig, kind if config is None else config, overrides, kind="finetune")


def _keys(model: str | Path, turns: list[Turn], split: str, cfg: BenchFinetuneConfig, forget: str | None,
          threads: Sequence[int | None]) -> list[str]:
    """The cache key :data:`unsee.stage_keys.BENCHMARK` declares, at each CPU thread count of ``threads`` (None:
    this process's): the base model's weights, the recipe, the turns as the model's processor batches them, the
    split and the forget set. The weights and the turns are fingerprinted once for every count."""
    weights, data = model_fingerprint(model), turns_fingerprint(batch_adapter(model), turns)
    return [BENCHMARK.key(to_dict(cfg), weights=weights, data=data, extra=[split, forget], threads=t) for t in threads]


def check_world_recipe(config: Any) -> None:
    """The built-in world trains in stages with recipes of its own; a benchmark's recipe is refused there."""
    if isinstance(config, str) and config in RECIPES:
        raise ConfigError(f"recipe {config!r} is a public benchmark's; the built-in world uses default or quick")


def recipe_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The recipe a vanilla model's record (``unsee_vanilla.json``) says it was fine-tuned with."""
    return {k: v for k, v in meta["recipe"].items() if k in BenchFinetuneConfig.__dataclass_fields__}


def split_name(kind: str | None, forget: str) -> str:
    """One name for one split: CLEAR's ``forget_5`` is its config ``forget05``."""
    return split_configs(forget)[0] if kind == "clear" else forget


@dataclass
class Pairs:
    """What a benchmark fine-tune trains on."""

    split: str
    turns: list[Turn]
    dropped: int = 0  # the forget people's image pairs left out (the retrained reference)
    as_text: int = 0  # their pairs kept without the portrait


def training_pairs(ref: DataRef, kind: str, cfg: BenchFinetuneConfig, forget: str | None) -> Pairs:
    """The fine-tune split's pairs, without ``forget``'s people's photos when given. Every image is decoded
    here: a corrupt one stops the run before the model loads."""
    split, examples = finetune_examples(kind, ref.path, seed=cfg.seed, text_qa=cfg.text_qa)
    dropped = as_text = 0
    if forget is not None:
        examples, dropped, as_text = without_forget(kind, ref.path, examples, forget)
    return Pairs(split, qa_turns(examples), dropped, as_text)


def cache_entries(model: Path, pairs: Pairs, kind: str, cfg: BenchFinetuneConfig, forget: str | None,
                  cache_dir: str | Path | None = None, *, threads: Sequence[int | None] = (None,)) -> list[Path]:
    """Where the fine-tune of ``model`` on ``pairs`` is cached (the retrained reference with ``forget``), had it
    trained at each thread count of ``threads``."""
    root, prefix = cache_root(cache_dir), "retrained" if forget else "vanilla"
    return [root / f"{prefix}-{kind}-{key}" for key in _keys(model, pairs.turns, pairs.split, cfg, forget, threads)]


def vanilla_record(vanilla: str | Path, ref: DataRef, kind: str | None = None) -> dict[str, Any]:
    """What ``unsee finetune`` recorded of a benchmark's vanilla model (base model, recipe, split), checked
    against the data at ``ref`` (and the benchmark ``kind`` where given): the retrained reference repeats it."""
    meta = read_vanilla_record(vanilla)
    made = meta.get("benchmark")
    if made not in RECIPES:
        raise ModelError(f"{vanilla} was not fine-tuned on a public benchmark by unsee finetune")
    if kind is not None and made != kind:
        raise DataError(f"{vanilla} was fine-tuned on {NAMES[made]}, not on {NAMES[kind]}")
    split = meta.get("split", "")
    if data_fingerprint(ref.path, [split]) != meta.get("split_fingerprint"):
        raise DataError(f"{vanilla} was fine-tuned on other {split} files than those in {ref.source}")
    base = Path(str(meta.get("base_model", "")))
    if not base.is_absolute() and not base.exists():  # recorded by an older unsee as given, where it ran
        base = Path(vanilla).resolve().parent / base
    if not base.exists():
        raise ModelError(f"the base model {meta.get('base_model')} that {vanilla} was fine-tuned from is gone; the "
                         "retrained reference starts from it")
    if meta.get("base_fingerprint") not in (None, model_fingerprint(base)):
        raise ModelError(f"{base} is no longer the model {vanilla} was fine-tuned from (its weights changed); the "
                         "retrained reference must start from the same weights")
    return {**meta, "base_model": str(base)}


def cached_benchmark_reference(vanilla: str | Path, data: str | Path | DataRef, forget: str,
                               cache_dir: str | Path | None = None, revision: str | None = None,
                               seed: int | None = None) -> Path | None:
    """The retrained reference of a benchmark's vanilla model for ``forget``, where ``unsee retrain`` has left it
    in the cache (with ``seed``, the draw ``unsee retrain --seed`` made); None otherwise (a model unsee did not
    fine-tune, other data, nothing cached). Trains nothing."""
    try:
        return _find_draws(_benchmark_sources(vanilla, data, forget, revision), [seed], cache_dir)[seed]
    except (ModelError, DataError):  # not unsee's fine-tune, other data, no such split or none of its photos
        return None


def cached_benchmark_draws(vanilla: str | Path, data: str | Path | DataRef, forget: str, n: int,
                           cache_dir: str | Path | None = None,
                           revision: str | None = None) -> dict[int | None, Path | None]:
    """The first ``n`` draws of a benchmark's retrained reference (:func:`unsee.stage_keys.draw_seeds`), each as
    the cache holds it or None. Asked for by name, so other data or no such split is an error here."""
    src = _benchmark_sources(vanilla, data, forget, revision)
    return _find_draws(src, draw_seeds(src.recipe.seed, n), cache_dir)


@dataclass
class _BenchSources:
    """What every draw's lookup reads, read once: the data, the vanilla model's record and recipe, the split."""

    ref: DataRef
    meta: dict[str, Any]
    recipe: BenchFinetuneConfig
    split: str


def _benchmark_sources(vanilla: str | Path, data: str | Path | DataRef, forget: str,
                       revision: str | None) -> _BenchSources:
    ref = resolve(data, revision)
    meta = vanilla_record(vanilla, ref)
    kind = meta["benchmark"]
    return _BenchSources(ref, meta, load_recipe(kind, recipe_of(meta)), split_name(kind, forget))


def _find_draws(src: _BenchSources, seeds: Sequence[int | None],
                cache_dir: str | Path | None) -> dict[int | None, Path | None]:
    """Each seed's reference in the cache, or None. A stage's key holds the thread count it trained at: one
    trained at another (one thread a process under `accelerate launch`) is the same recipe's reference, and is
    found too, as the built-in world's is."""
    kind, found = src.meta["benchmark"], {}
    for seed in seeds:
        cfg = src.recipe if seed is None else replace(src.recipe, seed=seed)
        pairs = training_pairs(src.ref, kind, cfg, src.split)
        entries = cache_entries(Path(src.meta["base_model"]), pairs, kind, cfg, src.split, cache_dir,
                                threads=thread_counts())
        found[seed] = next((entry for entry in entries if stage_done(entry)), None)
    return found
