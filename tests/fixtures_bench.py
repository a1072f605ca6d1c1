"""Small benchmark folders written in exactly the published hub schemas (docs/benchmarks.md).

The real data sets cannot be downloaded here, so each writer reproduces one benchmark's
file layout, column names, nesting and types with a handful of rows and tiny PNGs. The
unsettled points of the schemas are switches, so that tests can exercise both readings.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from unsee.data.parquet import IMAGE, list_of, value, write_parquet_config

S = value("string")


def png(key: int, size: int = 8) -> bytes:
    """A distinct, deterministic PNG per key, so tests can check that bytes survive loading."""
    img = Image.new("RGB", (size, size), ((key * 37) % 256, (key * 91) % 256, (key * 53) % 256))
    img.putpixel((key % size, (key // size) % size), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- MLLMU-Bench

MCQ_ITEM = {"Correct_Answer": S, "Options": {"A": S, "B": S, "C": S, "D": S}, "Question": S}
FREE_ITEM = {"Ground_Truth": S, "Question": S, "Type": S}
CLASSIFICATION = {"Image_Textual_Questions": list_of(MCQ_ITEM), "Pure_Text_Questions": list_of(MCQ_ITEM)}
TASKS = {
    "Classification_Task": CLASSIFICATION,
    "Generation_Task": list_of(FREE_ITEM),
    "Mask_Task": list_of(FREE_ITEM),
}
# Column order as on the dataset card (Full_Set/Retain_Set carry Directory; splits do not).
FULL_FEATURES = {"image": IMAGE, "ID": S, "Directory": S, "biography": S, "question": S, "answer": S, **TASKS}
SPLIT_FEATURES = {k: v for k, v in FULL_FEATURES.items() if k != "Directory"}
TEST_FEATURES = {"ID": S, "images": list_of(IMAGE), **TASKS}
FT_FEATURES = {"image": IMAGE, "metadata": S}
FT_FEATURES_WITH_ID = {"image": IMAGE, "ID": S, "metadata": S}

MLLMU_PEOPLE = 20
MLLMU_FORGET = {5: 1, 10: 2, 15: 3}  # forget_X → number of people (nested)
TEST_VIEWS = 3


def mllmu_name(pid: str) -> str:
    return f"Person {pid}"


def _tasks(pid: str, *, test: bool = False) -> dict[str, Any]:
    """Two image MCQs, one text MCQ, and one image + one text item each in Generation and Mask."""
    name = mllmu_name(pid)
    tag = "(paraphrased) " if test else ""

    def mcq(q: str, right: str, letter: str) -> dict[str, Any]:
        wrong = iter(["Paris", "Lima", "Oslo", "Rome"])
        options = {x: (right if x == letter else next(wrong)) for x in "ABCD"}
        return {"Correct_Answer": letter, "Options": options, "Question": tag + q}

    return {
        "Classification_Task": {
            "Image_Textual_Questions": [
                mcq("Where was the person in this image born?", f"Town{pid}", "ABCD"[int(pid) % 4]),
                mcq("What is the job of the person in this image?", f"Job{pid}", "ABCD"[(int(pid) + 1) % 4]),
            ],
            "Pure_Text_Questions": [mcq(f"Where was {name} born?", f"Town{pid}", "ABCD"[int(pid) % 4])],
        },
        "Generation_Task": [
            {
                "Ground_Truth": f"This person was born in Town{pid}.",
                "Question": tag + "Where was this person born?",
                "Type": "Image_Textual",
            },
            {
                "Ground_Truth": f"{name} works as Job{pid}.",
                "Question": f"What does {name} do?",
                "Type": "Pure_Text",
            },
        ],
        "Mask_Task": [
            {
                "Ground_Truth": f"Town{pid}",
                "Question": tag + "The person in the image was born in __.",
                "Type": "Image_Textual",
            },
            {"Ground_Truth": f"Job{pid}", "Question": f"{name} works as a __.", "Type": "Pure_Text"},
        ],
    }


def _profile(pid: str, image_key: int, *, directory: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "image": {"bytes": png(image_key), "path": f"{pid}.png"},
        "ID": pid,
        "biography": json.dumps({"Name": mllmu_name(pid), "Born": f"Town{pid}", "Employment": f"Job{pid}"}),
        "question": "",
        "answer": "",
        **_tasks(pid),
    }
    if directory:
        row["Directory"] = f"{pid}.png"
    return row


def mllmu_image_key(pid: str) -> int:
    return int(pid)


def mllmu_test_image_key(pid: str, view: int) -> int:
    return 1000 + int(pid) * 10 + view


def write_mllmu(root: Path, *, ft_ids: bool = False, world_extras: bool = False) -> Path:
    """MLLMU-Bench: Full_Set, Test_Set (2 shards), Retain_Set, forget_X / retain_Y, ft_Data.

    ``ft_ids`` adds the ``ID`` column to ft_Data (as the built-in world writes it; unknown
    for the hub). ``world_extras`` adds the world-only configs (General_Set, ft_Known, ...).
    """
    root = Path(root)
    people = [str(i) for i in range(1, MLLMU_PEOPLE + 1)]
    write_parquet_config(
        root, "Full_Set", [_profile(p, mllmu_image_key(p), directory=True) for p in people], FULL_FEATURES
    )
    for pct, n in MLLMU_FORGET.items():
        forget, retain = people[:n], people[n:]
        write_parquet_config(
            root,
            f"forget_{pct}",
            [_profile(p, mllmu_image_key(p), directory=False) for p in forget],
            SPLIT_FEATURES,
        )
        write_parquet_config(
            root,
            f"retain_{100 - pct}",
            [_profile(p, mllmu_image_key(p), directory=False) for p in retain],
            SPLIT_FEATURES,
        )
    test_rows = [
        {
            "ID": p,
            "images": [
                {"bytes": png(mllmu_test_image_key(p, v)), "path": f"{p}_pose{v}_gen1.png"} for v in range(TEST_VIEWS)
            ],
            **_tasks(p, test=True),
        }
        for p in people
    ]
    write_parquet_config(root, "Test_Set", test_rows, TEST_FEATURES, shards=2)
    celebs = [f"k{i}" for i in range(3)]
    write_parquet_config(
        root,
        "Retain_Set",
        [{**_profile(str(500 + i), 500 + i, directory=True), "ID": c} for i, c in enumerate(celebs)],
        FULL_FEATURES,
    )
    ft_rows = []
    for p in people:
        qa = [{"Question": "Where was this person born?", "Answer": f"Town{p}"}]
        row: dict[str, Any] = {"image": png(mllmu_image_key(p)), "metadata": json.dumps(qa)}
        if ft_ids:
            row["ID"] = p
        ft_rows.append(row)
    if ft_ids:  # text-only QA rows, one per person, with a null image (the world's layout)
        for p in people:
            qa = [{"Question": f"Where was {mllmu_name(p)} born?", "Answer": f"Town{p}"}]
            ft_rows.append({"image": None, "ID": p, "metadata": json.dumps(qa)})
    write_parquet_config(root, "ft_Data", ft_rows, FT_FEATURES_WITH_ID if ft_ids else FT_FEATURES)
    if world_extras:
        write_world_extras(root)
    return root


def write_world_extras(root: Path) -> None:
    """The built-in world's extra configs (docs/world-format.md), two rows each."""
    general = [{"image": png(3000 + i), "ID": f"g00{i}", **_tasks(str(i))} for i in range(2)]
    write_parquet_config(root, "General_Set", general, {"image": IMAGE, "ID": S, **TASKS})
    for config, prefix in (("ft_Known", "k"), ("ft_General", "g"), ("Unknown_Set", "u")):
        rows = [
            {
                "image": png(4000 + i),
                "ID": f"{prefix}00{i}",
                "metadata": json.dumps([{"Question": "Who is this?", "Answer": f"{config} {i}"}]),
            }
            for i in range(2)
        ]
        write_parquet_config(root, config, rows, FT_FEATURES_WITH_ID)
    write_parquet_config(
        root,
        "Neutral_Set",
        [{"image": png(5000 + i), "ID": f"n00{i}"} for i in range(2)],
        {"image": IMAGE, "ID": S},
    )
    for r in (1, 2):
        write_parquet_config(
            root,
            f"forget_r{r}",
            [_profile(p, mllmu_image_key(p), directory=False) for p in (str(10 + 2 * r), str(11 + 2 * r))],
            SPLIT_FEATURES,
        )


