"""The fine-tune split of each public benchmark: what its vanilla model is trained on.

Every benchmark first teaches the base model its fictitious people, then unlearns some of
them. The split and its reading follow the authors' fine-tuning code (docs/reproduce.md cites
file and line):

- MLLMU-Bench: ``ft_Data``, one portrait per row with a JSON list of ``{Question, Answer}``;
- CLEAR: ``full+tofu``, image-caption rows (asked with one of CLEAR's caption questions) and
  TOFU text QA rows (null image);
- UMU-bench: ``Full_Set``, ``MM_QA`` and ``UM_QA`` both asked with the portrait, as in the
  data file its authors prepared for their published fine-tune.

:func:`without_forget` gives the retrained reference's data: the same split minus the forget
people's image rows; their text QA stays (UMU's ``UM_QA`` without the portrait), as in the
built-in world's retrained reference.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from unsee.data.clear import CAPTION_QUESTIONS, TOFU_COLUMNS, TOFU_OPTIONAL, split_configs
from unsee.data.detect import NAMES, needs
from unsee.data.mllmu import FT_COLUMNS, FT_OPTIONAL, ft_examples
from unsee.data.parquet import Source, entity_id, image_bytes, stable_int, text
from unsee.data.schema import Example
from unsee.data.umu import qa_examples
from unsee.errors import DataError

# benchmark -> its fine-tune split (the first present is read)
FT_SPLITS = {"mllmu": ("ft_Data",), "clear": ("full+tofu",), "umu": ("Full_Set",)}
UMU_FT_COLUMNS = {"ID": "id", "image": "image", "MM_QA": "literal"}
UMU_FT_OPTIONAL = {"UM_QA": "literal"}


def _digest(image: bytes | None) -> str | None:
    return None if image is None else hashlib.sha256(image).hexdigest()


def finetune_examples(kind: str, root: str | Path, *, seed: int = 0,
                      text_qa: bool = True) -> tuple[str, list[Example]]:
    """The fine-tune split of ``kind`` in ``root``, and its ``qa`` examples.

    ``text_qa`` keeps the text-only QA (UMU's ``UM_QA``, CLEAR's TOFU rows); a split without
    it trains on image questions only. Raises one line when the download lacks the split.
    """
    if kind not in FT_SPLITS:
        raise DataError(f"{NAMES.get(kind, kind)} has no fine-tune split; unsee finetune reads MLLMU-Bench, CLEAR "
                        "and UMU-bench (and the built-in world)")
    config = needs(kind, root, FT_SPLITS, "fine-tune")
    source = Source(root)
    if kind == "mllmu":
        out = ft_examples(source.read(config, FT_COLUMNS, FT_OPTIONAL), config)
    elif kind == "clear":
        out = _clear(source, config, seed)
    else:
        out = []
        for rec in source.read(config, UMU_FT_COLUMNS, UMU_FT_OPTIONAL):
            out += qa_examples(rec, config, "MM_QA")
            if text_qa and rec.get("UM_QA") is not None:
                out += qa_examples(rec, config, "UM_QA", with_image=True)
    if not text_qa:
        out = [e for e in out if e.has_image]
    if not out:
        raise DataError(f"{NAMES[kind]}'s fine-tune split {config!r} in {root} holds no question-answer pairs")
    return config, out


def _clear(source: Source, config: str, seed: int) -> list[Example]:
    """``full+tofu``: a caption question per image row (seeded), the TOFU pair per text row."""
    out = []
    for n, r in enumerate(source.read(config, TOFU_COLUMNS, TOFU_OPTIONAL)):
        image = image_bytes(r.get("image"), field="image", source=r.source)
        uid = f"{config}/{n}"
        if image is not None:
            caption = text(r.get("caption"), field="caption", source=r.source)
            question = CAPTION_QUESTIONS[stable_int(seed, uid, "caption") % len(CAPTION_QUESTIONS)]
            out.append(Example(uid=f"{uid}/caption", entity="", question=question, answer=caption, task="qa",
                               image=image, source=r.source, meta={"type": "Image_Textual", "row": r.index,
                                                                   "caption": caption}))
        else:
            question = text(r.get("question"), field="question", source=r.source, allow_none=True)
            if not question:
                raise DataError(f"field 'question' in {r.source} (row {r.index}) is empty on a text row (null image)")
            out.append(Example(uid=f"{uid}/qa", entity="", question=question,
                               answer=text(r.get("answer"), field="answer", source=r.source), task="qa",
                               source=r.source, meta={"type": "Pure_Text", "row": r.index}))
    return out


def _forget_people(kind: str, root: str | Path, forget: str) -> tuple[set[str], set[str], set[str]]:
    """The forget split's (IDs, image digests, captions): what marks its people's rows."""
    source = Source(root)
    if kind == "clear":
        cfg, _ = split_configs(forget)
        if not source.has(cfg):
            raise DataError(f"CLEAR forget config {cfg!r} not found in {root}")
        rows = source.read(cfg, {"image": "image", "caption": "string"}, {})
        return (set(), {d for r in rows if (d := _digest(image_bytes(r.get("image"), field="image", source=r.source)))},
                {r.get("caption") for r in rows if r.get("caption")})
    if not source.has(forget):
        raise DataError(f"{NAMES[kind]} forget config {forget!r} not found in {root}")
    rows = source.read(forget, {"ID": "id"}, {"image": "image"})
    ids = {entity_id(r.get("ID"), field="ID", source=r.source) for r in rows}
    digests = {d for r in rows if (d := _digest(image_bytes(r.get("image"), field="image", source=r.source)))}
    return ids, digests, set()


def without_forget(kind: str, root: str | Path, examples: list[Example],
                   forget: str) -> tuple[list[Example], int, int]:
    """``examples`` without the forget people's photos: (kept, pairs dropped, pairs kept as text).

    A row is the forget people's when its ID is theirs, its image is byte-identical to one
    of theirs (MLLMU-Bench's ``ft_Data`` has no ID column on the hub), or, for CLEAR, its
    caption is one of theirs. Their image questions go; a text question the split asks with
    the portrait (UMU's ``UM_QA``) stays, without it, since the reference keeps what text
    teaches. Finding none is an error: the reference would silently equal the vanilla model.
    """
    ids, digests, captions = _forget_people(kind, root, forget)

    def theirs(e: Example) -> bool:
        return e.has_image and (e.entity in ids or _digest(e.image) in digests
                                or e.meta.get("caption") in captions)

    kept: list[Example] = []
    dropped = as_text = 0
    for e in examples:
        if not theirs(e):
            kept.append(e)
        elif e.meta.get("column") == "UM_QA":
            kept.append(dataclasses.replace(e, image=None, meta={**e.meta, "type": "Pure_Text"}))
            as_text += 1
        else:
            dropped += 1
    if not dropped:
        raise DataError(f"none of the fine-tune split's image questions in {root} belongs to {forget}'s people "
                        "(no shared ID, image or caption): cannot build the retrained reference")
    return kept, dropped, as_text
