"""Procedural portraits and general-ability images for the built-in world.

A person's *visual identity* is a combination of traits (face shape, skin, hair, eyes,
accessories, a mark, clothing colours), each drawn from a small shared pool, so that any
single trait (and so any single colour statistic) is shared by many people and only the
combination identifies someone. A *view* is everything that is not identity: pose,
position, scale, rotation, lighting, background, noise and blur. Recognising a person
across views therefore requires learning the identity, which is what unlearning must
then remove.

Everything is drawn as polygons at ``SUPERSAMPLE`` times the output size and box-filtered
down, with PIL and numpy only: about a millisecond per 64 px image, so that vision
pre-training can render fresh views of a few hundred identities at every step.
Rendering is a pure function of its inputs: the same identity and view give the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 3

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


# ---------------------------------------------------------------------------------------------
# Drawing


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shared by backgrounds and lighting."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t)  # type: ignore[return-value]


_CIRCLE = np.exp(1j * np.linspace(0, 2 * np.pi, 32, endpoint=False))
_UNIT = np.stack([_CIRCLE.real, _CIRCLE.imag], axis=1)


def _background(view: View, size: int) -> np.ndarray:
    """float32 [size, size, 3] background; independent of identity by construction."""
    x, y = _grid(size)
    c1 = np.asarray(view.bg1, np.float32)
    c2 = np.asarray(view.bg2, np.float32)
    kind = BG_KINDS[view.bg_kind]
    if kind == "flat":
        return np.broadcast_to(c1, (size, size, 3)).astype(np.float32)
    if kind == "vgradient":
        t = (y + 1) / 2
    elif kind == "hgradient":
        t = (x + 1) / 2
    elif kind == "stripes":
        t = (np.sin((x + y) * view.bg_freq * 2) > 0).astype(np.float32) * 0.6
    elif kind == "checks":
        t = ((np.floor((x + 1) * view.bg_freq) + np.floor((y + 1) * view.bg_freq)) % 2) * 0.5
    else:  # blotches: smooth low-frequency noise
        rng = np.random.default_rng(view.noise_seed ^ 0x5EED)
        small = Image.fromarray((rng.random((6, 6)) * 255).astype(np.uint8), "L")
        t = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    return c1 + (c2 - c1) * t[..., None]


class _Pen:
    """Maps face-local coordinates (unit = face half-width, y down) to canvas pixels.

    ``z`` is a pseudo-depth: features in front of the face (nose, eyes) shift further with
    yaw than the outline, which is how a head turn looks in 2-D.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, canvas: int, view: View) -> None:
        self.draw = draw
        self.unit = u = 0.235 * canvas * view.scale
        a = math.radians(view.rotation)
        cos, sin = math.cos(a), math.sin(a)
        squash = 1 - 0.22 * abs(view.yaw)
        # row-vector affine map: [x, y] @ m + offset (horizontal squash, rotation, scale)
        self.m = np.array([[squash * cos * u, squash * sin * u], [-sin * u, cos * u]])
        self.offset = np.array([canvas * (0.5 + view.dx), canvas * (0.53 + view.dy)])
        self.shift = np.array([cos * u * view.yaw, sin * u * view.yaw])  # per unit of depth

    def pts(self, p: np.ndarray, z: float = 0.0) -> list[float]:
        return (p @ self.m + (self.offset + z * self.shift)).ravel().tolist()

    def poly(self, p: np.ndarray, fill: RGB, z: float = 0.0, outline: RGB | None = None) -> None:
        self.draw.polygon(self.pts(p, z), fill=fill, outline=outline)

    def line(self, p: np.ndarray, fill: RGB, width: float, z: float = 0.0) -> None:
        self.draw.line(self.pts(p, z), fill=fill, width=max(1, round(width * self.unit)))

    def dot(self, x: float, y: float, r: float, fill: RGB, z: float = 0.0) -> None:
        px, py = self.pts(np.array([[x, y]]), z)
        rr = r * self.unit
        self.draw.ellipse((px - rr, py - rr, px + rr, py + rr), fill=fill)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return _UNIT * (rx, ry) + (cx, cy)


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 12) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _shade(c: RGB, f: float) -> RGB:
    return (min(255, int(c[0] * f)), min(255, int(c[1] * f)), min(255, int(c[2] * f)))


