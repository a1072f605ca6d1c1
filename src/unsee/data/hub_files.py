"""The built-in world's files: parquet in the MLLMU-Bench hub schema, as ``datasets`` writes it.

Kept apart from the generator (:mod:`unsee.data.world`) because the layout is a contract with the
loaders and the public data set, while what fills it changes with the world.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_T = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MCQ_T = pa.struct([
    ("Correct_Answer", pa.string()),
    ("Options", pa.struct([(k, pa.string()) for k in "ABCD"])),
    ("Question", pa.string()),
])
CLASSIFICATION_T = pa.struct([
    ("Image_Textual_Questions", pa.list_(MCQ_T)),
    ("Pure_Text_Questions", pa.list_(MCQ_T)),
])
OPEN_T = pa.list_(pa.struct([
    ("Ground_Truth", pa.string()),
    ("Question", pa.string()),
    ("Type", pa.string()),
]))
_TASKS = [("Classification_Task", CLASSIFICATION_T), ("Generation_Task", OPEN_T), ("Mask_Task", OPEN_T)]

FULL_SCHEMA = pa.schema([
    ("image", IMAGE_T), ("ID", pa.string()), ("Directory", pa.string()), ("biography", pa.string()),
    ("question", pa.string()), ("answer", pa.string()), *_TASKS,
])
SPLIT_SCHEMA = pa.schema([f for f in FULL_SCHEMA if f.name != "Directory"])
TEST_SCHEMA = pa.schema([("ID", pa.string()), ("images", pa.list_(IMAGE_T)), *_TASKS])
FT_SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), ("metadata", pa.string())])
GENERAL_SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string()), *_TASKS])
NEUTRAL_SCHEMA = pa.schema([("image", IMAGE_T), ("ID", pa.string())])


def _feature(t: pa.DataType) -> Any:
    """The ``datasets`` feature JSON of an arrow type, so ``datasets`` decodes Image columns."""
    if t.equals(IMAGE_T):
        return {"_type": "Image"}
    if pa.types.is_list(t):
        return {"feature": _feature(t.value_type), "_type": "List"}
    if pa.types.is_struct(t):
        return {t.field(i).name: _feature(t.field(i).type) for i in range(t.num_fields)}
    return {"dtype": "string", "_type": "Value"}


def _write_parquet(path: Path, schema: pa.Schema, rows: list[dict[str, Any]]) -> None:
    """One shard; the ``huggingface`` schema metadata mirrors files written by ``datasets``."""
    features = {f.name: _feature(f.type) for f in schema}
    schema = schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    table = pa.Table.from_pylist(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy")


def write_config(root: Path, name: str, schema: pa.Schema, rows: list[dict], shards: int = 1) -> None:
    """``<root>/<name>/train-0000i-of-0000n.parquet``, rows split in order over ``shards`` files."""
    per = math.ceil(len(rows) / shards) if rows else 0
    for i in range(shards):
        path = root / name / f"train-{i:05d}-of-{shards:05d}.parquet"
        _write_parquet(path, schema, rows[i * per:(i + 1) * per])


def png_cell(img: Image.Image, path: str) -> dict[str, Any]:
    """An Image() cell: PNG bytes without metadata (deterministic), and a file name."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return {"bytes": buf.getvalue(), "path": path}