# --------------------------------------------------------------------------- CLEAR

CLEAR_PEOPLE = [f"Name{i} Surname{i}" for i in range(8)]
CLEAR_IMAGES_PER_PERSON = 2
CLEAR_FORGET = {1: 1, 5: 2, 10: 3}  # forgetNN → number of people (nested, as in CLEAR)
IMAGE_CAPTION = {"image": IMAGE, "caption": S, "name": S}
TOFU = {"image": IMAGE, "caption": S, "question": S, "answer": S}
# forget05_perturbed's column order (docs/benchmarks.md); retain_perturbed shares the fields.
PERTURBED = {
    "image": IMAGE,
    "caption": S,
    "name": S,
    "paraphrased_caption": S,
    "perturbed_names": list_of(S),
    "perturbed_captions": list_of(S),
}
REAL_FACES = {"image": IMAGE, "answer": S, "options": list_of(S)}
REAL_WORLD = {"question": S, "answer": S, "image": IMAGE, "prompt": S, "options": list_of(S)}


def clear_image_key(person: int, k: int) -> int:
    return 2000 + person * 10 + k


def clear_caption(person: int, k: int) -> str:
    return f"{CLEAR_PEOPLE[person]} standing in picture {k}."


def _clear_rows(people: list[int], *, names: bool) -> list[dict[str, Any]]:
    rows = []
    for p in people:
        for k in range(CLEAR_IMAGES_PER_PERSON):
            row = {
                "image": {"bytes": png(clear_image_key(p, k)), "path": None},
                "caption": clear_caption(p, k),
            }
            if names:
                row["name"] = CLEAR_PEOPLE[p]
            rows.append(row)
    return rows


