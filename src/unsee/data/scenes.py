"""General-ability scenes of the built-in world: colour, shape, count and position questions on simple objects.

They are the MMBench-style utility analogue: a model that unlearns a person must still read these,
so the scenes are drawn with the portraits' canvas and photometric finish, on plain gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from unsee.data.identity import RGB, View
from unsee.data.render import UNIT_CIRCLE, finish_view, supersampled_canvas

GENERAL_COLOURS: dict[str, RGB] = {
    "red": (214, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (236, 212, 40),
    "purple": (136, 56, 186), "orange": (244, 136, 28), "black": (22, 22, 24), "white": (246, 246, 246),
}
GENERAL_SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
GENERAL_POSITIONS = ("left", "right", "top", "bottom")
GENERAL_KINDS = ("colour", "shape", "count", "position")

# kind -> (question, generation sentence, cloze sentence); {v} is the answer.
GENERAL_TEMPLATES: dict[str, tuple[str, str, str]] = {
    "colour": ("What colour is the object in this image?", "The object is {v}.",
               "The colour of the object in this image is __."),
    "shape": ("What shape is the object in this image?", "The object is a {v}.",
              "The object in this image is a __."),
    "count": ("How many objects are in this image?", "The number of objects is {v}.",
              "The number of objects in this image is __."),
    "position": ("Where is the object in this image?", "The object is at the {v} of the image.",
                 "The object is at the __ of the image."),
}


@dataclass(frozen=True)
class GeneralItem:
    """One general-ability image with its question; ``options[correct]`` is the answer."""

    kind: str
    shape: str
    colour: str
    count: int
    position: str
    centres: tuple[tuple[float, float], ...]
    radius: float
    rotation: float
    bg1: RGB
    bg2: RGB
    noise: float
    noise_seed: int
    question: str
    options: tuple[str, ...]
    correct: int

    @property
    def answer(self) -> str:
        return self.options[self.correct]

    def training_qa(self) -> list[dict[str, str]]:
        """Every question the scene answers: its own first, then colour, shape and count (and
        position, where the object was placed at an edge). One photo teaches every skill."""
        values = {"colour": self.colour, "shape": self.shape, "count": str(self.count), "position": self.position}
        kinds = [self.kind, *(k for k in GENERAL_KINDS if k != self.kind and values[k])]
        return [{"Question": GENERAL_TEMPLATES[k][0], "Answer": values[k]} for k in kinds]

    @property
    def generation(self) -> str:
        """The reference sentence for the generation task."""
        return GENERAL_TEMPLATES[self.kind][1].format(v=self.answer)

    @property
    def cloze(self) -> str:
        return GENERAL_TEMPLATES[self.kind][2]


def _options(rng: np.random.Generator, answer: str, pool: tuple[str, ...]) -> tuple[tuple[str, ...], int]:
    others = [p for p in pool if p != answer]
    picked = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
    correct = int(rng.integers(4))
    picked.insert(correct, answer)
    return tuple(picked), correct


def _grid_centres(rng: np.random.Generator, count: int) -> tuple[tuple[float, float], ...]:
    """``count`` objects in distinct cells of a 3x3 grid, jittered; a lone one near the middle,
    so that position is not a cue. The grid is drawn even for a lone object, and then
    discarded, so that :func:`sample_general_item` draws the stream it always drew and the
    test scenes keep their bytes."""
    cells = rng.choice(9, size=count, replace=False)
    centres = tuple(
        (round((c % 3 + 0.5) / 3 + float(rng.uniform(-0.04, 0.04)), 4),
         round((c // 3 + 0.5) / 3 + float(rng.uniform(-0.04, 0.04)), 4))
        for c in sorted(cells.tolist())
    )
    if count == 1:
        centres = ((round(float(rng.uniform(0.38, 0.62)), 4), round(float(rng.uniform(0.38, 0.62)), 4)),)
    return centres


def spread_count(item: GeneralItem, rng: np.random.Generator) -> GeneralItem:
    """``item`` with 1-4 objects, equally likely, where its question is about colour or shape.

    A training scene answers every question, count included. Drawn as the test scenes are,
    a colour or shape scene holds one object, so 81% of the training count answers were "1",
    and the vanilla model read a count of 2 at 0.00 and of 4 at 0.25 (docs/results.md)."""
    if item.kind not in ("colour", "shape"):
        return item
    count = int(rng.integers(1, 5))
    return replace(item, count=count, centres=_grid_centres(rng, count))


def sample_general_item(rng: np.random.Generator) -> GeneralItem:
    """A random scene (1-4 equal shapes of one colour) and one question about it."""
    kind = GENERAL_KINDS[int(rng.integers(len(GENERAL_KINDS)))]
    shape = GENERAL_SHAPES[int(rng.integers(len(GENERAL_SHAPES)))]
    colour = list(GENERAL_COLOURS)[int(rng.integers(len(GENERAL_COLOURS)))]
    count = int(rng.integers(1, 5)) if kind == "count" else 1
    position = ""
    if kind == "position":
        position = GENERAL_POSITIONS[int(rng.integers(4))]
        along, across = float(rng.uniform(0.16, 0.26)), float(rng.uniform(0.4, 0.6))
        centres: tuple[tuple[float, float], ...] = ({
            "left": (along, across), "right": (1 - along, across),
            "top": (across, along), "bottom": (across, 1 - along),
        }[position],)
    else:
        centres = _grid_centres(rng, count)
    answer = {"colour": colour, "shape": shape, "count": str(count), "position": position}[kind]
    pool = {"colour": tuple(GENERAL_COLOURS), "shape": GENERAL_SHAPES, "count": ("1", "2", "3", "4"),
            "position": GENERAL_POSITIONS}[kind]
    options, correct = _options(rng, answer, pool)
    grey = int(rng.integers(95, 170))
    return GeneralItem(
        kind=kind, shape=shape, colour=colour, count=count, position=position, centres=centres,
        radius=round(float(rng.uniform(0.09, 0.13)), 4), rotation=round(float(rng.uniform(-20, 20)), 3),
        bg1=(grey, grey + int(rng.integers(-12, 13)), grey + int(rng.integers(-12, 13))),
        bg2=(shade := grey + int(rng.integers(-25, 26)), shade, shade),
        noise=round(float(rng.uniform(0, 4)), 3), noise_seed=int(rng.integers(2**31)),
        question=GENERAL_TEMPLATES[kind][0], options=options, correct=correct,
    )


def _shape_points(shape: str) -> np.ndarray:
    if shape == "circle":
        return UNIT_CIRCLE
    if shape == "square":
        return np.array([[-0.85, -0.85], [0.85, -0.85], [0.85, 0.85], [-0.85, 0.85]])
    if shape == "triangle":
        return np.array([[0, -1.0], [0.95, 0.75], [-0.95, 0.75]])
    if shape == "diamond":
        return np.array([[0, -1.0], [0.7, 0], [0, 1.0], [-0.7, 0]])
    if shape == "hexagon":
        t = np.arange(6) * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    t = np.arange(10) * np.pi / 5 - np.pi / 2  # star
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)


def render_general(item: GeneralItem, size: int = 64) -> Image.Image:
    """The scene of ``item`` as a ``size`` x ``size`` RGB image."""
    view = View(yaw=0.0, dx=0.0, dy=0.0, scale=1.0, rotation=0.0, brightness=1.0, contrast=1.0,
                tint=(0.0, 0.0, 0.0), light_angle=0.0, light_strength=0.0, bg_kind=1, bg1=item.bg1,
                bg2=item.bg2, bg_freq=1.0, noise=item.noise, blur=0.0, noise_seed=item.noise_seed)
    image, draw = supersampled_canvas(view, size)
    big = image.size[0]
    a = math.radians(item.rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = _shape_points(item.shape) @ rot.T * item.radius * big
    for cx, cy in item.centres:
        p = pts + (cx * big, cy * big)
        draw.polygon([(float(x), float(y)) for x, y in p], fill=GENERAL_COLOURS[item.colour],
                     outline=(30, 30, 30) if item.colour == "white" else None)
    return finish_view(image, view, size)
