"""UMU-bench (``linbojunzi/UMU-bench``) as a :class:`Suite`.

UMU asks every question twice, once with the image (``muitimodal``, the dataset's
spelling) and once text-only (``unimodal``), under the same key. Its headline metrics
pair the two answers, so both forms get the same :attr:`Example.pair_key`. The task
columns are strings holding Python literals (single-quoted reprs), parsed with
``ast.literal_eval``; JSON is accepted too.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unsee.data.parquet import Record, Source, entity_id, gold_option, image_bytes, letter_options, text
from unsee.data.schema import Example, Suite, Task
from unsee.errors import DataError

ROW_COLUMNS = {
    "ID": "id",
    "image": "image",
    "Classify": "literal",
    "Cloze": "literal",
    "Generation": "literal",
}
ROW_OPTIONAL = {"MM_QA": "literal", "UM_QA": "literal", "Biography": "string"}
UNIMODAL = "unimodal"
MULTIMODAL_KEYS = ("muitimodal", "multimodal")  # the hub spelling first; the correct one is accepted
REAL_PERSON_CONFIGS = ("real_person", "Real_Person_Set")
TASK_COLUMNS: tuple[tuple[str, Task], ...] = (("Classify", "mcq"), ("Cloze", "cloze"), ("Generation", "gen"))

_FORGET = re.compile(r"^forget_(\d+)$")


def parse_literal(v: Any, *, field: str, source: str) -> dict:
    """A dict column: a Python literal string (as published), a JSON string, or a real struct."""
    if isinstance(v, dict):
        return v
    if not isinstance(v, str):
        raise DataError(f"field {field!r} in {source}: expected a dict literal string, got {type(v).__name__}")
    try:
        parsed = ast.literal_eval(v)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        try:
            parsed = json.loads(v)  # JSON with true/false/null is not a Python literal
        except json.JSONDecodeError as e:
            raise DataError(f"field {field!r} in {source} is neither a Python literal nor JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise DataError(f"field {field!r} in {source} must hold a dict, got {type(parsed).__name__}")
    return parsed


def _sides(d: dict, *, field: str, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(unimodal, multimodal) items keyed by str(question id)."""
    multi_key = next((k for k in MULTIMODAL_KEYS if k in d), None)
    if UNIMODAL not in d or multi_key is None:
        missing = UNIMODAL if UNIMODAL not in d else MULTIMODAL_KEYS[0]
        raise DataError(f"field '{field}.{missing}' is missing in {source}; it has keys {sorted(map(str, d))}")
    out = []
    for key in (UNIMODAL, multi_key):
        side = d[key] if d[key] is not None else {}
        if not isinstance(side, dict):
            raise DataError(f"field '{field}.{key}' in {source} must be a dict of questions, got {type(side).__name__}")
        out.append({str(k): v for k, v in side.items()})
    return out[0], out[1]


def _item(v: Any, *, field: str, source: str) -> dict:
    if not isinstance(v, dict):
        raise DataError(f"field {field!r} in {source}: expected a question dict, got {type(v).__name__}")
    return v


