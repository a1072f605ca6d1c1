"""Method registry: a name maps to ``"module:Class"``, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

from unsee.errors import ConfigError

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
}
ALL = (*REGISTRY, "eraser")
TRAINING = ("ga", "graddiff", "kl", "npo", "mmunlearner", "vkd", "cvf_ncu", "cvf_only", "ncu_only")


def method_class(name: str) -> Any:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(ALL)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