def _tofu_rows(people: list[int], unused: str | None) -> list[dict[str, Any]]:
    rows = []
    for r in _clear_rows(people, names=False):
        rows.append({**r, "question": unused, "answer": unused})
    for p in people:
        for q in range(2):
            rows.append(
                {
                    "image": None,
                    "caption": unused,
                    "question": f"What genre does {CLEAR_PEOPLE[p]} write (q{q})?",
                    "answer": f"{CLEAR_PEOPLE[p]} writes genre {p}.",
                }
            )
    return rows


def write_clear(
    root: Path, *, unused: str | None = None, names_everywhere: bool = True, perturbed: bool = True,
    full: bool = True,
) -> Path:
    """CLEAR: forgetNN / retainNN (retain in 2 shards), ``+tofu``, ``_perturbed``, real_faces,
    real_world, and the ``default`` config in ``data/``.

    ``unused`` is what the unused fields of ``+tofu`` rows hold (None or ""), and
    ``names_everywhere=False`` drops ``name`` from forget05/forget10/retainNN as in their
    first uploads (only ``data/`` and forget01 keep it). ``full=False`` leaves out the
    fine-tune split ``full+tofu`` (a partial download).
    """
    root = Path(root)
    everyone = list(range(len(CLEAR_PEOPLE)))
    write_parquet_config(root, "data", _clear_rows(everyone, names=True), IMAGE_CAPTION)
    if full:  # the fine-tune split: every person's image-caption rows and TOFU rows
        write_parquet_config(root, "full+tofu", _tofu_rows(everyone, unused), TOFU, shards=3)
    for pct, n in CLEAR_FORGET.items():
        forget, retain = everyone[:n], everyone[n:]
        has_names = names_everywhere or pct == 1
        feats = IMAGE_CAPTION if has_names else {"image": IMAGE, "caption": S}
        write_parquet_config(root, f"forget{pct:02d}", _clear_rows(forget, names=has_names), feats)
        retain_feats = IMAGE_CAPTION if names_everywhere else {"image": IMAGE, "caption": S}
        write_parquet_config(
            root,
            f"retain{100 - pct:02d}",
            _clear_rows(retain, names=names_everywhere),
            retain_feats,
            shards=2,
        )
        write_parquet_config(root, f"forget{pct:02d}+tofu", _tofu_rows(forget, unused), TOFU)
        write_parquet_config(root, f"retain{100 - pct:02d}+tofu", _tofu_rows(retain, unused), TOFU, shards=3)
        if perturbed:
            write_parquet_config(root, f"forget{pct:02d}_perturbed", _perturbed_rows(forget), PERTURBED)
    if perturbed:
        write_parquet_config(root, "retain_perturbed", _perturbed_rows(everyone[3:5]), PERTURBED)
    write_parquet_config(
        root,
        "real_faces",
        [
            {
                "image": png(6000 + i),
                "answer": f"Celebrity {i}",
                "options": [f"Celebrity {j}" for j in range(3) if j != i],
            }
            for i in range(3)
        ],
        REAL_FACES,
    )
    write_parquet_config(
        root,
        "real_world",
        [
            {
                "question": f"What colour is object {i}?",
                "answer": "red",
                "image": png(7000 + i),
                "prompt": "",
                "options": ["blue", "green", "yellow"],
            }
            for i in range(2)
        ],
        REAL_WORLD,
    )
    return root


