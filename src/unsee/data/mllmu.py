"""MLLMU-Bench, and the built-in world that is written in its layout, as a :class:`Suite`.

Every profile row carries three task columns (``Classification_Task``, ``Generation_Task``,
``Mask_Task``), each mixing image+text and text-only questions; the loader splits them
into the image groups (``forget``, ``retain``, ``known``) and the text groups
(``text_forget``, ...), because unlearning is judged on both separately. Prompts are not
built here: questions stay raw (``__`` blanks included) so that the evaluator owns the
exact prompt strings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

from unsee.data.parquet import Record, Source, entity_id, gold_option, image_bytes, letter_options, stable_int, text
from unsee.data.schema import Example, Suite, Task
from unsee.errors import DataError, did_you_mean

IMAGE_TEXTUAL = "Image_Textual"
PURE_TEXT = "Pure_Text"
TYPES = (IMAGE_TEXTUAL, PURE_TEXT)

PROFILE_COLUMNS = {
    "image": "image",
    "ID": "id",
    "Classification_Task": "struct",
    "Generation_Task": "list",
    "Mask_Task": "list",
}
PROFILE_OPTIONAL = {"biography": "string", "question": "string", "answer": "string"}
TEST_COLUMNS = {"ID": "id", "Classification_Task": "struct", "Generation_Task": "list", "Mask_Task": "list"}
TEST_OPTIONAL = {"images": "images", "image": "image"}
FT_COLUMNS = {"metadata": "string"}
FT_OPTIONAL = {"image": "image", "ID": "id"}
NEUTRAL_COLUMNS = {"image": "image", "ID": "id"}
NEUTRAL_OPTIONAL = {"question": "string", "answer": "string"}

# The built-in world's held-out views of its known people, read for a split that forgets them (known_forget_X).
KNOWN_TEST_SET = "known_Test_Set"
# forget_X pairs with retain_(100-X); the built-in world's validation split val_forget_X with val_retain_(100-X).
_FORGET = re.compile(r"^(val_)?forget_(\d+)$")


# --------------------------------------------------------------------------- rows → examples


def _mcq(item: object, *, field: str, rec: Record, uid: str, eid: str, typ: str, image: bytes | None) -> Example:
    if not isinstance(item, dict):
        raise DataError(f"field {field!r} in {rec.source}: expected a question struct, got {type(item).__name__}")
    question = text(item.get("Question"), field=f"{field}.Question", source=rec.source)
    options, letters = letter_options(item.get("Options"), field=f"{field}.Options", source=rec.source)
    raw = text(item.get("Correct_Answer"), field=f"{field}.Correct_Answer", source=rec.source)
    correct = gold_option(raw, options, letters, field=f"{field}.Correct_Answer", source=rec.source)
    return Example(
        uid=uid,
        entity=eid,
        question=question,
        answer=options[correct],
        task="mcq",
        image=image if typ == IMAGE_TEXTUAL else None,
        options=options,
        correct=correct,
        source=rec.source,
        meta={"type": typ, "row": rec.index},
    )


def _free(item: object, *, field: str, rec: Record, uid: str, eid: str, task: Task, image: bytes | None) -> Example:
    if not isinstance(item, dict):
        raise DataError(f"field {field!r} in {rec.source}: expected a question struct, got {type(item).__name__}")
    question = text(item.get("Question"), field=f"{field}.Question", source=rec.source)
    answer = text(item.get("Ground_Truth"), field=f"{field}.Ground_Truth", source=rec.source)
    typ = item.get("Type")
    if typ not in TYPES:
        raise DataError(f"field '{field}.Type' in {rec.source} is {typ!r}, expected one of {TYPES}")
    return Example(
        uid=uid,
        entity=eid,
        question=question,
        answer=answer,
        task=task,
        image=image if typ == IMAGE_TEXTUAL else None,
        source=rec.source,
        meta={"type": typ, "row": rec.index},
    )


def _as_list(v: object, *, field: str, source: str) -> list:
    if v is None:
        return []
    if isinstance(v, list):
        return v
    raise DataError(f"field {field!r} in {source}: expected a list, got {type(v).__name__}")


def profile_examples(rec: Record, config: str, image: bytes | None, *, need_image: bool = True) -> list[Example]:
    """All questions of one profile row; image questions get ``image``, text ones none.

    A null image is an error only when the row has image questions (``need_image``),
    so that a broken row is reported here and not as an image-less "image" question.
    """
    eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
    out: list[Example] = []
    ct = rec.get("Classification_Task") or {}
    if not isinstance(ct, dict):
        raise DataError(f"field 'Classification_Task' in {rec.source}: expected a struct, got {type(ct).__name__}")
    # (where the list is, what its items are called in uids, how one item becomes an Example)
    columns: tuple[tuple[str, object, str, Callable[..., Example]], ...] = (
        ("Classification_Task.Image_Textual_Questions", ct.get("Image_Textual_Questions"), "mcq_image",
         partial(_mcq, typ=IMAGE_TEXTUAL)),
        ("Classification_Task.Pure_Text_Questions", ct.get("Pure_Text_Questions"), "mcq_text",
         partial(_mcq, typ=PURE_TEXT)),
        ("Generation_Task", rec.get("Generation_Task"), "gen", partial(_free, task="gen")),
        ("Mask_Task", rec.get("Mask_Task"), "cloze", partial(_free, task="cloze")),
    )
    for field, items, tag, build in columns:
        for i, item in enumerate(_as_list(items, field=field, source=rec.source)):
            out.append(build(item, field=f"{field}[{i}]", rec=rec, uid=f"{config}/{eid}/{tag}/{i}", eid=eid,
                             image=image))
    if need_image and image is None and any(_is_image(e) for e in out):
        raise DataError(f"field 'image' is null in {rec.source} for ID {eid!r}, which has image questions")
    return out


def _is_image(e: Example) -> bool:
    return e.meta.get("type") == IMAGE_TEXTUAL


def _row_image(rec: Record) -> bytes | None:
    return image_bytes(rec.get("image"), field="image", source=rec.source)


def _portrait(rec: Record) -> tuple[str, bytes | None]:
    """A person as a row shows them, ID and photo: a celebrity whose ID merely equals a fictitious person's is
    another person."""
    return entity_id(rec.get("ID"), field="ID", source=rec.source), _row_image(rec)


def _views(rec: Record) -> list[bytes]:
    """The held-out photos of one Test_Set row."""
    eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
    if rec.get("images") is not None:
        views = [image_bytes(v, field="images", source=rec.source) for v in rec.get("images")]
        views = [v for v in views if v is not None]
        if not views:
            raise DataError(f"field 'images' in {rec.source} is empty for ID {eid!r}")
        return views
    row = _row_image(rec) if rec.get("image") is not None else None
    if row is not None:  # a hand-made Test_Set with one image per row
        return [row]
    raise DataError(f"field 'images' is missing or null in {rec.source} for ID {eid!r}")


def held_out_examples(rec: Record, seed: int) -> list[Example]:
    """Image questions of one Test_Set row, each with one of the row's alternative images.

    The facts take the views in turn from a seeded offset, and a fact asked again (same task and answer)
    takes the view after the one it last had, so every held-out view is evaluated, a fact asked
    several times is read on several views, and the choice depends only on ``seed`` and the
    row, never on a global RNG.
    """
    eid, views = entity_id(rec.get("ID"), field="ID", source=rec.source), _views(rec)
    items = [e for e in profile_examples(rec, "Test_Set", None, need_image=False) if _is_image(e)]
    offset = stable_int(seed, "Test_Set", eid) % len(views)
    facts: dict[tuple[str, str], int] = {}  # (task, answer) -> order of its first asking
    asked: dict[tuple[str, str], int] = {}  # (task, answer) -> times asked so far
    out = []
    for e in items:
        fact = (e.task, e.answer)
        first = facts.setdefault(fact, len(facts))
        view = (offset + first + asked.get(fact, 0)) % len(views)
        asked[fact] = asked.get(fact, 0) + 1
        out.append(dataclasses.replace(e, image=views[view], meta={**e.meta, "view": view}))
    return out


def _qa_pairs(raw: object, *, field: str, source: str) -> list[dict]:
    if raw is None:
        raise DataError(f"field {field!r} in {source} is null")
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise DataError(f"field {field!r} in {source} is not valid JSON: {e}") from e
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        raise DataError(f"field {field!r} in {source} must be a JSON list of {{Question, Answer}} objects")
    return items


def ft_examples(records: Iterable[Record], config: str) -> list[Example]:
    """``qa`` pairs of an ft_Data-style config: one Example per ``{Question, Answer}``.

    The entity is the row's ``ID`` column, or the item's ``ID`` key (the baseline splits
    carry it there), or "" when neither exists.
    """
    out = []
    for n, rec in enumerate(records):
        image = _row_image(rec)
        row_id = rec.get("ID")
        eid = entity_id(row_id, field="ID", source=rec.source) if row_id is not None else ""
        for j, item in enumerate(_qa_pairs(rec.get("metadata"), field="metadata", source=rec.source)):
            f = f"metadata[{j}]"
            who = eid or (entity_id(item["ID"], field=f"{f}.ID", source=rec.source) if item.get("ID") else "")
            out.append(
                Example(
                    uid=f"{config}/{n}/{j}",
                    entity=who,
                    question=text(item.get("Question"), field=f"{f}.Question", source=rec.source),
                    answer=text(item.get("Answer"), field=f"{f}.Answer", source=rec.source),
                    task="qa",
                    image=image,
                    source=rec.source,
                    meta={"type": IMAGE_TEXTUAL if image is not None else PURE_TEXT, "row": rec.index},
                )
            )
    return out


def load_ft_data(root: str | Path, config: str = "ft_Data") -> list[Example]:
    """Fine-tuning QA of MLLMU-Bench's ``ft_Data`` (``metadata`` = JSON list of {Question, Answer})."""
    return ft_examples(Source(root).read(config, FT_COLUMNS, FT_OPTIONAL), config)