def _face_outline(ident: Identity) -> np.ndarray:
    aspect, n, jaw = FACE_SHAPES[ident.face]
    aspect += ident.aspect
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = np.sign(c) * np.abs(c) ** (2 / n)
    y = np.sign(s) * np.abs(s) ** (2 / n) * aspect
    lower = np.clip(y / aspect, 0, 1)  # narrow towards the chin by the jaw factor
    x = x * (1 - (1 - jaw) * lower**2)
    return np.stack([x, y], axis=1)


def _draw_person(pen: _Pen, ident: Identity) -> None:
    skin = SKIN_TONES[ident.skin]
    hair = HAIR_COLOURS[ident.hair_colour]
    style = HAIR_STYLES[ident.hair_style]
    aspect = FACE_SHAPES[ident.face][0] + ident.aspect
    dark_skin = _shade(skin, 0.82)
    top = -aspect  # top of the head in local units

    # body, neck, scarf
    pen.poly(_ellipse(0, aspect + 1.55, 1.55, 0.95), PALETTE[ident.shirt], z=-0.3)
    pen.poly(np.array([[-0.38, 0.4], [0.38, 0.4], [0.42, aspect + 0.75], [-0.42, aspect + 0.75]]),
             dark_skin, z=-0.2)
    if ident.scarf >= 0:
        pen.poly(_ellipse(0, aspect + 0.72, 0.78, 0.22), PALETTE[ident.scarf], z=-0.1)
        pen.poly(np.array([[0.2, aspect + 0.75], [0.45, aspect + 0.75], [0.5, aspect + 1.35],
                           [0.28, aspect + 1.3]]), PALETTE[ident.scarf], z=-0.1)
    # hair behind the head
    if style == "long":
        back = np.array([[-1.12, top * 0.35], [1.12, top * 0.35], [1.2, aspect + 0.6], [-1.2, aspect + 0.6]])
        pen.poly(back, _shade(hair, 0.85), z=-0.3)
    elif style == "bob":
        pen.poly(_ellipse(0, -0.05, 1.2, aspect * 0.95), _shade(hair, 0.85), z=-0.3)
    # ears and earrings
    for side in (-1, 1):
        pen.poly(_ellipse(side * 0.98, 0.05, 0.17, 0.27), dark_skin, z=-0.25)
        if ident.earrings:
            colour = (230, 190, 40) if EARRINGS[ident.earrings] == "gold" else (210, 214, 226)
            pen.dot(side * 1.0, 0.4, 0.08, colour, z=-0.25)
    pen.poly(_face_outline(ident), skin)

    # mark
    mark = MARKS[ident.mark]
    if mark == "mole":
        pen.dot(0.42, 0.42, 0.06, (70, 40, 30), z=0.5)
    elif mark == "freckles":
        for fx, fy in ((-0.45, 0.25), (-0.35, 0.35), (-0.55, 0.38), (0.45, 0.25), (0.35, 0.35), (0.55, 0.38)):
            pen.dot(fx, fy, 0.035, _shade(skin, 0.6), z=0.5)
    elif mark == "scar":
        pen.line(np.array([[-0.62, -0.05], [-0.4, 0.45]]), (150, 60, 60), 0.05, z=0.5)
    elif mark == "stripe":
        pen.poly(np.array([[0.3, 0.2], [0.75, 0.12], [0.75, 0.24], [0.3, 0.32]]), (40, 110, 200), z=0.5)

    # eyes and brows
    sp = ident.eye_spacing
    eye = EYE_COLOURS[ident.eye_colour]
    for side in (-1, 1):
        ex = side * sp * 1.6
        pen.poly(_ellipse(ex, -0.05, 0.2, 0.12), (248, 248, 244), z=0.55)
        pen.dot(ex, -0.05, 0.1, eye, z=0.6)
        pen.dot(ex, -0.05, 0.045, (12, 12, 14), z=0.62)
        brow = BROWS[ident.brow]
        if brow == "thin":
            pen.line(np.array([[ex - 0.2, -0.3], [ex + 0.2, -0.3]]), hair, 0.05, z=0.55)
        elif brow == "thick":
            bar = np.array([[ex - 0.23, -0.26], [ex + 0.23, -0.26], [ex + 0.22, -0.37], [ex - 0.22, -0.37]])
            pen.poly(bar, hair, z=0.55)
        else:
            pen.line(_arc(ex, -0.22, 0.22, 0.14, math.pi * 1.1, math.pi * 1.9, 6), hair, 0.06, z=0.55)

    # nose, beard, mouth
    pen.poly(np.array([[0.0, -0.02], [0.1, 0.3], [-0.08, 0.32]]), _shade(skin, 0.72), z=0.9)
    beard = BEARDS[ident.beard]
    if beard == "full":
        outline = _face_outline(ident)
        pen.poly(outline[outline[:, 1] > 0.4], hair, z=0.2)  # the chin below a chord under the nose
    elif beard == "goatee":
        pen.poly(_ellipse(0, aspect * 0.85, 0.2, 0.18), hair, z=0.4)
    mouth = MOUTHS[ident.mouth]
    lips = (170, 70, 72)
    if mouth == "small":
        pen.poly(_ellipse(0, 0.58, 0.16, 0.06), lips, z=0.6)
    elif mouth == "wide":
        pen.poly(_ellipse(0, 0.58, 0.34, 0.06), lips, z=0.6)
    else:
        pen.poly(_arc(0, 0.48, 0.3, 0.2, 0.15, math.pi - 0.15), lips, z=0.6)
    if beard == "moustache":
        pen.poly(np.array([[-0.3, 0.5], [0.0, 0.42], [0.3, 0.5], [0.26, 0.44], [0.0, 0.36], [-0.26, 0.44]]),
                 hair, z=0.7)

    # hair on top
    if style in ("crop", "long", "bob", "bun"):
        cap = _arc(0, -0.15, 1.06, aspect * 0.92, math.pi * 1.02, math.pi * 1.98, 16)
        fringe = np.array([[0.9, -0.3], [0.3, -0.45], [-0.5, -0.4], [-0.95, -0.25]])
        pen.poly(np.concatenate([cap, fringe]), hair, z=0.1)
        if style == "bun":
            pen.poly(_ellipse(0, top - 0.25, 0.35, 0.3), hair, z=0.0)
    elif style == "curly":
        for a in np.linspace(math.pi * 1.05, math.pi * 1.95, 7):
            pen.dot(math.cos(a) * 0.95, -0.1 + math.sin(a) * aspect * 0.95, 0.3, hair, z=0.1)
    elif style == "spiky":
        t = np.linspace(math.pi * 1.05, math.pi * 1.95, 11)
        r = np.where(np.arange(11) % 2 == 0, 1.0, 1.3)
        spikes = np.stack([np.cos(t) * r * 1.02, -0.15 + np.sin(t) * r * aspect * 0.9], axis=1)
        pen.poly(np.concatenate([spikes, [[0.8, -0.35], [-0.8, -0.35]]]), hair, z=0.1)

    # glasses
    glasses = GLASSES[ident.glasses]
    if glasses != "none":
        frame = PALETTE[ident.glasses_colour]
        for side in (-1, 1):
            ex = side * sp * 1.6
            if glasses == "round":
                ring = _ellipse(ex, -0.05, 0.26, 0.22)
                pen.line(np.concatenate([ring, ring[:1]]), frame, 0.06, z=0.7)
            elif glasses == "square":
                box = np.array([[ex - 0.27, -0.24], [ex + 0.27, -0.24], [ex + 0.27, 0.15], [ex - 0.27, 0.15],
                                [ex - 0.27, -0.24]])
                pen.line(box, frame, 0.06, z=0.7)
            else:
                pen.poly(_ellipse(ex, -0.04, 0.28, 0.2), (20, 20, 24), z=0.7)
        pen.line(np.array([[-sp * 1.6 + 0.25, -0.08], [sp * 1.6 - 0.25, -0.08]]), frame, 0.05, z=0.75)

    # hat
    hat = HATS[ident.hat]
    if hat != "none":
        colour = PALETTE[ident.hat_colour]
        if hat == "beanie":
            pen.poly(_arc(0, -0.35, 1.1, aspect * 0.85, math.pi, 2 * math.pi, 16), colour, z=0.1)
            pen.poly(np.array([[-1.12, -0.5], [1.12, -0.5], [1.12, -0.28], [-1.12, -0.28]]),
                     _shade(colour, 0.75), z=0.15)
        elif hat == "cap":
            pen.poly(_arc(0, -0.4, 1.05, aspect * 0.8, math.pi, 2 * math.pi, 16), colour, z=0.1)
            pen.poly(np.array([[-0.2, -0.45], [1.55, -0.42], [1.5, -0.32], [-0.2, -0.35]]),
                     _shade(colour, 0.8), z=0.3)
        else:
            pen.poly(_ellipse(0, -0.6, 1.65, 0.2), _shade(colour, 0.8), z=0.1)
            crown = np.array([[-0.8, -0.62], [0.8, -0.62], [0.7, top - 0.45], [-0.7, top - 0.45]])
            pen.poly(crown, colour, z=0.1)


