"""What a command does as a process, whatever it runs: its output's encoding, the paths it is given,
the signals that stop it, the one line an error is shown as, and the parser that reads its options."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from argparse import Namespace
from typing import Any

from unsee.errors import did_you_mean


def plain_text_where_asked() -> None:
    """Output that cannot take every character (``PYTHONIOENCODING=ascii``, an old terminal's code page) shows
    a '?' for a dash or an arrow: the table at the end of a run crashed there after its results were saved."""
    for stream in (sys.stdout, sys.stderr):
        encoding = str(getattr(stream, "encoding", "") or "").lower().replace("-", "")
        if encoding and not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")


def expand_home(args: Namespace) -> None:
    """A path given as ``--out=~/x``, or quoted, reaches unsee with its ``~`` (the shell expands it only at
    the start of a word): some options read it as the home folder and others did not (a folder named ``~``
    was made, a model was looked up on the hub). Every option's is the home folder here."""
    for key, value in vars(args).items():
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, key, os.path.expanduser(value))
        elif isinstance(value, list) and any(isinstance(v, str) and v.startswith("~") for v in value):
            setattr(args, key, [os.path.expanduser(v) if isinstance(v, str) and v.startswith("~") else v
                                for v in value])


class Stopped(KeyboardInterrupt):
    """SIGTERM, what a scheduler (Slurm, Kubernetes) sends before it kills: handled as Ctrl-C is, so that the
    run's partial output is cleaned up and it says what it keeps. Without it the process died at once, and
    left its staging folder (a model's worth) behind."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


def stop_on_term() -> Any:
    """Install the SIGTERM handler for the command's run; the handler it replaces, to put back (None where
    signals cannot be handled here: outside the main thread)."""

    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def one_line(message: str, limit: int = 2000) -> str:
    """An error as one line of bounded length, whatever text it quotes."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit] + " ..."


class Parser(argparse.ArgumentParser):
    """argparse's parser, which also names the choice a mistyped one is a slip of (``unsee attack qaunt``: did you
    mean 'quant'?), as unsee's own errors do; argparse itself lists the choices and leaves the search to the eye.
    Subcommands' parsers are of the same class."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as e:
            hint = did_you_mean([value], map(str, action.choices or ()))
            raise argparse.ArgumentError(action, e.message + hint) from None


def seed_type(text: str) -> int:
    """A seed numpy and torch both take: 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: give a whole number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"seed {value} is outside 0 to 2**32 - 1")
    return value
