"""Who a portrait shows and how it is seen: the trait pools, identities and views of the built-in world.

A person's *visual identity* is a combination of traits (face shape, skin, hair, eyes,
accessories, a mark, clothing colours), each drawn from a small shared pool, so that any
single trait (and so any single colour statistic) is shared by many people and only the
combination identifies someone. A *view* is everything that is not identity: pose,
position, scale, rotation, lighting, background, noise and blur. Recognising a person
across views therefore requires learning the identity, which is what unlearning must
then remove. :mod:`unsee.data.render` draws them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

# Trait pools. Every pool is small on purpose: a trait value is shared by many identities.
# Face shapes: (height/width aspect, superellipse exponent, jaw width factor at the chin).
FACE_SHAPES: tuple[tuple[float, float, float], ...] = (
    (1.12, 2.0, 0.92),  # round
    (1.30, 2.0, 0.78),  # oval
    (1.42, 2.2, 0.80),  # long
    (1.18, 3.2, 1.00),  # square
    (1.28, 2.1, 0.55),  # heart / pointed chin
)
SKIN_TONES: tuple[RGB, ...] = (
    (250, 222, 196), (238, 192, 158), (222, 170, 124), (196, 134, 92), (156, 100, 66), (108, 70, 46),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (28, 22, 20), (92, 58, 32), (166, 118, 62), (226, 192, 112), (176, 64, 34), (168, 168, 172),
    (62, 92, 176),
)
HAIR_STYLES = ("bald", "crop", "long", "bob", "curly", "spiky", "bun")
EYE_COLOURS: tuple[RGB, ...] = ((70, 44, 24), (44, 96, 178), (58, 132, 72), (118, 124, 134), (24, 24, 28))
BROWS = ("thin", "thick", "arched")
MOUTHS = ("small", "wide", "smile")
GLASSES = ("none", "round", "square", "shades")
HATS = ("none", "beanie", "cap", "brim")
EARRINGS = ("none", "gold", "silver")
BEARDS = ("none", "moustache", "full", "goatee")
MARKS = ("none", "mole", "freckles", "scar", "stripe")
# Shared clothing/accessory palette, independent of the background.
PALETTE: tuple[RGB, ...] = (
    (200, 44, 44), (44, 84, 200), (40, 150, 70), (232, 200, 40),
    (130, 60, 180), (240, 130, 30), (30, 150, 150), (36, 36, 40), (236, 236, 232),
)

# Sampling weights for the optional accessories ("none" is the most common value).
_W_GLASSES = (0.55, 0.15, 0.15, 0.15)
_W_HAT = (0.6, 0.14, 0.13, 0.13)
_W_EARRINGS = (0.6, 0.2, 0.2)
_W_BEARD = (0.55, 0.15, 0.15, 0.15)
_W_MARK = (0.4, 0.15, 0.15, 0.15, 0.15)
_W_SCARF = 0.3  # probability of wearing a scarf


@dataclass(frozen=True)
class Identity:
    """The traits that make a person recognisable; discrete fields index the pools above.

    ``scarf`` is ``-1`` for none, otherwise a ``PALETTE`` index. ``aspect`` and
    ``eye_spacing`` are continuous so that two people with equal discrete traits still
    differ slightly; the world never uses two identities that close (see
    :func:`trait_distance`).
    """

    face: int
    aspect: float
    skin: int
    hair_colour: int
    hair_style: int
    eye_colour: int
    eye_spacing: float
    brow: int
    mouth: int
    glasses: int
    glasses_colour: int
    hat: int
    hat_colour: int
    earrings: int
    beard: int
    scarf: int
    mark: int
    shirt: int

    def codes(self) -> tuple[int, ...]:
        """The discrete traits, in ``TRAIT_SIZES`` order: labels for attribute-supervised pre-training."""
        return tuple(getattr(self, name) + (1 if name == "scarf" else 0) for name in TRAIT_SIZES)


# Number of values of each discrete trait (``Identity.codes`` order; scarf shifted by one for "none").
TRAIT_SIZES: dict[str, int] = {
    "face": len(FACE_SHAPES), "skin": len(SKIN_TONES), "hair_colour": len(HAIR_COLOURS),
    "hair_style": len(HAIR_STYLES), "eye_colour": len(EYE_COLOURS), "brow": len(BROWS),
    "mouth": len(MOUTHS), "glasses": len(GLASSES), "glasses_colour": len(PALETTE), "hat": len(HATS),
    "hat_colour": len(PALETTE), "earrings": len(EARRINGS), "beard": len(BEARDS),
    "scarf": len(PALETTE) + 1, "mark": len(MARKS), "shirt": len(PALETTE),
}


def _choice(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    return int(rng.choice(len(weights), p=np.asarray(weights) / sum(weights)))


def sample_identity(rng: np.random.Generator) -> Identity:
    """One random identity; every trait is drawn independently from its pool."""
    glasses = _choice(rng, _W_GLASSES)
    hat = _choice(rng, _W_HAT)
    return Identity(
        face=int(rng.integers(len(FACE_SHAPES))),
        aspect=round(float(rng.uniform(-0.06, 0.06)), 4),
        skin=int(rng.integers(len(SKIN_TONES))),
        hair_colour=int(rng.integers(len(HAIR_COLOURS))),
        hair_style=int(rng.integers(len(HAIR_STYLES))),
        eye_colour=int(rng.integers(len(EYE_COLOURS))),
        eye_spacing=round(float(rng.uniform(0.30, 0.42)), 4),
        brow=int(rng.integers(len(BROWS))),
        mouth=int(rng.integers(len(MOUTHS))),
        glasses=glasses,
        glasses_colour=int(rng.integers(len(PALETTE))) if glasses else 0,
        hat=hat,
        hat_colour=int(rng.integers(len(PALETTE))) if hat else 0,
        earrings=_choice(rng, _W_EARRINGS),
        beard=_choice(rng, _W_BEARD),
        scarf=int(rng.integers(len(PALETTE))) if rng.random() < _W_SCARF else -1,
        mark=_choice(rng, _W_MARK),
        shirt=int(rng.integers(len(PALETTE))),
    )


def trait_distance(a: Identity, b: Identity) -> int:
    """How many discrete traits differ; the world keeps its identities at least a few apart."""
    return sum(x != y for x, y in zip(a.codes(), b.codes(), strict=True))


def pretrain_identities(n: int, seed: int) -> list[Identity]:
    """The pool of "other people" for vision pre-training (the analogue of CLIP's web data).

    Drawn from its own seed stream, separate from the world's people; the world builder in
    turn rejects any person within a few traits of this pool, so they never coincide.
    """
    rng = np.random.default_rng([seed, 7919])
    out: list[Identity] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < n:
        ident = sample_identity(rng)
        if ident.codes() not in seen:
            seen.add(ident.codes())
            out.append(ident)
    return out


@dataclass(frozen=True)
class View:
    """Everything about an image that is not identity. ``noise_seed`` fixes the noise pixels."""

    yaw: float
    dx: float
    dy: float
    scale: float
    rotation: float
    brightness: float
    contrast: float
    tint: tuple[float, float, float]
    light_angle: float
    light_strength: float
    bg_kind: int
    bg1: RGB
    bg2: RGB
    bg_freq: float
    noise: float
    blur: float
    noise_seed: int


BG_KINDS = ("flat", "vgradient", "hgradient", "stripes", "checks", "blotches")


def sample_view(rng: np.random.Generator, *, hard: bool = False) -> View:
    """A random view; ``hard`` widens every range (bigger pose, offsets, lighting, noise)."""
    k = 1.8 if hard else 1.0

    def u(lo: float, hi: float) -> float:
        return round(float(rng.uniform(lo, hi)), 4)

    def colour() -> RGB:
        return (int(rng.integers(20, 236)), int(rng.integers(20, 236)), int(rng.integers(20, 236)))

    return View(
        yaw=u(-0.35 * k, 0.35 * k),
        dx=u(-0.07 * k, 0.07 * k),
        dy=u(-0.05 * k, 0.05 * k),
        scale=u(1 - 0.1 * k, 1 + 0.08 * k),
        rotation=u(-9 * k, 9 * k),
        brightness=u(1 - 0.14 * k, 1 + 0.12 * k),
        contrast=u(1 - 0.15 * k, 1 + 0.12 * k),
        tint=(u(-0.06 * k, 0.06 * k), u(-0.06 * k, 0.06 * k), u(-0.06 * k, 0.06 * k)),
        light_angle=u(0, 2 * math.pi),
        light_strength=u(0, 0.18 * k),
        bg_kind=int(rng.integers(len(BG_KINDS))),
        bg1=colour(),
        bg2=colour(),
        bg_freq=u(2, 7),
        noise=u(0, 5 * k),
        blur=u(0.3, 0.9 * k) if rng.random() < 0.25 * k else 0.0,
        noise_seed=int(rng.integers(2**31)),
    )
