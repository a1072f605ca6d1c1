"""Gradient averaging across processes whose batch slices reach different parameters."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from unsee.engine.gradients import average_gradients


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    image, text, unused = nn.Linear(3, 1), nn.Linear(3, 1), nn.Linear(3, 1)
    params = [*image.parameters(), *text.parameters(), *unused.parameters()]
    x = torch.full((1, 3), float(rank + 1))
    # Rank 0's slice has an image row and a text row; rank 1's only a text row.
    loss = text(x).sum() + (image(x).sum() if rank == 0 else 0)
    loss.backward()
    average_gradients(params, 2)
    if rank == 0:
        torch.save([None if p.grad is None else p.grad.clone() for p in params], out)
    dist.destroy_process_group()


def test_processes_agree_when_one_slice_never_reaches_a_parameter(tmp_path: Path) -> None:
    out = tmp_path / "grads.pt"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(f"file://{tmp_path / 'store'}", str(out)), nprocs=2, join=True)
    grads = torch.load(out)
    # The image layer: only rank 0's input (ones) reached it, averaged over two processes.
    assert torch.allclose(grads[0], torch.full((1, 3), 0.5))
    assert torch.allclose(grads[1], torch.tensor([0.5]))
    # The text layer: inputs 1 and 2, averaged.
    assert torch.allclose(grads[2], torch.full((1, 3), 1.5))
    # A layer no process reached keeps no gradient, as in one process.
    assert grads[4] is None and grads[5] is None
