"""The identity of a checkpoint, by the bytes it loads from: what the stage cache, the model card's weights
hash, a steering file's base check and an attack's check of the run it joins all read."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from unsee.errors import ModelError

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth")  # weight files a torch.load reads: code may run as they load


def model_fingerprint(path: str | Path) -> str:
    """The identity of a checkpoint: its config and every byte of the weight files it loads from (its
    safetensors, else its pickle files).

    Every byte, because two checkpoints that differ in one tensor must not share it: a merged LoRA
    changes a few MiB in the middle of a file, and the stage cache, the model card's weights hash
    and the steering file's base check all read this. A file is hashed once per process while its
    size and modification time stay the same (a 7B checkpoint takes seconds at disk speed).
    """
    path = Path(path)
    if not path.is_dir():  # a hub id: nothing here to hash, and the hash of nothing would name every such model
        raise ModelError(f"{path} is not a model folder; its weights cannot be fingerprinted")
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.exists():
        try:
            h.update(json.dumps(json.loads(cfg.read_text()), sort_keys=True).encode())
        except (OSError, ValueError, RecursionError) as e:
            raise ModelError(f"cannot read {cfg}: {str(e).splitlines()[0]}") from None
    weights = sorted(path.glob("*.safetensors")) or sorted(f for kind in PICKLE_WEIGHTS
                                                           for f in path.glob(kind))  # what loads, pickle or not
    for f in weights:
        stat = f.stat()
        h.update(f"{f.name}:{stat.st_size}:{_file_digest(str(f.resolve()), stat.st_size, stat.st_mtime_ns)}".encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
