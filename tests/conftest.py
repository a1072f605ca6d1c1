"""Shared fixtures: the three tiny architectures, built once per session, and random images.

Building a tiny model (tokenizer training included) takes about half a second and loading
it a fraction of that, so each architecture is built and loaded once and handed to every
test that asks. Tests that train or freeze parameters get the shared adapter back in a
known state (every parameter trainable, no gradients, eval mode) each time they ask.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsee.models import HFAdapter, load_adapter
from unsee.models.tiny import ARCHS, IMAGE_SIZE, init_model

TINY_ARCHS: tuple[str, ...] = ARCHS


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread: the tiny models gain nothing from more, and on a shared 2-core
    machine the thread pool's contention made forward passes 5-10x slower."""
    torch.set_num_threads(1)


def random_image(seed: int, size: int = IMAGE_SIZE) -> Image.Image:
    """A deterministic RGB noise image: the same seed always gives the same pixels."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


class TinyModels:
    """Tiny model directories (``init_model(arch, path, seed=0)``) and their adapters, made on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dirs: dict[str, Path] = {}
        self._adapters: dict[str, HFAdapter] = {}

    def dir(self, arch: str) -> Path:
        """The saved model directory; treat it as read-only (copy it to edit it)."""
        if arch not in self._dirs:
            self._dirs[arch] = init_model(arch, self.root / arch, seed=0)
        return self._dirs[arch]

    def adapter(self, arch: str) -> HFAdapter:
        """The shared adapter, reset: full scope, gradients cleared, eval mode."""
        if arch not in self._adapters:
            self._adapters[arch] = load_adapter(self.dir(arch))
        adapter = self._adapters[arch]
        adapter.set_scope("full")
        adapter.model.zero_grad(set_to_none=True)
        adapter.model.eval()
        return adapter


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def make_image() -> Callable[..., Image.Image]:
    """``make_image(seed, size=64)``: a deterministic random PIL image."""
    return random_image
