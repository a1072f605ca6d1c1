"""One artifact interface for every method: a steering file and changed weights, saved and loaded back."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unsee.data.schema import Example
from unsee.errors import ModelError
from unsee.eval.evaluator import option_logprobs
from unsee.methods import ALL, REGISTRY, TRAINING, method_class
from unsee.methods.artifact import WeightsArtifact, load_result
from unsee.methods.eraser import STEERING_FILE, EraserConfig, SteeringArtifact, build_steering
from unsee.models import Turn, load_adapter
from unsee.models.tiny import init_model

SRC = Path(__file__).resolve().parents[1] / "src" / "unsee"


def png(seed: int, lo: int = 0, hi: int = 256) -> bytes:
    arr = np.random.default_rng(seed).integers(lo, hi, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def turns(n: int, seed: int, lo: int = 0, hi: int = 256) -> list[Turn]:
    return [Turn(Image.open(io.BytesIO(png(seed * 100 + i, lo, hi))).convert("RGB"), "Who is this?", "yes")
            for i in range(n)]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model as the engine saves one, so that saving it again gives the same fingerprint."""
    where = tmp_path_factory.mktemp("m")
    load_adapter(init_model("tiny-llava", where / "init", seed=0)).save(where / "tiny-llava")
    return where / "tiny-llava"


@pytest.fixture(scope="module")
def items() -> list[Example]:
    options = ("yes", "no", "maybe", "Alice")
    return [Example(uid=f"q{k}", entity="e", question="Who is this?", answer=options[k % 4], task="mcq",
                    image=png(900 + k, hi=128), options=options, correct=k % 4) for k in range(6)]


def scores(adapter, items, artifact) -> torch.Tensor:
    with artifact.applied(adapter):
        return torch.tensor(option_logprobs(adapter, items))


def test_steering_saved_then_loaded_gives_the_same_scores(model: Path, items: list[Example], tmp_path: Path) -> None:
    adapter = load_adapter(model)
    steering = build_steering(adapter, turns(8, 1, hi=128), turns(4, 2, lo=128), turns(16, 3),
                              EraserConfig(layers=[1, 2], batch_size=8)).select(strength=-4.0)
    artifact = SteeringArtifact(steering)
    plain = torch.tensor(option_logprobs(adapter, items))
    steered = scores(adapter, items, artifact)
    assert not torch.allclose(plain, steered)  # the hooks are on inside the block...
    assert torch.equal(torch.tensor(option_logprobs(adapter, items)), plain)  # ...and off after it

    artifact.save(tmp_path / "result")
    assert sorted(p.name for p in (tmp_path / "result").iterdir()) == [STEERING_FILE]
    with pytest.raises(ModelError, match="no model beside it"):
        load_result(tmp_path / "result")
    again, loaded = load_result(tmp_path / "result", base=model)
    assert isinstance(loaded, SteeringArtifact)
    assert torch.equal(scores(again, items, loaded), steered)

    adapter.save(tmp_path / "kept" / "model")  # the layout benchmarks/unlearn.py --keep writes
    loaded.save(tmp_path / "kept")
    beside, kept = load_result(tmp_path / "kept")
    assert torch.equal(scores(beside, items, kept), steered)


def test_weights_artifact_applies_nothing_and_saves_the_checkpoint(model: Path, items: list[Example],
                                                                   tmp_path: Path) -> None:
    adapter = load_adapter(model)
    artifact = WeightsArtifact(adapter, arch="tiny-llava")
    assert torch.equal(scores(adapter, items, artifact), torch.tensor(option_logprobs(adapter, items)))
    assert (artifact.info, artifact.trainable_params, artifact.history) == ({}, 0, [])
    artifact.save(tmp_path / "result" / "model")
    assert (tmp_path / "result" / "model" / "config.json").is_file()
    loaded_adapter, loaded = load_result(tmp_path / "result")
    assert isinstance(loaded, WeightsArtifact) and loaded.arch == "tiny-llava"
    assert torch.equal(scores(loaded_adapter, items, loaded), scores(adapter, items, artifact))


def test_every_method_is_registered_and_says_whether_it_trains_weights() -> None:
    assert tuple(REGISTRY) == ALL and "eraser" in ALL
    assert tuple(m for m in ALL if m != "eraser") == TRAINING
    for name in ALL:
        cls = method_class(name)
        assert isinstance(cls.trains_weights, bool) and hasattr(cls, "Config") and hasattr(cls, "images_only")
    assert not method_class("eraser").trains_weights


def test_no_module_compares_a_method_name_to_a_literal() -> None:
    """What a method can do is asked of its class; only the registry knows the names."""
    names = set(REGISTRY)
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "methods" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            literals = [c.value for s in sides for c in ast.walk(s)
                        if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            if names & set(literals):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"method names compared to literals at {found}"


def test_methods_do_not_import_the_audits_and_the_adversarial_steps_sit_below_both() -> None:
    """The audits judge the methods: a method importing them would close a cycle."""
    def imports(path: Path) -> set[str]:
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out

    audits = {"unsee.audit.attacks", "unsee.audit.quant", "unsee.audit.mia"}
    for path in sorted((SRC / "methods").rglob("*.py")):
        assert not imports(path) & audits, path
    low = imports(SRC / "engine" / "adversarial.py")
    assert not any(m.startswith(("unsee.methods", "unsee.eval")) for m in low), low
