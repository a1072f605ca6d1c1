"""Which benchmark a folder holds, and where a hub dataset id lives on this machine.

Detection reads only folder names and parquet schemas (never rows), so it is instant even on
a 10 GB download, and it runs before any model loads. The four layouts overlap in their folder
names (MLLMU-Bench and UMU-bench both have ``Full_Set/`` and ``forget_10/``), so the verdict
rests on the columns inside: ``Classification_Task`` is MLLMU-Bench's, ``Classify`` UMU-bench's,
``caption`` CLEAR's, and ``world.json`` marks the built-in world (written in MLLMU-Bench's
layout). docs/benchmarks.md describes each layout.

A hub id is downloaded as the repository's own files (``huggingface_hub.snapshot_download``),
which keeps the hub's folder layout, so the same loaders read it; the resolved commit and a
fingerprint of the files go into results.json.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from unsee.data.parquet import config_files, is_hub_id
from unsee.errors import DataError
from unsee.io import home_path

BENCHMARKS = ("builtin", "mllmu", "clear", "umu")
NAMES = {"builtin": "the built-in world", "mllmu": "MLLMU-Bench", "clear": "CLEAR", "umu": "UMU-bench"}
HUB_IDS = {"mllmu": "MLLMMU/MLLMU-Bench", "clear": "therem/CLEAR", "umu": "linbojunzi/UMU-bench"}

# The columns that tell a config apart; each benchmark's rows carry its own.
MARKERS: dict[str, tuple[str, ...]] = {
    "mllmu": ("Classification_Task", "Generation_Task", "Mask_Task"),
    "umu": ("Classify", "Cloze", "Generation"),
    "clear": ("caption",),
}
# Per benchmark: the configs whose presence and columns make the layout usable, as alternatives of
# (configs, required columns); the first config present is checked. The last alternative is the
# fine-tune split alone, which is all `unsee finetune` reads (where it is not an evaluation config).
REQUIRED: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = {
    "mllmu": ((("forget_10", "forget_5", "forget_15", "Full_Set"), ("image", "ID", *MARKERS["mllmu"])),
              (("ft_Data",), ("image", "metadata"))),
    "umu": ((("forget_10", "forget_5", "forget_15", "Full_Set"), ("ID", "image", *MARKERS["umu"])),),
    "clear": ((("forget05", "forget01", "forget10", "data", "full"), ("image", "caption")),
              (("full+tofu",), ("image", "caption"))),
}
REQUIRED["builtin"] = REQUIRED["mllmu"]

_CLEAR_CONFIG = re.compile(r"^(forget\d\d|retain\d\d)(\+tofu|_perturbed)?$|^(full|real_faces|real_world)(\+tofu)?$")
_PARQUET_SUFFIXES = (".parquet", ".json", ".md")


# --------------------------------------------------------------------------- hub ids


@dataclass(frozen=True)
class DataRef:
    """Where a benchmark came from: what results.json records under ``data``.

    ``source`` is what the user gave (a folder or a hub id); ``path`` the local folder that
    was read; ``revision`` the one asked for and ``commit`` the hub commit it resolved to
    (None for a local folder); ``fingerprint`` a content hash of the data files.
    """

    source: str
    path: str
    revision: str | None
    commit: str | None
    fingerprint: str

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def local_copy_hint(repo: str) -> str:
    """How to point unsee at a local copy instead (no local folder of that name exists)."""
    return (f"no local folder {repo} exists either: download it where the hub is reachable "
            f"(huggingface-cli download {repo} --repo-type dataset --local-dir DIR) and pass --data DIR")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(repo: str, revision: str | None = None) -> tuple[Path, str | None]:
    """The hub dataset ``repo`` at ``revision`` as a local folder (the hub cache), and its commit.

    Offline (``HF_HUB_OFFLINE=1``) only the local cache is consulted. Every failure is one
    line that names the id and says how to use a local copy instead.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as e:  # pragma: no cover - a dependency of transformers
        raise DataError(f"reading hub dataset {repo} needs huggingface_hub; {local_copy_hint(repo)}") from e
    at = f" at revision {revision!r}" if revision else ""
    try:
        path = snapshot_download(repo, repo_type="dataset", revision=revision, local_files_only=_offline(),
                                 allow_patterns=[f"*{s}" for s in _PARQUET_SUFFIXES])
    except RevisionNotFoundError as e:
        raise DataError(f"hub dataset {repo} has no revision {revision!r} (a branch, tag or commit); "
                        "leave --revision out for the default branch") from e
    except GatedRepoError as e:
        raise DataError(f"hub dataset {repo} is gated: accept its terms on the hub and log in "
                        f"(huggingface-cli login), or {local_copy_hint(repo)}") from e
    except RepositoryNotFoundError as e:
        raise DataError(f"hub dataset {repo} was not found (no such id, or private without a login); "
                        f"check the id, or {local_copy_hint(repo)}") from e
    except LocalEntryNotFoundError as e:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline() else "the hub could not be reached"
        raise DataError(f"hub dataset {repo}{at} is not in the local cache and {why}; {local_copy_hint(repo)}") from e
    except (OSError, ValueError) as e:  # network errors, bad ids
        raise DataError(f"could not fetch hub dataset {repo}{at}: {str(e).splitlines()[0] if str(e) else e!r}; "
                        f"{local_copy_hint(repo)}") from e
    p = Path(path)
    commit = p.name if re.fullmatch(r"[0-9a-f]{40}", p.name) else None
    return p, commit


