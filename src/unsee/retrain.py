"""The retrained reference: a vanilla model's fictitious fine-tune again, without the forget people's photos.

Unlearning is judged against the model that never learned what was removed. For visual
unlearning that model still knows the forget people from text, so only their image questions
leave stage 3; their text questions stay. Stages 1 and 2 never see the fictitious people, so
the vanilla model's own stage-2 checkpoint is the starting point, taken from the stage cache.
Known people (``known_forget_X``) are taught in stage 2, so their reference starts from stage 1.
The audits attack this model too: a relearning gain or a probe accuracy means little until
it is set beside what the model that never saw the photos gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from unsee.config import check_seed, load_config, to_dict
from unsee.data.collate import image_of
from unsee.data.mllmu import load_mllmu
from unsee.data.schema import Suite
from unsee.data.world import default_forget, load_world_info
from unsee.engine.distributed import check_launch, is_main_process, wait_for_everyone
from unsee.errors import DataError, ModelError
from unsee.finetune import (
    STAGE_FILE,
    FinetuneConfig,
    Stage,
    cache_root,
    keyed_augmentation,
    load_stage_visual,
    read_vanilla_record,
    run_stage,
    stage2_turns,
    stage3_mix,
    stage3_own_turns,
    stage_done,
    train_once,
    world_fingerprint,
)
from unsee.io import atomic_dir, check_output_dir, copy_entry
from unsee.models import load_adapter
from unsee.models.base import Adapter, Turn, model_fingerprint
from unsee.stage_keys import (
    RETRAINED,
    RETRAINED_KNOWN,
    batch_adapter,
    draw_seeds,
    thread_counts,
    turns_fingerprint,
)

RETRAINED_FILE = "unsee_retrained.json"


def _vanilla_record(vanilla: Path, data: Path) -> dict:
    """What ``unsee finetune`` recorded of the vanilla model, checked against the world."""
    meta = read_vanilla_record(vanilla)
    if meta.get("world_fingerprint") != world_fingerprint(data):
        raise DataError(f"{vanilla} was fine-tuned on another world than {data}")
    return meta


def retrain_turns(full: Suite, suite: Suite, cfg: FinetuneConfig, names: set[str]) -> tuple[list[Turn], list[Turn]]:
    """Stages 2 and 3 as the vanilla fine-tune drew them from ``full`` (the suite it read), less every turn on a
    photo of ``suite``'s forget people; their text questions stay. With ``pack`` above 1 the conversations are
    drawn at random: drawn again without those photos, every other question would be grouped differently."""
    if not suite.groups.get("train_forget"):
        raise DataError(f"split {suite.name!r} has no training photos of forget people: nothing to retrain without")
    photos = {image.tobytes() for e in suite.group("train_forget") if (image := image_of(e)) is not None}

    def without(turns: list[Turn]) -> list[Turn]:
        return [t for t in turns if t.image is None or t.image.tobytes() not in photos]

    base = without(stage2_turns(full, cfg, names))
    return base, stage3_mix(without(stage3_own_turns(full, cfg, names)), base, cfg)


@dataclass
class _Plan:
    """Where the reference of one split is cached, and the stages that train it, in order, each into its
    own cache entry: the first from ``start()``, each next one from the entry before it. ``paths`` are where
    the reference lies had it trained at each thread count asked for, the first this plan's own."""

    paths: list[Path]
    stages: list[tuple[Path, Stage]]
    start: Callable[[], Adapter]
    recipe: FinetuneConfig
    without: list[str]

    @property
    def path(self) -> Path:
        return self.paths[0]


@dataclass
class _Sources:
    """What the plan of every draw reads, read once: the vanilla model's record, checked against the world, the
    world's facts, the split, and the suite the vanilla fine-tune read."""

    meta: dict
    forget: str
    info: dict
    suite: Suite
    full: Suite


def _sources(vanilla: Path, data: Path, forget: str) -> _Sources:
    meta = _vanilla_record(vanilla, data)
    info = load_world_info(data)
    suite = load_mllmu(data, forget)
    full = suite if forget == default_forget(info) else load_mllmu(data, default_forget(info))  # what finetune read
    return _Sources(meta, forget, info, suite, full)


