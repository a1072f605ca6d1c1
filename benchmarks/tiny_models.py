"""Parameter count and forward/backward time per batch of 16 for each tiny architecture.

    python benchmarks/tiny_models.py --out benchmarks/results/tiny_models.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unsee.io import atomic_write_json
from unsee.models import Turn, load_adapter
from unsee.models.tiny import ARCHS, init_model


def measure(arch: str, repeats: int = 5) -> dict:
    with tempfile.TemporaryDirectory() as d:
        init_model(arch, Path(d) / "m", seed=0)
        adapter = load_adapter(Path(d) / "m")
    rng = np.random.default_rng(0)
    turns = [Turn(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                  "Where was the person in this image born?", "Tarrow Hill") for _ in range(16)]
    batch = adapter.training_batch(turns)
    adapter.model.train()
    times = []
    for i in range(repeats + 1):
        t = time.perf_counter()
        loss = adapter.model(**batch).loss
        loss.backward()
        adapter.model.zero_grad(set_to_none=True)
        if i:  # the first pass warms up
            times.append(time.perf_counter() - t)
    return {"arch": arch, "params": sum(p.numel() for p in adapter.model.parameters()),
            "fwd_bwd_s_batch16_median": float(np.median(times)), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/tiny_models.json")
    a = p.parse_args()
    rows = [measure(arch) for arch in ARCHS]
    for r in rows:
        print(r)
    atomic_write_json(a.out, {"benchmark": "tiny_models", "rows": rows})


if __name__ == "__main__":
    main()
