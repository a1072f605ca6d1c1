"""Mid-run checkpoints: an interrupted training run resumes where it stopped, not from step 0.

A checkpoint is a directory with two files and no pickle anywhere, so that loading one can
never run code:

- ``state.safetensors``: the trainable weights (``param.<name>``), the optimiser's tensors
  (``optim.<index>.<key>``) and every torch random state (``rng.<name>``);
- ``state.json``: the step, the optimiser's parameter groups, the scheduler, the numpy and
  Python random states, and whatever the caller adds (losses so far, a stream's queue).

Restoring the weights, the optimiser moments, the schedule and every random stream gives
the same numbers as a run that was never interrupted; the tests check that bit for bit.
The directory is replaced atomically, so a kill during a save leaves the previous one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unsee.engine.distributed import placed, whole
from unsee.errors import ConfigError, TrainingError
from unsee.io import atomic_dir, discard, restored

try:
    import fcntl
except ImportError:  # not on Windows: two runs there may both train what one could have
    fcntl = None  # type: ignore[assignment]

STATE_JSON, STATE_TENSORS = "state.json", "state.safetensors"


def global_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The torch (CPU and each GPU's: dropout on a GPU draws from the GPU's), numpy and Python global random
    states, as (tensors, JSON)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, state, gauss_next = random.getstate()
    gpus = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return ({"torch": torch.get_rng_state(), **{f"cuda{i}": g for i, g in enumerate(gpus)}},
            {"numpy": [kind, keys.tolist(), pos, has_gauss, gauss], "python": [version, list(state), gauss_next]})


def set_global_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    gpus = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda")), key=lambda k: int(k[4:]))]
    if gpus and torch.cuda.is_available():  # a run resumed on the GPUs it ran on (on a CPU there are none to set)
        torch.cuda.set_rng_state_all(gpus[: torch.cuda.device_count()])
    kind, keys, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, state, gauss_next = meta["python"]
    random.setstate((version, tuple(state), gauss_next))


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    tensors: Mapping[str, torch.Tensor] | None = None,
    meta: Mapping[str, Any] | None = None,
    run_key: str = "",
    write: bool = True,
) -> None:
    """Write the state after ``step`` completed steps. ``tensors``/``meta``: the caller's extras
    (torch generator states, numpy generator states, losses); ``run_key``: what run it belongs to.

    Sharded weights and optimiser moments (FSDP) are gathered whole, so the checkpoint is the file
    a run without sharding writes: every process then calls this, and only the one with ``write``
    writes.
    """
    rng_t, rng_m = global_rng_state()
    opt_state = optimizer.state_dict()
    named = [(f"param.{k}", v) for k, v in params.items()]
    named += [(f"optim.{idx}.{key}", v) for idx, st in opt_state["state"].items() for key, v in st.items()]
    flat: dict[str, torch.Tensor] = {}
    for key, value in named:  # one tensor at a time: the others' gathered copies are freed at once
        full = whole(torch.as_tensor(value)).detach()  # every process takes part in a gather
        if write:
            flat[key] = full.cpu().contiguous().clone()
    if not write:
        return
    flat.update({f"rng.{k}": v.contiguous() for k, v in rng_t.items()})
    flat.update({f"extra.{k}": v.detach().cpu().contiguous().clone() for k, v in (tensors or {}).items()})
    info = {
        "step": step,
        "run_key": run_key,
        "param_groups": opt_state["param_groups"],
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "rng": rng_m,
        "meta": dict(meta or {}),
    }
    with atomic_dir(path, overwrite=True, mine=True) as tmp:
        save_file(flat, str(tmp / STATE_TENSORS))
        (tmp / STATE_JSON).write_text(json.dumps(info))


def has_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a checkpoint; one a kill left moved aside mid-save is put back first."""
    path = restored(path)
    return (path / STATE_JSON).is_file() and (path / STATE_TENSORS).is_file()


