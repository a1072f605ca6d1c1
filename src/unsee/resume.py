"""A long run's finished parts (a continual run's requests, a tune's runs), kept beside its output until the
whole run lands.

A continual run takes one training per request, hours on a real model, and its output is
written atomically. Without this, a failure (or a kill) at request k would lose the k - 1
requests before it. After every request but the last, the model and the results so far go to
``OUT.partial``; the same command finds them there and goes on from request k, with the same
numbers as a run that never stopped. ``unsee tune`` keeps its finished runs the same way, without a
model (each of its runs starts from the input model). The folder is keyed by everything that changes
the numbers, so another run (other options, requests, data or model) never picks it up.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unsee.config import to_dict
from unsee.engine.checkpoint import content_key
from unsee.engine.distributed import is_main_process
from unsee.engine.prepare import merge_lora
from unsee.engine.trainer import UNKEYED, unique_images
from unsee.errors import ConfigError, DataError, OutputExistsError, TrainingError
from unsee.io import atomic_dir, atomic_write_json, restored
from unsee.models import load_adapter
from unsee.models.base import Adapter, model_fingerprint
from unsee.runs import method_configs, request_overrides, save_model, unlearn_adapter

STATE = "state.json"


def partial_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.partial")


def model_identity(model: str | Path, revision: str | None = None) -> str:
    """What the starting weights are: a local folder's fingerprint, or a hub id and revision."""
    path = Path(model)
    return model_fingerprint(path) if path.is_dir() else f"{model}@{revision or 'main'}"


def run_parts(method: str, config: Any, overrides: Any, *, seed: int, model: str | Path, revision: str | None,
              dtype: str | None, forget: Mapping[str, list[Any]], **extra: Any) -> dict[str, Any]:
    """Everything a continual run's numbers depend on: the method's resolved options (progress bars
    and checkpoint folders aside), the seed, the starting weights and each request's training
    photos and answers (``forget``: each request's training turns, in order); ``extra`` for the
    driver's own (the data's path, evaluation options)."""
    tcfg, mcfg, _ = method_configs(method, config, overrides)
    options = {k: v for k, v in {**to_dict(tcfg), **to_dict(mcfg)}.items() if k not in UNKEYED}
    requests = [(name, [(t.image, t.prompt, t.answer) for t in turns])
                for name, turns in forget.items()]  # a list: the order of the requests counts
    return {"method": method, "options": options, "seed": seed, "model": model_identity(model, revision),
            "dtype": dtype, "requests": requests, **extra}


def photos_before(forget: Mapping[str, list[Any]], i: int) -> list[Any]:
    """The forget photos of the requests before request ``i`` (1-based), each once however many
    questions it has: what the next request must keep forgotten (requests are disjoint people)."""
    return [t.image for turns in list(forget.values())[: i - 1] for t in unique_images(turns)]


def train_share(method: str, adapter: Any, requests: Iterable[tuple[int, Any]], n: int,
                progress: Progress | None, forget: Mapping[str, list[Any]], *, arch: str, **options: Any) -> None:
    """What another process of a launch does in a run of ``n`` requests: its share of the training
    of each request not done yet (``requests``: its number and suite), with the same calls as the
    first process, and the merges between requests; the first process alone evaluates and writes."""
    config, overrides = options.pop("config", None), options.pop("overrides", ())
    for i, suite in requests:
        unlearn_adapter(method, adapter, suite, forgotten_images=photos_before(forget, i), config=config,
                        overrides=request_overrides(method, config, overrides, i, n), **options)
        if progress is not None and i < n:
            progress.save(i, adapter, arch, [])


@dataclass
class Progress:
    """The requests of a continual run done so far (``done``), and their runs."""

    path: Path
    key: str
    done: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, out: str | Path, parts: Mapping[str, Any], kind: str = "continual run",
             items: str = "requests") -> Progress:
        """The progress of the run that ``parts`` describe, or a fresh one; a folder that belongs
        to another run, or to nothing of ours, is refused rather than replaced. ``kind`` and ``items``
        name the run and what it finishes one by one, for the messages."""
        path, key = restored(partial_dir(out)), content_key(dict(parts))
        if not path.exists():
            return cls(path, key)
        state = path / STATE
        if not path.is_dir() or not state.is_file():
            raise OutputExistsError(f"{path} is in the way: a {kind} keeps its finished {items} there; "
                                    "move or remove it")
        try:
            saved = json.loads(state.read_text())
            done, runs, saved_key = int(saved["done"]), list(saved["runs"]), saved["key"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{state} cannot be read ({e}); remove {path} to start the run again") from None
        if saved_key != key:
            raise ConfigError(f"{path} holds the finished {items} of another {kind} (other options, "
                              f"{items}, data or model); finish that run with its own command, or remove the "
                              "folder to start this one")
        threads = saved.get("threads")
        if threads != torch.get_num_threads():  # a CPU's sums depend on it: said, not refused
            print(f"unsee: {path} was written with {threads} threads and this run has {torch.get_num_threads()}; "
                  "it goes on, but its numbers will not match an uninterrupted run's to the digit", file=sys.stderr)
        return cls(path, key, done, runs)

    @property
    def model(self) -> Path:
        return self.path / "model"

    def load(self, model: str | Path, **load_kw: Any) -> Adapter:
        """The model the run goes on with: the finished requests' weights, or ``model`` before any.

        Either is known by ``model``'s identity: a request's training checkpoint (``checkpoint_dir``)
        is keyed by the weights the run started from, and must be found again after a resume.
        """
        adapter = load_adapter(self.model if self.done else model, **load_kw)
        adapter.source = str(model)
        return adapter

    def save(self, done: int, adapter: Any, arch: str, runs: list[dict[str, Any]]) -> None:
        """Keep the model after request ``done`` and the runs so far, replacing the previous ones whole
        (the first process writes; under a launch every process merges, so all hold the same weights)."""
        merge_lora(adapter)
        if is_main_process():
            self._write(done, runs, lambda tmp: save_model(adapter, tmp / "model", arch))
        self.done, self.runs = done, list(runs)

    def keep(self, done: int, runs: list[dict[str, Any]]) -> None:
        """Keep the runs so far alone: for a driver whose every run starts from the input model."""
        self._write(done, runs)
        self.done, self.runs = done, list(runs)

    def _write(self, done: int, runs: list[dict[str, Any]], model: Callable[[Path], None] | None = None) -> None:
        """Replace the folder whole: ``model`` writes the weights into it, where there are any."""
        with atomic_dir(self.path, overwrite=True, mine=True) as tmp:
            if model is not None:
                model(tmp)
            atomic_write_json(tmp / STATE, {"key": self.key, "done": done, "threads": torch.get_num_threads(),
                                            "runs": runs})

    def note(self, out: str | Path) -> str:
        """What a failed run leaves, for its error message."""
        if not self.done:
            return f"Nothing is written to {out}."
        kept = "request 1 is" if self.done == 1 else f"requests 1-{self.done} are"
        return (f"Nothing is written to {out}; {kept} kept in {self.path}, and the same command goes on from "
                f"request {self.done + 1}.")

    @contextmanager
    def request(self, i: int, n: int, name: str, out: str | Path) -> Iterator[None]:
        """The work of request ``i`` of ``n``: whatever fails in it (a training error, a kill) names
        the request and says what is kept and how to go on."""
        try:
            yield
        except TrainingError as e:
            raise TrainingError(f"request {i} of {n} ({name}): {e} {self.note(out)}") from e
        except BaseException as e:
            e.add_note(f"request {i} of {n} ({name}): {self.note(out)}")
            raise

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