def _qa_from_generation(examples: Iterable[Example], *, image: bool) -> list[Example]:
    """Training pairs taken from Generation_Task when ft_Data cannot be split by person."""
    return [
        dataclasses.replace(e, uid=f"{e.uid}/qa", task="qa", meta=dict(e.meta))
        for e in examples
        if e.task == "gen" and _is_image(e) == image
    ]


# --------------------------------------------------------------------------- the suite


class _Configs:
    """Reads each config once; the same config may serve several groups."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.read: dict[tuple[str, frozenset[tuple[str, str]]], list[Record]] = {}
        self.checked: set[str] = set()  # profile configs whose IDs were found unique

    def profiles(self, config: str) -> list[Record]:
        """A config of one row a person: a second row of an ID is refused, as its questions would
        share the first row's uids, or be dropped where a person is taken once."""
        rows = self.get(config, PROFILE_COLUMNS, PROFILE_OPTIONAL)
        if config not in self.checked:
            first: dict[str, str] = {}
            for rec in rows:
                eid, where = entity_id(rec.get("ID"), field="ID", source=rec.source), f"{rec.source} row {rec.index}"
                if first.setdefault(eid, where) != where:
                    raise DataError(f"ID {eid!r} has two rows in {config} ({first[eid]} and {where}); "
                                    "a profile config holds one row a person")
            self.checked.add(config)
        return rows

    def get(self, config: str, required: dict[str, str], optional: dict[str, str]) -> list[Record]:
        key = (config, frozenset({**required, **optional}.items()))
        if key not in self.read:
            self.read[key] = self.source.read(config, required, optional)
        return self.read[key]

    def names(self) -> list[str]:
        return sorted({c for c, _ in self.read})


