"""CLEAR (``therem/CLEAR``) as a :class:`Suite`.

CLEAR gives image-caption pairs of fictitious people plus TOFU text QA about the same
people. The person-recognition test is a name question with distractors; captions and
TOFU answers are scored by ROUGE. The distractor lists (``perturbed_names``, ``options``)
hold wrong answers only, so the true answer is inserted at a seeded position here, once,
rather than with a global RNG in every evaluator.

Points the published files leave open are read both ways: unused ``+tofu`` fields may be
null or ""; ``name`` may be missing from some configs, in which case it is looked up by
caption in a config that has it, and only a row that still lacks it is an error.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from unsee.data.parquet import Record, Source, image_bytes, stable_int, text
from unsee.data.schema import LETTERS, Example, Suite
from unsee.errors import DataError

NAME_QUESTION = "What is the name of the person in the image?"
# The caption prompts of the CLEAR reference code; one is picked per item by seed.
CAPTION_QUESTIONS = (
    "What can you see in this picture?",
    "Tell me about the content of this image",
    "Can you give a description of the image?",
    "What is depicted in the image?",
    "Explain what you observe in the picture.",
    "Describe the image in detail.",
    "What is the main subject of this image?",
    "Can you describe the scene or objects in the image?",
    "What is happening in this image?",
)
N_DISTRACTORS = 3  # when no perturbed names exist: four options, as in MLLMU-Bench

IMAGE_COLUMNS = {"image": "image", "caption": "string"}
IMAGE_OPTIONAL = {"name": "string"}
TOFU_COLUMNS = {"image": "image"}
TOFU_OPTIONAL = {"caption": "string", "name": "string", "question": "string", "answer": "string"}
PERTURBED_COLUMNS = {"image": "image", "name": "string", "perturbed_names": "string_list"}
PERTURBED_OPTIONAL = {
    "caption": "string",
    "paraphrased_caption": "string",
    "perturbed_captions": "string_list",
}
REAL_FACES_COLUMNS = {"image": "image", "answer": "string", "options": "string_list"}
REAL_WORLD_COLUMNS = {"image": "image", "question": "string", "answer": "string", "options": "string_list"}

_FORGET = re.compile(r"^forget_?(\d{1,2})(\+tofu)?$")


def split_configs(forget: str) -> tuple[str, str]:
    """``forget05`` (also ``forget_5``, ``forget05+tofu``) → (``forget05``, ``retain95``)."""
    m = _FORGET.match(forget)
    if m is None or not 0 < int(m.group(1)) < 100:
        raise DataError(f"CLEAR forget split {forget!r} is not of the form forgetNN (forget01, forget05, forget10)")
    pct = int(m.group(1))
    return f"forget{pct:02d}", f"retain{100 - pct:02d}"


def with_true_answer(true: str, wrong: Iterable[str], *, seed: int, uid: str) -> tuple[tuple[str, ...], int]:
    """Insert the true answer among the distractors at a position fixed by ``seed`` and ``uid``.

    More distractors than the letters hold are refused: cutting them would make another question,
    with another chance level, without a word."""
    distractors = [w for w in dict.fromkeys(wrong) if w and w != true]
    if len(distractors) >= len(LETTERS):
        raise DataError(f"{uid} has {len(distractors)} wrong options; unsee reads at most {len(LETTERS) - 1} "
                        f"beside the true one ({len(LETTERS)} letters)")
    pos = stable_int(seed, uid, "position") % (len(distractors) + 1)
    return tuple(distractors[:pos] + [true] + distractors[pos:]), pos


class _Reader:
    """Reads each config once and answers the name lookups that several configs share."""

    def __init__(self, source: Source, seed: int) -> None:
        self.source = source
        self.seed = seed
        self.read: dict[tuple[str, frozenset[tuple[str, str]]], list[Record]] = {}
        self._caption_names: dict[str, str] | None = None

    def get(self, config: str, required: dict[str, str], optional: dict[str, str]) -> list[Record]:
        key = (config, frozenset({**required, **optional}.items()))
        if key not in self.read:
            self.read[key] = self.source.read(config, required, optional)
        return self.read[key]

    def image_rows(self, config: str) -> list[Record]:
        """Image rows of ``config``, or of ``config+tofu`` when only that one is present."""
        if self.source.has(config):
            return self.get(config, IMAGE_COLUMNS, IMAGE_OPTIONAL)
        if self.source.has(f"{config}+tofu"):
            rows = self.get(f"{config}+tofu", TOFU_COLUMNS, TOFU_OPTIONAL)
            return [r for r in rows if _image(r) is not None]
        raise DataError(f"CLEAR config {config!r} (or {config}+tofu) not found in {self.source.location}")

    def caption_names(self, exclude: str) -> dict[str, str]:
        """caption → name from every other config that has a ``name`` column."""
        if self._caption_names is None:
            found: dict[str, str] = {}
            candidates = [
                c
                for c in (
                    "default",
                    "full",
                    "forget01",
                    "forget05",
                    "forget10",
                    "forget01_perturbed",
                    "forget05_perturbed",
                    "forget10_perturbed",
                    "retain_perturbed",
                )
                if c != exclude and self.source.has(c)
            ]
            for c in candidates:
                try:
                    rows = self.get(c, {"caption": "string", "name": "string"}, {})
                except DataError:
                    continue  # a config without the column cannot help; the caller reports the miss
                for r in rows:
                    if r.get("caption") and r.get("name"):
                        found.setdefault(r.get("caption"), r.get("name"))
            self._caption_names = found
        return self._caption_names


def _image(rec: Record) -> bytes | None:
    return image_bytes(rec.get("image"), field="image", source=rec.source)


def _image_row(rec: Record, config: str) -> bytes:
    """The image of a row of an image config, where a null one is an error."""
    image = _image(rec)
    if image is None:
        raise DataError(f"field 'image' is null in {rec.source} (row {rec.index}) of image config {config!r}")
    return image


def _names(reader: _Reader, config: str, rows: Sequence[Record]) -> list[str]:
    """The person's name of each image row; the column is needed only where a row lacks it."""
    names = []
    for r in rows:
        name = r.get("name")
        if not name:
            caption = text(r.get("caption"), field="caption", source=r.source)
            name = reader.caption_names(exclude=config).get(caption)
        if not name:
            raise DataError(
                f"column 'name' is missing or empty in {r.source} (row {r.index}) and no other CLEAR config "
                f"names the person of its caption; the name question and the entity ids need it"
            )
        names.append(name)
    return names


