"""Atomic output: a reader never sees a half-written file or directory.

Every result, checkpoint and steering file goes through here: write to a temporary
sibling, then ``os.replace``. An interrupted run leaves either the old state or the new.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from errno import ENOSPC
from pathlib import Path
from typing import Any

from unsee.errors import OutputError, OutputExistsError

try:
    import fcntl
except ImportError:  # not on Windows: outputs land there without the landing lock
    fcntl = None  # type: ignore[assignment]


def home_path(path: str | Path) -> Path:
    """``path`` with a leading ``~`` read as the home folder. ``~name`` of no user on this machine is left as
    written, a path like any other: pathlib's own ``expanduser`` raised on it, a traceback for a typo."""
    return Path(os.path.expanduser(path))


def content_hash(*parts: Any) -> str:
    """Short hash of JSON-able parts: the key of every cache entry."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _NoDocstrings(ast.NodeTransformer):
    def visit_Expr(self, node: ast.Expr) -> ast.Expr | None:
        """A bare string statement (a docstring) does nothing when the code runs."""
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return None
        return node


def code_fingerprint(source: str) -> str:
    """Content hash of what Python code does: its syntax tree, without docstrings.

    Comments, docstrings and layout leave it unchanged, so that editing the documentation
    does not retrain a cached stage (25 minutes on the default world)."""
    tree = _NoDocstrings().visit(ast.parse(textwrap.dedent(source)))
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def imported_modules(*roots: str) -> tuple[str, ...]:
    """``roots`` and every module of their package they import, directly or through others, sorted: the code a
    computation can run. A list kept by hand misses the helper a change lands in."""
    package = roots[0].split(".")[0]
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        spec = importlib.util.find_spec(name)
        if name in seen or spec is None or spec.origin is None:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] == package]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == package:
                todo.append(node.module)
                if importlib.util.find_spec(node.module).submodule_search_locations:
                    # ``from unsee.data import prompts`` names a module as often as a function
                    todo += [f"{node.module}.{a.name}" for a in node.names]
    return tuple(sorted(seen))


def source_fingerprint(*modules: str) -> str:
    """Content hash of the named modules' code (:func:`code_fingerprint`).

    Caches of built worlds and trained stages include it in their key, so a cache made by
    other code (an upgrade, a local edit) is rebuilt rather than silently reused.
    """
    h = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        h.update(name.encode())
        h.update(code_fingerprint(Path(spec.origin).read_text()).encode())
    return h.hexdigest()[:16]


def _umask() -> int:
    """The process umask, read from ``/proc`` (Linux 4.7 and later) where it can be.

    Elsewhere the only way is to set it and put it back, and a file another thread creates
    in between gets the wrong mode; reading it leaves nothing to race with.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_modes(root: Path) -> None:
    mask = _umask()
    for d, _, files in os.walk(root):
        os.chmod(d, 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(d, f), 0o666 & ~mask)


DISK_FULL = "the disk is full; free some space and run again"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so that a reader never sees half a file.

    The temporary file is private (0600); the result gets the mode a plain ``open`` would
    give it, so that a checkpoint or a report can be read by whoever else should read it. A link
    is written where it leads. A full disk or a folder that cannot be written is one line.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a directory")
    _remove_dead_writers(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}-", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {DISK_FULL if e.errno == ENOSPC else e.strerror or e}") from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, set | tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _real(path: str | Path) -> Path:
    """The absolute path with symlinks followed, so that a link to the model is the model."""
    return Path(os.path.realpath(home_path(path)))