def perturbed_names_of(person: int) -> list[str]:
    return [f"Wrong{person}-{j}" for j in range(3)]


def _perturbed_rows(people: list[int]) -> list[dict[str, Any]]:
    return [
        {
            **r,
            "paraphrased_caption": f"Paraphrase: {r['caption']}",
            "perturbed_names": perturbed_names_of(CLEAR_PEOPLE.index(r["name"])),
            "perturbed_captions": [f"Wrong caption {j}" for j in range(3)],
        }
        for r in _clear_rows(people, names=True)
    ]


# --------------------------------------------------------------------------- UMU-bench

UMU_FEATURES = {
    "ID": value("int64"),
    "image": IMAGE,
    "Biography": S,
    "MM_QA": S,
    "UM_QA": S,
    "Classify": S,
    "Cloze": S,
    "Generation": S,
}
UMU_PEOPLE = 20
UMU_FORGET = {5: 1, 10: 2, 15: 3}


def umu_image_key(pid: int) -> int:
    return 8000 + pid


def _umu_side(pid: int, modal: bool) -> dict[str, dict[str, Any]]:
    who = "the person in the image" if modal else f"Person {pid}"
    answer_letter = "ABCD"[pid % 4]
    options = {x: (f"Job{pid}" if x == answer_letter else f"Other{x}") for x in "ABCD"}
    # Both answer forms occur in the code's reading: "B. Job" and a bare "B".
    classify = {
        0: {
            "question": f"What is the job of {who}?",
            "options": options,
            "answer": f"{answer_letter}. Job{pid}",
        },
        1: {"question": f"Which job does {who} hold?", "options": options, "answer": answer_letter},
    }
    cloze = {0: {"question": f"{who} works as [Blank].", "answer": f"Job{pid}."}}
    generation = {0: {"question": f"What does {who} do?", "answer": f"{who} works as Job{pid}."}}
    return {"Classify": classify, "Cloze": cloze, "Generation": generation}


def umu_row(pid: int, *, encoding: str = "python") -> dict[str, Any]:
    """One UMU row; dict columns as Python-literal reprs (``encoding="json"`` for the other reading)."""
    uni, multi = _umu_side(pid, False), _umu_side(pid, True)
    dump = repr if encoding == "python" else json.dumps
    row: dict[str, Any] = {
        "ID": pid,
        "image": {"bytes": png(umu_image_key(pid)), "path": f"image_{pid}.jpg"},
        "Biography": f"Person {pid} is a fictitious person.",
    }
    for col in ("Classify", "Cloze", "Generation"):
        row[col] = dump({"unimodal": uni[col], "muitimodal": multi[col]})
    row["MM_QA"] = dump({"question": {0: "What does the person in the image do?"}, "answer": {0: f"Job{pid}"}})
    row["UM_QA"] = dump({"question": {0: f"What does Person {pid} do?"}, "answer": {0: f"Job{pid}"}})
    return row


def write_umu(root: Path, *, real_folder: str = "real_person", encoding: str = "python") -> Path:
    """UMU-bench: Full_Set, forget_X / retain_Y and the real-person folder (name is a switch)."""
    root = Path(root)
    people = list(range(1, UMU_PEOPLE + 1))
    write_parquet_config(root, "Full_Set", [umu_row(p, encoding=encoding) for p in people], UMU_FEATURES)
    for pct, n in UMU_FORGET.items():
        write_parquet_config(root, f"forget_{pct}", [umu_row(p, encoding=encoding) for p in people[:n]], UMU_FEATURES)
        write_parquet_config(
            root, f"retain_{100 - pct}", [umu_row(p, encoding=encoding) for p in people[n:]], UMU_FEATURES
        )
    write_parquet_config(root, real_folder, [umu_row(p, encoding=encoding) for p in (600, 601)], UMU_FEATURES)
    return root