def _name_items(
    reader: _Reader,
    config: str,
    rows: Sequence[Record],
    names: Sequence[str],
    pool: Sequence[str],
) -> list[Example]:
    """A name MCQ per image row: the row's own perturbed names as the wrong options (CLEAR's and
    MMUnlearner's evaluation read each row's), else other people's names."""
    seed = reader.seed
    out: list[Example] = []
    for n, (r, name) in enumerate(zip(rows, names, strict=True)):
        image = _image_row(r, config)
        uid = f"{config}/{n}/name"
        wrong = [text(w, field="perturbed_names", source=r.source) for w in r.get("perturbed_names") or []]
        perturbed = bool(wrong)
        if not perturbed:
            others = sorted({p for p in pool if p != name}, key=lambda p: stable_int(seed, f"{config}/{n}", p))
            wrong = others[:N_DISTRACTORS]
        options, correct = with_true_answer(name, wrong, seed=seed, uid=uid)
        meta = {"type": "Image_Textual", "row": r.index, "distractors": "perturbed" if perturbed else "names"}
        out.append(Example(uid=uid, entity=name, question=NAME_QUESTION, answer=name, task="mcq", image=image,
                           options=options, correct=correct, source=r.source, meta=meta))
    return out


def _caption_items(
    reader: _Reader, config: str, rows: Sequence[Record], names: Sequence[str]
) -> tuple[list[Example], list[Example]]:
    """Evaluation items (caption ``gen``) and training pairs (their ``qa`` twins) of image rows."""
    evals: list[Example] = []
    train: list[Example] = []
    for n, (r, name) in enumerate(zip(rows, names, strict=True)):
        image = _image_row(r, config)
        uid = f"{config}/{n}"
        question = CAPTION_QUESTIONS[stable_int(reader.seed, uid, "caption") % len(CAPTION_QUESTIONS)]
        described = Example(
            uid=f"{uid}/caption",
            entity=name,
            question=question,
            answer=text(r.get("caption"), field="caption", source=r.source),
            task="gen",
            image=image,
            source=r.source,
            meta={"type": "Image_Textual", "row": r.index},
        )
        evals.append(described)
        train.append(_training_pair(described, f"{uid}/caption/qa"))
    return evals, train