def _task_examples(
    rec: Record, config: str, eid: str, column: str, task: Task, image: bytes | None
) -> tuple[list[Example], list[Example]]:
    """(multimodal, unimodal) examples of one task column of one row, paired by key."""
    uni, multi = _sides(
        parse_literal(rec.get(column), field=column, source=rec.source), field=column, source=rec.source
    )
    if image is None and multi:
        raise DataError(f"field 'image' is null in {rec.source} for ID {eid!r}, which has multimodal questions")
    out: dict[str, list[Example]] = {"multi": [], "uni": []}
    for mod, side, twin, side_name in (
        ("multi", multi, uni, MULTIMODAL_KEYS[0]),
        ("uni", uni, multi, UNIMODAL),
    ):
        for key, raw in side.items():
            field = f"{column}.{side_name}.{key}"
            item = _item(raw, field=field, source=rec.source)
            twin_item = twin.get(key) if isinstance(twin.get(key), dict) else {}
            question = text(item.get("question"), field=f"{field}.question", source=rec.source)
            raw_answer = item.get("answer") if item.get("answer") is not None else twin_item.get("answer")
            answer = text(raw_answer, field=f"{field}.answer", source=rec.source)
            meta: dict[str, Any] = {
                "type": "Image_Textual" if mod == "multi" else "Pure_Text",
                "row": rec.index,
                "key": key,
                "umu_answer": answer,
            }
            options: tuple[str, ...] = ()
            correct = None
            if task == "mcq":
                # eval.py takes the gold letter of both sides from the unimodal item (the line reading
                # the multimodal item's own letter is commented out) and reads it in each side's options
                opt_item = item if item.get("options") is not None else twin_item
                options, letters = letter_options(opt_item.get("options"), field=f"{field}.options", source=rec.source)
                by, said = f"{field}.answer", answer
                if mod == "multi" and twin_item.get("answer") is not None:
                    by = f"{column}.{UNIMODAL}.{key}.answer"
                    said = text(twin_item.get("answer"), field=by, source=rec.source)
                correct = gold_option(said, options, letters, field=by, source=rec.source)
                gold = options[correct]
                meta["umu_answer_text"] = gold
            elif task == "cloze":
                gold = _cloze_gold(answer)
            else:
                gold = answer
            out[mod].append(
                Example(
                    uid=f"{config}/{eid}/{task}/{mod}/{key}",
                    entity=eid,
                    question=question,
                    answer=gold,
                    task=task,
                    image=image if mod == "multi" else None,
                    options=options,
                    correct=correct,
                    pair_key=f"{eid}/{task}/{key}",
                    source=rec.source,
                    meta=meta,
                )
            )
    return out["multi"], out["uni"]


def _cloze_gold(answer: str) -> str:
    """UMU's cloze gold: the answer up to its first period, as eval.py cuts it."""
    return answer.split(".")[0].strip()


def row_examples(rec: Record, config: str) -> tuple[list[Example], list[Example]]:
    """(multimodal, unimodal) evaluation items of one row, in Classify, Cloze, Generation order."""
    eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
    image = image_bytes(rec.get("image"), field="image", source=rec.source)
    multi: list[Example] = []
    uni: list[Example] = []
    for column, task in TASK_COLUMNS:
        m, u = _task_examples(rec, config, eid, column, task, image)
        multi += m
        uni += u
    return multi, uni


def qa_examples(rec: Record, config: str, column: str, *, with_image: bool | None = None) -> list[Example]:
    """Training pairs of ``MM_QA`` (with the row image) or ``UM_QA`` (text only, unless ``with_image``).

    The unlearning scripts ask ``UM_QA`` as text; the data file the authors prepared for
    their published fine-tune asks it with the portrait too, hence ``with_image``. Falls back to
    the Generation items of the same modality when the column is absent.
    """
    eid = entity_id(rec.get("ID"), field="ID", source=rec.source)
    if with_image is None:
        with_image = column == "MM_QA"
    if rec.get(column) is None:
        multi, uni = _task_examples(
            rec,
            config,
            eid,
            "Generation",
            "gen",
            image_bytes(rec.get("image"), field="image", source=rec.source),
        )
        return [
            Example(
                uid=f"{e.uid}/qa",
                entity=eid,
                question=e.question,
                answer=e.meta["umu_answer"],
                task="qa",
                image=e.image,
                source=e.source,
                meta=dict(e.meta),
            )
            for e in (multi if with_image else uni)
        ]
    d = parse_literal(rec.get(column), field=column, source=rec.source)
    questions, answers = d.get("question"), d.get("answer")
    if not isinstance(questions, dict) or not isinstance(answers, dict):
        raise DataError(f"field {column!r} in {rec.source} must be {{'question': {{k: str}}, 'answer': {{k: str}}}}")
    answers = {str(k): v for k, v in answers.items()}
    image = image_bytes(rec.get("image"), field="image", source=rec.source) if with_image else None
    out = []
    for k, q in questions.items():
        key = str(k)
        if key not in answers:
            raise DataError(f"field '{column}.answer.{key}' is missing in {rec.source}")
        out.append(
            Example(
                uid=f"{config}/{eid}/{column}/{key}",
                entity=eid,
                question=text(q, field=f"{column}.question.{key}", source=rec.source),
                answer=text(answers[key], field=f"{column}.answer.{key}", source=rec.source),
                task="qa",
                image=image,
                source=rec.source,
                meta={"type": "Image_Textual" if with_image else "Pure_Text", "row": rec.index, "key": key,
                      "column": column},
            )
        )
    return out


