"""What an FSDP run must reproduce: each method's losses and weights after three steps.

``compute`` runs in the test process (one process) and under
``accelerate launch --config_file src/unsee/configs/accelerate/fsdp.yaml --num_processes 2
tests/fsdp_worker.py MODEL WORLD OUT`` (two gloo processes, the trained weights sharded
between them); the test compares the two. Each method starts from the saved model; graddiff
goes through ``unsee unlearn``'s API, so its losses come from ``run.json`` and its weights
from the saved checkpoint.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from helpers import worker_main
from safetensors.torch import load_file

from unsee import api
from unsee.engine.trainer import train
from unsee.errors import TrainingError
from unsee.models import load_adapter

METHODS = ("graddiff", "npo", "cvf_ncu", "vkd")  # vkd: saliency masks on the sharded rows
COMMON = ["max_steps=3", "batch_size=4", "progress=false", "log_every=1"]
# Adam's first steps divide by sqrt(v): where a gradient is ~0 its summation-order noise moves the
# weight by up to lr, so the full-model methods take a rate at which that stays below 1e-5.
OPTIONS = {
    "graddiff": ["lr=1e-4"],
    "npo": ["lr=1e-4"],
    # augment draws fresh crops per process slice; the contrastive terms gather the whole batch
    "cvf_ncu": ["lr=1e-3", "augment=0", "augment_retain=0", "ncu_images=8", "lambda_k=0"],
    "vkd": ["lr=1e-3", "fisher_batches=2"],
}


def compute(model_dir: Path, world_dir: Path, accelerator: Accelerator) -> dict[str, torch.Tensor]:
    suite = api.load_suite(world_dir, "forget_10")
    turns = api.training_turns(suite)
    out: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "graddiff"
        api.unlearn("graddiff", model_dir, world_dir, run_dir, overrides=COMMON + OPTIONS["graddiff"],
                    evaluate_after=False)
        if accelerator.is_main_process:
            history = json.loads((run_dir / "run.json").read_text())["history"]
            out["graddiff.losses"] = torch.tensor([row["loss"] for row in history], dtype=torch.float64)
            out["graddiff.terms"] = torch.tensor([[row[k] for k in sorted(row) if k not in ("step", "loss")]
                                                  for row in history], dtype=torch.float64)
            for name, w in load_file(run_dir / "model" / "model.safetensors").items():
                out[f"graddiff.w.{name}"] = w
    for method in METHODS[1:]:
        adapter = load_adapter(model_dir)
        tcfg, mcfg, cls = api.method_configs(method, None, COMMON + OPTIONS[method])
        res = train(cls(mcfg), adapter, suite, turns, tcfg, accelerator=accelerator)
        out[f"{method}.losses"] = torch.tensor(res.losses, dtype=torch.float64)
        out[f"{method}.terms"] = torch.tensor([[row[k] for k in sorted(row)] for row in res.logs], dtype=torch.float64)
        for name, p in adapter.model.named_parameters():
            assert type(p) is torch.nn.Parameter, f"{name} is still a {type(p).__name__}"
            out[f"{method}.w.{name}"] = p.detach().clone()
        out[f"units.{method}"] = torch.tensor([res.info.get("fsdp_units", 0)])
        if method == "npo":  # the gathered model trains again (a continual run's next request)
            tcfg, mcfg, cls = api.method_configs("graddiff", None, [*COMMON, "max_steps=1", "lr=1e-4"])
            out["again.losses"] = torch.tensor(train(cls(mcfg), adapter, suite, turns, tcfg,
                                                     accelerator=accelerator).losses, dtype=torch.float64)
    # The NaN guard: a rate that sends the weights to ~1e30 makes the second step's loss non-finite;
    # every process stops at the same step and hands back a plain model.
    adapter = load_adapter(model_dir)
    tcfg, mcfg, cls = api.method_configs("graddiff", None, [*COMMON, "lr=1e30", "grad_clip=0"])
    try:
        train(cls(mcfg), adapter, suite, turns, tcfg, accelerator=accelerator)
        stopped = -1
    except TrainingError as e:
        stopped = int(re.search(r"step (\d+)", str(e)).group(1))  # type: ignore[union-attr]
    assert all(type(p) is torch.nn.Parameter for p in adapter.model.parameters())
    out["nan.stopped_at"] = torch.tensor([stopped])
    return out


if __name__ == "__main__":
    worker_main(compute)
