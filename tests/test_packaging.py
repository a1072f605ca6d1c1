"""What a user installs: the wheel holds every file the code reads at run time, and the source
distribution holds tests that run (with their helpers and data), the docs and the licence."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT

import unsee


def _tracked() -> list[str]:
    try:
        found = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the files a distribution is built from are not known")
    return [f for f in found.splitlines() if (ROOT / f).is_file()]


def test_the_wheel_and_the_source_distribution_hold_what_they_need(tmp_path: Path) -> None:
    """The source distribution shipped tests without conftest.py, helpers.py or their data: 15 test files
    did not even collect. Built here from a copy, so that the checkout gains no build folders."""
    files = _tracked()
    copy = tmp_path / "src"
    for f in files:
        (copy / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, copy / f)
    dist = tmp_path / "dist"
    dist.mkdir()
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; d = sys.argv[1]; "
                    "b.build_sdist(d); b.build_wheel(d)", str(dist)],  # setuptools rewrites sys.argv
                   cwd=copy, check=True, capture_output=True)
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = set(z.namelist())
        metadata = next(z.read(n).decode() for n in in_wheel if n.endswith("METADATA"))
    read_at_run_time = {f.removeprefix("src/") for f in files
                        if f.startswith("src/unsee/") and f.endswith((".yaml", ".json"))}
    assert read_at_run_time and read_at_run_time <= in_wheel
    assert f"Version: {unsee.__version__}\n" in metadata  # the version the CLI and results.json report
    with tarfile.open(sdist) as t:
        top = t.getnames()[0].split("/")[0]
        in_sdist = {n.removeprefix(f"{top}/") for n in t.getnames()}
    wanted = {f for f in files if f.startswith(("tests/", "docs/", "src/")) or f in ("README.md", "LICENSE")}
    assert not wanted - in_sdist, sorted(wanted - in_sdist)[:5]
    assert not any(n.startswith("benchmarks/results/") for n in in_sdist)  # recorded figures stay in the repo