def check_not_input(out: str | Path, inputs: Iterable[str | Path | None], *, around: bool = False) -> None:
    """Refuse an output that is an input, lies inside one, or contains one.

    Outputs replace their whole path when they land (:func:`atomic_dir`), so any overlap
    would delete or rewrite what the run reads; ``--overwrite`` does not change that. Inputs
    that are not local paths (hub ids) cannot overlap and are skipped. ``around``: a folder the run
    writes entries into and never replaces whole (the stage cache) may contain an input.
    """
    o = _real(out)
    for given in inputs:
        if given is None or str(given) == "" or not home_path(given).exists():
            continue
        i = _real(given)
        if o == i:
            how = "is"
        elif i in o.parents:
            how = "lies inside"
        elif o in i.parents and not around:
            how = "contains"
        else:
            continue
        raise OutputError(f"the output {out} {how} the input {given}, which is never written to; "
                          "choose another output path")


def check_writable(path: str | Path) -> None:
    """Fail now, not after the work, when ``path`` cannot be created or replaced.

    The nearest folder that exists above it must take a new entry; it is tried for real
    (a temporary folder made and removed), since permission bits say nothing for root or
    for a read-only file system.
    """
    parent = _real(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".unsee-probe.", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write {path}: the folder {parent} is not writable ({e.strerror})") from None


OWNED = ".unsee"  # in every folder unsee lands: what --overwrite may replace whole
OWNED_TEXT = "This folder was written by unsee; `--overwrite` may replace it whole.\n"


def check_space(path: str | Path, needed: int, what: str) -> None:
    """Fail before the work, not at its save, when the disk that will hold ``path`` has less than
    ``needed`` bytes free: a run that trains for hours and then cannot write its model has lost them."""
    parent = _real(path)
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise OutputError(f"{path} needs about {_size(needed)} for {what}, and the disk holding {parent} has "
                          f"{_size(free)} free; free some space or give another --out (nothing was done)")


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def copy_entry(entry: Path, tmp: Path, *, but: Iterable[str] = ()) -> None:
    """The files of a finished cache entry into an output being made: their contents, not their modes (the
    mark of a read-only cache, copied read-only, could not be written again when the output landed), and
    not the entry's own mark, which the output gets as it lands (nor the files named in ``but``)."""
    left_out = {OWNED, *but}
    for f in entry.iterdir():
        if f.is_file() and f.name not in left_out:
            shutil.copyfile(f, tmp / f.name)


def _not_around_here(path: Path) -> None:
    """An output lands whole in the place of its folder: ``--out .`` (or a folder holding the one the command
    runs in) would move the shell's own folder aside, and crashed on a path with no name."""
    with contextlib.suppress(OSError):  # a working folder deleted meanwhile holds no output
        here = Path.cwd().resolve()
        if (here / path).resolve() in (here, *here.parents):
            raise OutputError(f"--out {str(path) or '.'} is the folder this command runs in, or holds it, and an "
                              "output replaces its folder whole; give a folder inside it, such as --out "
                              f"{path / 'out'}")


def check_output_dir(path: str | Path, *, overwrite: bool, marker: str | None = None,
                     inputs: Iterable[str | Path | None] = (), mine: bool = False,
                     writes: Iterable[str | Path | None] = ()) -> None:
    """Refuse an output directory that already holds results (unless told to overwrite), one
    that overlaps an input, or one that cannot be written.

    A directory that exists but is empty is fine. ``marker`` narrows the existing-results check
    to one file. ``overwrite`` replaces only a folder that unsee wrote (it holds :data:`OWNED`):
    a mistyped ``--out`` that names a folder of the user's own must not be deleted with it.
    ``mine`` is for unsee's own folders (cache entries, checkpoints), replaced whatever they hold.
    ``writes``: the other folders the run writes (the stage cache), which must not overlap an input either.
    """
    path = Path(path)
    inputs = list(inputs)
    check_not_input(path, inputs)
    for where in writes:  # a stage cache may hold an input (the vanilla model it built), never lie in one
        if where is not None:
            check_not_input(where, inputs, around=True)
    if path.is_file():
        raise OutputError(f"{path} is a file, and the output is a folder; give another --out")
    if marker is not None:
        if not overwrite and (path / marker).exists():
            raise OutputExistsError(f"{path / marker} already exists; pass --overwrite to replace it")
    elif path.is_dir() and any(path.iterdir()):
        if not overwrite and (mine or (path / OWNED).is_file()):
            raise OutputExistsError(f"{path} already holds results; pass --overwrite to replace it")
        if not mine and not (path / OWNED).is_file():  # a folder of the user's own: --overwrite would not help
            held = sorted(p.name for p in path.iterdir())
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise OutputExistsError(f"{path} holds files unsee did not write ({shown}); --overwrite replaces only "
                                    f"a folder with unsee's mark ({OWNED}; an earlier unsee's output may lack it "
                                    "too): move them, or give another --out")
    _not_around_here(path)  # where nothing else stops it: the fuller reason first
    check_writable(path)


def results_file(out: str | Path, *, in_folder: bool = False) -> Path:
    """The results file an output path names: ``DIR/`` (written as a folder, with its slash) holds
    ``DIR/results.json``, and with ``in_folder`` so does any folder that exists (an unlearn output); a plain
    path is the file itself. The slash was dropped, and a file named ``DIR`` written where the user asked
    for a folder."""
    folder = isinstance(out, str) and out.endswith(("/", os.sep)) and bool(out.strip("/" + os.sep))
    return Path(out) / "results.json" if folder or (in_folder and Path(out).is_dir()) else Path(out)


def check_output_file(path: str | Path, *, overwrite: bool, inputs: Iterable[str | Path | None] = ()) -> None:
    """The same checks for an output that is one file (a results.json)."""
    path = Path(path)
    check_not_input(path, inputs)
    if path.is_dir():  # a folder given as --out is meant to hold the file; one named like a file is in the way
        hint = "move it, or give another path" if path.suffix else f"give a file path, such as {path / 'results.json'}"
        raise OutputError(f"the output {path} is a directory; {hint}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    check_writable(path)


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # in temporary names: whose writer it is


def _remove_dead_writers(path: Path) -> None:
    """Delete the temporary siblings of ``path`` that a killed run of this machine left half-written.

    A kill (SIGKILL, a lost node) skips the cleanup, and a model's worth of files would stay hidden
    beside the output for good. Each temporary name carries its writer's host and process; one
    whose process no longer runs here is dead. Another machine's (a shared disk) is left alone.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.([0-9a-f]{{8}})-(\d+)-.*\.tmp")
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp") if path.parent.is_dir() else ():
        match = pattern.fullmatch(tmp.name)
        if match and match[1] == _HOST and int(match[2]) != os.getpid() and not _running(int(match[2])):
            _remove(tmp)


def _remove(path: Path) -> None:
    """A file, a link (not what it leads to) or a folder, gone; one already gone is fine."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def discard(path: Path, *, beside: Path | None = None) -> None:
    """A folder gone at once: moved under this writer's name first (a staging name of ``beside``, by default of
    ``path`` itself), so that a kill while it is deleted leaves a leftover the next writer removes, never a
    half folder taken for the real one."""
    if path.exists() or path.is_symlink():
        trash = staging_dir(beside or path)
        os.replace(path, trash)
        _remove(trash)


def writer_tag() -> str:
    """This machine and process, as temporary names carry them (what :func:`_remove_dead_writers` reads)."""
    return f"{_HOST}-{os.getpid()}"


def staging_dir(path: Path) -> Path:
    """A private folder beside ``path`` to make its output in, named for this writer, so that one a killed
    writer left is removed by the next (and another machine's, on a shared disk, is left alone)."""
    _remove_dead_writers(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.{writer_tag()}-", suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror}") from None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or a number no process can have: not ours to judge
    return True


_LANDING: dict[str, int] = {}  # the folders whose landing lock this process holds, and how deeply


@contextlib.contextmanager
def _landing(folder: Path) -> Iterator[None]:
    """One process at a time moves outputs in ``folder``: two that saved one cache entry or checkpoint at
    the same moment (runs of one job on one cache) renamed each other's folders between their own two
    renames, and one failed after its work was done. The lock is the folder's own (``flock``), so no lock
    file is left beside the outputs; where the system has no such lock, outputs land unlocked, as before."""
    key = os.path.realpath(folder)
    fd = None
    if fcntl is not None and key not in _LANDING:
        with contextlib.suppress(OSError):  # a folder not made yet has no other writer to wait for
            fd = os.open(key, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
    _LANDING[key] = _LANDING.get(key, 0) + 1
    try:
        yield
    finally:
        _LANDING[key] -= 1
        if not _LANDING[key]:
            del _LANDING[key]
        if fd is not None:
            os.close(fd)  # and the lock with it


def restored(path: str | Path) -> Path:
    """``path``, with the output that :func:`atomic_dir` moved aside put back where a run was killed between
    moving it and landing its own: a reader that looked first would take the saved work for none. Done
    under the landing lock: a live writer between its renames is not a killed one."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and not path.is_symlink() and (old / OWNED).is_file():
        with _landing(path.parent), contextlib.suppress(FileNotFoundError):  # or another process put it back
            if not path.exists() and not path.is_symlink():
                os.replace(old, path)
    return path


def _land(tmp: Path, path: Path, old: Path, *, overwrite: bool, mine: bool) -> None:
    """Put the finished ``tmp`` in the place of ``path``, the output there moved aside to ``old`` first and
    deleted once the new one is in place. ``path`` is checked again: a folder that appeared or filled while
    the work ran is not replaced, and the work is kept beside it."""
    try:
        check_output_dir(path, overwrite=overwrite, mine=mine)
    except OutputError as e:
        kept = Path(tempfile.mkdtemp(prefix=f"{path.name}.unsee-", dir=path.parent))
        os.replace(tmp, kept)
        raise type(e)(f"{e} (it changed while this run worked; this run's output is kept in {kept})") from None
    if not path.exists():
        os.replace(tmp, path)
        return
    _remove(old)
    aside = True  # before the rename: an interrupt may land just after it
    try:
        os.replace(path, old)
        os.replace(tmp, path)
        aside = False
    finally:
        if aside and not path.exists() and old.exists():  # between the two renames: the previous output goes back
            os.replace(old, path)
    # landed: the previous output goes under this writer's name, so that a kill while it is deleted leaves a
    # leftover the next run removes, never one it would take for the output
    with contextlib.suppress(KeyboardInterrupt):  # the output is in place: an interrupt now loses nothing
        discard(old, beside=path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False, mine: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    It stays private while it fills. When it lands, it and everything in it get the modes
    a plain ``mkdir`` and ``open`` would give: some writers (``save_pretrained`` among them)
    leave private temporary-file modes behind, and a checkpoint must be readable by whoever
    serves it. It lands with :data:`OWNED` in it, so that a later ``overwrite`` may replace it
    (``mine``: see :func:`check_output_dir`). ``path`` is checked again before it lands: a folder
    that appeared or filled while the work ran is not replaced, and the work is kept beside it.
    A link to a folder is written where it leads.
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    old = path.with_name(f".{path.name}.old")
    with _landing(path.parent):
        restored(path)
        if old.exists() or old.is_symlink():  # the previous output of a run killed once its own had landed
            _remove(old)
    check_output_dir(path, overwrite=overwrite, mine=mine)
    tmp = staging_dir(path)
    try:
        yield tmp
        (tmp / OWNED).write_text(OWNED_TEXT)
        _plain_modes(tmp)
        with _landing(path.parent):
            _land(tmp, path, old, overwrite=overwrite, mine=mine)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and (getattr(e, "errno", None) == ENOSPC or "No space left on device" in str(e)):
            # the writers (safetensors among them) raise their own kinds; the user needs one line
            said = " ".join(getattr(e, "__notes__", ())) or f"Nothing is written to {path}."  # what the work kept
            raise OutputError(f"cannot write {path}: {DISK_FULL}. {said}") from e
        raise
