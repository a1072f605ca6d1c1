"""The steering file: the maps ``W_l``, the strength and what ties them to one checkpoint.

One safetensors file (``steering.safetensors``): tensors ``layer.{i}`` (``W_l``) and
``direction.{i}`` (``r_l``), the header as JSON in the (strings-only) metadata.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from unsee import __version__
from unsee.errors import ConfigError, ModelError
from unsee.io import atomic_write_bytes
from unsee.models.base import Adapter

FORMAT = "unsee.steering/1"
STEERING_FILE = "steering.safetensors"


@dataclass
class Steering:
    """Everything :func:`steer` needs, and what makes a file safe to apply to a model.

    ``weights[l]`` is ``W_l`` (``d x d``, float32, CPU). ``fingerprint`` and ``arch`` tie
    the maps to the checkpoint they were computed on: activations of another model live
    in another basis, so applying them there would be silent nonsense. A ``gate`` above 0
    needs ``directions[l]`` (``r_l``) to read how much of ``r_l`` a prompt's map gives.
    """

    weights: dict[int, torch.Tensor]
    strength: float
    arch: str
    fingerprint: str
    model_name: str = ""
    version: str = __version__
    info: dict[str, Any] = field(default_factory=dict)
    gate: float = 0.0
    directions: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.gate and sorted(self.directions) != self.layers:
            raise ModelError(f"a gated steering needs r_l for layers {self.layers}; it has {sorted(self.directions)}")

    @property
    def layers(self) -> list[int]:
        return sorted(self.weights)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.weights.values())).shape[0])

    def header(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "strength": self.strength,
            "layers": self.layers,
            "arch": self.arch,
            "fingerprint": self.fingerprint,
            "model_name": self.model_name,
            "version": self.version,
            "hidden_size": self.hidden_size,
            "gate": self.gate,
            "info": self.info,
        }

    def select(self, layers: Sequence[int] | None = None, strength: float | None = None,
               gate: float | None = None) -> Steering:
        """The same maps on a subset of layers and/or with another strength or gate (for sweeps)."""
        keep = self.layers if layers is None else list(layers)
        if not keep:
            raise ConfigError("a steering needs at least one layer")
        missing = [i for i in keep if i not in self.weights]
        if missing:
            raise ConfigError(f"steering has no map for layers {missing}; it has {self.layers}")
        return replace(self, weights={i: self.weights[i] for i in keep},
                       strength=self.strength if strength is None else float(strength), info=dict(self.info),
                       gate=self.gate if gate is None else float(gate),
                       directions={i: self.directions[i] for i in keep if i in self.directions})

    def save(self, path: str | Path) -> Path:
        """Tensors ``layer.{i}``; the header as JSON in the (strings-only) safetensors metadata. Atomic."""
        path = Path(path)
        tensors = {f"{kind}.{i}": w.detach().to("cpu", torch.float32).contiguous()
                   for kind, maps in (("layer", self.weights), ("direction", self.directions)) for i, w in maps.items()}
        metadata = {"format": FORMAT, "header": json.dumps(self.header(), sort_keys=True)}
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Steering:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"steering file {path} " + ("is a folder, not a steering file" if path.exists()
                                                          else "does not exist"))
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        except Exception as e:  # safetensors raises its own error types for a corrupt file
            raise ModelError(f"cannot read steering file {path}: {e}") from e
        if meta.get("format") != FORMAT or "header" not in meta:
            raise ModelError(f"{path} is not an unsee steering file (format {meta.get('format')!r}, expected {FORMAT})")
        try:
            header = json.loads(meta["header"])
            weights = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("layer.")}
            directions = {int(k.split(".", 1)[1]): v for k, v in tensors.items() if k.startswith("direction.")}
        except ValueError as e:
            raise ModelError(f"{path}: corrupt steering header or tensor names: {e}") from e
        if not isinstance(header, dict):
            raise ModelError(f"{path}: corrupt steering header (a {type(header).__name__}, not a mapping)")
        if not weights or sorted(weights) != header.get("layers"):
            raise ModelError(
                f"{path}: tensors for layers {sorted(weights)} do not match the header's {header.get('layers')}"
            )
        _check_maps(path, header, weights, directions)
        return cls(
            weights=weights,
            strength=float(header["strength"]),
            arch=header["arch"],
            fingerprint=header["fingerprint"],
            model_name=header.get("model_name", ""),
            version=header.get("version", ""),
            info=header.get("info", {}),
            gate=float(header.get("gate", 0.0)),
            directions=directions,
        )

    def check_compatible(self, adapter: Adapter, *, force: bool = False) -> None:
        """Refuse a model this steering was not computed on. ``force`` skips only the fingerprint check."""
        if adapter.arch != self.arch:
            raise ModelError(
                f"steering was computed on a {self.arch!r} model ({self.model_name}); "
                f"this model is {adapter.arch!r}. Rebuild the steering on this model."
            )
        d = _hidden_size(adapter)
        if d != self.hidden_size:
            raise ModelError(f"steering maps are {self.hidden_size}-dimensional but the model's hidden size is {d}")
        n = len(adapter.decoder_layers())
        if self.layers and max(self.layers) >= n:
            raise ModelError(f"steering uses layers {self.layers} but the model has only {n} decoder layers")
        fp = adapter.fingerprint()
        if not force and fp != self.fingerprint:
            raise ModelError(
                f"steering was computed on model fingerprint {self.fingerprint} ({self.model_name}); "
                f"this model's fingerprint is {fp}. Rebuild the steering on this model (unsee unlearn --method "
                "eraser); from Python, force=True skips this check when you know the weights are the same."
            )


def _check_maps(path: Path, header: dict[str, Any], weights: dict[int, torch.Tensor],
                directions: dict[int, torch.Tensor]) -> None:
    """A hand-edited or damaged file is one line here, not a traceback halfway through an evaluation, nor a
    negative layer index that would steer another layer than the one it names."""
    for key, kind in (("strength", (int, float)), ("gate", (int, float)), ("arch", str), ("fingerprint", str)):
        value = header.get(key, 0.0 if key == "gate" else None)
        if not isinstance(value, kind) or isinstance(value, bool) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise ModelError(f"{path}: corrupt steering header: {key} is {value!r}")
    if not 0 <= header.get("gate", 0.0) < 1:  # the hook divides by 1 - gate; below 0 it steers every prompt
        raise ModelError(f"{path}: corrupt steering header: gate is {header['gate']!r}, not in [0, 1)")
    if min(weights) < 0:
        raise ModelError(f"{path}: corrupt steering file: layer {min(weights)} is not a decoder layer")
    d = next(iter(weights.values())).shape[-1]
    for i, w in weights.items():
        if w.shape != (d, d) or not torch.isfinite(w).all():
            raise ModelError(f"{path}: corrupt steering map of layer {i} (shape {tuple(w.shape)}, expected {(d, d)}, "
                             "finite)")
    for i, r in directions.items():
        if i not in weights or r.shape != (d,) or not torch.isfinite(r).all() or not r.any():
            raise ModelError(f"{path}: corrupt steering direction of layer {i} (shape {tuple(r.shape)}, expected "
                             f"({d},), finite, not zero, beside a map)")


def _hidden_size(adapter: Adapter) -> int:
    return int(adapter.model.config.get_text_config().hidden_size)

