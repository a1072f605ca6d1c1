"""Shared fixtures: the three tiny architectures, built once per session, a tiny world with a
tiny LLaVA that knows its names, and random images.

Building a tiny model (tokenizer training included) takes about half a second and loading
it a fraction of that, so each architecture is built and loaded once and handed to every
test that asks. Tests that train or freeze parameters get the shared adapter back in a
known state (every parameter trainable, no gradients, eval mode) each time they ask.

The world, its suite, its training turns and the model directory are read-only and built
once per session; a test that trains loads its own adapter from ``model_dir``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsee import api
from unsee.data.mllmu import load_mllmu
from unsee.data.schema import Suite
from unsee.data.world import build_world
from unsee.engine.trainer import TrainConfig, train
from unsee.methods.baselines import SFT
from unsee.models import HFAdapter, Turn, load_adapter
from unsee.models.tiny import ARCHS, IMAGE_SIZE, init_model

TINY_ARCHS: tuple[str, ...] = ARCHS

# A world small enough to build in a second and still have every split the engine and the methods read.
WORLD_OVERRIDES = ["n_people=6", "n_known=2", "n_unknown=2", "n_neutral=4", "n_train_views=2", "n_test_views=1",
                   "n_requests=2", "n_general_train=8", "n_general_eval=4", "n_pretrain=4"]


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


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny built-in world (``WORLD_OVERRIDES`` over the quick config)."""
    return build_world(tmp_path_factory.mktemp("world") / "w", config="quick", overrides=WORLD_OVERRIDES)


@pytest.fixture(scope="session")
def model_dir(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA whose tokenizer knows the world's names (seed 0); treat it as read-only."""
    return init_model("tiny-llava", tmp_path_factory.mktemp("world_model") / "m", world=world, seed=0)


@pytest.fixture(scope="session")
def suite(world: Path) -> Suite:
    return load_mllmu(world, "forget_10")


@pytest.fixture(scope="session")
def turns(suite: Suite) -> dict[str, list[Turn]]:
    """The training streams of the suite; streams copy these lists, so sharing them is safe."""
    return api.training_turns(suite)


@pytest.fixture(scope="session")
def trained_dir(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]],
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model after a few SFT steps on forget + retain answers, so that it knows something to forget."""
    adapter = load_adapter(model_dir)
    train(SFT(), adapter, suite, {"train": turns["forget"] + turns["retain"]},
          TrainConfig(lr=1e-3, max_steps=20, batch_size=4, progress=False))
    out = tmp_path_factory.mktemp("methods_trained") / "m"
    adapter.save(out)
    return out