def load_checkpoint(
    path: str | Path,
    *,
    params: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    run_key: str | None = None,
) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Restore weights, optimiser, scheduler and global random states in place.

    Returns ``(step, extra tensors, extra meta)``. A checkpoint written by another run
    (``run_key`` differs) or that does not fit the parameters (another model or scope)
    raises :class:`TrainingError`, before anything is restored, rather than silently
    training from a mixed state. Where the weights are sharded (FSDP), each process takes its
    shard of every saved weight and moment.
    """
    path = Path(path)
    try:
        info = json.loads((path / STATE_JSON).read_text())
        if run_key is not None and info.get("run_key") != run_key:
            raise TrainingError(
                f"the checkpoint in {path} belongs to another run (another config, data or model); "
                "delete it, or give this run another checkpoint_dir")
        flat = load_file(str(path / STATE_TENSORS))
    except (OSError, ValueError, SafetensorError, AttributeError, TypeError, KeyError) as e:  # damaged, or edited
        raise TrainingError(f"cannot read the checkpoint in {path}: {str(e)[:200]}; delete it to start over") from e
    saved = {k[len("param."):] for k in flat if k.startswith("param.")}
    if saved != set(params):
        raise TrainingError(f"the checkpoint in {path} holds other parameters than this run trains; "
                            "delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(placed(flat[f"param.{name}"], p))
    owners = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            owner = owners[int(idx)] if int(idx) < len(owners) else None
            moment = owner is not None and key != "step" and v.shape == owner.shape  # not Adam's step count
            state.setdefault(int(idx), {})[key] = placed(v, owner) if moment else v
    optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    if scheduler is not None and info["scheduler"] is not None:
        scheduler.load_state_dict(info["scheduler"])
    set_global_rng_state({k[len("rng."):]: v for k, v in flat.items() if k.startswith("rng.")}, info["rng"])
    extra = {k[len("extra."):]: v for k, v in flat.items() if k.startswith("extra.")}
    return int(info["step"]), extra, info["meta"]


def check_checkpoint_dir(path: str | Path) -> None:
    """A checkpoint replaces its whole folder when it is saved and when it is removed: refuse a
    folder that holds anything else (a model, a benchmark, someone's home)."""
    p = Path(path)
    if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not has_checkpoint(p))):
        raise ConfigError(f"checkpoint_dir {path} holds other files; a checkpoint replaces its whole folder, "
                          "so give it an empty or new one")


def _digest(obj: Any, h: Any) -> None:
    """Feed the content of a config value, an image or a tensor to ``h``; reprs with addresses never."""
    if isinstance(obj, Image.Image):
        h.update(f"image:{obj.mode}:{obj.size}".encode())
        h.update(obj.tobytes())
    elif isinstance(obj, torch.Tensor):
        h.update(obj.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"{k!s}:".encode())
            _digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _digest({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, h)
    else:
        h.update(f"{type(obj).__name__}:{obj!s};".encode())


def content_key(obj: Any) -> str:
    """A short hash of ``obj``'s content (configs, images, tensors), stable across processes and runs."""
    h = hashlib.sha256()
    _digest(obj, h)
    return h.hexdigest()[:16]


def checkpoint_key(options: Mapping[str, Any], method: str, method_config: Any, turns: Mapping[str, list],
                   model: str, params: Mapping[str, torch.Tensor]) -> str:
    """What a checkpoint belongs to: the options that change the numbers, the method and its
    config, the training data (texts and pixels) and the starting weights.

    A checkpoint of another run (another method, learning rate, forget set or model) left in
    the same folder would otherwise be resumed without a word. The weights enter through the
    model's fingerprint and the sum of each of ``params`` (one pass over them, however big): every
    weight, trained or not, since under LoRA the trained factors start alike whatever they wrap,
    and a continual run's later request starts from what the earlier ones left, under the same
    fingerprint.
    """
    h = hashlib.sha256()
    _digest({"options": dict(options), "method": method, "config": method_config}, h)
    for name, items in sorted(turns.items()):
        h.update(name.encode())
        for t in items:
            _digest([t.image, t.prompt, t.answer, list(getattr(t, "follow", ()))], h)
    h.update(model.encode())
    with torch.no_grad():
        _digest({n: f"{tuple(p.shape)}:{float(p.sum(dtype=torch.float64))}" for n, p in params.items()}, h)
    return h.hexdigest()[:16]


def resumed(seconds: float) -> dict[str, float]:
    """A stage's record of the training a stopped run had done before it resumed; none if it never stopped."""
    return {"resumed_s": round(seconds, 3)} if seconds else {}


@contextlib.contextmanager
def training_lock(path: Path, on_wait: Callable[[str], None]) -> Iterator[None]:
    """Held by one process at a time while it trains what lands at ``path``: two runs of one recipe on one
    cache (the jobs of a sweep) each trained the same stage, and the later replaced the earlier's entry while
    that run was reading it. The lock is the hidden file ``.NAME.lock`` beside ``path``, which stays: removing
    it would let a third process lock a new file while a second still waits on the old one. ``on_wait`` hears,
    once, which process (and on which host) holds it when it is taken. Where no lock can be made (no ``flock``, a
    read-only folder, a file system that refuses locks), the work goes on unlocked, as before."""
    fd = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fd is not None:
            try:
                _take(fd, on_wait)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
            except OSError:  # a file system without locks (Lustre mounted without flock): unlocked, as before
                pass
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and the lock with it


def _take(fd: int, on_wait: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held: say by whom, and wait
        on_wait(os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process")
        fcntl.flock(fd, fcntl.LOCK_EX)


def remove_checkpoint(path: str | Path) -> None:
    """Gone at once: moved under this writer's name first, so that a kill while it is deleted leaves no
    half checkpoint in the folder (which the next run would refuse), only a leftover the next save removes."""
    discard(Path(path))


def _jsonable(obj: Any) -> Any:
    """Scheduler states hold tuples and numbers only; callables (lambdas) are dropped by torch."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item()
    return obj