def _ids(records: Iterable[Record]) -> list[str]:
    seen: dict[str, None] = {}
    for rec in records:
        seen.setdefault(entity_id(rec.get("ID"), field="ID", source=rec.source), None)
    return list(seen)


def _split(records: Iterable[tuple[Record, str]]) -> tuple[list[Example], list[Example]]:
    """Image and text questions of (row, config) pairs, each row with its own image."""
    image_items: list[Example] = []
    text_items: list[Example] = []
    for rec, config in records:
        for e in profile_examples(rec, config, _row_image(rec)):
            (image_items if _is_image(e) else text_items).append(e)
    return image_items, text_items


def load_mllmu(
    root: str | Path,
    forget: str | Sequence[str] = "forget_10",
    *,
    retain: str | None = None,
    retain_exclude: Sequence[str] = (),
    seed: int = 0,
) -> Suite:
    """Load MLLMU-Bench (or the built-in world) from a folder of configs or a hub id.

    ``forget`` may list several configs (their union: continual requests). The retain set
    is ``retain`` if given, else ``retain_{100-X}`` for a single ``forget_X`` when that
    config exists, else every ``Full_Set`` person outside the forget set and outside
    ``retain_exclude`` (entity IDs, or config names whose IDs are excluded).

    Groups: ``forget``/``retain``/``known`` (``Retain_Set``) hold the Image_Textual MCQ,
    cloze and gen items with the row image; ``text_*`` their Pure_Text items; ``forget_test``
    the Test_Set image items of the forget IDs, each with one alternative view;
    ``general`` = ``General_Set``. Training streams (task ``qa``): ``train_forget``,
    ``train_retain`` (ft_Data image rows by ID, else the Image_Textual Generation items),
    ``train_text`` (ft_Data rows with a null image), ``train_known`` (ft_Known),
    ``train_general`` (ft_General), ``unknown`` (Unknown_Set), ``neutral`` (Neutral_Set), and
    ``holdout``/``text_holdout`` (the built-in world's Holdout_Set, people never trained on).
    Absent configs give empty groups.
    """
    source = Source(root)
    cfg = _Configs(source)
    forget_configs = [forget] if isinstance(forget, str) else list(forget)
    for c in forget_configs:
        if not source.has(c):
            raise DataError(f"forget config {c!r} not found in {source.location}"
                            + did_you_mean([c], source.known_configs()))

    forget_rows: list[tuple[Record, str]] = []
    forget_ids: dict[str, None] = {}
    for c in forget_configs:
        for rec in cfg.profiles(c):
            eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
            if eid not in forget_ids:  # nested configs (forget_5 ⊂ forget_10) list people twice
                forget_ids[eid] = None
                forget_rows.append((rec, c))

    retain_config, retain_rows = _retain(source, cfg, forget_configs, set(forget_ids), retain, retain_exclude)
    retain_ids = list(dict.fromkeys(entity_id(r.get("ID"), field="ID", source=r.source) for r, _ in retain_rows))

    groups: dict[str, list[Example]] = {}
    groups["forget"], groups["text_forget"] = _split(forget_rows)
    groups["retain"], groups["text_retain"] = _split(retain_rows)

    known_rows = cfg.profiles("Retain_Set") if source.has("Retain_Set") else []
    # a known person to forget (known_forget_X) is in the forget group instead: the same ID with the same
    # portrait; a celebrity whose ID merely equals a fictitious person's stays known. A known person named by
    # a retain_exclude config is left out of every known group, as a retained one is of the retained groups.
    gone = {_portrait(r) for r, _ in forget_rows}
    left_out = {_portrait(r) for item in retain_exclude if source.has(item) for r in cfg.profiles(item)}
    portraits = [(r, _portrait(r)) for r in known_rows]
    known = [(r, "Retain_Set") for r, p in portraits if p not in gone and p not in left_out]
    # a known person this split forgets is forgotten, not left out (a continual run excludes every request)
    known_out = {p[0] for _, p in portraits if p in left_out} - set(forget_ids)

    groups["forget_test"], groups["known_test"] = [], []
    test_ids: list[str] = []
    others: set[str] = set()  # the held-out photos of the people no group asks about
    for test_config in ("Test_Set", KNOWN_TEST_SET):
        if source.has(test_config):
            for rec in cfg.get(test_config, TEST_COLUMNS, TEST_OPTIONAL):
                eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
                test_ids.append(eid)
                if eid in forget_ids:
                    groups["forget_test"].extend(held_out_examples(rec, seed))
                elif test_config == KNOWN_TEST_SET:  # the known people kept, on photos no method trains on
                    if eid not in known_out:
                        groups["known_test"].extend(held_out_examples(rec, seed))
                elif rec.get("images") or rec.get("image") is not None:  # a row without a photo has none to compare
                    others.update(hashlib.sha256(v).hexdigest() for v in _views(rec))
    if test_ids and not set(test_ids) & set(forget_ids):
        raise DataError(f"Test_Set in {source.location} holds none of the forget people (their IDs look like "
                        f"{list(forget_ids)[:3]}, Test_Set's like {test_ids[:3]}): forget_test would be empty; "
                        "are the two from the same download?")

    if source.has("Holdout_Set"):  # people never trained on: the membership attack's non-members
        groups["holdout"], groups["text_holdout"] = _split([(r, "Holdout_Set") for r in cfg.profiles("Holdout_Set")])
    groups["known"], groups["text_known"] = _split(known)
    groups["general"] = []
    if source.has("General_Set"):
        for rec in cfg.profiles("General_Set"):
            groups["general"].extend(profile_examples(rec, "General_Set", _row_image(rec)))

    _training_streams(source, cfg, groups, forget_ids, retain_ids, known_out)

    info = {
        "loader": "mllmu",
        "root": source.location,
        "forget_configs": forget_configs,
        "retain_config": retain_config,
        "retain_exclude": list(retain_exclude),
        "seed": seed,
        "configs": cfg.names(),
    }
    return Suite(
        name="mllmu",
        groups=groups,
        forget_entities=tuple(forget_ids),
        retain_entities=tuple(retain_ids),
        info=info,
        other_images=frozenset(others),
    )


