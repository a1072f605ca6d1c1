"""Method registry: a name maps to ``"module:Class"``, imported only when used.

Every method is here, whatever its result: a training method changes the weights, MLLMEraser
hands over a steering file (:mod:`unsee.methods.artifact`). Which kind a method is, and what
it can do, is asked of its class (``trains_weights``), never of its name.
"""

from __future__ import annotations

import importlib
from typing import Any

from unsee.errors import ConfigError, did_you_mean

REGISTRY: dict[str, str] = {
    "ga": "unsee.methods.baselines:GA",
    "graddiff": "unsee.methods.baselines:GradDiff",
    "kl": "unsee.methods.baselines:KLMin",
    "npo": "unsee.methods.baselines:NPO",
    "mmunlearner": "unsee.methods.mmunlearner:MMUnlearner",
    "vkd": "unsee.methods.vkd:VKD",
    "cvf_ncu": "unsee.methods.cvf:CVFNCU",
    "cvf_only": "unsee.methods.cvf:CVFOnly",
    "ncu_only": "unsee.methods.cvf:NCUOnly",
    "eraser": "unsee.methods.eraser.method:Eraser",
}
ALL = tuple(REGISTRY)


def method_class(name: str) -> Any:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}{did_you_mean([name], ALL)}; choose one of {', '.join(ALL)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str) -> Any:
    """``TRAINING``: the registered methods that train weights, derived from their classes on first use
    (importing every method module up front would be slow)."""
    if name == "TRAINING":
        return tuple(m for m in REGISTRY if method_class(m).trains_weights)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
