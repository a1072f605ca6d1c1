"""Read and write the hub layout that MLLMU-Bench, CLEAR, UMU-bench and the built-in world share.

All of them are ``datasets``-style parquet repositories: one folder per config holding
``train-0000i-of-0000n.parquet`` shards, ``Image()`` columns stored as the struct
``{bytes: binary, path: string}`` and the ``datasets`` features as JSON in the schema
metadata. Reading goes through pyarrow, so that loading a benchmark needs neither
``datasets`` nor network; a hub id falls back to ``datasets.load_dataset`` on a user's
machine. Image ``path`` values are never opened: only the embedded bytes count, as in
every reference implementation.

Features are written in the JSON form of ``datasets.Features.to_dict()`` (built by hand
with :func:`value`, :func:`list_of` and :data:`IMAGE`, or passed as a ``datasets.Features``),
so the files load with ``datasets`` exactly like the published ones.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unsee.data.schema import LETTERS
from unsee.errors import DataError
from unsee.io import atomic_write_bytes, home_path

Feature = Any  # a features-JSON node: {"_type": ...}, a dict of sub-features, or a one-item list

IMAGE: dict[str, str] = {"_type": "Image"}

# Column kinds a loader can ask for; each names the arrow types it accepts.
Kind = str
KINDS = ("string", "id", "image", "images", "struct", "list", "string_list", "literal")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def value(dtype: str = "string") -> dict[str, str]:
    """A ``datasets`` ``Value`` feature."""
    return {"dtype": dtype, "_type": "Value"}


def list_of(feature: Feature) -> dict[str, Any]:
    """A ``datasets`` ``List`` feature (``sequence:``/``list:`` in a card; a parquet list)."""
    return {"feature": feature, "_type": "List"}


# --------------------------------------------------------------------------- writing


def features_dict(features: Mapping[str, Feature] | Any) -> dict[str, Any]:
    """Accept either the features JSON or a ``datasets.Features`` (anything with ``to_dict``)."""
    if hasattr(features, "to_dict"):  # datasets.Features
        return dict(features.to_dict())
    if not isinstance(features, Mapping):
        raise DataError(f"features must be a mapping of column name to feature, got {type(features).__name__}")
    return dict(features)


def arrow_type(feature: Feature) -> pa.DataType:
    """The parquet type that ``datasets`` stores for one feature."""
    if isinstance(feature, list):
        if len(feature) != 1:
            raise DataError(f"a list feature must hold exactly one item feature, got {feature!r}")
        return pa.list_(arrow_type(feature[0]))
    if not isinstance(feature, Mapping):
        raise DataError(f"not a feature: {feature!r}")
    kind = feature.get("_type")
    if kind is None:
        return pa.struct([pa.field(k, arrow_type(v)) for k, v in feature.items()])
    if kind == "Image":
        return pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
    if kind == "Value":
        dtype = feature.get("dtype", "string")
        try:
            return pa.type_for_alias(dtype)
        except (ValueError, KeyError) as e:
            raise DataError(f"unknown Value dtype {dtype!r}") from e
    if kind in ("List", "Sequence", "LargeList"):
        inner = arrow_type(feature["feature"])
        return pa.large_list(inner) if kind == "LargeList" else pa.list_(inner)
    raise DataError(f"unsupported feature type {kind!r}")


def arrow_schema(features: Mapping[str, Feature] | Any) -> pa.Schema:
    """Arrow schema with the ``huggingface`` metadata that ``datasets`` writes and reads back."""
    feats = features_dict(features)
    meta = json.dumps({"info": {"features": feats}})
    return pa.schema([pa.field(k, arrow_type(v)) for k, v in feats.items()], metadata={"huggingface": meta})


def _encode(feature: Feature, v: Any, where: str) -> Any:
    """Turn a python row value into what the arrow type of ``feature`` expects."""
    if v is None:
        return None
    if isinstance(feature, list):
        feature = list_of(feature[0])
    kind = feature.get("_type")
    if kind == "Image":
        if isinstance(v, bytes | bytearray):
            return {"bytes": bytes(v), "path": None}
        if isinstance(v, Mapping) and "bytes" in v:
            return {"bytes": v.get("bytes"), "path": v.get("path")}
        raise DataError(f"{where}: an Image value must be bytes or {{bytes, path}}, got {type(v).__name__}")
    if kind in ("List", "Sequence", "LargeList"):
        if isinstance(v, str | bytes) or not isinstance(v, Iterable):
            raise DataError(f"{where}: expected a list, got {type(v).__name__}")
        return [_encode(feature["feature"], x, where) for x in v]
    if kind is None:
        if not isinstance(v, Mapping):
            raise DataError(f"{where}: expected a dict with keys {sorted(feature)}, got {type(v).__name__}")
        extra = set(v) - set(feature)
        if extra:
            raise DataError(f"{where}: keys {sorted(extra)} are not in the features")
        return {k: _encode(f, v.get(k), f"{where}.{k}") for k, f in feature.items()}
    return v


def shard_name(i: int, n: int, split: str = "train") -> str:
    return f"{split}-{i:05d}-of-{n:05d}.parquet"


def write_parquet_config(
    root: str | Path,
    config: str,
    rows: Sequence[Mapping[str, Any]],
    features: Mapping[str, Feature] | Any,
    *,
    shards: int = 1,
) -> list[Path]:
    """Write ``rows`` as ``<root>/<config>/train-0000i-of-0000n.parquet``, byte-deterministic.

    Image values may be raw bytes or ``{bytes, path}`` dicts; rows are split into ``shards``
    contiguous parts (MLLMU-Bench's Test_Set has two). Stale shards from an earlier write
    are removed, so a reader never mixes two versions.
    """
    if shards < 1:
        raise DataError(f"shards must be >= 1, got {shards}")
    feats = features_dict(features)
    schema = arrow_schema(feats)
    folder = Path(root) / config
    folder.mkdir(parents=True, exist_ok=True)
    encoded = []
    for i, row in enumerate(rows):
        extra = set(row) - set(feats)
        if extra:
            raise DataError(f"{config} row {i}: columns {sorted(extra)} are not in the features")
        encoded.append({k: _encode(f, row.get(k), f"{config} row {i} column {k!r}") for k, f in feats.items()})
    paths = []
    size, rest = divmod(len(encoded), shards)
    start = 0
    for s in range(shards):
        stop = start + size + (1 if s < rest else 0)
        table = pa.Table.from_pylist(encoded[start:stop], schema=schema)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="snappy")
        path = folder / shard_name(s, shards)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        paths.append(path)
        start = stop
    for old in folder.glob("train-*-of-*.parquet"):
        if old not in paths:
            old.unlink()
    return paths


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Record:
    """One row and where it came from, so that a bad value can be reported with its file."""

    row: dict[str, Any]
    source: str
    index: int

    def get(self, column: str, default: Any = None) -> Any:
        return self.row.get(column, default)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_null(t)


def _is_image(t: pa.DataType) -> bool:
    if pa.types.is_null(t):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def kind_matches(kind: Kind, t: pa.DataType) -> bool:
    """Whether a column of arrow type ``t`` can be read as ``kind``."""
    if kind == "string":
        return _is_string(t)
    if kind == "id":
        return _is_string(t) or pa.types.is_integer(t)
    if kind == "image":
        return _is_image(t)
    if kind == "images":
        return _is_list(t) and (pa.types.is_null(t) or _is_image(t.value_type))
    if kind == "struct":
        return pa.types.is_struct(t) or pa.types.is_null(t)
    if kind == "list":
        return _is_list(t)
    if kind == "string_list":
        return _is_list(t) and (pa.types.is_null(t) or _is_string(t.value_type))
    if kind == "literal":  # a dict written as a Python/JSON literal string, or a real struct
        return _is_string(t) or pa.types.is_struct(t)
    raise DataError(f"unknown column kind {kind!r}; use one of {KINDS}")


def check_columns(
    schema: pa.Schema, source: str, required: Mapping[str, Kind], optional: Mapping[str, Kind] | None = None
) -> None:
    """Raise a DataError naming the column and file for a missing or wrongly typed column."""
    for name in required:
        if schema.get_field_index(name) < 0:
            raise DataError(f"column {name!r} is missing in {source}; it has {schema.names}")
    for name, kind in {**(optional or {}), **required}.items():
        i = schema.get_field_index(name)
        if i >= 0 and not kind_matches(kind, schema.field(i).type):
            raise DataError(f"column {name!r} in {source} has type {schema.field(i).type}, expected {kind}")


def config_files(folder: Path) -> list[Path]:
    """The train shards of one config folder, in shard order.

    ``train-*.parquet`` is the hub layout; ``train/*.parquet`` is the parquet-converter
    layout; any other ``*.parquet`` is accepted when neither exists (a hand-made folder).
    """
    for pattern in ("train-*.parquet", "train/*.parquet", "*.parquet"):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    return []


def is_hub_id(root: str | Path) -> bool:
    """``owner/name`` that is not a local path: the only case that may go to the hub."""
    s = str(root)
    return isinstance(root, str) and bool(_HUB_ID.match(s)) and not Path(s).exists()


class Source:
    """A benchmark root: a local folder of configs, or a hub id read through ``datasets``."""

    def __init__(self, root: str | Path) -> None:
        self.root = root
        path = home_path(root)
        if path.is_dir():
            self.path: Path | None = path
            self.repo: str | None = None
        elif is_hub_id(root):
            self.path = None
            self.repo = str(root)
        elif path.exists():
            raise DataError(f"benchmark root {path} is a file; give the folder that holds one folder per config")
        else:
            raise DataError(f"benchmark root {path} does not exist and is not a hub id (owner/name)")
        self._hub_configs: set[str] | None = None

    @property
    def location(self) -> str:
        return str(self.path) if self.path is not None else f"hf://datasets/{self.repo}"

    def folder(self, config: str) -> Path:
        """Local folder of a config; CLEAR keeps its ``default`` config in ``data/``."""
        if self.path is None:
            raise DataError(f"{self.location} is a hub dataset; it has no local folder for {config!r}")
        if config == "default" and not (self.path / "default").is_dir():
            return self.path / "data"
        return self.path / config

    def has(self, config: str) -> bool:
        if self.path is not None:
            folder = self.folder(config)
            return folder.is_dir() and bool(config_files(folder))
        if self._hub_configs is None:
            import datasets

            try:
                self._hub_configs = set(datasets.get_dataset_config_names(self.repo))
            except Exception as e:  # network, auth, missing repo: all need the user's action
                raise DataError(f"cannot list the configs of hub dataset {self.repo}: {e}") from e
        return config in self._hub_configs

    def known_configs(self) -> list[str]:
        """The configs a name can be checked against: a local folder's config folders, or the hub configs already
        listed (none asked for here, so that an error message never waits on the network)."""
        if self.path is None:
            return sorted(self._hub_configs or ())
        return sorted(d.name for d in self.path.iterdir() if d.is_dir() and config_files(d))

    def describe(self, config: str) -> str:
        if self.path is not None:
            return str(self.folder(config))
        return f"{self.location} (config {config})"

    def read(
        self,
        config: str,
        required: Mapping[str, Kind],
        optional: Mapping[str, Kind] | None = None,
        *,
        all_columns: bool = False,
    ) -> list[Record]:
        """Rows of one config, with the columns checked; only the named columns are read
        unless ``all_columns``, which keeps loading a large image config cheap."""
        if self.path is None:
            return self._read_hub(config, required, optional)
        folder = self.folder(config)
        files = config_files(folder) if folder.is_dir() else []
        if not files:
            raise DataError(f"config {config!r} not found: no parquet files in {folder}")
        records: list[Record] = []
        for file in files:
            try:
                pfile = pq.ParquetFile(file)
                schema = pfile.schema_arrow
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{file} is not a readable parquet file: {e}") from e
            check_columns(schema, str(file), required, optional)
            wanted = None if all_columns else [c for c in {**required, **(optional or {})} if c in schema.names]
            try:
                rows = pfile.read(columns=wanted).to_pylist()
            except (OSError, pa.ArrowException) as e:
                raise DataError(f"{file} could not be read: {e}") from e
            records.extend(Record(row, str(file), i) for i, row in enumerate(rows))
        return records

    def _read_hub(self, config: str, required: Mapping[str, Kind], optional: Mapping[str, Kind]) -> list[Record]:
        import datasets

        where = self.describe(config)
        try:
            ds = datasets.load_dataset(self.repo, config, split="train")
        except Exception as e:  # the hub path is a convenience; report what failed and where
            raise DataError(f"could not load {where}: {e}") from e
        table = ds if isinstance(ds, pa.Table) else ds.with_format("arrow")[:]
        check_columns(table.schema, where, required, optional)
        return [Record(row, where, i) for i, row in enumerate(table.to_pylist())]


# --------------------------------------------------------------------------- values


def image_bytes(v: Any, *, field: str, source: str) -> bytes | None:
    """The embedded bytes of an Image value; ``None`` for a null image. ``path`` is never opened."""
    if v is None:
        return None
    if isinstance(v, bytes | bytearray):
        return bytes(v)
    if isinstance(v, Mapping):
        data = v.get("bytes")
        if isinstance(data, bytes | bytearray):
            return bytes(data)
        if data is None:
            if v.get("path"):
                raise DataError(
                    f"field {field!r} in {source} has no embedded image bytes, only the path "
                    f"{v.get('path')!r}; unsee never opens image paths, re-export with embedded images"
                )
            return None
    raise DataError(f"field {field!r} in {source}: expected an image struct {{bytes, path}}, got {type(v).__name__}")


def text(v: Any, *, field: str, source: str, allow_none: bool = False) -> str:
    """A string field; null becomes "" only where a benchmark leaves fields unused."""
    if v is None:
        if allow_none:
            return ""
        raise DataError(f"field {field!r} in {source} is null")
    if isinstance(v, str):
        return v
    raise DataError(f"field {field!r} in {source}: expected a string, got {type(v).__name__}")


def letter_options(v: Any, *, field: str, source: str) -> tuple[tuple[str, ...], list[str]]:
    """Lettered options ``{A: .., B: .., ...}``: their texts in letter order, and the letters.

    MLLMU-Bench and UMU-bench store options this way. Letters a row does not use may be
    null (Arrow structs carry every letter of the file); a gap before a used letter may not.
    """
    if not isinstance(v, dict):
        raise DataError(f"field {field!r} in {source} must map letters to options, got {v!r}")
    if beyond := [k for k, x in v.items() if x is not None and k not in LETTERS]:
        raise DataError(f"field {field!r} in {source} has options {beyond}; unsee reads options A to "
                        f"{LETTERS[-1]} ({len(LETTERS)} at most)")
    letters = [x for x in LETTERS if v.get(x) is not None]
    if len(letters) < 2 or letters != list(LETTERS[: len(letters)]):
        raise DataError(f"field {field!r} in {source} must hold options A, B, ... in order, got {v!r}")
    return tuple(text(v[x], field=f"{field}.{x}", source=source) for x in letters), letters


# A gold letter as the hubs write it: "C", "c.", "(C)", "C) Denver", "C: Denver", "C. Denver"
_GOLD_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:\s*[.:)]\s*(.*))?", re.S)


def gold_option(answer: str, options: Sequence[str], letters: Sequence[str], *, field: str, source: str) -> int:
    """The index of an MCQ's correct option, from a gold letter or from one option's whole text.

    A word is never read as its first letter: "Denver" is option D's text or nothing, so a text
    answer cannot mark another option correct; one read both ways ("D.C.", an option's text, beside an
    option D) is refused. A bare letter is the letter, as the hubs write it."""
    said = answer.strip()
    m = _GOLD_LETTER.fullmatch(said)
    letter = list(letters).index(m.group(1).upper()) if m and m.group(1).upper() in letters else None
    same = [i for i, o in enumerate(options) if o.strip().casefold() == said.casefold()]
    bare = m is not None and not m.group(2)  # "C", "(c)", "C.": the letter, as the hubs write it
    if letter is not None and not bare and same and same != [letter]:
        raise DataError(f"field {field!r} in {source} is {answer!r}: option {letters[letter]}'s letter and the "
                        f"text of option {letters[same[0]]}; write the letter alone")
    if letter is not None:
        return letter
    if len(same) == 1:
        return same[0]
    raise DataError(f"field {field!r} in {source} is {answer!r}: neither an option letter "
                    f"({', '.join(letters)}) nor the text of one option")


def entity_id(v: Any, *, field: str, source: str) -> str:
    """IDs are strings in the hub cards, but pandas-made files may store ints."""
    if v is None or isinstance(v, bool):
        raise DataError(f"field {field!r} in {source} is {'null' if v is None else 'a boolean'}")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str) and v.strip():
        return v.strip()
    raise DataError(f"field {field!r} in {source}: expected a non-empty string ID, got {v!r}")


def stable_int(*parts: object) -> int:
    """A seeded integer that does not depend on Python's hash salt or the global RNG."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")