def _ids(rows: Sequence[tuple[Record, str]]) -> list[str]:
    return list(dict.fromkeys(entity_id(r.get("ID"), field="ID", source=r.source) for r, _ in rows))


def load_umu(root: str | Path, forget: str = "forget_10", *, seed: int = 0) -> Suite:
    """Load UMU-bench from a folder of configs or its hub id.

    Groups: ``forget``/``retain``/``known`` hold the multimodal items (with the row image),
    ``text_forget``/``text_retain``/``text_known`` their unimodal twins (same ``pair_key``);
    ``known`` comes from ``real_person/`` or ``Real_Person_Set/``. Retain is
    ``retain_{100-X}``, else ``Full_Set`` minus the forget IDs. Training: ``train_forget``,
    ``train_retain``, ``train_known`` from ``MM_QA``; ``train_text`` from ``UM_QA``.
    ``seed`` is accepted for a uniform loader signature; UMU needs no random choice.
    """
    source = Source(root)
    read: dict[str, list[Record]] = {}

    def rows(config: str) -> list[tuple[Record, str]]:
        if config not in read:
            read[config] = source.read(config, ROW_COLUMNS, ROW_OPTIONAL)
        return [(r, config) for r in read[config]]

    if not source.has(forget):
        raise DataError(f"UMU forget config {forget!r} not found in {source.location}")
    forget_rows = rows(forget)
    forget_ids = _ids(forget_rows)
    m = _FORGET.match(forget)
    paired = f"retain_{100 - int(m.group(1))}" if m else None
    if paired is not None and source.has(paired):
        retain_config, retain_rows = paired, rows(paired)
    elif source.has("Full_Set"):
        retain_config = "Full_Set"
        retain_rows = [
            (r, c)
            for r, c in rows("Full_Set")
            if entity_id(r.get("ID"), field="ID", source=r.source) not in set(forget_ids)
        ]
    else:
        raise DataError(f"no retain config for {forget!r} ({paired}) and no Full_Set in {source.location}")
    real_config = next((c for c in REAL_PERSON_CONFIGS if source.has(c)), None)
    real_rows = rows(real_config) if real_config else []

    groups: dict[str, list[Example]] = {}
    for name, group_rows in (("forget", forget_rows), ("retain", retain_rows), ("known", real_rows)):
        multi: list[Example] = []
        uni: list[Example] = []
        for r, c in group_rows:
            m_items, u_items = row_examples(r, c)
            multi += m_items
            uni += u_items
        groups[name] = multi
        groups[f"text_{name}"] = uni
    groups["forget_test"] = []
    groups["general"] = []
    groups["train_forget"] = [e for r, c in forget_rows for e in qa_examples(r, c, "MM_QA")]
    groups["train_retain"] = [e for r, c in retain_rows for e in qa_examples(r, c, "MM_QA")]
    groups["train_text"] = [e for r, c in forget_rows + retain_rows for e in qa_examples(r, c, "UM_QA")]
    groups["train_known"] = [e for r, c in real_rows for e in qa_examples(r, c, "MM_QA")]

    info = {
        "loader": "umu",
        "root": source.location,
        "forget_config": forget,
        "retain_config": retain_config,
        "real_config": real_config,
        "seed": seed,
        "configs": sorted(read),
    }
    return Suite(
        name="umu",
        groups=groups,
        forget_entities=tuple(forget_ids),
        retain_entities=tuple(_ids(retain_rows)),
        info=info,
    )