def _name_questions(
    reader: _Reader, config: str, rows: Sequence[Record], names: Sequence[str], people: Sequence[str],
    perturbed_config: str, pool: Sequence[str],
) -> tuple[list[Example], str]:
    """The name MCQs of one side, and the config they come from.

    CLEAR's own evaluation and MMUnlearner's ask the name question on the ``*_perturbed``
    configs only (``retain_perturbed`` covers about a tenth of the retain people), with their
    perturbed names as the wrong options; a retain figure over every retain photo with drawn
    names would not compare with theirs. Without that config, every image row is asked, with
    other people's names.
    """
    if not reader.source.has(perturbed_config):
        return _name_items(reader, config, rows, names, pool), config
    side = set(people)
    named = [(r, text(r.get("name"), field="name", source=r.source))
             for r in reader.get(perturbed_config, PERTURBED_COLUMNS, PERTURBED_OPTIONAL)]
    scored = [(r, name) for r, name in named if name in side]
    if not scored:
        raise DataError(f"CLEAR config {perturbed_config!r} in {reader.source.location} holds none of {config!r}'s "
                        "people: it cannot score their name question")
    return _name_items(reader, perturbed_config, [r for r, _ in scored], [name for _, name in scored],
                       pool), perturbed_config


def _training_pair(item: Example, uid: str) -> Example:
    """The ``qa`` twin of a ``gen`` item: CLEAR trains on the very captions and answers it scores by ROUGE."""
    return dataclasses.replace(item, uid=uid, task="qa", meta=dict(item.meta))


def _tofu_items(reader: _Reader, config: str, people: Sequence[str]) -> tuple[list[Example], list[Example]]:
    """TOFU text QA of ``config+tofu`` (rows with a null image) as gen items and qa pairs.

    TOFU rows carry no name column; the entity is the person whose name the question or
    answer mentions (the longest match), or "" when none does.
    """
    cfg = f"{config}+tofu"
    if not reader.source.has(cfg):
        return [], []
    by_length = sorted(set(people), key=len, reverse=True)
    evals: list[Example] = []
    train: list[Example] = []
    for n, r in enumerate(reader.get(cfg, TOFU_COLUMNS, TOFU_OPTIONAL)):
        if _image(r) is not None:
            continue
        question = text(r.get("question"), field="question", source=r.source, allow_none=True)
        if not question:
            raise DataError(f"field 'question' in {r.source} (row {r.index}) is empty on a text row (null image)")
        answer = text(r.get("answer"), field="answer", source=r.source)
        who = next((p for p in by_length if p in question or p in answer), "")
        item = Example(
            uid=f"{cfg}/{n}/qa",
            entity=who,
            question=question,
            answer=answer,
            task="gen",
            source=r.source,
            meta={"type": "Pure_Text", "row": r.index},
        )
        evals.append(item)
        train.append(_training_pair(item, f"{cfg}/{n}/qa/train"))
    return evals, train