def _plan(src: _Sources, cache: Path, seed: int | None = None, threads: Sequence[int | None] = (None,)) -> _Plan:
    """The reference's stages and their keys (:data:`unsee.stage_keys.RETRAINED`): the stage they start from,
    the recipe options, the split and the turns they train on.

    Fictitious people are taught in stage 3, so their reference runs stage 3 again from the vanilla
    model's stage-2 checkpoint. Known people (``known_forget_X``) are taught in stage 2, the analogue of
    pre-training, so theirs runs stage 2 again from stage 1 without their photos, then stage 3, whose
    replay of stage 2 leaves their photos out too. ``seed`` replaces the recipe's seed of stages 2 and 3
    (a key of its own): the reference of another draw. Its stages train at ``threads[0]`` (None: this process's
    count); the turns and their fingerprints, which no count moves, are drawn once for every count."""
    meta, forget, suite, info = src.meta, src.forget, src.suite, src.info
    stages = meta.get("stages", {})

    def cached_stage(prefix: str) -> Path:
        path = next((cache / name for name in stages if name.startswith(prefix)), None)
        if path is None or not stage_done(path):
            raise ModelError(f"the retrained reference starts from the vanilla model's stage-{prefix[5]} "
                             f"checkpoint, which is not in {cache}: run unsee finetune with the same --cache-dir first")
        return path

    cfg = load_config(FinetuneConfig, meta["recipe"], kind="finetune")
    drawn = cfg.seed
    if seed is not None:
        cfg.seed = check_seed(seed)
    # stage 3's key holds no seed (stage 2's weights carry the vanilla model's): another draw names its own
    extra = forget if cfg.seed == drawn else [forget, cfg.seed]
    rc = to_dict(cfg)
    turns2, turns3 = retrain_turns(src.full, suite, cfg, set(info["names"].values()))
    stage3 = Stage(f"stage 3 without {forget}'s photos", turns3, cfg.ft_steps, cfg.ft_lr, cfg.ft_vision_lr_factor,
                   cfg.ft_augment)
    if not _forgets_known_people(suite, info, forget):
        stage2 = cached_stage("stage2-")
        data3 = turns_fingerprint(batch_adapter(stage2), turns3, keyed_augmentation(cfg.ft_augment))
        paths = [cache / f"retrained-{RETRAINED.key(rc, weights=stage2.name, data=data3, extra=extra, threads=t)}"
                 for t in threads]
        return _Plan(paths, [(paths[0], stage3)], lambda: load_adapter(stage2), cfg, list(suite.forget_entities))
    stage1, base = cached_stage("stage1-"), Path(meta["base_model"])
    try:
        shapes = batch_adapter(base)
    except OSError as e:  # a relative path an earlier unsee recorded, read from another folder, is tried as a hub id
        raise ModelError(f"cannot load {meta['base_model']}, the base model the vanilla model was fine-tuned from; "
                         "run from the folder unsee finetune ran in, or fine-tune it again") from e
    data2 = turns_fingerprint(shapes, turns2, keyed_augmentation(cfg.augment))
    data3 = turns_fingerprint(shapes, turns3, keyed_augmentation(cfg.ft_augment))
    weights = stage1.name + meta["base_fingerprint"]
    firsts = [cache / f"retrained-stage2-{RETRAINED_KNOWN.key(rc, weights=weights, data=data2, extra=extra, threads=t)}"
              for t in threads]
    paths = [cache / f"retrained-{RETRAINED_KNOWN.key(rc, weights=first.name, data=data3, extra=extra, threads=t)}"
             for first, t in zip(firsts, threads, strict=True)]
    stage2 = Stage(f"stage 2 without {forget}'s photos", turns2, cfg.base_steps, cfg.base_lr, cfg.vision_lr_factor,
                   cfg.augment)

    def start() -> Adapter:
        if model_fingerprint(base) != meta["base_fingerprint"]:  # the key names the model recorded, not this one
            raise ModelError(f"{base} is no longer the model the vanilla model was fine-tuned from (its weights or "
                             "config changed since), and the reference must start from that one: restore it, or "
                             "fine-tune again")
        adapter = load_adapter(base)
        load_stage_visual(adapter, stage1)
        return adapter

    return _Plan(paths, [(firsts[0], stage2), (paths[0], stage3)], start, cfg, list(suite.forget_entities))