def _retain(
    source: Source,
    cfg: _Configs,
    forget_configs: list[str],
    forget_ids: set[str],
    retain: str | None,
    retain_exclude: Sequence[str],
) -> tuple[str, list[tuple[Record, str]]]:
    """Pick the retain rows; returns the config they came from and the rows. ``retain_exclude`` leaves its
    people out whichever config the rows come from (a paired ``retain_X`` holds them otherwise)."""
    excluded: set[str] = set()
    for item in retain_exclude:
        excluded.update(_ids(cfg.profiles(item)) if source.has(item) else [item])
    named = [item for item in retain_exclude if not source.has(item)]  # people's IDs, or mistyped names
    people = set(_ids(cfg.profiles("Full_Set"))) if named and source.has("Full_Set") else set(named)
    if unknown := sorted(item for item in named if item not in people):
        # a mistyped name would leave nobody out, and the figures would be read as blind to them all the same
        raise DataError(f"{', '.join(map(repr, unknown))}: neither a split nor a person of {source.location}, so "
                        "nobody can be left out of the retained people by that name (a continual request, or a "
                        "split tune's --exclude names)")

    def rows_of(config: str, left_out: set[str]) -> list[tuple[Record, str]]:
        return [(r, config) for r in cfg.profiles(config)
                if entity_id(r.get("ID"), field="ID", source=r.source) not in left_out]

    if retain is not None:
        if not source.has(retain):
            raise DataError(f"retain config {retain!r} not found in {source.location}")
        return retain, rows_of(retain, excluded)
    if len(forget_configs) == 1 and (m := _FORGET.match(forget_configs[0])):
        paired = f"{m.group(1) or ''}retain_{100 - int(m.group(2))}"
        if source.has(paired):
            return paired, rows_of(paired, excluded)
    if not source.has("Full_Set"):
        raise DataError(
            f"no retain config for {forget_configs} and no Full_Set to derive one from in {source.location}"
        )
    return "Full_Set", rows_of("Full_Set", excluded | set(forget_ids))


