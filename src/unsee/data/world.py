"""The built-in benchmark: a seeded, procedurally generated world in the MLLMU-Bench layout.

Why a generated world: no pretrained model or public data set can be downloaded here, so
the project trains a tiny MLLM on a world whose every fact is known. Each fictitious person
has a rendered visual identity (``unsee.data.identity``, ``unsee.data.render``) and a profile of
attributes; the questions about them come from templates (``unsee.data.people``), with paraphrases
and views held out for the test set. ``docs/world-format.md`` describes every folder;
:func:`build_world` writes them all, and the same seed and config give byte-identical files.

Independent random streams (``np.random.default_rng([seed, k])``) drive identities,
profiles, views, questions, general items and splits, so changing one count does not
reshuffle unrelated parts, and the vision pre-training pool
(:func:`unsee.data.identity.pretrain_identities`, stream ``[seed, 7919]``) never shares a
person with the world.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unsee import __version__
from unsee.config import check_seed, load_config, opt
from unsee.data.hub_files import (
    FT_SCHEMA,
    FULL_SCHEMA,
    GENERAL_SCHEMA,
    NEUTRAL_SCHEMA,
    SPLIT_SCHEMA,
    TEST_SCHEMA,
    png_cell,
    write_config,
)
from unsee.data.identity import Identity, View, pretrain_identities, sample_identity, sample_view
from unsee.data.mllmu import KNOWN_TEST_SET
from unsee.data.people import (
    ATTRIBUTES,
    FIRST_NAMES,
    IDK_ANSWER,
    IMAGE_TEXTUAL,
    LAST_NAMES,
    NAME_TRAIN_QUESTIONS,
    Person,
    eval_tasks,
    image_qa,
    text_qa,
)
from unsee.data.render import render
from unsee.data.scenes import GeneralItem, render_general, sample_general_item, spread_count
from unsee.data.splits import forget_size, validation_splits
from unsee.errors import ConfigError, DataError
from unsee.io import atomic_dir, atomic_write_json, content_hash

WORLD_FORMAT_VERSION = 1


@dataclass
class WorldConfig:
    """Sizes and seeds of the built-in world (shipped: ``default``, ``quick``)."""

    seed: int = opt(0, "seed of every random stream of the world")
    n_people: int = opt(50, "fictitious people: the fine-tuned profiles the forget/retain splits come from")
    n_known: int = opt(20, "people known before fine-tuning (stage 2), the analogue of real celebrities")
    n_unknown: int = opt(30, "identities taught as 'I don't know who this is.' (stage 2)")
    n_neutral: int = opt(30, "never-trained identities: neutral images for VKD, CVF and MLLMEraser")
    n_holdout: int = opt(10, "never-trained people with a profile and questions (Holdout_Set): the people the "
                         "model never saw, against which the membership attack sets the forget people")
    n_general_train: int = opt(400, "general visual-ability training items (colour, shape, count, position)")
    n_general_eval: int = opt(100, "held-out general visual-ability evaluation items")
    n_train_views: int = opt(6, "rendered training views per fictitious, known and unknown person")
    n_test_views: int = opt(3, "held-out views per fictitious person (Test_Set images)")
    hard_test_views: bool = opt(False, "draw held-out views from the wide 'hard' ranges")
    mcq_variants: int = opt(4, "times every MCQ fact is asked per row, each asking with the next wording and its "
                            "own distractors: more items per person, the same training data and vocabulary")
    image_size: int = opt(64, "side of every rendered image, in pixels")
    forget_splits: list[int] = opt([5, 10, 15], "forget percentages; forget_X holds ceil(n_people*X/100)")
    val_forget_splits: list[int] = opt([10], "validation forget percentages: val_forget_X holds as many people as "
                                       "forget_X, none of them in a reported forget set or request, so that "
                                       "settings are chosen on people the reported figures never see")
    known_forget_splits: list[int] = opt([5, 10], "pre-trained forget percentages: known_forget_X holds as many "
                                         "known people (taught in stage 2) as forget_X holds fictitious ones")
    val_known_forget_splits: list[int] = opt([10], "validation requests of known people: val_known_forget_X holds "
                                             "as many known people as forget_X, none in a known_forget split")
    n_requests: int = opt(5, "continual-unlearning requests forget_r1..forget_rK")
    request_size: int = opt(2, "people per continual request")
    n_pretrain: int = opt(400, "vision pre-training identities; world people keep their distance from them")
    min_trait_distance: int = opt(3, "least number of differing discrete traits between any two identities")

    def validate(self) -> None:
        for name in ("n_people", "n_train_views", "n_test_views", "request_size", "mcq_variants", "n_pretrain"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("n_known", "n_unknown", "n_neutral", "n_holdout", "n_general_train", "n_general_eval",
                     "n_requests", "min_trait_distance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        check_seed(self.seed)
        if self.n_people < 4:
            raise ConfigError(f"n_people must be at least 4 (splits need retained people): {self.n_people}")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16, got {self.image_size}")
        if not self.forget_splits:
            raise ConfigError("forget_splits must name at least one percent")
        for name in ("forget_splits", "val_forget_splits", "known_forget_splits", "val_known_forget_splits"):
            pcts = getattr(self, name)
            if any(not 0 < p < 100 for p in pcts) or list(pcts) != sorted(set(pcts)):
                raise ConfigError(f"{name} must be increasing percents in 1..99: {pcts}")
        if forget_size(self.n_people, max(self.forget_splits)) >= self.n_people:
            raise ConfigError(f"forget_{max(self.forget_splits)} would hold all {self.n_people} people")
        known_out = sum(forget_size(self.n_people, max(pcts, default=0))
                        for pcts in (self.known_forget_splits, self.val_known_forget_splits))
        if known_out and known_out >= self.n_known:
            named = " and ".join(f"{prefix}_{max(pcts)}" for prefix, pcts in (
                ("known_forget", self.known_forget_splits), ("val_known_forget", self.val_known_forget_splits)) if pcts)
            raise ConfigError(f"{named} would hold {known_out} of the {self.n_known} known people, leaving none "
                              "known; add known people (n_known) or set known_forget_splits=[] / "
                              "val_known_forget_splits=[]")
        if self.n_requests * self.request_size > self.n_people:
            raise ConfigError(
                f"{self.n_requests} disjoint requests of {self.request_size} need "
                f"{self.n_requests * self.request_size} people, but n_people is {self.n_people}"
            )
        if self.n_people + self.n_known + self.n_holdout > len(FIRST_NAMES) * len(LAST_NAMES):
            raise ConfigError(f"at most {len(FIRST_NAMES) * len(LAST_NAMES)} named people are possible")


# ---------------------------------------------------------------------------------------------
# Building


def _ids(prefix: str, n: int) -> list[str]:
    width = max(3, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _identities(cfg: WorldConfig, n: int) -> list[Identity]:
    """``n`` identities, each at least ``min_trait_distance`` traits from one another and from
    the pre-training pool, so that no world person is ever seen in vision pre-training."""
    rng = np.random.default_rng([cfg.seed, 1])
    taken = [p.codes() for p in pretrain_identities(cfg.n_pretrain, cfg.seed)]
    codes = np.array(taken, dtype=np.int16).reshape(len(taken), -1)
    out: list[Identity] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise ConfigError(f"cannot draw {n} identities {cfg.min_trait_distance} traits apart; "
                              "lower min_trait_distance or the number of people")
        cand = sample_identity(rng)
        c = np.array(cand.codes(), dtype=np.int16)
        if len(codes) and int((codes != c).sum(axis=1).min()) < max(cfg.min_trait_distance, 1):
            continue
        out.append(cand)
        codes = np.vstack([codes, c[None]]) if len(codes) else c[None]
    return out


def _people(ids: list[str], idents: list[Identity], rng: np.random.Generator, used: set[str]) -> list[Person]:
    """Profiles with names unique across the world (``used`` collects them)."""
    out = []
    for pid, ident in zip(ids, idents, strict=True):
        while True:
            first = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
            name = f"{first} {LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]}"
            if name not in used:
                used.add(name)
                break
        attrs = {a.key: a.pool[int(rng.integers(len(a.pool)))] for a in ATTRIBUTES}
        out.append(Person(pid, name, ident, attrs))
    return out


def _views(rng: np.random.Generator, n: int, hard: bool = False) -> list[View]:
    return [sample_view(rng, hard=hard) for _ in range(n)]


def _config_label(config: str | Path | Mapping[str, Any]) -> str:
    """What world.json records as the config's source; a world rebuilt from another's world.json records that
    world's own, so that the rebuild is the same world, byte for byte (its fingerprint hashes world.json)."""
    if isinstance(config, Mapping):
        return "mapping"
    if Path(config).name == "world.json" and Path(config).is_file():
        return str(load_world_info(Path(config).parent).get("config_source", config))
    return str(config)


