"""Where and at what cost a run ran: the environment stamped on every result, and :class:`CostMeter`.

Both sit below everything else, so that any layer (a method's steering file, a benchmark, the
results writer) can stamp what produced its numbers. :class:`CostMeter` measures what every result
carries (docs/results-format.md): wall time, peak memory (host and GPU), trainable parameters and
optimiser state.
"""

from __future__ import annotations

import itertools
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsee import __version__, numerics

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------- provenance


@lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding this package; (None, None) for an installed wheel, also one
    installed inside the user's own repository (``project/.venv``), whose commit is not unsee's: the package's
    files must be that checkout's own."""
    here = Path(__file__).resolve().parent
    try:
        subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=here, capture_output=True,
                       timeout=10, check=True)
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (head or None), bool(status.strip())


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name and the vector instructions torch's kernels use on it; never raises.

    Two CPUs round the same long training run differently (another kernel, another order of
    additions), so a cached stage and a result both say which one they ran on."""
    name = platform.processor() or platform.machine() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    try:
        import torch

        return f"{name}, {torch.backends.cpu.get_cpu_capability()}"
    except Exception:  # an old torch without the query must not lose a result
        return name


def device_name() -> str:
    """The accelerator a run used, for reading timings and keying cached stages; never raises."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
    except Exception:  # a broken driver must not lose a result
        pass
    return f"cpu ({cpu_name()})"


def environment() -> dict[str, Any]:
    """Versions and hardware behind a result, so numbers can be traced and compared. Never fails."""
    git_hash, dirty = _git_state()
    return {
        "unsee_version": __version__,
        "git_hash": git_hash,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "device": device_name(),
        "threads": _threads(),  # one thread and two train different models (docs/caching.md)
        "numerics": _numerics(),  # native, or portable: the same weights on every CPU (docs/reproduce.md)
    }


def _numerics() -> str | None:
    try:
        return numerics.mode()
    except Exception:  # a misspelt UNSEE_NUMERICS is refused before any work; a result is never lost
        return None


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except Exception:  # never loses a result
        return None


# ---------------------------------------------------------------- cost accounting


