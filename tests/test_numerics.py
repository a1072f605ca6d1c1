"""Portable CPU numerics (``UNSEE_NUMERICS=portable``): the same weights whatever instructions MKL may use.

This machine stands in for another CPU by capping the instructions MKL and oneDNN may use, which moves a
native training's weights as another CPU's kernels do; under the portable mode the caps must move nothing.
Each training runs in a fresh process, since MKL, oneDNN and torch read their settings once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unsee import numerics

WORKER = """
import hashlib, sys
from unsee import api
import torch
from unsee.engine.trainer import TrainConfig, train
from unsee.methods.baselines import SFT
from unsee.models import load_adapter
torch.set_num_threads(1)
adapter = load_adapter(sys.argv[1])
suite = api.load_suite(sys.argv[2], "forget_10")
turns = api.training_turns(suite)
train(SFT(), adapter, suite, {"train": turns["forget"] + turns["retain"]},
      TrainConfig(lr=1e-3, max_steps=4, batch_size=4, progress=False))
h = hashlib.sha256()
for name, p in sorted(adapter.model.state_dict().items()):
    h.update(name.encode()); h.update(p.float().numpy().tobytes())
print(h.hexdigest())
"""


OLDER_CPU = {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}  # an older CPU's instructions


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in {numerics.ENV, *numerics.PINNED, *OLDER_CPU}}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**base, "OMP_NUM_THREADS": "1", **env})


def _avx2_and_mkl() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and numerics.mkl_branch(torch) is not None


def _weights(model_dir: Path, world: Path, **env: str) -> str:
    done = _run(WORKER, str(model_dir), str(world), **env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not _avx2_and_mkl(), reason="portable numerics need an x86-64 CPU with AVX2 and torch's MKL")
def test_portable_numerics_train_the_same_weights_whatever_instructions_mkl_uses(model_dir: Path,
                                                                                world: Path) -> None:
    native = _weights(model_dir, world)
    capped = _weights(model_dir, world, **OLDER_CPU)
    if native == capped:
        pytest.skip("the older instructions change nothing on this CPU, so this machine cannot stand in for another")
    portable = _weights(model_dir, world, UNSEE_NUMERICS="portable")
    assert portable == _weights(model_dir, world, UNSEE_NUMERICS="portable", **OLDER_CPU)
    assert portable != native  # another set of kernels, pinned: not the native ones


def test_a_numerics_mode_that_cannot_be_honoured_is_one_line_before_any_work(tmp_path: Path) -> None:
    """A misspelt mode, a variable the mode sets given otherwise, and (in the Python API) a torch that has
    computed before unsee was imported: each refused, where a model would silently not be portable."""
    out = tmp_path / "r.json"
    cli = "import sys; from unsee.cli import main; sys.exit(main(sys.argv[1:]))"
    args = ("eval", "--model", "nowhere", "--data", "nowhere", "--out", str(out))
    for env, said in (({"UNSEE_NUMERICS": "fast"}, "UNSEE_NUMERICS='fast': expected native or portable"),
                      ({"UNSEE_NUMERICS": "portable", "MKL_CBWR": "AUTO"}, "leave MKL_CBWR unset"),
                      ({"UNSEE_NUMERICS": "portable", "MKL_CBWR": "compatible"}, "leave MKL_CBWR unset")):
        bad = _run(cli, *args, **env)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and said in bad.stderr, bad.stderr
    assert not out.exists()
    late = _run("import torch; torch.ones(2, 2) @ torch.ones(2, 2)\nimport unsee.numerics as n; n.check()",
                UNSEE_NUMERICS="portable")
    assert late.returncode != 0 and "could not pin the CPU kernels" in late.stderr
    assert _run("import unsee.numerics as n; n.check()").returncode == 0  # native: nothing to check
