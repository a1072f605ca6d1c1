"""Atomic outputs land whole and with the modes a plain write would give them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from unsee.io import _umask, atomic_dir, atomic_write_text


@pytest.fixture
def umask_027() -> Iterator[int]:
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_file_gets_the_umask_mode_not_the_temporary_one(tmp_path: Path, umask_027: int) -> None:
    path = tmp_path / "results.json"
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}"
    assert mode(path) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_atomic_dir_lands_with_plain_modes_throughout(tmp_path: Path, umask_027: int) -> None:
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        assert mode(tmp) == 0o700  # private while it fills
        (tmp / "sub").mkdir()
        secret = tmp / "sub" / "model.safetensors"
        secret.write_bytes(b"x")
        secret.chmod(0o600)  # what a writer using a temporary file leaves behind
    assert mode(out) == 0o750 and mode(out / "sub") == 0o750
    assert mode(out / "sub" / "model.safetensors") == 0o640


def test_atomic_dir_leaves_nothing_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.json").write_text("{")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_umask_is_read_without_being_changed(umask_027: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc gives it, reading the umask never sets it, so no other thread can see a wrong one."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc here")
    calls: list[int] = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda m: calls.append(m) or real(m))
    assert _umask() == umask_027
    assert calls == []