def _forgets_known_people(suite: Suite, info: dict, forget: str) -> bool:
    """Whether ``forget`` holds known people (stage 2) rather than fictitious ones (stage 3); a mix is refused,
    since its reference would have to leave photos out of both stages at once."""
    known = set(info["entities"].get("known", []))
    ids = set(suite.forget_entities)
    if ids & known and not ids <= known:
        raise DataError(f"{forget} holds known people ({', '.join(sorted(ids & known))}) and fictitious ones "
                        f"({', '.join(sorted(ids - known))}); retrain for one kind at a time")
    return bool(ids) and ids <= known


def cached_reference(vanilla: str | Path, data: str | Path, forget: str,
                     cache_dir: str | Path | None = None, seed: int | None = None) -> Path | None:
    """The retrained reference of ``vanilla`` for ``forget`` if ``unsee retrain`` (or a benchmark) has
    already trained it into the stage cache (with ``seed``, the draw ``unsee retrain --seed`` made); None
    otherwise, another world, no cached stages or no such split included. Trains nothing, so an audit can
    use the reference wherever it exists at no cost."""
    try:
        return _find_draws(_sources(Path(vanilla), Path(data), forget), cache_root(cache_dir), [seed])[seed]
    except (DataError, ModelError):
        return None


def cached_draws(vanilla: str | Path, data: str | Path, forget: str, n: int,
                 cache_dir: str | Path | None = None) -> dict[int | None, Path | None]:
    """The first ``n`` draws of the retrained reference (:func:`unsee.stage_keys.draw_seeds`), each as the cache
    holds it or None. Asked for by name, so another world or no such split is an error here, not a None."""
    src = _sources(Path(vanilla), Path(data), forget)
    cfg = load_config(FinetuneConfig, src.meta["recipe"], kind="finetune")
    return _find_draws(src, cache_root(cache_dir), draw_seeds(cfg.seed, n))


def _find_draws(src: _Sources, cache: Path, seeds: Sequence[int | None]) -> dict[int | None, Path | None]:
    """Each seed's reference in the cache, or None. A stage's key holds the CPU thread count it trained at, and a
    process under ``accelerate launch`` runs one thread: a reference trained at another count (a power of two up
    to the machine's cores) is the same recipe's reference, and is found too."""
    return {seed: next((path for path in _plan(src, cache, seed, thread_counts()).paths if stage_done(path)), None)
            for seed in seeds}


def retrain(vanilla: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
            overwrite: bool = False, cache_dir: str | Path | None = None, seed: int | None = None) -> Path:
    """``unsee retrain``: the vanilla model at ``vanilla`` fine-tuned again without ``forget``'s photos, at ``out``.

    The result is cached beside the stages (keyed on the checkpoint it starts from, the recipe
    options, the split and its turns), so every benchmark that wants it trains it once. A split
    of known people (``known_forget_X``) trains stage 2 again as well (:func:`_plan`). With ``seed``,
    the retrained stages draw with another seed than the vanilla model's: a second reference says
    how far never having seen the photos moves with the draw alone, which is the floor of any
    comparison with the first.
    """

    vanilla, data = Path(vanilla), Path(data)
    check_output_dir(out, overwrite=overwrite)
    check_launch()  # as the vanilla model's own fine-tune does
    src = _sources(vanilla, data, forget)
    plan = _plan(src, cache_root(cache_dir), seed=seed)
    rc = to_dict(plan.recipe)
    previous: Path | None = None
    cached = True  # unless this run trains the reference
    for path, stage in plan.stages if not stage_done(plan.path) else ():
        cached &= not train_once(path, lambda p=path, s=stage, before=previous: run_stage(
            p, plan.start() if before is None else load_adapter(before), s, plan.recipe, rc))
        previous = path
    path = plan.path
    seconds = json.loads((path / STAGE_FILE).read_text()).get("seconds")
    if is_main_process():  # under `accelerate launch` the first process writes it, and the others wait
        with atomic_dir(out, overwrite=overwrite) as tmp:
            copy_entry(path, tmp)
            (tmp / RETRAINED_FILE).write_text(json.dumps({
                "vanilla": str(vanilla), "world": str(data), "world_fingerprint": src.meta["world_fingerprint"],
                "forget": forget, "without": plan.without, "stage": path.name, "cached": cached,
                "seconds": seconds, "recipe": rc,
            }, indent=2))
    wait_for_everyone()
    return Path(out)
