"""Atomic outputs land whole and with the modes a plain write would give them."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from unsee import io as io_module
from unsee.cli import main
from unsee.errors import OutputError, OutputExistsError
from unsee.io import OWNED, _umask, atomic_dir, atomic_write_text, check_output_dir


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


def test_overwrite_replaces_only_a_folder_unsee_wrote(tmp_path: Path) -> None:
    """A mistyped --out with --overwrite must not delete a folder of the user's own, nor a file."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "results.json").write_text("{}")
    assert (out / OWNED).is_file()
    with atomic_dir(out, overwrite=True) as tmp:  # an output of ours: replaced whole
        (tmp / "results.json").write_text('{"runs": []}')
    assert (out / "results.json").read_text() == '{"runs": []}'

    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match=r"holds files unsee did not write \(holiday.jpg\)"), \
            atomic_dir(mine, overwrite=True):
        pass
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is a file"), atomic_dir(notes, overwrite=overwrite):
            pass
    assert notes.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "out", "photos"]  # no stray temporary


def test_a_command_told_to_overwrite_a_users_folder_refuses_before_any_work(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "home"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    # no model, no data: the output is checked first, so the refusal names it
    assert main(["unlearn", "--method", "graddiff", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "w"),
                 "--out", str(mine), "--overwrite"]) != 0
    assert "holds files unsee did not write (thesis.tex)" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """Whatever kind the writer raises (OSError, or safetensors' own error with the OS's words)."""
    import errno

    for failure in (OSError(errno.ENOSPC, "No space left on device"),
                    RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")):
        with pytest.raises(OutputError, match="the disk is full.*Nothing is written to"), \
                atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.safetensors").write_bytes(b"x")
            raise failure
        assert list(tmp_path.iterdir()) == []
    kept = OSError(errno.ENOSPC, "No space left on device")
    kept.add_note("request 1 is kept in out.partial")  # what a continual run says it keeps
    with pytest.raises(OutputError, match="run again. request 1 is kept in out.partial$"), \
            atomic_dir(tmp_path / "out"):
        raise kept


def test_a_run_without_room_for_its_model_stops_before_training(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from collections import namedtuple

    from unsee import api, unlearning

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(io_module.shutil, "disk_usage", lambda p: usage(2**30, 2**30 - 2**20, 2**20))
    for module in (api, unlearning):
        monkeypatch.setattr(module, "unlearn_adapter", lambda *a, **k: pytest.fail("it trained"))
    with pytest.raises(OutputError, match=r"needs about \d+ MB for the unlearned model, and the disk .* has 1 MB"):
        api.unlearn("graddiff", model_dir, world, tmp_path / "out", overrides=["max_steps=1"])
    with pytest.raises(OutputError, match="2 copies of the model"):
        api.unlearn("graddiff", model_dir, world, tmp_path / "out", requests="forget_r1,forget_r2",
                    overrides=["max_steps=1"])
    assert not list(tmp_path.iterdir())


def test_an_overwrite_interrupted_between_its_two_renames_loses_nothing(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Landing moves the previous output aside, then the new one in: an interrupt between the two, or a kill
    there, must leave the previous output where it was."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "results.json").write_text("previous")
    real = os.replace
    moves: list[Path] = []

    def interrupted(src: str | Path, dst: str | Path) -> None:
        real(src, dst)
        moves.append(Path(dst))
        if len(moves) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(io_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("new")
    monkeypatch.setattr(io_module.os, "replace", real)
    assert (out / "results.json").read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # killed in the same place (nothing ran after the first rename): the next run puts it back before anything
    real(out, tmp_path / ".out.old")
    with pytest.raises(OutputExistsError), atomic_dir(out):
        pass
    assert (out / "results.json").read_text() == "previous"


LANDER = """
import sys
from pathlib import Path
from unsee.io import atomic_dir
failed = 0
for i in range(int(sys.argv[2])):
    try:
        with atomic_dir(Path(sys.argv[1]), overwrite=True, mine=True) as tmp:
            (tmp / "stage.json").write_text(str(i))
    except Exception as e:
        failed += 1
        print(type(e).__name__, e)
print("failed", failed)
"""


def test_two_processes_landing_one_cache_entry_at_once_both_succeed(tmp_path: Path) -> None:
    """Two runs of one job on one cache save the same stage or checkpoint at the same moment: each moved the
    other's folders between its own two renames, and one failed (Directory not empty, No such file) after
    its work was done. Landings in one folder now take turns."""
    entry = tmp_path / "stage-x"
    writers = [subprocess.Popen([sys.executable, "-c", LANDER, str(entry), "300"], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    said = [w.communicate(timeout=120)[0] for w in writers]
    assert [s.splitlines()[-1] for s in said] == ["failed 0", "failed 0"], said
    assert (entry / "stage.json").read_text() == "299" and (entry / OWNED).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage-x"]  # no staging folder or previous output left


def test_the_folder_a_command_runs_in_is_refused_as_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """``--out .`` crashed with a traceback (a path with no name), and ``--out $PWD`` moved the shell's own
    folder aside to land the output in its place."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for out in (".", "", str(here)):
        assert main(["model", "init", "--arch", "tiny-llava", "--out", out]) == 2
        err = capsys.readouterr().err
        assert "is the folder this command runs in" in err and "Traceback" not in err
    assert not any(tmp_path.rglob("*.json"))
    check_output_dir(here / "out", overwrite=False)  # a folder inside it is fine


def test_a_read_only_cache_entry_is_copied_out_as_a_writable_output(tmp_path: Path) -> None:
    """``unsee finetune`` and ``retrain`` copy a finished cache entry into their output; from a read-only
    cache its mark came along read-only, and the landing, which writes the mark, failed with a traceback
    (as any user but root)."""
    entry = tmp_path / "cache" / "stage3-x"
    with atomic_dir(entry, mine=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"w")
        (tmp / "unsee_stage.json").write_text("{}")
    for f in (*entry.iterdir(), entry):
        f.chmod(0o555 if f.is_dir() else 0o444)
    try:
        out = tmp_path / "vanilla"
        with atomic_dir(out) as tmp:
            io_module.copy_entry(entry, tmp, but=("unsee_stage.json",))
            assert sorted(p.name for p in tmp.iterdir()) == ["model.safetensors"]  # no mark: the landing writes it
            assert all(mode(p) & stat.S_IWUSR for p in tmp.iterdir())
        assert (out / OWNED).is_file() and (out / "model.safetensors").read_bytes() == b"w"
    finally:
        entry.chmod(0o755)


def test_an_output_written_as_a_folder_holds_the_results_file(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """``--out ev/`` lost its slash: eval and attack wrote a file named ``ev`` (and ``ev.samples.jsonl``)."""
    for command, extra in (("eval", ["--max-items", "1"]), ("attack", ["max_items=1"])):
        out = tmp_path / command
        args = [command, *(["shift"] if command == "attack" else []), "--model", str(model_dir), "--data", str(world)]
        assert main([*args, "--out", f"{out}/", "--forget", "forget_5", *extra]) == 0
        assert out.is_dir() and (out / "results.json").is_file() and (out / "samples.jsonl").is_file()


def test_a_killed_writers_half_written_output_is_removed_by_the_next_run(tmp_path: Path) -> None:
    """SIGKILL skips every cleanup: the half-written checkpoint would stay hidden beside the output for good.
    The next write of that output removes it; a live writer's, or another machine's, it leaves alone."""
    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from unsee.io import atomic_dir\n"
            "with atomic_dir(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000); print(tmp.name, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    killed = proc.stdout.readline().strip()  # type: ignore[union-attr]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / killed / "model.safetensors").is_file()
    alive = tmp_path / f".out.{io_module._HOST}-{os.getppid()}-abc.tmp"  # a writer still running
    elsewhere = tmp_path / f".out.0badc0de-{proc.pid}-abc.tmp"  # a writer on another machine sharing the disk
    for d in (alive, elsewhere):
        d.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "results.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name, elsewhere.name])


def test_a_killed_single_file_writers_temporary_file_is_removed_by_the_next_write(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    code = ("import sys, os, tempfile; from unsee import io\n"
            "tempfile.mkstemp = lambda **kw: (print(kw['prefix'], flush=True), os.kill(os.getpid(), 9))\n"
            "io.atomic_write_text(sys.argv[1], '{}')\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    left = tmp_path / f"{proc.stdout.strip()}abc.tmp"  # what mkstemp would have made, as the kill left it
    left.write_text("half")
    atomic_write_text(out, "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_folder_that_fills_while_the_work_runs_is_not_replaced(tmp_path: Path) -> None:
    """Checked when the work starts and again before it lands: a folder of the user's made meanwhile, or another
    run's output landed meanwhile, is kept, and so is this run's work."""
    out = tmp_path / "out"
    kept_in = r"holds files unsee did not write.*this run's output is kept in .*out\.unsee-"
    with pytest.raises(OutputExistsError, match=kept_in), atomic_dir(out) as tmp:
        (tmp / "results.json").write_text("mine")
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    assert (out / "notes.txt").read_text() == "precious"
    kept = next(tmp_path.glob("out.unsee-*"))
    assert (kept / "results.json").read_text() == "mine" and (kept / OWNED).is_file()
    with pytest.raises(OutputExistsError, match="holds files unsee did not write"), atomic_dir(out, overwrite=True):
        pass
    assert (out / "notes.txt").read_text() == "precious"


def test_a_link_to_a_folder_is_written_where_it_leads_and_overwritten_again(tmp_path: Path) -> None:
    target = tmp_path / "disk" / "out"
    target.mkdir(parents=True)
    link = tmp_path / "out"
    link.symlink_to(target)
    for n in range(3):
        with atomic_dir(link, overwrite=n > 0) as tmp:
            (tmp / "results.json").write_text(str(n))
        assert link.is_symlink() and (target / "results.json").read_text() == str(n)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "out"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]


def test_a_previous_output_left_half_deleted_is_removed_never_restored(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed while it deleted the output it replaced, a run left `.out.old` with unsee's mark in it: the next run
    took that for an output interrupted between its two renames, and put it back."""
    out = tmp_path / "out"
    for text in ("first", "second"):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "results.json").write_text(text)
    half = tmp_path / ".out.old"
    half.mkdir()
    (half / OWNED).write_text("")
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("third")
    assert (out / "results.json").read_text() == "third" and not half.exists()
    # interrupted while the previous output is deleted, the new one has landed: nothing is lost, and the leftover
    # carries this writer's name, for the next run to remove
    real = io_module._remove
    removing = []

    def interrupted(p: Path) -> None:
        if (p / "results.json").is_file() and (p / "results.json").read_text() == "third":
            removing.append(p)
            raise KeyboardInterrupt
        real(p)

    monkeypatch.setattr(io_module, "_remove", interrupted)
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "results.json").write_text("fourth")
    assert (out / "results.json").read_text() == "fourth"
    assert removing and removing[0].name.startswith(f".out.{io_module.writer_tag()}-")


def test_a_file_is_written_where_its_link_leads_and_a_full_disk_is_one_line(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "real" / "results.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "results.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"

    def full(*args: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    with pytest.raises(OutputError, match="the disk is full"):
        atomic_write_text(tmp_path / "other.json", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "results.json"]


def test_a_folder_of_the_users_own_is_never_told_to_pass_overwrite(tmp_path: Path) -> None:
    """--overwrite would be refused on it too: the first message must say why, not suggest it."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="holds files unsee did not write"):
            io_module.check_output_dir(tmp_path / "mine", overwrite=overwrite)
