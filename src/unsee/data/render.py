"""Procedural portraits of the built-in world's people (:mod:`unsee.data.identity` says who and how seen;
the general-ability scenes are :mod:`unsee.data.scenes`).

Everything is drawn as polygons at ``SUPERSAMPLE`` times the output size and box-filtered
down, with PIL and numpy only: about a millisecond per 64 px image, so that vision
pre-training can render fresh views of a few hundred identities at every step.
Rendering is a pure function of its inputs: the same identity and view give the same bytes.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from unsee.data.identity import (
    BEARDS,
    BG_KINDS,
    BROWS,
    EARRINGS,
    EYE_COLOURS,
    FACE_SHAPES,
    GLASSES,
    HAIR_COLOURS,
    HAIR_STYLES,
    HATS,
    MARKS,
    MOUTHS,
    PALETTE,
    RGB,
    SKIN_TONES,
    Identity,
    View,
    sample_view,
)

SUPERSAMPLE = 3

# ---------------------------------------------------------------------------------------------
# Drawing


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shared by backgrounds and lighting."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t)  # type: ignore[return-value]


_CIRCLE = np.exp(1j * np.linspace(0, 2 * np.pi, 32, endpoint=False))
UNIT_CIRCLE = np.stack([_CIRCLE.real, _CIRCLE.imag], axis=1)


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
    return UNIT_CIRCLE * (rx, ry) + (cx, cy)


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


def finish_view(canvas: Image.Image, view: View, size: int) -> Image.Image:
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


def supersampled_canvas(view: View, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    bg = np.clip(_background(view, size) + 0.5, 0, 255).astype(np.uint8)
    big = size * SUPERSAMPLE
    canvas = Image.fromarray(bg, "RGB").resize((big, big), Image.Resampling.NEAREST)
    return canvas, ImageDraw.Draw(canvas)


def render(identity: Identity, view: View, size: int = 64) -> Image.Image:
    """The portrait of ``identity`` seen under ``view``, as a ``size`` x ``size`` RGB image."""
    canvas, draw = supersampled_canvas(view, size)
    _draw_person(_Pen(draw, canvas.size[0], view), identity)
    return finish_view(canvas, view, size)


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


__all__ = [
    "SUPERSAMPLE", "UNIT_CIRCLE", "finish_view", "pretrain_batch", "render", "render_array", "supersampled_canvas",
]
