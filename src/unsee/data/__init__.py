"""Benchmarks as :class:`~unsee.data.schema.Suite`s.

:func:`load_benchmark` maps a benchmark name to its loader and imports it only when
called, so that importing :mod:`unsee.data` stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsee.errors import ConfigError, DataError

if TYPE_CHECKING:
    from unsee.data.schema import Suite

# name -> "module:function"; "builtin" is the offline world, written in the MLLMU-Bench layout.
LOADERS = {
    "mllmu": "unsee.data.mllmu:load_mllmu",
    "clear": "unsee.data.clear:load_clear",
    "umu": "unsee.data.umu:load_umu",
    "builtin": "unsee.data.mllmu:load_mllmu",
}


def load_benchmark(kind: str, root: str | Path, forget: Any = None, **kw: Any) -> Suite:
    """Load benchmark ``kind`` from ``root``; ``forget=None`` keeps the loader's default split."""
    if kind not in LOADERS:
        raise DataError(f"unknown benchmark {kind!r}; choose one of {sorted(LOADERS)}")
    module, func = LOADERS[kind].split(":")
    loader = getattr(importlib.import_module(module), func)
    taken = inspect.signature(loader).parameters
    if "retain_exclude" in kw and "retain_exclude" not in taken:
        raise ConfigError(f"continual requests (--requests) leave every request's people out of the retained "
                          f"ones, and {kind}'s splits cannot: run its requests one at a time, each from the model "
                          "the previous one wrote")
    if unknown := sorted(set(kw) - set(taken)):
        raise ConfigError(f"the {kind} benchmark does not take {', '.join(unknown)}")
    suite = loader(root, forget, **kw) if forget is not None else loader(root, **kw)
    if kind == "builtin":
        suite.name = "builtin"
    suite.info["benchmark"] = kind
    return suite
