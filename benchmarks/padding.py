"""What batching by token length saves in the vanilla recipe's stages 2 and 3.

A batch pads every row to its longest, so a batch that mixes a one-word answer with a long
conversation spends most of its tokens on padding. For each stage's turns this measures the
padded fraction of the tokens over an epoch of batches, with ``group_by_length`` off and on,
and the mean time of a training step on the untrained tiny model (the cost does not depend on
the weights).

    python benchmarks/padding.py --world default

Writes ``benchmarks/results/padding_<world>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unsee import finetune as ft
from unsee.config import load_config
from unsee.data.collate import Stream
from unsee.data.mllmu import load_mllmu
from unsee.data.world import load_world_info
from unsee.demo import DemoConfig, prepare_init
from unsee.io import atomic_write_json
from unsee.models import HFAdapter, load_adapter
from unsee.provenance import environment


def padded_fraction(stream: Stream, lengths: list[int], batches: int) -> float:
    """Padding tokens over all tokens of ``batches`` batches, each padded to its longest row."""
    index = {id(t): i for i, t in enumerate(stream.turns)}
    pad = total = 0
    for _ in range(batches):
        rows = [lengths[index[id(t)]] for t in next(stream)]
        pad += max(rows) * len(rows) - sum(rows)
        total += max(rows) * len(rows)
    return pad / total


def step_seconds(adapter: HFAdapter, stream: Stream, steps: int) -> float:
    """Mean wall time of forward, backward and an SGD step on the stream's batches (after one warm-up)."""
    opt = torch.optim.SGD(adapter.model.parameters(), lr=0.0)
    adapter.model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = adapter.model(**adapter.training_batch(next(stream))).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return float(np.mean(times[1:]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="default", help="world config: quick or default")
    p.add_argument("--arch", default="tiny-llava")
    p.add_argument("--steps", type=int, default=40, help="timed training steps per stage and setting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cache = ft.cache_root(a.cache_dir)
    world, init, _ = prepare_init(DemoConfig(world=a.world), a.arch, a.seed, cache)
    adapter = load_adapter(init)
    cfg = load_config(ft.FinetuneConfig, a.world, [], kind="finetune")
    suite = load_mllmu(world, "forget_10")
    names = set(load_world_info(world)["names"].values())
    stages = {"stage2": ft.stage2_turns(suite, cfg, names), "stage3": ft.stage3_turns(suite, cfg, names)}
    out: dict[str, Any] = {"benchmark": "padding", "world": a.world, "arch": a.arch, "batch_size": cfg.batch_size,
                           "threads": a.threads, "stages": {}, "environment": environment()}
    for name, turns in stages.items():
        t0 = time.perf_counter()
        lengths = adapter.training_lengths(turns)
        measure_s = time.perf_counter() - t0
        row: dict[str, Any] = {"turns": len(turns), "lengths_s": measure_s}
        for key, grouping in (("plain", None), ("grouped", lengths)):
            row[key] = {
                "padded_fraction": padded_fraction(Stream(turns, cfg.batch_size, seed=a.seed, lengths=grouping),
                                                   lengths, len(turns) // cfg.batch_size),
                "step_s": step_seconds(adapter, Stream(turns, cfg.batch_size, seed=a.seed, lengths=grouping), a.steps),
            }
        row["speedup"] = row["plain"]["step_s"] / row["grouped"]["step_s"]
        out["stages"][name] = row
        print(f"{name}: {len(turns)} turns, padding {row['plain']['padded_fraction']:.1%} -> "
              f"{row['grouped']['padded_fraction']:.1%}, step {row['plain']['step_s']:.3f} s -> "
              f"{row['grouped']['step_s']:.3f} s ({row['speedup']:.2f}x)", flush=True)
    atomic_write_json(Path(a.out or f"benchmarks/results/padding_{a.world}.json"), out)
    return out


if __name__ == "__main__":
    main()
