"""What a multi-process run must reproduce: NCU covariances, Fisher diagonals, training losses and weights.

``compute`` runs in the test process (one process) and under
``accelerate launch --config_file src/unsee/configs/accelerate/cpu.yaml tests/dist_worker.py MODEL WORLD OUT``
(two gloo processes, each holding half of every batch); the test compares the two.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from helpers import worker_main

from unsee import api
from unsee.engine.trainer import Context, TrainConfig, make_streams, train
from unsee.methods.baselines import GradDiff, KLMin
from unsee.methods.mmunlearner import fisher
from unsee.methods.ncu import input_covariances
from unsee.models import load_adapter


def compute(model_dir: Path, world_dir: Path, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    adapter = load_adapter(model_dir)
    suite = api.load_suite(world_dir, "forget_10")
    turns = api.training_turns(suite)
    cfg = TrainConfig(batch_size=4, seed=0, progress=False, lr=1e-3, max_steps=3)
    streams = make_streams(turns, cfg, accelerator.process_index, accelerator.num_processes)
    ctx = Context(adapter, suite, cfg, streams, accelerator=accelerator)
    out: dict[str, torch.Tensor] = {}

    images = [t.image for t in turns["retain"] if t.image is not None][:6]
    covs = input_covariances(adapter, ctx.shard(images), ctx=ctx)
    for name in sorted(covs)[:3]:
        s, n = covs[name]
        out[f"cov.{name}"] = s.float()
        out[f"n.{name}"] = torch.tensor([n])
    # one photo: one process's share is empty, and it still joins every sum (it hung there before)
    one = input_covariances(adapter, ctx.shard(images[:1]), ctx=ctx)
    for name in sorted(one)[:3]:
        out[f"cov1.{name}"] = one[name][0].float()

    params = [m.weight for _, m in adapter.linear_modules("projector")]
    batches = [next(streams["forget"]) for _ in range(2)]
    for i, f in enumerate(fisher(adapter, params, batches, ascent=True, ctx=ctx)):
        out[f"fisher.{i}"] = f

    res = train(GradDiff(), adapter, suite, turns, cfg, accelerator=accelerator)
    out["losses"] = torch.tensor(res.losses)
    out["weights"] = torch.cat([p.detach().flatten()[:512] for p in params])

    # KL's retain term is a mean over answer tokens, whose count differs between the two halves of a batch
    adapter = load_adapter(model_dir)
    res = train(KLMin(), adapter, suite, turns, TrainConfig(batch_size=4, seed=1, progress=False, lr=1e-3, max_steps=4),
                accelerator=accelerator)
    out["kl.losses"] = torch.tensor(res.losses)
    out["kl.weights"] = torch.cat([m.weight.detach().flatten()[:512] for _, m in adapter.linear_modules("projector")])
    return out


if __name__ == "__main__":
    worker_main(compute)