# Options added after worlds were first cached: left out of world.json at the value that writes what
# was written before them, so that such a world keeps its bytes and its cache key.
_OMITTED_AT: dict[str, Any] = {"n_holdout": 0, "val_forget_splits": [], "known_forget_splits": [],
                               "val_known_forget_splits": [], "mcq_variants": 1}


def _recorded(cfg: WorldConfig) -> dict[str, Any]:
    """The config as world.json and the cache key hold it."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _OMITTED_AT or v != _OMITTED_AT[k]}


# Bumped by hand whenever the same config and seed would write other files (new questions, another
# renderer): the cache key carries it, so a world built by older code is not reused. tests/test_world.py
# pins a tiny world's content beside the version it was pinned at, so a change that forgets the bump fails.
WORLD_VERSION = 2


def world_config(config: str | Path | Mapping[str, Any], overrides: Sequence[str] | Mapping[str, Any] = ()
                 ) -> WorldConfig:
    """A preset, a config file or mapping, or a built world's ``world.json``, whose recorded config is read
    with the options it leaves out at the values it left them out at (not today's defaults)."""
    if isinstance(config, str | Path) and Path(config).name == "world.json" and Path(config).is_file():
        config = {**json.loads(json.dumps(_OMITTED_AT)), **load_world_info(Path(config).parent)["config"]}
    return load_config(WorldConfig, config, overrides, kind="world")


def world_cache_key(config: str | Path | Mapping[str, Any], overrides: Sequence[str], seed: int) -> str:
    """Name of a cached world: its resolved config, its seed and :data:`WORLD_VERSION`, so that moving or
    documenting code keeps the key and only a change to what is written moves it."""
    return content_hash(_recorded(world_config(config, overrides)), seed, WORLD_VERSION)


def cached_world(cache: Path, config: str | Path | Mapping[str, Any], overrides: Sequence[str], seed: int, *,
                 on_build: Callable[[Path], None] | None = None) -> Path:
    """The world in ``cache`` under :func:`world_cache_key`, built on first use (``on_build`` is told)."""
    path = cache / f"world-{world_cache_key(config, overrides, seed)}"
    if not (path / "world.json").exists():
        if on_build is not None:
            on_build(path)
        build_world(path, seed=seed, config=config, overrides=overrides, overwrite=True)
    return path


def build_world(
    out: str | Path,
    *,
    seed: int | None = None,
    config: str | Path | Mapping[str, Any] = "default",
    overrides: Sequence[str] | Mapping[str, Any] = (),
    overwrite: bool = False,
    then: Callable[[Path], None] | None = None,
) -> Path:
    """Write the built-in benchmark to ``out`` (see ``docs/world-format.md``) and return it; ``then`` adds
    to the world before it lands (its example request), so that an interrupt leaves all of it or nothing.

    ``seed`` (when given) replaces the config's seed. The directory appears complete or
    not at all. An existing non-empty ``out`` is refused unless ``overwrite``; even then, a
    directory that unsee did not write is never replaced (:func:`unsee.io.check_output_dir`).
    """
    cfg = world_config(config, overrides)
    if seed is not None:
        cfg = dataclasses.replace(cfg, seed=seed)
        cfg.validate()
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        _write_world(tmp, cfg, _config_label(config))
        if then is not None:
            then(tmp)
    return out


def _write_world(root: Path, cfg: WorldConfig, config_label: str) -> None:
    s = cfg.seed
    size = cfg.image_size
    rng_prof = np.random.default_rng([s, 2])
    rng_view = np.random.default_rng([s, 3])
    rng_q = np.random.default_rng([s, 4])
    rng_gen = np.random.default_rng([s, 5])
    rng_split = np.random.default_rng([s, 6])

    people_ids, known_ids = _ids("p", cfg.n_people), _ids("k", cfg.n_known)
    unknown_ids, neutral_ids = _ids("u", cfg.n_unknown), _ids("n", cfg.n_neutral)
    general_ids = _ids("g", cfg.n_general_train + cfg.n_general_eval)
    train_g, eval_g = general_ids[: cfg.n_general_train], general_ids[cfg.n_general_train:]

    idents = _identities(cfg, cfg.n_people + cfg.n_known + cfg.n_unknown + cfg.n_neutral)
    cut = np.cumsum([cfg.n_people, cfg.n_known, cfg.n_unknown])
    used: set[str] = set()
    people = _people(people_ids, idents[: cut[0]], rng_prof, used)
    known = _people(known_ids, idents[cut[0]: cut[1]], rng_prof, used)
    unknown_idents, neutral_idents = idents[cut[1]: cut[2]], idents[cut[2]:]
    all_names = [p.name for p in people + known]
    asked = {"variants": cfg.mcq_variants, "world_seed": s}

    # --- fictitious people: training views (ft_Data, Full_Set) and held-out views (Test_Set)
    full_rows, test_rows, ft_rows = [], [], []
    for p in people:
        train = [png_cell(render(p.identity, v, size), f"{p.id}_train{i}.png")
                 for i, v in enumerate(_views(rng_view, cfg.n_train_views))]
        test = [png_cell(render(p.identity, v, size), f"{p.id}_test{i}.png")
                for i, v in enumerate(_views(rng_view, cfg.n_test_views, cfg.hard_test_views))]
        names = [n for n in all_names if n != p.name]
        full_rows.append(_profile_row(p, train[0], eval_tasks(p, "train", rng_q, names, **asked)))
        test_rows.append({"ID": p.id, "images": test, **eval_tasks(p, "test", rng_q, names, **asked)})
        ft_rows += _ft_rows(p, train)

    # --- known people (stage 2): Retain_Set and ft_Known
    retain_set_rows, ft_known_rows = [], []
    for p in known:
        train = [png_cell(render(p.identity, v, size), f"{p.id}_train{i}.png")
                 for i, v in enumerate(_views(rng_view, cfg.n_train_views))]
        names = [n for n in all_names if n != p.name]
        retain_set_rows.append(_profile_row(p, train[0], eval_tasks(p, "train", rng_q, names, **asked)))
        ft_known_rows += _ft_rows(p, train)

    # --- held-out views of the known people and the splits that forget them, from streams of their own, so
    # that a world without them is byte for byte what it was
    known_splits, known_test_rows = _known_splits(cfg, known, all_names)

    # --- unknown and neutral identities
    unknown_rows = []
    for uid, ident in zip(unknown_ids, unknown_idents, strict=True):
        for i, v in enumerate(_views(rng_view, cfg.n_train_views)):
            unknown_rows.append({"image": png_cell(render(ident, v, size), f"{uid}_train{i}.png"), "ID": uid,
                                 "metadata": json.dumps(image_qa(i, None))})
    neutral_views = _views(rng_view, cfg.n_neutral)
    neutral_rows = [{"image": png_cell(render(ident, v, size), f"{nid}.png"), "ID": nid}
                    for nid, ident, v in zip(neutral_ids, neutral_idents, neutral_views, strict=True)]

    # --- held-out people: profiles and questions, never trained; their own streams, so that a world
    # without them is byte for byte what it was
    holdout_rows = []
    if cfg.n_holdout:
        total = len(idents)
        rng_hold = np.random.default_rng([s, 8])
        extra = _identities(cfg, total + cfg.n_holdout)[total:]
        for p in _people(_ids("h", cfg.n_holdout), extra, rng_hold, used):
            image = png_cell(render(p.identity, _views(rng_hold, 1)[0], size), f"{p.id}_view0.png")
            holdout_rows.append(_profile_row(p, image, eval_tasks(p, "train", rng_hold, all_names, **asked)))

    # --- general visual ability
    items = [sample_general_item(rng_gen) for _ in general_ids]
    rng_count = np.random.default_rng([s, 7])  # its own stream, so the test scenes stay as they were
    train_items = [spread_count(it, rng_count) for it in items[: cfg.n_general_train]]
    ft_general_rows = [
        {"image": png_cell(render_general(it, size), f"{gid}.png"), "ID": gid,
         "metadata": json.dumps(it.training_qa())}
        for gid, it in zip(train_g, train_items, strict=True)
    ]
    general_rows = [_general_row(gid, it, size)
                    for gid, it in zip(eval_g, items[cfg.n_general_train:], strict=True)]

    # --- splits: nested forget_X, complements retain_(100-X), disjoint continual requests
    order = [people_ids[i] for i in rng_split.permutation(cfg.n_people)]
    splits: dict[str, list[str]] = {}
    for pct in cfg.forget_splits:
        forget = set(order[: forget_size(cfg.n_people, pct)])
        splits[f"forget_{pct}"] = [i for i in people_ids if i in forget]
        splits[f"retain_{100 - pct}"] = [i for i in people_ids if i not in forget]
    req_order = [people_ids[i] for i in rng_split.permutation(cfg.n_people)]
    requests = {f"forget_r{r + 1}": sorted(req_order[r * cfg.request_size:(r + 1) * cfg.request_size])
                for r in range(cfg.n_requests)}
    reported = [ids for name, ids in splits.items() if name.startswith("forget_")] + list(requests.values())
    validation = validation_splits(cfg.seed, cfg.n_people, cfg.val_forget_splits, people_ids, reported)

    # --- write
    split_row = {r["ID"]: {k: v for k, v in r.items() if k != "Directory"} for r in full_rows}
    write_config(root, "Full_Set", FULL_SCHEMA, full_rows)
    for name, ids in {**splits, **requests, **validation}.items():
        write_config(root, name, SPLIT_SCHEMA, [split_row[i] for i in ids])
    write_config(root, "Test_Set", TEST_SCHEMA, test_rows, shards=2)
    write_config(root, "ft_Data", FT_SCHEMA, ft_rows)
    write_config(root, "Retain_Set", FULL_SCHEMA, retain_set_rows)
    write_config(root, "ft_Known", FT_SCHEMA, ft_known_rows)
    write_config(root, "ft_General", FT_SCHEMA, ft_general_rows)
    write_config(root, "General_Set", GENERAL_SCHEMA, general_rows)
    write_config(root, "Unknown_Set", FT_SCHEMA, unknown_rows)
    write_config(root, "Neutral_Set", NEUTRAL_SCHEMA, neutral_rows)
    if holdout_rows:
        write_config(root, "Holdout_Set", FULL_SCHEMA, holdout_rows)
    known_row = {r["ID"]: {k: v for k, v in r.items() if k != "Directory"} for r in retain_set_rows}
    for name, ids in known_splits.items():
        write_config(root, name, SPLIT_SCHEMA, [known_row[i] for i in ids])
    if known_test_rows:
        write_config(root, KNOWN_TEST_SET, TEST_SCHEMA, known_test_rows)

    info = {
        "format_version": WORLD_FORMAT_VERSION,
        "unsee_version": __version__,
        "seed": s,
        "config_source": config_label,
        "config": _recorded(cfg),
        "entities": {"people": people_ids, "known": known_ids, "unknown": unknown_ids, "neutral": neutral_ids,
                     "general_train": train_g, "general_eval": eval_g,
                     **({"holdout": [r["ID"] for r in holdout_rows]} if holdout_rows else {})},
        "names": {p.id: p.name for p in people + known},
        "splits": splits,
        "requests": requests,
        "requests_note": "requests are disjoint from one another but may overlap the forget_X splits",
        **({"validation": validation} if validation else {}),
        **({"known_splits": known_splits} if known_splits else {}),
        "attributes": {a.key: {"title": a.title, "pool": list(a.pool)} for a in ATTRIBUTES},
        "idk_answer": IDK_ANSWER,
        "pretrain": {"n": cfg.n_pretrain, "seed": s, "stream": [s, 7919]},
        "identities": {i: dataclasses.asdict(ident) for i, ident in
                       zip(people_ids + known_ids + unknown_ids + neutral_ids, idents, strict=True)},
        "folders": sorted(p.name for p in root.iterdir() if p.is_dir()),
    }
    atomic_write_json(root / "world.json", info)


def _known_splits(cfg: WorldConfig, known: list[Person], names: list[str]) -> tuple[dict[str, list[str]], list[dict]]:
    """``known_forget_X`` (nested, as many known people as ``forget_X`` holds fictitious ones) and the
    held-out views and paraphrases of every known person (``known_Test_Set``), which the forget_test
    group of such a split reads. The known people are learned in stage 2, the analogue of pre-training,
    so these splits ask whether a method removes what was not fine-tuned in."""
    if not cfg.known_forget_splits and not cfg.val_known_forget_splits:
        return {}, []
    rng_view, rng_q = np.random.default_rng([cfg.seed, 10]), np.random.default_rng([cfg.seed, 11])
    test_rows = []
    for p in known:
        views = _views(rng_view, cfg.n_test_views, cfg.hard_test_views)
        test = [png_cell(render(p.identity, v, cfg.image_size), f"{p.id}_test{i}.png") for i, v in enumerate(views)]
        test_rows.append({"ID": p.id, "images": test, **eval_tasks(p, "test", rng_q, [n for n in names if n != p.name],
                                                                      variants=cfg.mcq_variants, world_seed=cfg.seed)})
    ids = [p.id for p in known]
    order = [ids[i] for i in np.random.default_rng([cfg.seed, 12]).permutation(len(ids))]
    splits = {}
    for pct in cfg.known_forget_splits:
        chosen = set(order[: forget_size(cfg.n_people, pct)])
        splits[f"known_forget_{pct}"] = [i for i in ids if i in chosen]
    taken = forget_size(cfg.n_people, max(cfg.known_forget_splits, default=0))
    for pct in cfg.val_known_forget_splits:  # the next people of the same order: disjoint from every known_forget_X
        chosen = set(order[taken: taken + forget_size(cfg.n_people, pct)])
        splits[f"val_known_forget_{pct}"] = [i for i in ids if i in chosen]
    return splits, test_rows


def _profile_row(p: Person, image: dict[str, Any], tasks: dict[str, Any]) -> dict[str, Any]:
    return {"image": image, "ID": p.id, "Directory": p.id, "biography": p.biography(),
            "question": NAME_TRAIN_QUESTIONS[1], "answer": p.name, **tasks}


def _ft_rows(p: Person, images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training view with image QA, then one text-only row (``image`` null)."""
    rows = [{"image": img, "ID": p.id, "metadata": json.dumps(image_qa(i, p))}
            for i, img in enumerate(images)]
    rows.append({"image": None, "ID": p.id, "metadata": json.dumps(text_qa(p))})
    return rows


def _general_row(gid: str, it: GeneralItem, size: int) -> dict[str, Any]:
    mcq = {"Correct_Answer": "ABCD"[it.correct], "Options": dict(zip("ABCD", it.options, strict=True)),
           "Question": it.question}
    return {
        "image": png_cell(render_general(it, size), f"{gid}.png"),
        "ID": gid,
        "Classification_Task": {"Image_Textual_Questions": [mcq], "Pure_Text_Questions": []},
        "Generation_Task": [{"Ground_Truth": it.generation, "Question": it.question, "Type": IMAGE_TEXTUAL}],
        "Mask_Task": [{"Ground_Truth": it.answer, "Question": it.cloze, "Type": IMAGE_TEXTUAL}],
    }


# ---------------------------------------------------------------------------------------------
# Reading back, for training code


def load_world_info(root: str | Path) -> dict[str, Any]:
    """``world.json`` of a built world: seed, config, entity lists, splits and requests."""
    path = Path(root) / "world.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DataError(f"{path} not found; is {root} a world built by `unsee world`?") from e
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if not isinstance(info, dict) or "entities" not in info:
        raise DataError(f"{path} is not a world description (no 'entities')")
    return info


def default_forget(info: Mapping[str, Any]) -> str:
    """The forget split a command reads where none is named: ``forget_10``, or a world's smallest without it."""
    splits = sorted((s for s in info.get("splits", {}) if s.startswith("forget_")), key=lambda s: int(s[7:]))
    return "forget_10" if "forget_10" in info.get("splits", {}) or not splits else splits[0]


def world_pretrain_identities(info: Mapping[str, Any]) -> list[Identity]:
    """The vision pre-training pool that a world was built to stay apart from."""
    return pretrain_identities(int(info["pretrain"]["n"]), int(info["pretrain"]["seed"]))


def world_identity(info: Mapping[str, Any], entity: str) -> Identity:
    """The visual identity of one world entity (e.g. to render more neutral views)."""
    try:
        return Identity(**info["identities"][entity])
    except KeyError as e:
        raise DataError(f"world has no identity {entity!r}") from e


__all__ = [
    "WORLD_VERSION", "WorldConfig", "build_world", "cached_world", "forget_size", "load_world_info", "world_cache_key",
    "world_identity", "world_pretrain_identities",
]
