"""Progress bars that a user can silence the usual ways.

A run's own option (``progress=false``) hides its bars; otherwise tqdm's environment
(``TQDM_DISABLE=1`` in a batch job's log, ``TQDM_MININTERVAL``...) decides, which it does only
for arguments left unset: a bar made with ``disable=False`` ignores ``TQDM_DISABLE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T], *, show: bool = True, **kw: Any) -> tqdm:
    """``tqdm(iterable, **kw)``, hidden where ``show`` is false, else as tqdm's environment says."""
    return tqdm(iterable, **kw, **({} if show else {"disable": True}))
