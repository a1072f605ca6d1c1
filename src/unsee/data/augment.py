"""Light, seeded image augmentation for the fixed training views (crops, jitter, shifts).

A real fine-tune augments its images; without it a tiny model memorises pixels of each
training view and held-out views of the same person look new.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def augment(img: Image.Image, rng: np.random.Generator, strength: float = 1.0, pose: float = 0.0) -> Image.Image:
    """A fresh crop with brightness, contrast and colour jitter; with ``pose``, then a small rotation and a
    horizontal squeeze, as a tilted or turned head gives, whose draws follow the others' so that ``pose=0``
    draws (and returns) what it always did."""
    w, h = img.size
    s = 1 - 0.2 * strength * rng.random()
    cw, ch = int(w * s), int(h * s)
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    out = ImageEnhance.Brightness(out).enhance(1 + strength * rng.uniform(-0.25, 0.25))
    out = ImageEnhance.Contrast(out).enhance(1 + strength * rng.uniform(-0.25, 0.25))
    if rng.random() < 0.5 * strength:
        out = ImageEnhance.Color(out).enhance(1 + rng.uniform(-0.3, 0.3))
    if pose > 0:
        angle, squeeze = 9.0 * pose * rng.uniform(-1, 1), 1 - 0.08 * pose * rng.random()
        fill = out.getpixel((0, 0))  # the corner stands for the background the turn uncovers
        out = out.rotate(angle, resample=Image.BILINEAR, fillcolor=fill)
        narrow = max(1, round(w * squeeze))
        canvas = Image.new(out.mode, (w, h), fill)
        canvas.paste(out.resize((narrow, h), Image.BILINEAR), ((w - narrow) // 2, 0))
        out = canvas
    return out
