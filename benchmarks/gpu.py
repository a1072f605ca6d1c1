"""GPU cost of the methods on full-size LLaVA-1.5-7B and Qwen2.5-VL-7B shapes.

Random weights in bf16 (the cost does not depend on what the weights know), the real
engine, the shipped method configs. For each method: setup time, step time, images per
second, peak GPU memory, trainable parameters and MFU (FLOPs of one step counted by
``torch.utils.flop_counter`` against the device's dense bf16 peak). Also the wall time of a
whole 50-person forget request for ``cvf_ncu``, and for ``eraser`` the steering build and
the generation overhead of steering.

    python benchmarks/gpu.py --out benchmarks/results/gpu_llava.json --shapes llava-1.5-7b
    python benchmarks/gpu.py --tiny --device cpu    # the same code path, CPU-sized, for a quick check

Under ``accelerate launch`` (``ddp.yaml`` or ``fsdp.yaml``) every process takes its share of
each step and the training variants are measured across the GPUs: full GradDiff on a 7B
shape under FSDP with its peak memory (the most any process used), for instance

    accelerate launch --config_file src/unsee/configs/accelerate/fsdp.yaml benchmarks/gpu.py \
        --methods graddiff_full --out benchmarks/results/gpu_fsdp_llava.json --shapes llava-1.5-7b
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from unsee import api
from unsee.data.world import build_world
from unsee.engine.distributed import fsdp_version
from unsee.engine.trainer import train
from unsee.errors import UnseeError
from unsee.io import atomic_write_json
from unsee.methods import ALL, method_class
from unsee.models import adapter_class
from unsee.models.base import HFAdapter, Turn
from unsee.models.shapes import build_shaped
from unsee.provenance import environment

# Dense bf16 tensor-core peaks (no sparsity), by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}

# name -> (method, overrides of the shipped config, streams whose images one step reads)
VARIANTS: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "cvf_ncu": ("cvf_ncu", {}, ("forget", "retain", "neutral")),
    "graddiff_full": ("graddiff", {"scope": "full", "master_weights": "model", "gradient_checkpointing": True},
                      ("forget", "retain")),
    "graddiff_lora": ("graddiff", {"scope": "lora", "gradient_checkpointing": True}, ("forget", "retain")),
    "mmunlearner": ("mmunlearner", {"master_weights": "model", "gradient_checkpointing": True}, ("forget",)),
}


# the methods that train no weights (MLLMEraser): their cost is a steering build and the hooks' overhead
TEST_TIME = tuple(m for m in ALL if not method_class(m).trains_weights)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak memory allocated on the GPU; under a launch, the most that any process allocated."""
    if device.type != "cuda":
        return None
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return round(float(peak) / 1e9, 2)


