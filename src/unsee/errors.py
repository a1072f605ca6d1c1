"""Exceptions a user can act on. Every input problem raises one of these, never an assert."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnseeError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(UnseeError):
    """An unknown key, a bad value, or an unreadable config file."""


class DataError(UnseeError):
    """A benchmark file is missing, corrupt, or lacks a field; the message names the field and the file."""


class ModelError(UnseeError):
    """A model directory is missing, of an unknown type, or holds weights we refuse to load."""


class OutputError(UnseeError):
    """An output path that cannot be written, or must not be: it is, holds or lies inside an input."""


class OutputExistsError(OutputError):
    """The output already holds results; pass overwrite to replace them."""


class TrainingError(UnseeError):
    """Training diverged (NaN/inf loss), did not converge, or a step failed; no output is written, and the
    model in memory holds its last good state where the message says so."""


def did_you_mean(names: Iterable[str], choices: Iterable[str]) -> str:
    """`` (did you mean 'lr'?)`` for the names that are a slip of one of ``choices``, to end an error with; empty
    where none is close. A long list of valid names is hard to search by eye for the one a typo meant. Choices
    equally close are all named (``forget_20``: 'forget_10' or 'forget_r2'), since picking one would be a guess."""
    choices, guesses = list(choices), []
    for name in map(str, names):
        scored = [(difflib.SequenceMatcher(None, name, c).ratio(), c) for c in choices]
        best = max((score for score, _ in scored), default=0.0)
        if best >= 0.75:
            guesses.append(" or ".join(repr(c) for score, c in scored if score == best))
    return f" (did you mean {', '.join(dict.fromkeys(guesses))}?)" if guesses else ""