_FINGERPRINTS: dict[tuple, str] = {}


def data_fingerprint(root: str | Path, configs: Iterable[str] | None = None) -> str:
    """Content hash of a benchmark folder's data files (all of them, or those of ``configs``).

    Names and bytes both count, so a re-upload with the same rows in other shards differs;
    that is deliberate: it is a different download. A folder whose files keep their sizes
    and modification times is hashed once per process (a continual run loads it per request).
    """
    root = Path(root)
    if configs is None:
        # a download's own .cache folder (hub metadata) is not data; the hub cache holding the download is
        # (~/.cache/huggingface/hub/.../snapshots/<rev>), so only the parts below the root are read
        files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix in (".parquet", ".json")
                       and ".cache" not in f.relative_to(root).parts)
    else:
        files = sorted({f for c in configs for f in config_files(root / c)})
    stats = tuple((str(f), st.st_size, st.st_mtime_ns) for f in files for st in (f.stat(),))
    if stats in _FINGERPRINTS:
        return _FINGERPRINTS[stats]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    _FINGERPRINTS[stats] = h.hexdigest()[:16]
    return _FINGERPRINTS[stats]


def local_path(data: str | Path | DataRef, revision: str | None = None) -> tuple[Path, str | None]:
    """The folder to read for ``data`` and the hub commit it came from (None for a local folder)."""
    if isinstance(data, DataRef):
        return Path(data.path), data.commit
    path = home_path(data)
    if path.exists() or not is_hub_id(str(data)):
        if revision is not None:
            raise DataError(f"--revision {revision!r} applies to a hub dataset id; {data} is a local path")
        describe_missing(path)
        return path, None
    return download(str(data), revision)


def resolve(data: str | Path | DataRef, revision: str | None = None) -> DataRef:
    """A folder as it is, or a hub id downloaded (or found in the cache), with the files' fingerprint.

    A :class:`DataRef` passes through, so that a command resolving once (and hashing the
    files once) can load several splits.
    """
    if isinstance(data, DataRef):
        return data
    path, commit = local_path(data, revision)
    return DataRef(str(data), str(path), revision, commit, data_fingerprint(path))


# --------------------------------------------------------------------------- detection


def describe_missing(path: Path) -> None:
    """The one-line reason a path cannot hold a benchmark, or nothing when it may."""
    if not path.exists():
        raise DataError(f"benchmark data {path} does not exist (give a folder of configs, or a hub id owner/name)")
    if not path.is_dir():
        raise DataError(f"benchmark data {path} is a file, not a folder; give the folder that holds one folder "
                        "per config")
    if not any(path.iterdir()):
        raise DataError(f"benchmark data {path} is an empty folder")


def config_names(root: Path) -> list[str]:
    """Folders of ``root`` that hold parquet files (``data/`` is CLEAR's default config)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and config_files(p))


def columns(root: Path, config: str) -> list[str]:
    """Column names of a config, from its first shard's schema (no rows are read)."""
    files = config_files(root / config)
    if not files:
        return []
    try:
        return list(pq.read_schema(files[0]).names)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{files[0]} is not a readable parquet file: {e}") from e


