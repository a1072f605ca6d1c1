"""MLLMEraser as an unlearner: fit the steering (optionally sweeping its setting on held-out items)
and hand it back as the artifact that is applied at test time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from unsee.data.schema import Suite
from unsee.errors import DataError
from unsee.io import check_output_dir
from unsee.methods.eraser.config import EraserConfig
from unsee.methods.eraser.fit import build_steering, draw, erasure_turns, peak_memory_mb, prompt_turns
from unsee.methods.eraser.hooks import steer
from unsee.methods.eraser.steering import STEERING_FILE, Steering
from unsee.methods.eraser.sweep import hold_out, swept, validation
from unsee.models.base import Adapter
from unsee.provenance import environment


@dataclass
class SteeringArtifact:
    """MLLMEraser's result: the weights are untouched, the steering's hooks are on while the model runs."""

    steering: Steering
    info: dict[str, Any] = field(default_factory=dict)
    trainable_params: int = 0
    optimizer_state_bytes: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @contextmanager
    def applied(self, adapter: Adapter) -> Iterator[None]:
        """The hooks while the block runs; a model the steering was not computed on is refused."""

        with steer(adapter, self.steering):
            yield

    def save(self, out: Path) -> None:
        """The steering file, ``out/steering.safetensors`` (the model's weights are never written); an
        existing one is not replaced."""

        check_output_dir(Path(out), overwrite=False, marker=STEERING_FILE)
        self.steering.save(Path(out) / STEERING_FILE)

    @classmethod
    def load(cls, path: str | Path) -> SteeringArtifact:
        """A steering file (``steering.safetensors``)."""

        return cls(Steering.load(path))


def fit_steering(adapter: Adapter, suite: Suite, cfg: EraserConfig, *, seed: int = 0) -> Steering:
    """Build the steering from ``train_forget``, ``neutral`` and the ``cfg.keep`` groups; nothing is written.

    ``max_items`` caps each group by a seeded draw, so that a capped group still holds every
    person rather than the first few. With ``cfg.sweep`` a validation slice of the training
    QA is held out of the fit and the grid's winner is returned.
    """

    start = time.perf_counter()
    forget = [e for e in suite.group("train_forget") if e.has_image]
    if not forget:
        raise DataError(f"suite {suite.name!r}: train_forget has no examples with images; MLLMEraser needs them")
    retain = suite.group("train_retain")
    if not retain:
        raise DataError(f"suite {suite.name!r}: train_retain is empty; MLLMEraser needs prompts that must not move")
    checks = None
    if cfg.sweep:
        (forget, val_f), (retain, val_r) = (hold_out(g, cfg.sweep_items, seed) for g in (forget, retain))
        checks = validation(suite, val_f, val_r, cfg.sweep_items, seed)
    neutral = suite.group("neutral") if cfg.erasure == "neutral" else []
    forget = draw(forget, cfg.max_items, seed)
    groups = {g: suite.groups.get(g, []) for g in cfg.keep} | {"train_retain": retain}  # a suite may lack some
    kept = [e for g in cfg.keep for e in draw(groups[g], cfg.max_items, seed)]
    # the erasure inputs only give r_l's mean: a seeded share of the forget prompts is enough
    recall = draw(forget, cfg.erasure_items, seed)
    erasure = erasure_turns(recall, draw(neutral, cfg.max_items, seed), cfg.erasure)
    inputs = (prompt_turns(forget), erasure, prompt_turns(kept))
    steering = swept(adapter, inputs, checks, cfg) if checks else build_steering(adapter, *inputs, cfg)
    steering.info.update({
        "suite": suite.name,
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_memory_mb": peak_memory_mb(),
        "trainable_parameters": 0,
        "environment": environment(),
    })
    return steering


def run_eraser(
    adapter: Adapter, suite: Suite, out_dir: str | Path, cfg: EraserConfig, *, overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """:func:`fit_steering`, then write only the steering file to ``out_dir``.

    The model's weights are never written: the result of MLLMEraser is the base model plus
    ``out_dir/steering.safetensors``.
    """
    check_output_dir(Path(out_dir), overwrite=overwrite, marker=STEERING_FILE)
    return fit_steering(adapter, suite, cfg, seed=seed).save(Path(out_dir) / STEERING_FILE)


class Eraser:
    """MLLMEraser as an unlearner: no weights change, the artifact is the steering (test-time hooks)."""

    Config: ClassVar[type] = EraserConfig
    trains_weights: ClassVar[bool] = False
    images_only: ClassVar[bool] = False
    uses_language: ClassVar[bool] = True  # its directions are read off the answers: retained people need names

    def __init__(self, cfg: EraserConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else EraserConfig()

    def needs_neutral(self) -> str | None:
        """Without never-taught photos the erasure inputs can be a refusal instruction instead."""
        return "" if self.cfg.erasure != "neutral" else "erasure=refusal"

    def unlearn(self, adapter: Adapter, suite: Suite, cfg: EraserConfig | None = None, *,
                seed: int = 0) -> SteeringArtifact:
        """The fitted steering, with what it applies in the run's ``info``: with the sweep, that is the
        setting it chose, not the config's, which it never read."""
        steering = fit_steering(adapter, suite, cfg or self.cfg, seed=seed)
        applied = {"strength": steering.strength, "gate": steering.gate, "layers": steering.layers}
        return SteeringArtifact(steering, info={"applied": applied, **{k: v for k, v in steering.info.items()
                                                                      if k in ("sweep", "wall_s")}})


