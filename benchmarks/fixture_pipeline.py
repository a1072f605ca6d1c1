"""The whole job on each public benchmark's layout, timed: fixture → finetune → unlearn → official eval → report.

    python benchmarks/fixture_pipeline.py --threads 2 --out benchmarks/results/fixture_pipeline.json

Each benchmark's fixture (the hub layout with a handful of people, as in the tests) is
written to a scratch folder; a fresh tiny-llava is fine-tuned with the benchmark's preset
(fp32 and no gradient checkpointing on a CPU), unlearned with each method at its shipped
setting, and every model is scored under ``--protocol official`` on every item; then the
report is written. Every step goes through the command line, as a user runs it. The target
is at most 180 s per benchmark on 2 cores. Methods that read never-taught people (``cvf_ncu``,
``vkd``, the eraser) get a folder of noise photos through ``--neutral``, as a user supplies photos
of people absent from the benchmark; a method that refuses the data is recorded with its message.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import fixtures_bench as fb  # noqa: E402

from unsee.cli import main as cli  # noqa: E402
from unsee.eval.results import load_results  # noqa: E402
from unsee.io import atomic_write_json  # noqa: E402
from unsee.models.tiny import init_model  # noqa: E402
from unsee.provenance import environment  # noqa: E402
from unsee.runs import needs_neutral  # noqa: E402

WRITERS = {"mllmu": fb.write_mllmu, "clear": fb.write_clear, "umu": fb.write_umu}
TARGET_S = 180.0
NEUTRAL_PHOTOS = 8


def neutral_photos(folder: Path, size: int = 32) -> Path:
    """Seeded noise images standing in for photos of people the model never saw."""
    folder.mkdir(parents=True)
    for i in range(NEUTRAL_PHOTOS):
        rng = np.random.default_rng(1000 + i)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"person{i}.png")
    return folder


def step(name: str, args: list[str], times: dict[str, Any]) -> int:
    """Run one command, time it, and keep its last error line."""
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = cli(args)
    times[name] = {"s": round(time.perf_counter() - start, 1), "rc": rc}
    if rc:
        lines = [ln for ln in err.getvalue().splitlines() if ln.startswith("unsee: error")]
        times[name]["error"] = lines[-1] if lines else err.getvalue()[-300:]
    return rc


def pipeline(kind: str, root: Path, methods: list[str]) -> dict[str, Any]:
    data = str(WRITERS[kind](root / kind))
    base = init_model("tiny-llava", root / "base", seed=0)
    common = ["--data", data, "--forget", "forget_10"]
    score = ["--protocol", "official"]
    times: dict[str, Any] = {}
    start = time.perf_counter()
    step("finetune", ["finetune", "--model", str(base), "--data", data, "--out", str(root / "vanilla"),
                      "--cache-dir", str(root / "cache"), "dtype=fp32", "gradient_checkpointing=false",
                      "progress=false"], times)
    step("eval vanilla", ["eval", "--model", str(root / "vanilla"), *common, "--out", str(root / "vanilla.json"),
                          *score], times)
    files = [root / "vanilla.json"]
    neutral = ["--neutral", str(neutral_photos(root / "neutral"))]
    for m in methods:
        if step(f"unlearn {m}", ["unlearn", "--method", m, "--model", str(root / "vanilla"), *common, "--out",
                                 str(root / m), *score, *(neutral if needs_neutral(m) else []), "progress=false"],
                times) == 0:
            files.append(root / m / "results.json")
    step("report", ["report", *map(str, files), "--out", str(root / "report")], times)
    total = round(time.perf_counter() - start, 1)
    figures = {load_results(f)["runs"][0]["method"]: load_results(f)["runs"][0]["metrics"] for f in files}
    return {"steps": times, "total_s": total, "target_s": TARGET_S, "pass": total <= TARGET_S, "metrics": figures}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default="mllmu,clear,umu")
    p.add_argument("--methods", default="cvf_ncu,graddiff")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/fixture_pipeline.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"benchmark": "fixture_pipeline", "threads": args.threads, "rows": {}}
    for kind in args.benchmarks.split(","):
        with tempfile.TemporaryDirectory(prefix=f"unsee-pipeline-{kind}-") as tmp:
            row = pipeline(kind, Path(tmp), args.methods.split(","))
        result["rows"][kind] = row
        shown = "  ".join(f"{k} {v['s']}s" + (" (refused)" if v["rc"] else "") for k, v in row["steps"].items())
        print(f"{kind:6s} {row['total_s']:7.1f} s  {shown}", flush=True)
        result["environment"] = environment()
        atomic_write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
