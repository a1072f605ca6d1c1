"""Light, seeded image augmentation for the fixed training views (crops, jitter, shifts, backgrounds).

A real fine-tune augments its images; without it a tiny model memorises pixels of each
training view and held-out views of the same person look new.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter


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


@lru_cache(maxsize=8)
def portrait_mask(size: tuple[int, int]) -> Image.Image:
    """An "L" mask of a centred portrait's head, 255 inside a feathered ellipse (three fifths of the width
    and nine tenths of the height across, about 0.43 of the image), 0 on the background around it."""
    w, h = size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((0.2 * w, 0.05 * h, 0.8 * w, 0.98 * h), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(w, h) / 40))


def backdrop(images: Sequence[Image.Image], donors: Sequence[Image.Image], rng: np.random.Generator,
             p: float) -> list[Image.Image]:
    """Each image, with probability ``p``, its centre (:func:`portrait_mask`) pasted onto a random donor's
    background: a person's few photos share few backgrounds, and a forgetting learned on them can bind to
    those rather than to the person. The draws are one uniform and one donor index per image; ``p`` 0 or no
    donor returns the images as they are, drawing nothing."""
    if p <= 0 or not donors:
        return list(images)
    out = []
    for img in images:
        swap, k = rng.random() < p, int(rng.integers(len(donors)))
        if swap:
            donor = donors[k].convert(img.mode).resize(img.size, Image.BILINEAR)
            img = Image.composite(img, donor, portrait_mask(img.size))
        out.append(img)
    return out
