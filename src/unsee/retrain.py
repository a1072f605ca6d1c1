"""The retrained reference: a vanilla model's fictitious fine-tune again, without the forget people's photos.

Unlearning is judged against the model that never learned what was removed. For visual
unlearning that model still knows the forget people from text, so only their image questions
leave stage 3; their text questions stay. Stages 1 and 2 never see the fictitious people, so
the vanilla model's own stage-2 checkpoint is the starting point, taken from the stage cache.
The audits attack this model too: a relearning gain or a probe accuracy means little until
it is set beside what the model that never saw the photos gives.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from unsee.config import load_config, to_dict
from unsee.data.mllmu import load_mllmu
from unsee.data.schema import Suite
from unsee.data.world import load_world_info
from unsee.errors import DataError, ModelError
from unsee.finetune import (
    STAGE_FILE,
    FinetuneConfig,
    Stage,
    cache_root,
    keyed_augmentation,
    run_stage,
    stage3_turns,
    stage_done,
    world_fingerprint,
)
from unsee.io import atomic_dir, check_output_dir
from unsee.models import load_adapter
from unsee.models.base import Turn
from unsee.stage_keys import RETRAINED, batch_adapter, turns_fingerprint

RETRAINED_FILE = "unsee_retrained.json"


def _vanilla_record(vanilla: Path, data: Path) -> dict:
    """What ``unsee finetune`` recorded of the vanilla model, checked against the world."""
    record = vanilla / "unsee_vanilla.json"
    if not record.is_file():
        raise ModelError(f"{vanilla} was not made by unsee finetune (it has no unsee_vanilla.json): the retrained "
                         "reference repeats that command's last stage")
    meta = json.loads(record.read_text())
    if meta.get("world_fingerprint") != world_fingerprint(data):
        raise DataError(f"{vanilla} was fine-tuned on another world than {data}")
    return meta


def retrain_turns(suite: Suite, cfg: FinetuneConfig, names: set[str]) -> list[Turn]:
    """Stage 3's turns with the forget people's photos taken out; their text questions stay."""
    if not suite.groups.get("train_forget"):
        raise DataError(f"split {suite.name!r} has no training photos of forget people: nothing to retrain without")
    return stage3_turns(dataclasses.replace(suite, groups={**suite.groups, "train_forget": []}), cfg, names)


def _cache_path(cache: Path, stage2: Path, cfg: FinetuneConfig, forget: str, turns: list[Turn]) -> Path:
    """The reference's cache entry, by the key :data:`unsee.stage_keys.RETRAINED` declares: the stage-2
    checkpoint it starts from, the stage-3 options, the split and the turns it trains on."""
    data = turns_fingerprint(batch_adapter(stage2), turns, keyed_augmentation(cfg.ft_augment))
    return cache / f"retrained-{RETRAINED.key(to_dict(cfg), weights=stage2.name, data=data, extra=forget)}"


def _world_turns(data: Path, forget: str, cfg: FinetuneConfig) -> list[Turn]:

    names = set(load_world_info(data)["names"].values())
    return retrain_turns(load_mllmu(data, forget), cfg, names)


def cached_reference(vanilla: str | Path, data: str | Path, forget: str,
                     cache_dir: str | Path | None = None) -> Path | None:
    """The retrained reference of ``vanilla`` for ``forget`` if ``unsee retrain`` (or a benchmark) has
    already trained it into the stage cache; None otherwise. Trains nothing, so an audit can use
    the reference wherever it exists at no cost."""
    vanilla, data = Path(vanilla), Path(data)
    try:
        meta = _vanilla_record(vanilla, data)
    except (DataError, ModelError):
        return None
    cache = cache_root(cache_dir)
    stage2 = next((cache / name for name in meta.get("stages", {}) if name.startswith("stage2-")), None)
    if stage2 is None or not stage_done(stage2):
        return None
    cfg = load_config(FinetuneConfig, meta["recipe"], kind="finetune")
    try:
        turns = _world_turns(data, forget, cfg)
    except DataError:  # no such split, or one without photos: never trained
        return None
    path = _cache_path(cache, stage2, cfg, forget, turns)
    return path if stage_done(path) else None


def retrain(vanilla: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
            overwrite: bool = False, cache_dir: str | Path | None = None) -> Path:
    """``unsee retrain``: the vanilla model at ``vanilla`` fine-tuned again without ``forget``'s photos, at ``out``.

    The result is cached beside the stages (keyed on the stage-2 checkpoint, the stage-3
    options, the split and its turns), so every benchmark that wants it trains it once.
    """

    vanilla, data = Path(vanilla), Path(data)
    check_output_dir(out, overwrite=overwrite)
    meta = _vanilla_record(vanilla, data)
    cache = cache_root(cache_dir)
    stage2 = next((cache / name for name in meta.get("stages", {}) if name.startswith("stage2-")), None)
    if stage2 is None or not stage_done(stage2):
        raise ModelError(f"the retrained reference starts from {vanilla}'s stage-2 checkpoint, which is not in "
                         f"{cache}: run unsee finetune with the same --cache-dir first")
    cfg = load_config(FinetuneConfig, meta["recipe"], kind="finetune")
    rc = to_dict(cfg)
    suite = load_mllmu(data, forget)
    names = set(load_world_info(data)["names"].values())
    turns = retrain_turns(suite, cfg, names)
    path = _cache_path(cache, stage2, cfg, forget, turns)
    cached = stage_done(path)
    if not cached:
        stage = Stage(f"stage 3 without {forget}'s photos", turns, cfg.ft_steps, cfg.ft_lr, cfg.ft_vision_lr_factor,
                      cfg.ft_augment)
        run_stage(path, load_adapter(stage2), stage, cfg, rc)
    seconds = json.loads((path / STAGE_FILE).read_text()).get("seconds")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for f in path.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / RETRAINED_FILE).write_text(json.dumps({
            "vanilla": str(vanilla), "world": str(data), "world_fingerprint": meta["world_fingerprint"],
            "forget": forget, "without": list(suite.forget_entities), "stage": path.name, "cached": cached,
            "seconds": seconds, "recipe": rc,
        }, indent=2))
    return Path(out)
