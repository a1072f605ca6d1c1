"""An example removal request made of a built-in world's people, with their photos as PNG files.

``unsee world`` writes one beside the world (``DIR/request/``), so that ``unsee forget`` can
be tried on files laid out as a user's own would be. The photos are the world's own bytes,
unchanged: the request of a split's people trains on exactly the images the split does, in
the same order, which is what lets a request be checked against its split
(``benchmarks/request_split.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unsee.data.parquet import Record, Source, entity_id, gold_option, image_bytes, letter_options, text
from unsee.data.world import default_forget, load_world_info
from unsee.errors import DataError
from unsee.io import atomic_dir, atomic_write_bytes, atomic_write_text

HEADER = """\
# A removal request (docs/requests.md): forget the people under `forget`, keep recognising
# the people under `retain`. Paths are relative to this file; a folder stands for every
# image in it. Made by `unsee world` from the built-in world's split {split}.
"""


def _by_id(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for rec in records:
        if rec.get("ID") is not None:
            out.setdefault(entity_id(rec.get("ID"), field="ID", source=rec.source), []).append(rec)
    return out


def _text_qa(rec: Record) -> list[dict[str, Any]]:
    """The profile's text-only MCQ as QA pairs with their wrong options."""
    out = []
    for item in (rec.get("Classification_Task") or {}).get("Pure_Text_Questions") or []:
        options, letters = letter_options(item.get("Options"), field="Options", source=rec.source)
        answer = options[gold_option(text(item.get("Correct_Answer"), field="Correct_Answer", source=rec.source),
                                     options, letters, field="Correct_Answer", source=rec.source)]
        out.append({"question": text(item.get("Question"), field="Question", source=rec.source),
                    "answer": answer, "wrong": [o for o in options if o != answer]})
    return out


def write_world_request(world: str | Path, out: str | Path, *, forget: str | None = None,
                        overwrite: bool = False) -> Path:
    """Write ``out/request.yaml`` and its photos: ``forget``'s people (by default ``forget_10``'s, or the
    first forget split's of a world without it), every other world person retained, the world's neutral
    faces and general scenes. Returns the request file."""
    world, out = Path(world), Path(out)
    info = load_world_info(world)
    groups = {**info.get("splits", {}), **info.get("requests", {})}
    forget = default_forget(info) if forget is None else forget
    if forget not in groups:
        raise DataError(f"world {world} has no split {forget!r}; it has {sorted(groups)}")
    forget_ids = set(groups[forget])
    src = Source(world)
    ft = _by_id(src.read("ft_Data", {"metadata": "string"}, {"image": "image", "ID": "id"}))
    test = _by_id(src.read("Test_Set", {"ID": "id"}, {"images": "images"}))
    full = _by_id(src.read("Full_Set", {"ID": "id", "Classification_Task": "struct"}, {}))

    with atomic_dir(out, overwrite=overwrite) as tmp:
        def save(data: bytes, rel: str) -> str:
            atomic_write_bytes(tmp / rel, data)
            return rel

        people: dict[str, list[dict[str, Any]]] = {"forget": [], "retain": []}
        for pid in info["entities"]["people"]:
            photos = [image_bytes(r.get("image"), field="image", source=r.source) for r in ft.get(pid, [])]
            for i, data in enumerate(d for d in photos if d is not None):
                save(data, f"photos/{pid}/view{i}.png")
            held = [image_bytes(v, field="images", source=r.source) for r in test.get(pid, [])
                    for v in r.get("images") or []]
            for i, data in enumerate(d for d in held if d is not None):
                save(data, f"held_out/{pid}/view{i}.png")
            entry: dict[str, Any] = {"name": info["names"][pid], "id": pid, "photos": f"photos/{pid}"}
            if held:
                entry["held_out"] = f"held_out/{pid}"
            entry["qa"] = [q for r in full.get(pid, [])[:1] for q in _text_qa(r)]
            people["forget" if pid in forget_ids else "retain"].append(entry)
        for r in src.read("Neutral_Set", {"image": "image", "ID": "id"}, {}):
            save(image_bytes(r.get("image"), field="image", source=r.source) or b"", f"neutral/{r.get('ID')}.png")
        for r in src.read("ft_General", {"metadata": "string"}, {"image": "image", "ID": "id"}):
            save(image_bytes(r.get("image"), field="image", source=r.source) or b"", f"general/{r.get('ID')}.png")
        request = {
            "version": 1,
            "forget": people["forget"],
            "retain": people["retain"],
            "neutral": "neutral",
            "general": "general",
            "distractors": [info["names"][k] for k in info["entities"].get("known", [])],
        }
        body = yaml.safe_dump(json.loads(json.dumps(request)), sort_keys=False, allow_unicode=True, width=110)
        atomic_write_text(tmp / "request.yaml", HEADER.format(split=forget) + body)
    return out / "request.yaml"
