"""What unlearning leaves behind, one interface for every method.

A training method changes the model's weights in place; MLLMEraser leaves them alone and
hands over a steering file whose hooks must be on whenever the model runs. Evaluation, the
audits, the demo and the benchmarks should not care which: they run the model inside
``with artifact.applied(adapter):`` and ship it with ``artifact.save(out)``. Which methods
train weights is a class attribute (``trains_weights``), never a list of names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from unsee.engine.prepare import merge_lora
from unsee.engine.trainer import train
from unsee.errors import ModelError
from unsee.io import atomic_write_json
from unsee.methods.eraser.method import SteeringArtifact
from unsee.methods.eraser.steering import STEERING_FILE
from unsee.models import load_adapter

if TYPE_CHECKING:
    from unsee.data.schema import Suite
    from unsee.engine.trainer import TrainConfig, TrainResult
    from unsee.models.base import Adapter, Turn


class Artifact(Protocol):
    """The result of unlearning, applied to a model when it runs and written where a user ships it.

    ``info``, ``trainable_params``, ``optimizer_state_bytes`` and ``history`` are what the run
    record (results.json) says about the unlearning itself.
    """

    info: dict[str, Any]
    trainable_params: int
    optimizer_state_bytes: int
    history: list[dict[str, float]]

    def applied(self, adapter: Adapter) -> AbstractContextManager[None]: ...

    def save(self, out: Path) -> None: ...


class Unlearner(Protocol):
    """A method as the engine runs it: ``unlearn`` honours a request and returns the artifact."""

    Config: ClassVar[type]  # exactly the keys it reads
    trains_weights: ClassVar[bool]

    def needs_neutral(self) -> str | None: ...  # "": no never-taught photos read; None: no way round; else the way
    def unlearn(self, adapter: Adapter, suite: Suite, cfg: Any) -> Artifact: ...


@dataclass
class WeightsArtifact:
    """The adapter's model was changed in place: nothing to apply, and ``save`` writes the checkpoint.

    ``arch`` goes to ``unsee.json`` so that the unlearned model is reported under the
    architecture its vanilla run was; ``result`` is the engine's record of the training.
    """

    adapter: Adapter | None = None
    arch: str = ""
    result: TrainResult | None = None

    @property
    def info(self) -> dict[str, Any]:
        return {} if self.result is None else self.result.info

    @property
    def trainable_params(self) -> int:
        return 0 if self.result is None else self.result.trainable_params

    @property
    def optimizer_state_bytes(self) -> int:
        return 0 if self.result is None else self.result.optimizer_state_bytes

    @property
    def history(self) -> list[dict[str, float]]:
        return [] if self.result is None else self.result.history

    def applied(self, adapter: Adapter) -> AbstractContextManager[None]:
        return nullcontext()

    def save(self, out: Path) -> None:
        """A standard checkpoint at ``out``; a LoRA run is merged so the output loads without peft."""

        if self.adapter is None:
            raise ModelError("this weights artifact holds no model to save")
        merge_lora(self.adapter)
        self.adapter.save(out)
        atomic_write_json(Path(out) / "unsee.json", {"arch": self.arch})


@dataclass
class Trained:
    """A training method as an :class:`Unlearner`: the engine trains ``adapter`` in place on the
    suite's streams (``turns``) under the engine options ``cfg``; the artifact is its weights."""

    method: Any
    turns: Mapping[str, list[Turn]]
    desc: str = ""
    arch: str = ""
    on_eval: Callable[[int], dict] | None = None  # figures taken every ``eval_every`` steps
    trains_weights: ClassVar[bool] = True

    @property
    def Config(self) -> type:  # noqa: N802 - the Unlearner's name for the method's own options
        return type(self.method).Config

    def unlearn(self, adapter: Adapter, suite: Suite, cfg: TrainConfig) -> WeightsArtifact:

        res = train(self.method, adapter, suite, dict(self.turns), cfg, desc=self.desc, on_eval=self.on_eval)
        return WeightsArtifact(adapter, arch=self.arch, result=res)


def load_result(path: str | Path, *, base: str | Path | None = None,
                **load_kw: Any) -> tuple[Adapter, Artifact]:
    """A saved result directory back as (adapter, artifact).

    A directory with a steering file is a steering result: the hooks apply to ``base``, or to
    the model saved beside the file in ``path/model``. Otherwise it is a checkpoint: ``path/model``
    (the layout ``unsee unlearn`` writes) or ``path`` itself. ``load_kw`` go to ``load_adapter``.
    """

    path = Path(path)
    model = path / "model" if (path / "model").is_dir() else path
    if (path / STEERING_FILE).is_file():
        if base is None and not (path / "model").is_dir():
            raise ModelError(f"{path} holds a steering file but no model beside it: give the base model it was "
                             "computed on")
        return load_adapter(base if base is not None else model, **load_kw), SteeringArtifact.load(path / STEERING_FILE)
    adapter = load_adapter(model, **load_kw)
    return adapter, WeightsArtifact(adapter, arch=_arch(model))


def _arch(model: Path) -> str:
    """The architecture name a checkpoint was saved under (``unsee.json``), else its folder name."""
    import json

    f = model / "unsee.json"
    return json.loads(f.read_text()).get("arch", model.name) if f.is_file() else model.name
