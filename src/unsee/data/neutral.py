"""Never-taught identities from a folder of photos, for the benchmarks that ship none.

``cvf_ncu``, ``cvf_only``, ``vkd`` and the eraser (``erasure=neutral``) pull the forget people
towards people the model never saw. The built-in world ships them (``Neutral_Set``) and a removal
request lists them (``neutral:``); MLLMU-Bench, CLEAR and UMU-bench do not, so a user brings a
folder of photos of people absent from the benchmark. They become the suite's ``neutral`` group in
the same shape as the world's ``Neutral_Set``, so that every method reads them unchanged.

A photo whose bytes equal one of the benchmark's is refused: the model was taught that image, so
it cannot stand for a stranger.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unsee.data.collate import image_of
from unsee.data.mllmu import IMAGE_TEXTUAL
from unsee.data.schema import Example, Suite, why_unreadable
from unsee.errors import DataError
from unsee.io import home_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MIN_PHOTOS = 4  # fewer cannot stand for "people in general": one face would become the target
GROUP = "neutral"


@dataclass(frozen=True)
class NeutralPhotos:
    """The never-taught photos of one folder: the ``neutral`` examples and what results.json records.

    ``digests`` are the SHA-256 of each photo's bytes, in the order of ``examples``;
    ``fingerprint`` is 16 hex digits of a SHA-256 over the photos' relative paths and bytes,
    like the benchmark's own data fingerprint.
    """

    path: str
    examples: tuple[Example, ...]
    digests: tuple[str, ...]
    fingerprint: str

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "images": len(self.examples), "fingerprint": self.fingerprint}


def photo_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, in a fixed order, hidden files and folders skipped. Linked
    folders are followed (each real folder once, so a loop ends), and a broken link named like a
    photo is kept, so that reading it stops the run with its name instead of shrinking the group."""
    found: list[Path] = []
    seen: set[str] = set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(top, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def person_of(rel: Path) -> str:
    """One identity per first-level subfolder (``alice/1.jpg``, ``alice/2.jpg``), else one per photo.

    Prefixed so that a file named like a benchmark id (``1.png``) never reads as that person."""
    return f"{GROUP}/{rel.parts[0] if len(rel.parts) > 1 else rel.stem}"


def load_neutral(folder: str | Path, *, minimum: int = MIN_PHOTOS) -> NeutralPhotos:
    """The photos under ``folder`` as ``neutral`` examples, each decoded once now (the decoded image is
    cached, so the run reads it again for free). Every failure is one line that names the folder or file."""
    root = home_path(folder)
    if not root.exists():
        raise DataError(f"--neutral {folder}: no such folder")
    if not root.is_dir():
        raise DataError(f"--neutral {folder} is a file; give a folder of photos of never-taught people")
    files = photo_files(root)
    if len(files) < minimum:
        raise DataError(f"--neutral {folder} holds {len(files)} photo(s) ({', '.join(IMAGE_SUFFIXES)}); "
                        f"at least {minimum} photos of never-taught people are needed")
    examples, digests = [], []
    h = hashlib.sha256()
    for n, f in enumerate(files):
        rel = f.relative_to(root)
        try:
            data = f.read_bytes()
        except OSError as e:
            raise DataError(f"--neutral: cannot read {f}: {e.strerror or e}") from e
        entity = person_of(rel)
        ex = Example(uid=f"{GROUP}/{rel.as_posix()}/{n}", entity=entity, question="", answer="", task="qa",
                     image=data, source=str(f), meta={"type": IMAGE_TEXTUAL, "row": n})
        try:
            image_of(ex)
        except DataError as e:
            why = why_unreadable(e.__cause__ or e)
            raise DataError(f"--neutral: {f} is not a readable image ({why})") from e
        digest = hashlib.sha256(data).hexdigest()
        h.update(rel.as_posix().encode() + b"\0" + digest.encode())
        examples.append(ex)
        digests.append(digest)
    return NeutralPhotos(str(root), tuple(examples), tuple(digests), h.hexdigest()[:16])


def check_never_taught(photos: NeutralPhotos, suite: Suite) -> None:
    """Refuse a photo whose bytes equal any image the benchmark holds (outside its own neutral group)."""
    seen: dict[str, str] = {}
    for name, items in suite.groups.items():
        if name == GROUP:
            continue
        for e in items:
            if e.image is not None:
                seen.setdefault(hashlib.sha256(e.image).hexdigest(), f"{name} ({e.uid})")
    seen.update({d: "Test_Set (another person's held-out photo)" for d in suite.other_images if d not in seen})
    for ex, digest in zip(photos.examples, photos.digests, strict=True):
        if digest in seen:
            raise DataError(f"--neutral: {ex.source} is the same image as the benchmark's {seen[digest]}; "
                            "the model was taught it, so it cannot stand for a never-taught person")


def attach_neutral(suite: Suite, folder: str | Path) -> Suite:
    """``suite`` with the photos under ``folder`` as its ``neutral`` group.

    They replace any neutral group the benchmark has (the built-in world's ``Neutral_Set``) rather
    than mix with it, and ``suite.info["neutral"]`` says so under ``replaces``, so that a run's
    never-taught people come from one source. The record (path, image count, fingerprint) also goes
    into ``suite.info["data"]`` (results.json's ``data``)."""
    photos = load_neutral(folder)
    check_never_taught(photos, suite)
    record = photos.record()
    own = [e for e in suite.groups.get(GROUP, []) if e.has_image]
    if own:
        record["replaces"] = f"the benchmark's own {len(own)} neutral photos"
    info = {**suite.info, "neutral": record}
    if isinstance(info.get("data"), dict):
        info["data"] = {**info["data"], "neutral": record}
    return dataclasses.replace(suite, groups={**suite.groups, GROUP: list(photos.examples)}, info=info)