def _real(reader: _Reader, config: str, required: dict[str, str]) -> list[Example]:
    """``real_faces`` / ``real_world`` multiple choice; ``options`` hold wrong answers only."""
    if not reader.source.has(config):
        return []
    out = []
    for n, r in enumerate(reader.get(config, required, {"question": "string", "prompt": "string"})):
        answer = text(r.get("answer"), field="answer", source=r.source)
        question = text(r.get("question"), field="question", source=r.source, allow_none=True) or NAME_QUESTION
        wrong = [text(w, field="options", source=r.source) for w in (r.get("options") or [])]
        uid = f"{config}/{n}"
        options, correct = with_true_answer(answer, wrong, seed=reader.seed, uid=uid)
        entity = answer if config == "real_faces" else uid
        out.append(
            Example(
                uid=uid,
                entity=entity,
                question=question,
                answer=answer,
                task="mcq",
                image=_image_row(r, config),
                options=options,
                correct=correct,
                source=r.source,
                meta={"type": "Image_Textual", "row": r.index},
            )
        )
    return out


def load_clear(root: str | Path, forget: str = "forget05", *, seed: int = 0) -> Suite:
    """Load CLEAR from a folder of configs or the hub id ``therem/CLEAR``.

    ``forget`` is ``forgetNN`` (``forget_5`` is read as ``forget05``); retain is
    ``retain{100-NN}``. Groups: ``forget``/``retain`` hold the name MCQs of
    ``forgetNN_perturbed``/``retain_perturbed`` (of every image row when those are absent) and a
    caption ``gen`` item per image row; ``text_forget``/``text_retain`` the TOFU QA of the ``+tofu`` configs;
    ``known`` = ``real_faces``, ``general`` = ``real_world`` (MCQ); ``forget_test`` is
    empty (CLEAR has no held-out views). Training: ``train_forget``/``train_retain`` are the
    caption pairs, ``train_text`` the TOFU pairs of both sides. Entities are the names.
    """
    source = Source(root)
    reader = _Reader(source, seed)
    forget_cfg, retain_cfg = split_configs(forget)

    forget_rows = reader.image_rows(forget_cfg)
    retain_rows = reader.image_rows(retain_cfg)
    forget_names = _names(reader, forget_cfg, forget_rows)
    retain_names = _names(reader, retain_cfg, retain_rows)
    forget_people = list(dict.fromkeys(forget_names))
    retain_people = list(dict.fromkeys(retain_names))
    pool = forget_people + retain_people

    groups: dict[str, list[Example]] = {}
    forget_names_mcq, forget_from = _name_questions(reader, forget_cfg, forget_rows, forget_names, forget_people,
                                                    f"{forget_cfg}_perturbed", pool)
    retain_names_mcq, retain_from = _name_questions(reader, retain_cfg, retain_rows, retain_names, retain_people,
                                                    "retain_perturbed", pool)
    forget_captions, groups["train_forget"] = _caption_items(reader, forget_cfg, forget_rows, forget_names)
    retain_captions, groups["train_retain"] = _caption_items(reader, retain_cfg, retain_rows, retain_names)
    groups["forget"] = forget_names_mcq + forget_captions
    groups["retain"] = retain_names_mcq + retain_captions
    groups["text_forget"], forget_text_train = _tofu_items(reader, forget_cfg, forget_people)
    groups["text_retain"], retain_text_train = _tofu_items(reader, retain_cfg, retain_people)
    groups["train_text"] = forget_text_train + retain_text_train
    groups["forget_test"] = []  # CLEAR has no held-out views of its people
    groups["known"] = _real(reader, "real_faces", REAL_FACES_COLUMNS)
    groups["general"] = _real(reader, "real_world", REAL_WORLD_COLUMNS)

    info = {
        "loader": "clear",
        "root": source.location,
        "forget_config": forget_cfg,
        "split_name": forget_cfg,  # forget_5 and forget05 are one split, recorded under the config's name
        "retain_config": retain_cfg,
        "name_questions": {"forget": forget_from, "retain": retain_from},
        "seed": seed,
        "configs": sorted({c for c, _ in reader.read}),
    }
    return Suite(
        name="clear",
        groups=groups,
        forget_entities=tuple(forget_people),
        retain_entities=tuple(retain_people),
        info=info,
    )
