"""How the built-in world sizes its forget splits and draws its validation request.

Apart from :mod:`unsee.data.world` so that the rules a user reads to size a request live in
one short place, and so that the world writer stays a writer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unsee.errors import ConfigError


def forget_size(n_people: int, percent: int) -> int:
    """MLLMU-Bench sizes: ``ceil(n * p / 100)`` (25/50/75 of 500)."""
    return math.ceil(n_people * percent / 100 - 1e-9)


def validation_splits(seed: int, n_people: int, percents: Sequence[int], people_ids: list[str],
                      reported: list[list[str]]) -> dict[str, list[str]]:
    """``val_forget_X`` and its complement ``val_retain_(100-X)``: nested, drawn from the people that no
    reported forget split or request holds, from a stream of their own, so that the other splits stay as
    they were and a setting chosen on validation has never forgotten a reported person. The complement holds
    the reported people; a pick that must not see them at all leaves them out (``retain_exclude``), as
    ``benchmarks/unlearn.py`` does."""
    if not percents:
        return {}
    taken = {i for ids in reported for i in ids}
    free = [i for i in people_ids if i not in taken]
    rng = np.random.default_rng([seed, 9])
    order = [free[i] for i in rng.permutation(len(free))]
    need = forget_size(n_people, max(percents))
    if need > len(free):
        raise ConfigError(f"val_forget_{max(percents)} needs {need} people outside every forget "
                          f"split and request, but only {len(free)} of {n_people} are; add people "
                          "(n_people) or set val_forget_splits=[]")
    out: dict[str, list[str]] = {}
    for pct in percents:
        forget = set(order[: forget_size(n_people, pct)])
        out[f"val_forget_{pct}"] = [i for i in people_ids if i in forget]
        out[f"val_retain_{100 - pct}"] = [i for i in people_ids if i not in forget]
    return out
