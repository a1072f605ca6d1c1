"""The one record every loader produces and every method and the evaluator consume.

Loaders for MLLMU-Bench, CLEAR, UMU-bench and the built-in world all map their rows
to :class:`Example`, grouped into a :class:`Suite`. Images stay as encoded bytes until
an adapter needs pixels, so that loading a benchmark is cheap and a corrupt image is
reported where it is used, with the example's ``uid``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from unsee.errors import DataError

Task = Literal["qa", "mcq", "cloze", "gen"]

# Metric groups of results.json (docs/results-format.md); a Suite may hold more groups than these.
METRIC_GROUPS = ("forget", "forget_test", "retain", "retain_test", "text_forget", "text_retain", "known", "known_test",
                 "text_known", "general")
LETTERS = "ABCDEFGHIJ"
ORIENTATION = 0x0112  # the EXIF tag of a photo's rotation


MAX_ASPECT = 200  # Qwen2-VL's image processor refuses a longer side over 200 times the shorter


MAX_SIDE = 2048  # the longest side of a photo as a run keeps it (decoded, for the whole run)


def bounded(img: Image.Image) -> Image.Image:
    """A decoded photo no longer than :data:`MAX_SIDE` on its longest side. Each photo is decoded once and kept
    for the run: a phone's 6000x4000 took 72 MB, so 200 of them 18 GB, for an image processor that scales it
    to 336 px (LLaVA-1.5) anyway. Photos within the bound, every benchmark's, are left as they are."""
    w, h = img.size
    if max(w, h) <= MAX_SIDE:
        return img
    scale = MAX_SIDE / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, DataError)


def why_unreadable(e: BaseException) -> str:
    """What went wrong with a photo, in words: Pillow names the in-memory buffer it could not identify
    (``<_io.BytesIO object at 0x...>``), which tells the user nothing about their file."""
    return "no image format Pillow reads" if isinstance(e, UnidentifiedImageError) else str(e)


def rgb(img: Image.Image) -> Image.Image:
    """A photo as the 8-bit RGB a person sees. Pillow's own ``convert("RGB")`` clips 16-bit
    greyscale to white and lays transparent pixels on whatever colour they hide, and Pillow
    leaves a phone photo's EXIF rotation unapplied; here the photo is turned upright, 16 bits
    are scaled to 8 and transparency goes on white, as transformers' own image loading does.
    A strip over 200 times longer than wide is refused here, with the photo's other checks:
    Qwen2-VL's processor stops on it, after the model has loaded."""
    w, h = img.size
    if max(w, h) > MAX_ASPECT * max(min(w, h), 1):
        raise DataError(f"a {w}x{h} image is over {MAX_ASPECT} times longer than it is wide, more than an image "
                        "processor takes (Qwen2-VL refuses it); crop it")
    if img.getexif().get(ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode.startswith("I"):  # I;16, I;16B, ... or I: integer greyscale
        pixels = np.asarray(img)
        if pixels.min() < 0 or pixels.max() > 65535:
            raise DataError(f"{img.mode} pixels beyond 16 bits are not a photo format unsee reads; save the photo as "
                            "an 8- or 16-bit PNG or a JPEG")
        grey = (pixels.astype(np.float64) / 257).round().astype(np.uint8)
        if "transparency" in img.info:  # one grey value stands for transparent
            grey[pixels == img.info["transparency"]] = 255
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "F":
        raise DataError("floating-point pixels (mode F) are not a photo format unsee reads; save the photo as an 8- "
                        "or 16-bit PNG or a JPEG")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Example:
    """One question about one entity, with or without an image.

    ``task`` says how it is scored: ``qa`` is a training pair, ``mcq`` has ``options``
    and the index ``correct``, ``cloze`` is scored by substring, ``gen`` by ROUGE/BLEU.
    ``pair_key`` links the unimodal and multimodal form of the same question (UMU's
    all-modal accuracy). ``source`` names the file the row came from, for error messages.
    """

    uid: str
    entity: str
    question: str
    answer: str
    task: Task = "qa"
    image: bytes | None = None
    options: tuple[str, ...] = ()
    correct: int | None = None
    pair_key: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def correct_letter(self) -> str | None:
        return None if self.correct is None else LETTERS[self.correct]

    def pil_image(self) -> Image.Image:
        """Decode the image, with an error that names the example and its file."""
        if self.image is None:
            raise DataError(f"example {self.uid} ({self.source}) has no image")
        try:
            img = Image.open(io.BytesIO(self.image))
            img.load()
            return bounded(rgb(img))
        except IMAGE_ERRORS as e:
            raise DataError(f"example {self.uid} ({self.source}): image is corrupt or unreadable: "
                            f"{why_unreadable(e)}") from e


@dataclass
class Suite:
    """Named groups of examples, plus the entity lists that define them.

    ``groups`` holds evaluation groups (``forget``, ``retain``, ...) and training streams
    (``train_forget``, ``train_retain``, ``train_text``, ``neutral``...). ``forget_entities``
    and ``retain_entities`` are what the guards check for emptiness and overlap.
    """

    name: str
    groups: dict[str, list[Example]]
    forget_entities: tuple[str, ...] = ()
    retain_entities: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)
    # SHA-256 of the benchmark's images that no group holds (other people's held-out views): photos the
    # benchmark has, which a folder of never-taught people must not repeat
    other_images: frozenset[str] = frozenset()

    def group(self, name: str) -> list[Example]:
        if name not in self.groups:
            raise DataError(f"suite {self.name!r} has no group {name!r}; it has {sorted(self.groups)}")
        return self.groups[name]

    def entities(self, name: str) -> list[str]:
        return sorted({e.entity for e in self.group(name)})


def only(examples: Iterable[Example], *, task: str | None = None, image: bool | None = None) -> list[Example]:
    """Filter by task and by whether an image is present."""
    return [
        e
        for e in examples
        if (task is None or e.task == task) and (image is None or e.has_image == image)
    ]
