"""Helpers several test files share: ``accelerate launch`` and its workers, a hash of a model's weights,
a run stopped part-way.

Every multi-process test starts its processes the same way (one thread each, this
checkout's ``src`` first), and every "did the weights change?" check hashes them alike.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "src/unsee/configs/accelerate"


def launch_command(config: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch --config_file <shipped config> ARGS`` command line and its environment.

    The shipped configs ask for a free port (``main_process_port: 0``), so launches that run side by
    side (``pytest -n``) each rendezvous on their own, as a user's would."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert launcher, "accelerate's launcher is not installed"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return [launcher, "launch", "--config_file", str(ACCELERATE_CONFIGS / config), *args], env


def worker_main(compute: Callable[[Path, Path, object], dict[str, torch.Tensor]]) -> None:
    """A launched worker: ``compute(model_dir, world_dir, accelerator)`` in every process, saved by the first."""
    from accelerate import Accelerator
    from safetensors.torch import save_file

    model_dir, world_dir, out = sys.argv[1:4]
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    result = compute(Path(model_dir), Path(world_dir), accelerator)
    result["world_size"] = torch.tensor([accelerator.num_processes])
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in result.items()}, out)
    accelerator.wait_for_everyone()


def weights_hash(adapter: object) -> str:
    """SHA-256 over every tensor of the model, by name: equal iff the weights are bit for bit equal."""
    h = hashlib.sha256()
    for name, p in sorted(adapter.model.state_dict().items()):  # type: ignore[attr-defined]
        h.update(name.encode())
        h.update(p.detach().float().numpy().tobytes())
    return h.hexdigest()


def stopping_at(real: Callable[..., Any], call: int, error: BaseException, seen: list[Any]) -> Callable[..., Any]:
    """``real``, with each call's request (its third argument) appended to ``seen``, that raises
    ``error`` at call number ``call`` instead: a continual run stopped part-way, at a chosen request."""

    def wrapped(*args: Any, **kw: Any) -> Any:
        seen.append(args[2])
        if len(seen) == call:
            raise error
        return real(*args, **kw)

    return wrapped