def processes() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class StepClock:
    """The engine's per-step callback: warm-up steps, one step under the FLOP counter, then timed steps."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.flops = FlopCounterMode(display=False)
        self.stamps: list[float] = []

    def __call__(self, _step: int) -> dict:
        """Called after each step; the step after the ``warmup``-th call runs under the counter."""
        sync(self.device)
        done = len(self.stamps)
        if done == self.warmup:
            self.flops.__enter__()
        elif done == self.warmup + 1:
            self.flops.__exit__(None, None, None)
        self.stamps.append(time.perf_counter())
        return {}

    def step_times(self) -> list[float]:
        timed = self.stamps[self.warmup + 1 :]
        return [b - a for a, b in zip(timed, timed[1:], strict=False)]


def run_variant(name: str, adapter: HFAdapter, suite: Any, turns: dict, steps: int, warmup: int) -> dict:
    method, overrides, image_streams = VARIANTS[name]
    tcfg, mcfg, cls = api.method_configs(method, None, overrides)
    tcfg.max_steps, tcfg.eval_every, tcfg.progress = warmup + 2 + steps, 1, False
    device = adapter.device
    clock = StepClock(device, warmup)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    method_obj = cls(mcfg)
    first_loss: list[float] = []
    loss = method_obj.loss

    def timed_loss(ctx: Any, batch: Any) -> Any:  # marks the end of setup
        if not first_loss:
            sync(device)
            first_loss.append(time.perf_counter())
        return loss(ctx, batch)

    method_obj.loss = timed_loss  # type: ignore[method-assign]
    start = time.perf_counter()
    try:
        res = train(method_obj, adapter, suite, turns, tcfg, on_eval=clock)
    except torch.OutOfMemoryError as e:
        return {"variant": name, "method": method, "error": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        _unwrap(adapter)
    times = sorted(clock.step_times())
    step_s = times[len(times) // 2]
    setup_s = first_loss[0] - start
    images = tcfg.batch_size * len(image_streams)
    flops = clock.flops.get_total_flops()
    peak = peak_flops(device)
    return {
        "variant": name, "method": method, "scope": tcfg.scope, "batch_size": tcfg.batch_size,
        "master_weights": tcfg.master_weights, "gradient_checkpointing": tcfg.gradient_checkpointing,
        "setup_s": round(setup_s, 3), "step_s_median": round(step_s, 4), "images_per_step": images,
        "images_per_s": round(images / step_s, 2), "peak_memory_gb": peak_memory_gb(device),
        "trainable_params": res.trainable_params, "optimizer_state_gb": round(res.optimizer_state_bytes / 1e9, 3),
        "step_tflop": round(flops / 1e12, 3), "mfu": round(flops / step_s / peak, 4) if peak else None,
    }


def _unwrap(adapter: HFAdapter) -> None:
    """Take LoRA off again, so the next variant trains the plain model."""
    if hasattr(adapter.model, "unload"):
        adapter.model = adapter.model.unload()


def request_time(adapter: HFAdapter, suite: Any, turns: dict) -> dict:
    """A whole forget request with the shipped cvf_ncu config: setup, every step, nothing skipped."""
    tcfg, mcfg, cls = api.method_configs("cvf_ncu", None, {})
    tcfg.progress = False
    device = adapter.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    res = train(cls(mcfg), adapter, suite, turns, tcfg)
    sync(device)
    return {"method": "cvf_ncu", "people": len(suite.forget_entities), "steps": res.steps,
            "epochs": tcfg.epochs, "batch_size": tcfg.batch_size, "wall_s": round(time.perf_counter() - start, 1),
            "peak_memory_gb": peak_memory_gb(device)}


def eraser_cost(name: str, adapter: HFAdapter, suite: Any, max_items: int, gen_prompts: int, new_tokens: int) -> dict:
    """Steering-file build time for the request, and generation time with and without steering."""
    from unsee.methods.eraser import EraserConfig, Steering, SteeringArtifact, generation_overhead, run_eraser

    device = adapter.device
    with tempfile.TemporaryDirectory() as d:
        sync(device)
        start = time.perf_counter()
        path = run_eraser(adapter, suite, d, EraserConfig(max_items=max_items))
        sync(device)
        build_s = time.perf_counter() - start
        artifact = SteeringArtifact(Steering.load(path))
    return {"variant": name, "method": name, "max_items": max_items, "build_s": round(build_s, 2),
            "generation": generation_overhead(adapter, suite, artifact, prompts=gen_prompts, new_tokens=new_tokens),
            "peak_memory_gb": peak_memory_gb(device), "trainable_params": 0}


def bench_shape(shape: str, world: Path, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    start = time.perf_counter()
    model, processor = build_shaped(shape, tiny=args.tiny, dtype=torch.bfloat16, device=device)
    adapter = adapter_class(model.config.model_type)(model, processor, source=shape)
    built_s = time.perf_counter() - start
    suite = api.load_suite(world, args.forget)
    turns = api.training_turns(suite)
    # Image questions only in the image streams, so that every counted image is really one
    turns = {k: v if k == "text" else [t for t in v if t.image is not None] for k, v in turns.items()}
    rows: list[dict] = []
    for name in args.methods:
        print(f"[{shape}] {name}", flush=True)
        if name in VARIANTS:
            rows.append(run_variant(name, adapter, suite, turns, args.steps, args.warmup))
        else:
            rows.append(eraser_cost(name, adapter, suite, args.eraser_items, args.gen_prompts, args.new_tokens))
        print(rows[-1], flush=True)
    out = {"shape": shape, "tiny": args.tiny, "params": sum(p.numel() for p in adapter.model.parameters()),
           "build_s": round(built_s, 1), "image_tokens": _image_tokens(adapter, suite), "rows": rows}
    if args.request:
        print(f"[{shape}] 50-person request", flush=True)
        out["request"] = request_time(adapter, suite, turns)
        print(out["request"], flush=True)
    return out


def _image_tokens(adapter: HFAdapter, suite: Any) -> int:
    ex = next(e for e in suite.group("forget") if e.has_image)
    batch = adapter.training_batch([Turn(ex.pil_image(), ex.question, ex.answer)])
    return int((batch["input_ids"] == adapter.image_token_id).sum())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["llava-1.5-7b", "qwen2.5-vl-7b"])
    p.add_argument("--methods", nargs="+", default=[*VARIANTS, *TEST_TIME])
    p.add_argument("--tiny", action="store_true", help="CPU-sized models of the same structure")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--people", type=int, default=500, help="world size; forget_10 of 500 is a 50-person request")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--steps", type=int, default=8, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--request", action="store_true", help="also time a whole cvf_ncu forget request")
    p.add_argument("--eraser-items", type=int, default=1024)
    p.add_argument("--gen-prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--out", default="benchmarks/results/gpu.json")
    args = p.parse_args(argv)
    unknown = set(args.methods) - {*VARIANTS, *TEST_TIME}
    if unknown:
        raise UnseeError(f"unknown method variant(s) {sorted(unknown)}; choose from {[*VARIANTS, *TEST_TIME]}")
    if processes() > 1 and (set(TEST_TIME) & set(args.methods) or args.request):
        raise UnseeError("under accelerate launch only the training variants are measured (no eraser, no --request)")
    if processes() > 1 and args.device == "cuda":
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        world = build_world(Path(d) / "world", config="default", overrides=[f"n_people={args.people}"])
        world_s = time.perf_counter() - start
        shapes = [bench_shape(s, world, args) for s in args.shapes]
    device = torch.device(args.device)
    result = {
        "benchmark": "gpu", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_bf16_flops": peak_flops(device), "dtype": "bfloat16", "world_people": args.people,
        "forget": args.forget, "world_build_s": round(world_s, 1), "shapes": shapes, "environment": environment(),
        "processes": processes(), "launch": "fsdp" if fsdp_version() else "ddp" if processes() > 1 else "none",
    }
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
