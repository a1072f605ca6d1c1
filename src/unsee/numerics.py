"""Portable CPU numerics: the same model from the same seed on any x86-64 CPU with AVX2 (Linux).

Two CPUs train two different models from one seed and one recipe. torch's kernels and MKL's
choose other instructions on each, and so another order of additions; over a long run the
rounding grows into another model, and the figures read on it move by more than their intervals.
``UNSEE_NUMERICS=portable`` pins every kernel a CPU training runs:

- MKL's conditional numerical reproducibility in its ``COMPATIBLE`` branch (``MKL_CBWR``), the
  one branch MKL keeps alike on Intel's and on other makers' CPUs;
- ATen's AVX2 kernels (``ATEN_CPU_CAPABILITY``), which every such CPU runs alike;
- oneDNN off, so that convolutions go through the pinned MKL, not kernels tuned to the cache.

Both variables are read once, at torch's first operation, so the mode is set when ``unsee`` is
imported, and checked before anything is trained or scored: a torch that has already computed
(imported and used before ``unsee``) cannot be pinned any more, and saying so beats a model that
is silently not portable.
The thread count still counts, as it always does. The mode costs time (``docs/reproduce.md``).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from unsee.errors import ConfigError

ENV = "UNSEE_NUMERICS"
PINNED = {"MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "avx2"}
# what a CPU's stage keys name as the device: under the pinned kernels the CPU's model no longer matters
PORTABLE_DEVICE = "cpu (portable: MKL COMPATIBLE, ATen AVX2, no oneDNN)"
_MKL_CBWR_BRANCH, _MKL_CBWR_COMPATIBLE = 1, 3  # mkl_service.h


def _asked() -> str:
    return os.environ.get(ENV, "").strip().lower() or "native"


def mode() -> str:
    """``native`` (each CPU its fastest kernels; the default) or ``portable``, from ``UNSEE_NUMERICS``."""
    value = _asked()
    if value not in ("native", "portable"):
        raise ConfigError(f"{ENV}={os.environ[ENV]!r}: expected native or portable")
    return value


def portable() -> bool:
    return mode() == "portable"


def pin_early() -> None:
    """Run when ``unsee`` is imported: under ``UNSEE_NUMERICS=portable``, set the variables torch and MKL
    read at their first operation and turn oneDNN off. Never raises; :func:`check` says what did not take."""
    if _asked() != "portable":
        return
    for key, value in PINNED.items():
        os.environ.setdefault(key, value)
    import torch

    torch.backends.mkldnn.enabled = False


def check() -> None:
    """Under ``UNSEE_NUMERICS=portable``, that every kernel is pinned, as MKL and ATen report it; where one
    is not, a :class:`ConfigError` that says why. Called by the CLI and wherever a model is loaded."""
    if not portable():
        return
    for key, value in PINNED.items():
        if os.environ.get(key) != value:  # exactly: MKL reads `compatible` as no branch it knows
            raise ConfigError(f"{ENV}=portable sets {key}={value}, and the environment sets "
                              f"{key}={os.environ.get(key)}: leave {key} unset")
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    branch = mkl_branch(torch)
    if capability != "AVX2" or branch != _MKL_CBWR_COMPATIBLE or torch.backends.mkldnn.enabled:
        found = f"ATen {capability}, MKL " + ("absent" if branch is None else f"branch {branch}")
        raise ConfigError(f"{ENV}=portable could not pin the CPU kernels ({found}). It needs Linux on an x86-64 "
                          "CPU with AVX2, a torch built with MKL, and unsee imported before torch computes anything: "
                          f"set it in the command's environment ({ENV}=portable unsee ...)")


def mkl_branch(torch_module: object) -> int | None:
    """MKL's reproducibility branch as MKL itself reports it, or None where torch carries no MKL."""
    lib = Path(getattr(torch_module, "__file__", "")).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(lib)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return int(get(_MKL_CBWR_BRANCH))
