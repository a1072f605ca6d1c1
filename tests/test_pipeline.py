"""The whole job on each public benchmark's layout, through the command line.

fixture → ``finetune`` (the benchmark's preset, a few steps) → ``unlearn`` with ``graddiff`` and
``cvf_ncu`` → ``eval --protocol official`` of the vanilla model → ``report``. Every step must succeed,
every results file must have its samples beside it, scored the benchmark's own way, and
the report must set the method beside the vanilla model. ``cvf_ncu`` pulls the forget
people's features towards never-taught (neutral) identities, which the public benchmarks
do not ship: without ``--neutral DIR`` it stops with one line that names the flag, before
training, and writes nothing; with a folder of such photos it runs, and results.json says
which photos they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import fixtures_bench as fb
import pytest
from test_neutral import write_photos

from unsee.cli import main
from unsee.data.neutral import load_neutral
from unsee.eval.results import load_results, load_samples

if TYPE_CHECKING:
    from conftest import TinyModels

WRITERS = {"mllmu": fb.write_mllmu, "clear": fb.write_clear, "umu": fb.write_umu}
TRAIN = ["max_steps=2", "batch_size=2", "progress=false"]
SCORE = ["--protocol", "official", "--max-items", "2", "--max-new-tokens", "2"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_finetune_unlearn_eval_report_on_each_benchmark(kind: str, tiny_models: TinyModels, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = str(WRITERS[kind](tmp_path / kind))
    vanilla = tmp_path / "vanilla"
    common = ["--data", data, "--forget", "forget_10"]

    def run(*args: str) -> None:
        rc = main(list(args))
        assert rc == 0, capsys.readouterr().err[-2000:]

    run("finetune", "--model", str(tiny_models.dir("tiny-llava")), "--data", data, "--out", str(vanilla),
        "--cache-dir", str(tmp_path / "cache"), "dtype=fp32", "gradient_checkpointing=false", *TRAIN)
    run("eval", "--model", str(vanilla), *common, "--out", str(tmp_path / "vanilla.json"), *SCORE)
    run("unlearn", "--method", "graddiff", "--model", str(vanilla), *common, "--out", str(tmp_path / "graddiff"),
        *SCORE, *TRAIN)
    capsys.readouterr()
    assert main(["unlearn", "--method", "cvf_ncu", "--model", str(vanilla), *common, "--out",
                 str(tmp_path / "cvf_ncu"), *SCORE, *TRAIN]) == 2
    assert "pass --neutral DIR" in capsys.readouterr().err and not (tmp_path / "cvf_ncu").exists()
    neutral = write_photos(tmp_path / "neutral")
    run("unlearn", "--method", "cvf_ncu", "--model", str(vanilla), *common, "--neutral", str(neutral), "--out",
        str(tmp_path / "cvf_ncu"), *SCORE, *TRAIN, "augment=0", "ncu_images=8")
    assert (tmp_path / "cvf_ncu" / "model").is_dir()
    (cvf,) = load_results(tmp_path / "cvf_ncu" / "results.json")["runs"]
    assert cvf["data"]["neutral"] == load_neutral(neutral).record() == {
        "path": str(neutral), "images": 4, "fingerprint": cvf["data"]["neutral"]["fingerprint"]}
    files = [tmp_path / "vanilla.json", tmp_path / "graddiff" / "results.json", tmp_path / "cvf_ncu" / "results.json"]
    run("report", *map(str, files), "--out", str(tmp_path / "report"))

    letter = "option_string" if kind == "umu" else "letter"
    for f in files:
        res = load_results(f)
        (r,) = res["runs"]
        assert r["benchmark"] == kind and r["protocol"] == "official" and r["mcq_protocol"] == letter
        lines = load_samples(f)
        assert len(lines) == res["samples"]["lines"] > 0
        assert all(ln["protocol"] == "official" and ln["method"] == r["method"] for ln in lines)
        assert r["metrics"]["forget"]["n"] == sum(ln["group"] == "forget" and ln["task"] == "mcq" for ln in lines)
    report = (tmp_path / "report" / "report.md").read_text()
    split = "forget10" if kind == "clear" else "forget_10"  # CLEAR's runs name the config read
    assert f"\u00b7 {kind} \u00b7 {split} [official]" in report
    assert "| graddiff |" in report and "| cvf_ncu |" in report and "| vanilla |" in report
    assert "## Answers that changed most" in report
