"""Light, seeded image augmentation for the fixed training views (crops, jitter, shifts).

A real fine-tune augments its images; without it a tiny model memorises pixels of each
training view and held-out views of the same person look new.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance


def augment(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
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
    return out