def _finish(canvas: Image.Image, view: View, size: int) -> Image.Image:
    """Downsample, then apply the photometric part of the view: blur, lighting, noise."""
    img = canvas.reduce(SUPERSAMPLE)  # box filter: the anti-aliasing of the supersampled shapes
    if view.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(view.blur * size / 64))
    a = np.asarray(img, np.float32)
    mean = a.mean()
    a = (a - mean) * view.contrast + mean
    x, y = _grid(size)
    light = 1 + view.light_strength * (x * math.cos(view.light_angle) + y * math.sin(view.light_angle))
    gain = view.brightness * (1 + np.asarray(view.tint, np.float32))
    a = a * light[..., None] * gain
    if view.noise > 0:
        rng = np.random.default_rng(view.noise_seed)
        a += rng.standard_normal(a.shape, dtype=np.float32) * view.noise
    return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "RGB")


def _canvas(view: View, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    bg = np.clip(_background(view, size) + 0.5, 0, 255).astype(np.uint8)
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(bg, "RGB").resize((big, big), Image.Resampling.NEAREST)
    return canvas, ImageDraw.Draw(canvas)


def render(identity: Identity, view: View, size: int = 64) -> Image.Image:
    """The portrait of ``identity`` seen under ``view``, as a ``size`` x ``size`` RGB image."""
    canvas, draw = _canvas(view, size)
    _draw_person(_Pen(draw, canvas.size[0], view), identity)
    return _finish(canvas, view, size)


def render_array(identity: Identity, view: View, size: int = 64) -> np.ndarray:
    """``render`` as a uint8 [size, size, 3] array."""
    return np.asarray(render(identity, view, size))


def pretrain_batch(
    identities: list[Identity],
    rng: np.random.Generator,
    batch: int,
    size: int = 64,
    *,
    hard_frac: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh random views of random pre-training identities: (uint8 [B, H, W, 3], int64 identity indices).

    A fraction ``hard_frac`` of the views use the wide ``hard`` ranges, so the encoder learns
    invariance beyond what the world's own views need.
    """
    labels = rng.integers(len(identities), size=batch)
    out = np.empty((batch, size, size, 3), np.uint8)
    for i, k in enumerate(labels):
        view = sample_view(rng, hard=bool(rng.random() < hard_frac))
        out[i] = render_array(identities[int(k)], view, size)
    return out, labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# General visual ability: colour, shape, count, position (the MMBench-style utility analogue)

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
        return _UNIT
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
    canvas, draw = _canvas(view, size)
    big = canvas.size[0]
    a = math.radians(item.rotation)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = _shape_points(item.shape) @ rot.T * item.radius * big
    for cx, cy in item.centres:
        p = pts + (cx * big, cy * big)
        draw.polygon([(float(x), float(y)) for x, y in p], fill=GENERAL_COLOURS[item.colour],
                     outline=(30, 30, 30) if item.colour == "white" else None)
    return _finish(canvas, view, size)


__all__ = [
    "BG_KINDS", "GENERAL_COLOURS", "GENERAL_KINDS", "GENERAL_POSITIONS", "GENERAL_SHAPES",
    "GENERAL_TEMPLATES",
    "GeneralItem", "Identity", "SUPERSAMPLE", "TRAIT_SIZES", "View", "pretrain_batch", "pretrain_identities",
    "render", "render_array", "render_general", "sample_general_item", "sample_identity", "sample_view",
    "spread_count",
    "trait_distance",
]