def _seen(root: Path, configs: Sequence[str], limit: int = 6) -> str:
    """What a folder holds, for an error message: its configs and a few of their columns."""
    if not configs:
        others = sorted(p.name for p in root.iterdir())[:limit]
        return f"no folder with parquet files (it has {others})"
    shown = [f"{c} {columns(root, c)}" for c in configs[:limit]]
    more = f" and {len(configs) - limit} more" if len(configs) > limit else ""
    return "configs " + "; ".join(shown) + more


def detect(root: str | Path) -> str:
    """``builtin``, ``mllmu``, ``clear`` or ``umu``, from the folder's configs and their columns."""
    root = Path(root)
    describe_missing(root)
    if (root / "world.json").is_file():
        return "builtin"
    configs = config_names(root)
    votes: dict[str, int] = {}
    for c in configs:
        cols = set(columns(root, c))
        for kind, marks in MARKERS.items():
            if any(m in cols for m in marks):
                votes[kind] = votes.get(kind, 0) + 1
        if "metadata" in cols and c == "ft_Data":
            votes["mllmu"] = votes.get("mllmu", 0) + 1
        if "MM_QA" in cols or "UM_QA" in cols:
            votes["umu"] = votes.get("umu", 0) + 1
        if _CLEAR_CONFIG.match(c) and ("caption" in cols or "perturbed_names" in cols or "options" in cols):
            votes["clear"] = votes.get("clear", 0) + 1
    if len(votes) == 1:
        return next(iter(votes))
    if len(votes) > 1:
        found = ", ".join(f"{NAMES[k]} ({n} configs)" for k, n in sorted(votes.items()))
        raise DataError(f"{root} mixes the layouts of {found}; name the benchmark with --benchmark "
                        f"{'|'.join(BENCHMARKS)}")
    raise DataError(f"cannot tell which benchmark {root} holds: {_seen(root, configs)}; expected the columns "
                    f"of MLLMU-Bench {list(MARKERS['mllmu'])}, UMU-bench {list(MARKERS['umu'])} or CLEAR "
                    "['image', 'caption'], or a world.json (docs/benchmarks.md)")


def check_layout(kind: str, root: str | Path) -> None:
    """Refuse a folder that is not ``kind``, naming the configs or columns it lacks."""
    if kind not in BENCHMARKS:
        raise DataError(f"unknown benchmark {kind!r}; choose one of {', '.join(BENCHMARKS)}")
    root = Path(root)
    describe_missing(root)
    name = NAMES[kind]
    if kind == "builtin" and not (root / "world.json").is_file():
        raise DataError(f"--benchmark builtin: {root} has no world.json, so it is not a world written by unsee world")
    configs = set(config_names(root))
    found = next(((c, needed) for alternatives, needed in REQUIRED[kind] for c in alternatives if c in configs), None)
    if found is None:
        wanted = [c for alternatives, _ in REQUIRED[kind] for c in alternatives]
        raise DataError(f"--benchmark {kind}: {root} is not {name}: it has none of the configs "
                        f"{wanted} (it has {sorted(configs) or 'no config folders'})")
    present, needed = found
    have = columns(root, present)
    missing = [c for c in needed if c not in have]
    if missing:
        raise DataError(f"--benchmark {kind}: {root} is not {name}: config {present!r} lacks the columns "
                        f"{missing} (it has {have})")


def benchmark_of(root: str | Path, benchmark: str | None = None) -> str:
    """The forced benchmark after checking that the folder fits it, or the detected one."""
    if benchmark is None:
        return detect(root)
    check_layout(benchmark, root)
    return benchmark


def needs(kind: str, root: str | Path, configs: Mapping[str, Sequence[str]], purpose: str) -> str:
    """The first of ``configs[kind]`` present in ``root``, or one line saying which split is missing."""
    wanted = list(configs[kind])
    have = config_names(Path(root))
    found = next((c for c in wanted if c in have), None)
    if found is None:
        repo = HUB_IDS.get(kind, "")
        how = (f"; download it too (huggingface-cli download {repo} --repo-type dataset --include "
               f"'{wanted[0]}/*' --local-dir DIR)") if repo else ""
        raise DataError(f"{NAMES[kind]}'s {purpose} split {wanted[0]!r} is not in {root} (it has {have}){how}")
    return found