def _vm_status_bytes(*fields: str) -> tuple[int, ...] | None:
    """Fields of /proc/self/status in bytes, read in one snapshot; None off Linux or if any is missing."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in fields:
                    found[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return tuple(found[k] for k in fields) if len(found) == len(fields) else None


def _vm_hwm_bytes() -> int | None:
    """Peak resident set (VmHWM) from /proc; None off Linux."""
    status = _vm_status_bytes("VmHWM")
    return status[0] if status else None


# how far VmHWM may sit above VmRSS just after a reset that took (pages freed in between)
_RESET_SLACK_BYTES = 16 * 1024 * 1024


def _reset_vm_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0) so a meter sees its own block's peak.

    True only when the reset is seen to take: some kernels (sandboxes among them) accept the
    write and keep the lifetime peak, and a meter trusting them would report the process's peak
    as the block's.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    status = _vm_status_bytes("VmHWM", "VmRSS")
    return status is not None and status[0] <= status[1] + _RESET_SLACK_BYTES


def _ru_maxrss_bytes() -> int:
    """Process-lifetime peak RSS from getrusage: KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _cuda() -> Any | None:
    """torch.cuda when a GPU is usable; the meter must work on CPU-only and torch-less installs."""
    try:
        import torch

        return torch.cuda if torch.cuda.is_available() else None
    except Exception:
        return None


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of every tensor an optimiser keeps (Adam's two moments, step counters, ...):
    the memory a method adds beyond the model, created once training has stepped."""
    import torch

    return int(sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
                   if isinstance(t, torch.Tensor)))


_BLOCKS = itertools.count()  # numbers the blocks this process measures: 0, 1, ...


class CostMeter:
    """Measure a block: ``with CostMeter() as m: ...; m.record_model(model, opt); m.cost()``.

    - wall time: ``time.perf_counter`` from enter to exit (or to now, inside the block);
    - peak RSS: VmHWM, reset at enter where Linux allows it, so the figure is the block's own
      peak. Where it cannot be reset (or off Linux) it falls back to ``ru_maxrss``, which is
      the *process-lifetime* peak: a second meter in one process then reports at least the
      first one's peak. ``rss_scope`` says which applied ("block" or "process");
    - peak GPU: ``torch.cuda.max_memory_allocated`` summed over devices, reset at enter;
      None without CUDA. It counts tensors allocated by PyTorch, not the caching overhead;
    - trainable parameters and optimiser state: from :meth:`record_model`, called once
      training has stepped (optimisers create their state lazily);
    - ``measured_after``: how many blocks this process measured before this one. Their heap,
      freed but still resident, counts in this block's peak RSS, so peaks of runs made one after
      another in one process do not compare; a report marks them.
    """

    def __init__(self) -> None:
        self._start: float | None = None
        self._wall: float | None = None
        self._peak_rss: int | None = None
        self._peak_gpu: int | None = None
        self._cuda: Any | None = None
        self.rss_scope = "process"
        self.trainable_params = 0
        self.optimizer_state_bytes = 0
        # what a stopped run had trained before, up to the checkpoint it resumed from: its cost counts it
        self.resumed_s = 0.0
        self.measured_after = 0

    def __enter__(self) -> CostMeter:
        self.measured_after = next(_BLOCKS)
        self._cuda = _cuda()
        if self._cuda is not None:
            for i in range(self._cuda.device_count()):
                self._cuda.reset_peak_memory_stats(i)
        self.rss_scope = "block" if _reset_vm_hwm() else "process"
        self._wall = None
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._wall = self.elapsed()
        self._peak_rss = self._read_rss()
        self._peak_gpu = self._read_gpu()

    def elapsed(self) -> float:
        if self._start is None:
            return 0.0
        return self._wall if self._wall is not None else time.perf_counter() - self._start

    def _read_rss(self) -> int:
        hwm = _vm_hwm_bytes()
        return hwm if self.rss_scope == "block" and hwm is not None else max(_ru_maxrss_bytes(), hwm or 0)

    def _read_gpu(self) -> int | None:
        if self._cuda is None:
            return None
        return int(sum(self._cuda.max_memory_allocated(i) for i in range(self._cuda.device_count())))

    def record_model(
        self, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Count parameters with ``requires_grad`` and the bytes of every tensor in the optimiser state.

        A steering method with nothing trainable passes ``model=None`` (or a frozen model).
        Repeated calls keep the largest optimiser state seen.
        """
        if model is not None:
            self.trainable_params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
        if optimizer is not None:
            self.optimizer_state_bytes = max(self.optimizer_state_bytes, optimizer_state_bytes(optimizer))

    def cost(self) -> dict[str, Any]:
        """The ``cost`` object of results.json; inside the block it reports the figures so far."""
        inside = self._start is not None and self._wall is None
        rss = self._read_rss() if inside or self._peak_rss is None else self._peak_rss
        gpu = self._read_gpu() if inside else self._peak_gpu
        return {
            "wall_s": round(self.elapsed() + self.resumed_s, 3),
            "peak_rss_bytes": int(rss),
            "peak_gpu_bytes": gpu,
            "trainable_params": self.trainable_params,
            "optimizer_state_bytes": self.optimizer_state_bytes,
            **({"resumed_s": round(self.resumed_s, 3)} if self.resumed_s else {}),
            **({"measured_after": self.measured_after} if self.measured_after else {}),
        }


def combined_cost(costs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The cost of runs made one after another (a continual run's requests): their times add up, every other
    figure (memory, parameter counts) is the largest of theirs, and ``requests`` says how many there were. The
    runs are one job: what it was measured after is what the first request was measured after."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for c in costs for k in c if k != "measured_after"):  # resumed_s of one run counts
        values = [c[key] for c in costs if c.get(key) is not None]
        out[key] = None if not values else round(sum(values), 3) if key.endswith("_s") else max(values)
    before = {"measured_after": costs[0]["measured_after"]} if costs and costs[0].get("measured_after") else {}
    return {**out, **before, "requests": len(costs)}