def _training_streams(
    source: Source,
    cfg: _Configs,
    groups: dict[str, list[Example]],
    forget_ids: dict[str, None],
    retain_ids: list[str],
    known_out: set[str],
) -> None:
    """Fill ``train_*``, ``unknown`` and ``neutral``; absent configs give empty streams. ``known_out``: known
    people left out of the retained set, whose rows no stream holds."""
    forget_set, retain_set = set(forget_ids), set(retain_ids)
    ft = ft_examples(cfg.get("ft_Data", FT_COLUMNS, FT_OPTIONAL), "ft_Data") if source.has("ft_Data") else None
    if ft is not None and all(e.entity for e in ft if e.has_image):
        groups["train_forget"] = [e for e in ft if e.has_image and e.entity in forget_set]
        groups["train_retain"] = [e for e in ft if e.has_image and e.entity in retain_set]
    else:
        groups["train_forget"] = _qa_from_generation(groups["forget"], image=True)
        groups["train_retain"] = _qa_from_generation(groups["retain"], image=True)
    # the hub's ft_Data pairs every question with a portrait: without text rows of its own, the text stream
    # (what mmunlearner and the text-keeping terms read) comes from the benchmark's text questions
    text_rows = [e for e in ft if not e.has_image] if ft is not None else []
    groups["train_text"] = text_rows or _qa_from_generation(groups["text_forget"] + groups["text_retain"],
                                                            image=False)
    for config, name in (
        ("ft_Known", "train_known"),
        ("ft_General", "train_general"),
        ("Unknown_Set", "unknown"),
    ):
        groups[name] = ft_examples(cfg.get(config, FT_COLUMNS, FT_OPTIONAL), config) if source.has(config) else []
    groups["train_known"] = [e for e in groups["train_known"] if e.entity not in known_out]
    # a known person to forget (known_forget_X): their photos move from the known stream to the forget one;
    # their text questions stay with the known people's
    photos = [e for e in groups["train_known"] if e.has_image and e.entity in forget_set]
    if photos:
        groups["train_forget"] = [*groups["train_forget"], *photos]
        groups["train_known"] = [e for e in groups["train_known"] if not (e.has_image and e.entity in forget_set)]
    groups["neutral"] = []
    if source.has("Neutral_Set"):
        for n, rec in enumerate(cfg.get("Neutral_Set", NEUTRAL_COLUMNS, NEUTRAL_OPTIONAL)):
            eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
            groups["neutral"].append(
                Example(
                    uid=f"Neutral_Set/{eid}/{n}",
                    entity=eid,
                    question=text(rec.get("question"), field="question", source=rec.source, allow_none=True),
                    answer=text(rec.get("answer"), field="answer", source=rec.source, allow_none=True),
                    task="qa",
                    image=_row_image(rec),
                    source=rec.source,
                    meta={"type": IMAGE_TEXTUAL, "row": rec.index},
                )
            )
