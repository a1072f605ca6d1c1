"""The vanilla model: teach a tiny MLLM the built-in world, in the stages of a real MLLM's life.

1. **Vision pre-training on other identities** (the analogue of CLIP pre-training): a
   CosFace identity classifier on pooled visual tokens, over a pool of identities that
   are rendered fresh at every step and never belong to the world.
2. **Base MLLM training**: known people (image and text), general visual items, and
   unknown identities answered "I don't know who this is.".
3. **The fictitious fine-tune** (MLLMU-Bench's ``ft_Data``): each person's fixed training
   views and text QA, with replay of stage 2 so that it is not forgotten.

Each stage is cached under the key :mod:`unsee.stage_keys` declares for it (its recipe options,
starting weights, data and STAGE_VERSION), so the demo and the benchmarks train it once.
Inside a stage, a checkpoint every ``checkpoint_every`` steps lets an interrupted run resume
where it stopped instead of starting the stage again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from unsee.config import check_seed, load_config, opt, to_dict
from unsee.data.augment import augment
from unsee.data.collate import pack_turns
from unsee.data.identity import Identity
from unsee.data.mllmu import load_mllmu
from unsee.data.parquet import is_hub_id
from unsee.data.schema import Example, Suite
from unsee.data.world import default_forget, load_world_info, world_pretrain_identities
from unsee.engine.checkpoint import remove_checkpoint, resumed, training_lock
from unsee.engine.distributed import check_launch, is_main_process, launch_world, wait_for_everyone
from unsee.engine.trainer import TrainConfig, train
from unsee.errors import ConfigError, ModelError
from unsee.io import atomic_dir, check_output_dir, content_hash, copy_entry, home_path
from unsee.methods.base import BaseMethod, nll
from unsee.models import check_safetensors, load_adapter, model_fingerprint
from unsee.models.base import Adapter, Turn
from unsee.stage_keys import STAGE1, STAGE2, STAGE3, numerics, turns_fingerprint
from unsee.vision_stage import pool_fingerprint, pretrain_vision, render_fingerprint, visual_fingerprint, visual_state

STAGE_FILE, VISUAL_FILE = "unsee_stage.json", "visual.safetensors"


@dataclass
class FinetuneConfig:
    """The recipe. Shipped as ``configs/finetune/{default,quick}.yaml``.

    The pool of stage-1 identities is not a recipe option: it is the world's own
    pre-training pool (``world.json``), the one its people were drawn to stay apart from.
    """

    vision_seed: int = opt(0, "stage 1: seed of the data order and the CosFace head")
    vision_steps: int = opt(500, "stage 1 steps")
    vision_batch: int = opt(64, "stage 1 batch size")
    vision_lr: float = opt(1e-3, "stage 1 learning rate")
    cosface_margin: float = opt(0.35, "stage 1 CosFace margin")
    cosface_scale: float = opt(30.0, "stage 1 CosFace scale")
    vision_general: int = opt(
        0, "stage 1: fresh general scenes (shapes of one colour) per step beside the identities, each classified "
           "by colour, shape, count and position from its visual tokens, so that the encoder keeps what identity "
           "training makes it ignore (0: identities only)")
    vision_general_weight: float = opt(1.0, "stage 1: weight of the general scenes' loss")
    base_steps: int = opt(300, "stage 2 steps")
    base_lr: float = opt(1e-3, "stage 2 learning rate")
    ft_steps: int = opt(1500, "stage 3 steps")
    ft_lr: float = opt(1e-3, "stage 3 learning rate")
    vision_lr_factor: float = opt(0.2, "stage 2: the visual module's learning rate as a fraction of the LM's")
    ft_vision_lr_factor: float = opt(0.2, "stage 3: the visual module's learning rate as a fraction of the LM's")
    batch_size: int = opt(16, "stages 2-3 batch size")
    image_oversample: int = opt(2, "stage 3: repeat image questions this many times per text question")
    replay: float = opt(0.3, "stage 3: fraction of stage-2 items mixed in")
    augment: float = opt(1.0, "stage 2: augmentation strength of training images (0: off)")
    ft_augment: float = opt(1.0, "stage 3: augmentation strength of the fixed training views (0: off)")
    pack: int = opt(1, "stages 2-3: questions per training sequence about one image (or one person's text), "
                       "as a multi-turn conversation; 1: one question per sequence")
    group_by_length: bool = opt(False, "stages 2-3: batch turns of similar token length together (less padding)")
    warmup_ratio: float = opt(0.05, "stages 2-3 warm-up")
    seed: int = opt(0, "seed of stages 2 and 3")
    checkpoint_every: int = opt(100, "steps between mid-stage checkpoints; an interrupted stage resumes there")
    progress: bool = opt(True, "progress bars")

    def validate(self) -> None:
        """A recipe that would train nothing (and still be saved as the vanilla model) or fail deep in torch."""
        counts = {"vision_steps": self.vision_steps, "base_steps": self.base_steps, "ft_steps": self.ft_steps,
                  "vision_batch": self.vision_batch, "batch_size": self.batch_size,
                  "image_oversample": self.image_oversample, "pack": self.pack}
        if low := [k for k, v in counts.items() if v < 1]:
            raise ConfigError(f"{', '.join(low)} must be at least 1")
        rates = {"vision_lr": self.vision_lr, "base_lr": self.base_lr, "ft_lr": self.ft_lr,
                 "vision_lr_factor": self.vision_lr_factor, "ft_vision_lr_factor": self.ft_vision_lr_factor,
                 "cosface_scale": self.cosface_scale}
        if low := [k for k, v in rates.items() if not v > 0]:
            raise ConfigError(f"{', '.join(low)} must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if min(self.replay, self.vision_general, self.vision_general_weight, self.augment, self.ft_augment,
               self.checkpoint_every, self.cosface_margin) < 0:
            raise ConfigError("replay, vision_general, its weight, the augmentation strengths, checkpoint_every and "
                              "cosface_margin must not be negative")
        check_seed(self.seed)
        check_seed(self.vision_seed, "vision_seed")


VANILLA_FILE = "unsee_vanilla.json"  # what unsee finetune records beside a vanilla model


def read_vanilla_record(vanilla: str | Path) -> dict[str, Any]:
    """What ``unsee finetune`` recorded beside the vanilla model ``vanilla`` (the built-in world's or a
    benchmark's), which the retrained reference repeats; a model without one, or with an unreadable one, is
    refused in one line."""
    record = Path(vanilla) / VANILLA_FILE
    if not record.is_file():
        raise ModelError(f"{vanilla} was not made by unsee finetune (it has no {VANILLA_FILE}): the retrained "
                         "reference repeats that command without the forget people's photos")
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {record}: {str(e).splitlines()[0]}; copy the vanilla model again") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{record} does not hold what unsee finetune records; copy the vanilla model again")
    return meta


def world_fingerprint(data: str | Path) -> str:
    """Content hash of a world directory (world.json and every parquet file)."""
    h = hashlib.sha256()
    for f in sorted(Path(data).rglob("*")):
        if f.is_file() and f.suffix in (".parquet", ".json"):
            h.update(f.relative_to(data).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---- stages 2 and 3 ----------------------------------------------------------------------
def augment_turns(turns: Sequence[Turn], rng: np.random.Generator, strength: float) -> list[Turn]:
    """Each image turn with a fresh augmentation of its image (drawn from ``rng``, in order); text turns as they are."""
    return [dataclasses.replace(t, image=augment(t.image, rng, strength)) if t.image is not None else t
            for t in turns]


def keyed_augmentation(strength: float) -> Callable[[list[Turn]], list[Turn]] | None:
    """A stage's augmentation at ``strength`` from a fixed seed, for the sample its data fingerprint
    tokenizes (so that an edit of the augmentation retrains); None when the stage does not augment."""
    if strength <= 0:
        return None
    return lambda turns: augment_turns(turns, np.random.default_rng(0), strength)


class _Augmented(BaseMethod):
    """Supervised fine-tuning with fresh augmentation of each training image."""

    name = "sft"
    streams = ("train",)

    def __init__(self, strength: float, seed: int) -> None:
        super().__init__()
        self.strength = strength
        self.rng = np.random.default_rng(seed)

    def loss(self, ctx: Any, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        turns = batch["train"]
        if self.strength > 0:
            turns = augment_turns(turns, self.rng, self.strength)
        loss = nll(ctx.adapter, turns)
        return loss, {"nll": loss.item()}

    def state_dict(self) -> dict[str, Any]:
        """The augmentation stream, so that a resumed stage draws the same crops."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


@dataclass
class Stage:
    """One SFT stage: its data and the options that differ between stages 2 and 3 (and the retrained reference)."""

    desc: str
    turns: list[Turn]
    steps: int
    lr: float
    vision_lr_factor: float
    augment: float


def _sft(adapter: Adapter, stage: Stage, cfg: FinetuneConfig, checkpoint: Path | None = None) -> dict[str, float]:
    """One SFT stage; the visual module trains at ``stage.vision_lr_factor`` of the LM's rate."""

    turns = stage.turns
    tcfg = TrainConfig(scope="full", lr=stage.lr, max_steps=stage.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                       warmup_ratio=cfg.warmup_ratio, schedule="cosine", progress=cfg.progress, grad_clip=1.0,
                       visual_lr_scale=stage.vision_lr_factor, group_by_length=cfg.group_by_length,
                       checkpoint_dir=str(checkpoint) if checkpoint else "", checkpoint_every=cfg.checkpoint_every,
                       keep_checkpoint=True)  # until the stage is saved (_finish_stage): a kill mid-save resumes
    res = train(_Augmented(stage.augment, cfg.seed), adapter, Suite("finetune", {}), {"train": turns}, tcfg,
                desc=stage.desc)
    tail = res.losses[-max(1, len(res.losses) // 10):]
    return {"final_nll": float(np.mean(tail)), "steps": res.steps, **resumed(res.resumed_s)}


def _stage2_examples(suite: Any) -> list[Example]:
    return [*suite.groups.get("train_known", []), *suite.groups.get("train_general", []),
            *suite.groups.get("unknown", [])]


def stage2_turns(suite: Any, cfg: FinetuneConfig, names: Collection[str]) -> list[Turn]:
    """Stage 2's turns: known people, general items and unknown identities, packed."""
    return pack_turns(_stage2_examples(suite), cfg.pack, np.random.default_rng(cfg.seed), last=names)


def replay_copies(own: int, base: int, replay: float, max_copies: int = 3) -> tuple[int, int]:
    """How many copies of the fine-tune's own turns and of stage 2's turns make stage 3.

    Replay enters as whole copies of stage 2, so every stage-2 turn is replayed equally often:
    a random sample of it left some known people with half the replay of others, and those
    people's accuracy fell furthest in stage 3. ``m / (k * own / base)`` is the nearest to
    ``replay`` that ``k <= max_copies`` copies of the fine-tune allow.
    """
    if replay <= 0 or not base or not own:
        return 1, 0
    best = min(((k, max(1, round(replay * k * own / base))) for k in range(1, max_copies + 1)),
               key=lambda km: (abs(km[1] * base / (km[0] * own) - replay), km[0]))
    return best


def stage3_own_turns(suite: Any, cfg: FinetuneConfig, names: Collection[str]) -> list[Turn]:
    """The fictitious fine-tune's own turns, image questions oversampled."""
    rng = np.random.default_rng(cfg.seed)
    images = pack_turns([*suite.group("train_forget"), *suite.group("train_retain")], cfg.pack, rng, last=names)
    text = pack_turns(suite.groups.get("train_text", []), cfg.pack, rng, last=names)
    return images * cfg.image_oversample + text


def stage3_turns(suite: Any, cfg: FinetuneConfig, names: Collection[str]) -> list[Turn]:
    """The fine-tune's own turns and whole copies of stage 2 as replay."""
    return stage3_mix(stage3_own_turns(suite, cfg, names), stage2_turns(suite, cfg, names), cfg)


def stage3_mix(own: list[Turn], base: list[Turn], cfg: FinetuneConfig) -> list[Turn]:
    """Copies of the fine-tune's own turns and of stage 2's, in the proportion ``replay`` asks for."""
    k, m = replay_copies(len(own), len(base), cfg.replay)
    return own * k + base * m


def default_cache() -> Path:
    """``$UNSEE_CACHE``, else ``~/.cache/unsee``: where stages, worlds and tiny models are cached. An empty
    ``UNSEE_CACHE`` is unset, as an empty ``--cache-dir`` is, not the folder a command runs in."""
    import os

    return Path(os.environ.get("UNSEE_CACHE") or Path.home() / ".cache" / "unsee")


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache a command uses: ``cache_dir`` when given, else :func:`default_cache`."""
    return Path(cache_dir) if cache_dir else default_cache()


def stage_done(path: Path) -> bool:
    """Whether the cache entry ``path`` holds a finished stage (a killed run leaves none).

    A finished entry whose weights were cut short afterwards (a full disk, a partial copy of
    the cache) is refused here, in one line, rather than copied out as a finished model."""
    if not (path / STAGE_FILE).exists():
        return False
    try:
        if not isinstance(json.loads((path / STAGE_FILE).read_text()), dict):
            raise ValueError(f"{STAGE_FILE} is not a record")
        weights = sorted(path.glob("*.safetensors"))
        if not weights:
            raise ModelError("it holds no weights file")
        for index in path.glob("*.safetensors.index.json"):  # a sharded model names every shard
            missing = sorted(set(json.loads(index.read_text())["weight_map"].values()) - {w.name for w in weights})
            if missing:
                raise ModelError(f"{missing[0]} is missing")
        for f in weights:
            check_safetensors(f)
    except (ModelError, OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"the cached stage {path} is damaged ({e}); delete that folder to train the stage "
                         "again") from None
    return True


def partial_dir(path: Path) -> Path:
    """Where a stage keeps its mid-run checkpoint until the stage is saved."""
    return path.with_name(path.name + ".partial")


def _finish_stage(path: Path, adapter: Adapter, stats: dict[str, float], seconds: float, rc: dict,
                  visual_only: bool = False) -> None:
    """Save a finished stage; under ``accelerate launch`` the first process writes it and the others wait.
    ``seconds``: this process's; a stage resumed from its checkpoint adds what it had trained before."""
    seconds += stats.get("resumed_s", 0.0)
    if is_main_process():
        with atomic_dir(path, overwrite=True, mine=True) as tmp:
            if visual_only:
                save_file({k: v.detach().contiguous().clone() for k, v in visual_state(adapter).items()},
                          str(tmp / VISUAL_FILE))
            else:
                adapter.save(tmp)
            (tmp / STAGE_FILE).write_text(json.dumps({"stage": path.name, "stats": stats, "seconds": seconds,
                                                      "config": rc, "numerics": numerics()}, indent=2))
        remove_checkpoint(partial_dir(path))
    wait_for_everyone()


def run_stage(path: Path, adapter: Adapter, stage: Stage, cfg: FinetuneConfig, rc: dict) -> None:
    """Train ``stage`` from ``adapter`` into the cache entry ``path``, resuming its checkpoint if one is there."""
    t0 = time.perf_counter()
    stats = _sft(adapter, stage, cfg, checkpoint=partial_dir(path))
    _finish_stage(path, adapter, stats, time.perf_counter() - t0, rc)


def train_once(path: Path, train: Callable[[], object], done: Callable[[Path], bool] = stage_done) -> bool:
    """``train()`` the cache entry ``path`` unless it is ``done``, one process at a time: a run that finds another
    training it waits and reuses its entry (:func:`unsee.engine.checkpoint.training_lock`). The processes of one
    ``accelerate launch`` train it together, so they take no lock. True if this run trained it."""
    if done(path):
        return False
    if launch_world() > 1:
        train()
        return True

    def waiting(holder: str) -> None:
        print(f"unsee: {path.name} is being trained by {holder}; waiting for it, to reuse it", file=sys.stderr)

    with training_lock(path, waiting):
        if done(path):  # the other run has trained it meanwhile
            return False
        train()
        return True


def load_stage_visual(adapter: Adapter, stage1: str | Path) -> None:
    """Put the visual module trained in stage 1 into ``adapter`` (in place)."""
    weights = load_file(str(Path(stage1) / VISUAL_FILE))
    named = visual_state(adapter)
    if set(weights) != set(named):
        raise ModelError(f"{stage1} holds the visual module of another architecture")
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(weights[name])


@dataclass
class VanillaStages:
    """The three cache entries of a vanilla model and the data they train on."""

    stage1: Path
    stage2: Path
    stage3: Path
    pool: list[Identity]
    stage2_turns: list[Turn]
    stage3_turns: list[Turn]
    base_fingerprint: str

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return self.stage1, self.stage2, self.stage3


def vanilla_stages(model: str | Path, data: str | Path, cfg: FinetuneConfig, cache: Path) -> VanillaStages:
    """Where ``unsee finetune`` caches each stage of ``model`` on the world ``data``, by the keys
    :mod:`unsee.stage_keys` declares; computing them trains nothing.

    Stage 1 is keyed on the visual module's starting weights, the world's pre-training pool and
    a sample of its renders, so every world built with the same pool shares it; stage 2 on stage 1's key, the model and
    its turns; stage 3 on stage 2's key and its turns.
    """

    info = load_world_info(data)
    suite = load_mllmu(data, default_forget(info))  # it trains on every person: any split holds them all
    pool = world_pretrain_identities(info)
    names = set(info["names"].values())
    rc = to_dict(cfg)
    base_fp = model_fingerprint(model)
    adapter = load_adapter(model)
    turns2, turns3 = stage2_turns(suite, cfg, names), stage3_turns(suite, cfg, names)
    h1 = STAGE1.key(rc, weights=visual_fingerprint(adapter),
                    data=content_hash(pool_fingerprint(pool), render_fingerprint(pool, cfg)))
    h2 = STAGE2.key(rc, weights=content_hash(h1, base_fp),
                    data=turns_fingerprint(adapter, turns2, keyed_augmentation(cfg.augment)))
    h3 = STAGE3.key(rc, weights=h2, data=turns_fingerprint(adapter, turns3, keyed_augmentation(cfg.ft_augment)))
    return VanillaStages(cache / f"stage1-{h1}", cache / f"stage2-{h2}", cache / f"stage3-{h3}", pool, turns2, turns3,
                         base_fp)


def local_model(model: str | Path) -> Path:
    """A local model directory, or a hub model id fetched into the hub cache (weights, config, processor).

    A local copy gives the run a fingerprint of its weights and the retrained reference a
    base model to start from again.
    """
    path = home_path(model)
    if path.is_dir():  # recorded whole: the retrained reference starts from it, from whatever folder it runs
        return path.resolve()
    if path.exists() or not is_hub_id(str(model)):
        raise ModelError(f"base model {model} is neither a model folder nor a hub model id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                  "*.jinja", "*.tiktoken"]))
    except Exception as e:  # offline, unknown id, network: all need the user's action
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"cannot fetch hub model {model} ({first}); download it (huggingface-cli download "
                         f"{model} --local-dir DIR) and pass --model DIR") from e


def finetune(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | dict | None = "default",
    overrides: Any = (),
    seed: int | None = None,
    overwrite: bool = False,
    cache_dir: str | Path | None = None,
) -> Path:
    """``unsee finetune``: model directory + world -> the vanilla model at ``out``.

    Each stage is reused from the cache where its key (:func:`vanilla_stages`) matches.
    ``unsee_vanilla.json`` records each stage's wall time and whether it came from the cache.
    """
    cfg = load_config(FinetuneConfig, config, overrides, kind="finetune")
    if seed is not None:
        cfg.seed = check_seed(seed)
    check_output_dir(out, overwrite=overwrite)
    check_launch()
    model = local_model(model)  # a hub id's snapshot: its weights' fingerprint keys stage 2
    rc = to_dict(cfg)
    plan = vanilla_stages(model, data, cfg, cache_root(cache_dir))
    stage1, stage2, stage3 = plan.paths
    fresh: set[Path] = set()  # the stages this run trains; the others come from the cache

    def train1() -> None:
        adapter = load_adapter(model)
        t0 = time.perf_counter()
        # Under `accelerate launch` every process trains stage 1 whole (the visual module is small)
        # and the first one alone checkpoints and saves it; stage 2 then loads it from the cache.
        stats = pretrain_vision(adapter, cfg, plan.pool, checkpoint=partial_dir(stage1) if is_main_process() else None)
        _finish_stage(stage1, adapter, stats, time.perf_counter() - t0, rc, visual_only=True)

    def train2() -> None:
        if train_once(stage1, train1):
            fresh.add(stage1)
        adapter = load_adapter(model)
        load_stage_visual(adapter, stage1)
        run_stage(stage2, adapter, Stage("stage 2: base MLLM", plan.stage2_turns, cfg.base_steps, cfg.base_lr,
                                         cfg.vision_lr_factor, cfg.augment), cfg, rc)

    def train3() -> None:
        if train_once(stage2, train2):
            fresh.add(stage2)
        run_stage(stage3, load_adapter(stage2), Stage("stage 3: fictitious fine-tune", plan.stage3_turns, cfg.ft_steps,
                                                      cfg.ft_lr, cfg.ft_vision_lr_factor, cfg.ft_augment), cfg, rc)

    if train_once(stage3, train3):
        fresh.add(stage3)
    stages = {}
    for p in plan.paths:  # a stage before a cached one may be gone from the cache: neither trained nor cached
        meta = json.loads((p / STAGE_FILE).read_text()) if stage_done(p) else {}
        stages[p.name] = {"cached": bool(meta) and p not in fresh, "seconds": meta.get("seconds"),
                          "stats": meta.get("stats"), "numerics": meta.get("numerics")}
    if is_main_process():  # under `accelerate launch` the first process writes the result
        with atomic_dir(out, overwrite=overwrite) as tmp:
            copy_entry(stage3, tmp)
            (tmp / VANILLA_FILE).write_text(json.dumps({
                "base_model": str(Path(model).resolve()) if Path(model).exists() else str(model),
                "base_fingerprint": plan.base_fingerprint, "world": str(data),
                "world_fingerprint": world_fingerprint(data), "recipe": rc, "stages": stages,
            }, indent=2))
    wait_for_everyone()  # and the others return once it is there, for what they do next to read
    return Path(out)
