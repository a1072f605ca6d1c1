"""Every bad input a hostile but realistic user tried, run through the command line.

Each case ends with exit 0 and a correct result, or with a one-line error and exit 2; none
ends with a traceback, and no case changes its inputs (checksums of every file before and
after). ``python tests/test_bad_inputs.py`` prints the table; under pytest each row is asserted.

The world and model are the tiny ones of ``conftest.py``. To keep the sweep fast, evaluation
skips the generated answers (cloze, ROUGE): the guards act before or after it, never inside.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# ---- the cases ---------------------------------------------------------------------------------
FAST = ["max_steps=1", "batch_size=2", "progress=false"]


@dataclass
class Env:
    """A private world and model per sweep, and a folder per case for its outputs."""

    root: Path
    world: Path
    model: Path

    def copy_world(self, name: str, change: Callable[[Path], None]) -> Path:
        out = Path(shutil.copytree(self.world, self.root / "worlds" / name))
        change(out)
        return out

    def copy_model(self, name: str, change: Callable[[Path], None]) -> Path:
        out = Path(shutil.copytree(self.model, self.root / "models" / name / "m"))
        change(out)
        return out


@dataclass
class Case:
    name: str
    expect: str  # "ok" or "error"
    argv: Callable[[Env, Path], list[str]]  # (env, the case's own folder) -> command line
    inputs: Callable[[Env], list[Path]] = lambda env: [env.model, env.world]
    check: Callable[[Env, Path], str | None] = lambda env, d: None  # for "ok": a problem, or None
    message: str = ""  # for "error": text the one line must hold


def unlearn(env: Env, out: Path | str, *extra: str, method: str = "ga", model: Path | None = None,
            data: Path | None = None) -> list[str]:
    return ["unlearn", "--method", method, "--model", str(model or env.model), "--data", str(data or env.world),
            "--out", str(out), *extra]


def evaluate(env: Env, out: Path | str, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    return ["eval", "--model", str(model or env.model), "--data", str(data or env.world), "--out", str(out),
            "--max-items", "4", *extra]


def tune(env: Env, out: Path | str, *extra: str, data: Path | None = None) -> list[str]:
    return ["tune", "--method", "ga", "--model", str(env.model), "--data", str(data or env.world), "--out", str(out),
            "--max-items", "2", *extra]


def _parquet(world: Path, split: str, change: Callable) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = next((world / split).glob("*.parquet"))
    pq.write_table(change(pq.read_table(f), pa), f)


def empty_forget(world: Path) -> None:
    _parquet(world, "forget_10", lambda t, pa: t.slice(0, 0))


def overlapping_retain(world: Path) -> None:
    import pyarrow.parquet as pq

    forget = pq.read_table(next((world / "forget_10").glob("*.parquet")))
    _parquet(world, "retain_90", lambda t, pa: pa.concat_tables([t, forget.select(t.column_names)]))


def corrupt_general_image(world: Path) -> None:
    def change(t, pa):  # noqa: ANN001, ANN202
        rows = t.to_pylist()
        rows[0]["image"] = {"bytes": b"\x89PNG not really", "path": rows[0]["image"]["path"]}
        return pa.Table.from_pylist(rows, schema=t.schema)

    _parquet(world, "General_Set", change)


def truncated(model: Path) -> None:
    f = model / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def missing_tensor(model: Path) -> None:
    """One tensor gone: transformers alone would start it from random values and carry on."""
    from safetensors.torch import load_file, save_file

    f = model / "model.safetensors"
    weights = load_file(f)
    weights.pop(next(k for k in sorted(weights) if k.endswith("mlp.down_proj.weight")))
    save_file(weights, f, metadata={"format": "pt"})


def wider_config(model: Path) -> None:
    """A config that does not describe the weights beside it."""
    f = model / "config.json"
    cfg = json.loads(f.read_text())
    cfg["text_config"]["hidden_size"] *= 2
    f.write_text(json.dumps(cfg))


def pickle_only(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


def no_tokenizer(model: Path) -> None:
    (model / "tokenizer.json").unlink()


def alias_bomb(d: Path) -> Path:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    d.mkdir(parents=True, exist_ok=True)
    (d / "bomb.yaml").write_text("\n".join([*lines, "lr: *a9"]) + "\n")
    return d / "bomb.yaml"


def unwritable(d: Path) -> Path:
    """A folder that refuses new entries (for root, whom permission bits do not stop: /sys)."""
    if os.geteuid() != 0:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o555)
        return d
    return Path("/sys/fs")


def _results(path: Path) -> dict:
    return json.loads(path.read_text())


def unlearned_run_is_right(env: Env, d: Path) -> str | None:
    """The run of ``checkpoint_dir=1e3``: the folder keeps its name, the model keeps its architecture."""
    if not (d / "1e3").is_dir() or (d / "1000.0").exists():
        return f"checkpoint folder: {sorted(p.name for p in d.iterdir())}"
    run = _results(d / "out" / "results.json")["runs"][0]
    if run["model"] != "tiny-llava" or run["config"]["checkpoint_dir"] != "1e3":
        return f"model {run['model']!r}, checkpoint_dir {run['config']['checkpoint_dir']!r}"
    return None


def eval_names_the_architecture(env: Env, d: Path) -> str | None:
    model = _results(d / "e.json")["runs"][0]["model"]
    return None if model == "tiny-llava" else f"model recorded as {model!r}"


def report_finds_vanilla(report: Path) -> str | None:
    text = (report / "report.md").read_text()
    return "the report found no vanilla run" if "No `vanilla` run" in text else None


def cases(env: Env) -> list[Case]:
    ok = env.root / "cases" / "ok"  # the successful run, whose output later cases read
    worlds = {n: env.copy_world(n, f) for n, f in [("empty", empty_forget), ("overlap", overlapping_retain),
                                                   ("corrupt", corrupt_general_image)]}
    models = {n: env.copy_model(n, f) for n, f in [("truncated", truncated), ("pickle", pickle_only),
                                                   ("no_tokenizer", no_tokenizer), ("missing", missing_tensor),
                                                   ("wider", wider_config)]}
    model_in = lambda name: lambda e: [models[name], e.world]  # noqa: E731
    world_in = lambda name: lambda e: [e.model, worlds[name]]  # noqa: E731
    return [
        # outputs
        Case("unlearn --out MODEL --overwrite", "error", lambda e, d: unlearn(e, e.model, "--overwrite", *FAST),
             message="is the input"),
        Case("unlearn --out MODEL/x --overwrite", "error",
             lambda e, d: unlearn(e, e.model / "x", "--overwrite", *FAST), message="lies inside the input"),
        Case("unlearn --out PARENT-OF-MODEL --overwrite", "error",
             lambda e, d: unlearn(e, e.model.parent, "--overwrite", *FAST), message="contains the input"),
        Case("unlearn --out DATA --overwrite", "error", lambda e, d: unlearn(e, e.world, "--overwrite", *FAST),
             message="is the input"),
        Case("eval --out MODEL/eval.json", "error", lambda e, d: evaluate(e, e.model / "eval.json"),
             message="lies inside the input"),
        Case("eval --out DIR --overwrite", "error", lambda e, d: evaluate(e, d, "--overwrite"),
             message="is a directory"),
        Case("unlearn --out under a read-only folder", "error", lambda e, d: unlearn(e, unwritable(d) / "o", *FAST),
             message="not writable"),
        Case("eval --out under a read-only folder", "error", lambda e, d: evaluate(e, unwritable(d) / "e.json"),
             message="not writable"),
        Case("unlearn --out holding a file, no --overwrite", "error",
             lambda e, d: ((d / "keep.txt").write_text("x"), unlearn(e, d, *FAST))[-1],
             message="--overwrite"),
        # models
        Case("eval a truncated model.safetensors", "error", lambda e, d: evaluate(e, d / "e.json",
                                                                                  model=models["truncated"]),
             inputs=model_in("truncated"), message="truncated"),
        Case("unlearn a truncated model.safetensors", "error",
             lambda e, d: unlearn(e, d / "o", *FAST, model=models["truncated"]), inputs=model_in("truncated"),
             message="truncated"),
        Case("eval a model whose weights lack a tensor", "error",
             lambda e, d: evaluate(e, d / "e.json", model=models["missing"]), inputs=model_in("missing"),
             message="lack 1 tensor"),
        Case("unlearn a model whose weights lack a tensor", "error",
             lambda e, d: unlearn(e, d / "o", *FAST, model=models["missing"]), inputs=model_in("missing"),
             message="lack 1 tensor"),
        Case("eval a model whose config does not fit its weights", "error",
             lambda e, d: evaluate(e, d / "e.json", model=models["wider"]), inputs=model_in("wider"),
             message="do not have the shapes its config.json describes"),
        Case("eval a pickle-only model", "error", lambda e, d: evaluate(e, d / "e.json", model=models["pickle"]),
             inputs=model_in("pickle"), message="--allow-pickle"),
        Case("unlearn a model copied without its tokenizer", "error",
             lambda e, d: unlearn(e, d / "o", *FAST, model=models["no_tokenizer"]), inputs=model_in("no_tokenizer"),
             message="holds no tokenizer"),
        Case("unlearn --out holding a folder of other files, --overwrite", "error",
             lambda e, d: ((d / "thesis.tex").write_text("x"), unlearn(e, d, "--overwrite", *FAST))[-1],
             message="unsee did not write (thesis.tex)"),
        Case("unlearn --dtype fp16", "error", lambda e, d: unlearn(e, d / "o", "--dtype", "fp16", *FAST),
             message="cannot train fp16 weights"),
        Case("unlearn a missing model", "error", lambda e, d: unlearn(e, d / "o", *FAST, model=d / "nope"),
             message="does not exist"),
        Case("graddiff lr=1e12 max_steps=1", "error",
             lambda e, d: unlearn(e, d / "o", "lr=1e12", *FAST, method="graddiff"), message="not finite"),
        # configs
        Case("--config with nested YAML aliases", "error",
             lambda e, d: unlearn(e, d / "o", "--config", str(alias_bomb(d / "cfg")), *FAST),
             message="anchors and aliases"),
        Case("lr=<100 kB of text>", "error", lambda e, d: unlearn(e, d / "o", "lr=" + "x" * 100_000, *FAST[1:]),
             message="expected a number"),
        Case("unknown option", "error", lambda e, d: unlearn(e, d / "o", "lrr=1", *FAST), message="'lrr'"),
        Case("ga epochs=0", "error", lambda e, d: unlearn(e, d / "o", "epochs=0", *FAST[1:]),
             message="nothing would train"),
        Case("unknown method", "error", lambda e, d: unlearn(e, d / "o", *FAST, method="nope"), message="'nope'"),
        Case("--config a missing file", "error", lambda e, d: unlearn(e, d / "o", "--config", str(d / "no.yaml")),
             message="neither a file"),
        # data
        Case("unlearn with an empty forget split", "error", lambda e, d: unlearn(e, d / "o", *FAST,
                                                                                  data=worlds["empty"]),
             inputs=world_in("empty"), message="empty"),
        Case("eval with an empty forget split", "error", lambda e, d: evaluate(e, d / "e.json", data=worlds["empty"]),
             inputs=world_in("empty"), message="empty"),
        Case("unlearn with forget overlapping retain", "error",
             lambda e, d: unlearn(e, d / "o", *FAST, data=worlds["overlap"]), inputs=world_in("overlap"),
             message="overlaps"),
        Case("eval with forget overlapping retain", "error",
             lambda e, d: evaluate(e, d / "e.json", data=worlds["overlap"]), inputs=world_in("overlap"),
             message="overlaps"),
        Case("unlearn with a corrupt image in an eval group", "error",
             lambda e, d: unlearn(e, d / "o", *FAST, data=worlds["corrupt"]), inputs=world_in("corrupt"),
             message="corrupt"),
        Case("unlearn --requests with a mistyped request", "error",
             lambda e, d: unlearn(e, d / "o", "--requests", "forget_r1,forget_r9", *FAST),
             message="'forget_r9': neither a split nor a person"),
        # choosing a setting
        Case("tune on the people it is for", "error",
             lambda e, d: tune(e, d / "t", "--on", "forget_5", "--exclude", "forget_10", *FAST), message="share"),
        Case("tune --grid lr", "error", lambda e, d: tune(e, d / "t", "--on", "val_forget_10", "--grid", "lr", *FAST),
             message="KEY=V1,V2"),
        Case("tune --out DATA --overwrite", "error",
             lambda e, d: tune(e, e.world, "--on", "val_forget_10", "--overwrite", *FAST), message="is the input"),
        Case("tune --on a request file", "error",
             lambda e, d: tune(e, d / "t", "--on", str(d / "request.yaml"), *FAST), message="names a file"),
        Case("tune --grid with max_steps set", "error",
             lambda e, d: tune(e, d / "t", "--on", "val_forget_10", "--grid", "epochs=1,3", *FAST),
             message="same setting"),
        Case("unlearn --forget a request file", "error",
             lambda e, d: unlearn(e, d / "o", "--forget", "request.yaml", *FAST), message="names a file"),
        Case("tune with a corrupt image in an eval group", "error",
             lambda e, d: tune(e, d / "t", "--on", "val_forget_10", *FAST, data=worlds["corrupt"]),
             inputs=world_in("corrupt"), message="corrupt"),
        # runs that must succeed, and say the right thing
        Case("unlearn checkpoint_dir=1e3 keep_checkpoint=true", "ok",
             lambda e, d: unlearn(e, d / "out", "max_steps=2", "batch_size=2", "progress=false",
                                  "checkpoint_dir=1e3", "checkpoint_every=1", "keep_checkpoint=true"),
             check=unlearned_run_is_right),
        Case("another run resuming that checkpoint_dir", "error",
             lambda e, d: unlearn(e, d / "out2", "max_steps=2", "batch_size=2", "progress=false", "lr=1e-4",
                                  "checkpoint_dir=1e3", "checkpoint_every=1", method="graddiff"),
             message="belongs to another run"),
        Case("eval the unlearned checkpoint", "ok", lambda e, d: evaluate(e, d / "e.json", "--method", "ga",
                                                                          model=ok / "out" / "model"),
             inputs=lambda e: [ok / "out" / "model", e.world], check=eval_names_the_architecture),
        Case("eval the vanilla model", "ok", lambda e, d: evaluate(e, d / "e.json", "--method", "vanilla"),
             check=eval_names_the_architecture),
    ]


SHARE_OK = ("unlearn checkpoint_dir=1e3 keep_checkpoint=true", "another run resuming that checkpoint_dir")


# ---- running them ------------------------------------------------------------------------------
def checksums(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for root in paths:
        for f in sorted(Path(root).rglob("*")) if Path(root).is_dir() else [Path(root)]:
            if f.is_file():
                h.update(str(f.relative_to(root) if f != root else f.name).encode())
                h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:12]


@dataclass
class Row:
    case: str
    expect: str
    rc: int | None
    line: str
    unchanged: bool
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def run_case(env: Env, case: Case, d: Path) -> Row:
    from unsee.cli import main

    inputs = case.inputs(env)
    before = checksums(inputs)
    err, out = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    rc: int | None
    with contextlib.chdir(d), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(case.argv(env, d))
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 (a traceback is what this sweep looks for)
            rc, err = None, io.StringIO(f"Traceback: {type(e).__name__}: {e}"[:300])
    seconds = time.perf_counter() - t0
    lines = [ln for ln in err.getvalue().splitlines() if ln.startswith(("unsee:", "Traceback"))]
    line = lines[0].replace(str(env.root), "$TMP") if lines else ""
    row = Row(case.name, case.expect, rc, line, checksums(inputs) == before, seconds)
    if not row.unchanged:
        row.problems.append("an input changed")
    if case.expect == "error":
        if rc != 2 or len(lines) != 1 or not lines[0].startswith("unsee: error: "):
            row.problems.append(f"expected one error line and exit 2, got exit {rc}: {err.getvalue()[-300:]!r}")
        elif case.message not in lines[0]:
            row.problems.append(f"the error does not say {case.message!r}")
    else:
        problem = case.check(env, d) if rc == 0 else f"exit {rc}: {err.getvalue()[-300:]!r}"
        if problem:
            row.problems.append(problem)
    return row


@contextlib.contextmanager
def without_generation() -> Iterator[None]:
    """Evaluation without generated answers, on four items a group: the sweep checks guards, not figures."""
    from unsee.eval import evaluator

    real = evaluator.evaluate
    evaluator.evaluate = functools.partial(real, generation=False, progress=False, max_items=4)
    try:
        yield
    finally:
        evaluator.evaluate = real


def sweep(root: Path) -> list[Row]:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import WORLD_OVERRIDES

    from unsee.data.world import build_world
    from unsee.models.tiny import init_model

    world = build_world(root / "w", config="quick", overrides=WORLD_OVERRIDES)
    model = init_model("tiny-llava", root / "models" / "vanilla" / "m", world=world, seed=0)
    env = Env(root, world, model)
    rows = []
    ok = root / "cases" / "ok"
    with without_generation():
        for i, case in enumerate(cases(env)):
            # the checkpoint cases share one working folder, where checkpoint_dir=1e3 lands
            d = ok if case.name in SHARE_OK else root / "cases" / f"{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            rows.append(run_case(env, case, d))
        rows.append(report_row(root / "cases", rows))
    return rows


def report_row(cases_dir: Path, rows: list[Row]) -> Row:
    """``unsee report`` over the last two evaluations (the unlearned model's, the vanilla model's)."""
    from unsee.cli import main

    last = len(rows) - 1
    report = cases_dir / "report"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        rc = main(["report", str(cases_dir / f"{last - 1:02d}" / "e.json"), str(cases_dir / f"{last:02d}" / "e.json"),
                   "--out", str(report)])
    row = Row("report: vanilla and unlearned runs", "ok", rc, err.getvalue().strip()[:80], True, 0.0)
    problem = report_finds_vanilla(report) if rc == 0 else f"exit {rc}"
    if problem:
        row.problems.append(problem)
    return row


def table(rows: list[Row]) -> str:
    """case | expected | outcome (exit 0, or the error line, cut at 90 characters) | inputs unchanged | seconds."""
    head = f"{'case':<48} {'expect':<6} {'outcome':<90} {'inputs':<7} {'s':>5}  verdict"
    out = [head, "-" * len(head)]
    for r in rows:
        outcome = "exit 0" if r.rc == 0 else (r.line.removeprefix("unsee: error: ") or f"exit {r.rc}")
        out.append(f"{r.case[:48]:<48} {r.expect:<6} {outcome[:90]:<90} {'same' if r.unchanged else 'CHANGED':<7} "
                   f"{r.seconds:5.1f}  {'ok' if r.passed else 'FAIL: ' + '; '.join(r.problems)}")
    return "\n".join(out)


def test_every_bad_input_ends_in_one_line_or_a_right_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = sweep(tmp_path)
    with capsys.disabled():
        print("\n" + table(rows))
    assert all(r.passed for r in rows), table([r for r in rows if not r.passed])


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parents[1] / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        result = sweep(Path(tmp))
    print(table(result))
    sys.exit(0 if all(r.passed for r in result) else 1)
