"""What a launch asks for beyond data parallelism: FSDP2, DeepSpeed, mixed precision.

``accelerate launch --config_file F`` hands its settings to the processes as environment
variables (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``,
``ACCELERATE_MIXED_PRECISION``); the engine reads them here, refuses what it cannot do with a
one-line error before any model is loaded, and shards the trained weights under FSDP2.

Sharding. Each transformer block that trains is an FSDP2 unit, gathered while it runs. The
methods also call parts of the model directly (the visual module, the projector) and read
weights in their losses, which FSDP's module hooks do not see; so the root unit is a wrapper
whose forward is one step's loss, and the weights outside the blocks are whole for all of
it. Backward reduce-scatters the gradients; between steps the trained weights, their
gradients and the optimiser state exist only as this process's shard. Frozen weights are
left out of FSDP (replicated, as under DDP). After the run the full weights are gathered
back into the model, which is then a plain ``transformers`` model again (``save_pretrained``
writes standard safetensors; another run can shard it again).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from unsee.config import SHIPPED
from unsee.data.collate import check_split
from unsee.errors import ConfigError
from unsee.models.base import Adapter

LAUNCH_CONFIGS = SHIPPED / "accelerate"  # where the shipped launch configs are, in a checkout or an install
LAUNCH_TIMEOUT_MIN = 360  # see launch_timeout


class Alone:
    """This process training by itself, inside a launch or not: the accelerator of a run the
    other processes take no part in (an audit's relearning, which the first process runs after
    the others have finished their share). accelerate keeps one process-wide state, so an
    ``Accelerator`` built here would wait on the other processes at the first reduce."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    def __init__(self) -> None:
        self.device = accelerator_device()
        self.mixed_precision = launch_mixed_precision()

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return tensor


def is_main_process() -> bool:
    """True outside a multi-process launch, and in its first process."""
    return _state().is_main_process


def wait_for_everyone() -> None:
    """Hold each process of a launch here until all have come (nothing outside a launch)."""
    _state().wait_for_everyone()


def accelerator_device() -> torch.device:
    """This process's device: its GPU in a launch, the first GPU outside one, else the CPU."""
    return _state().device


def _state() -> Any:
    """accelerate's process-wide state, on the CPU where there is no GPU (accelerate imported where it is first
    asked for, as each of these did). The first call sets up the launch's process group, with
    :func:`launch_timeout`."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=launch_timeout())


def training_accelerator() -> Any:
    """An ``Accelerator`` for one training, on the process group :func:`_state` set up (accelerate keeps one)."""
    from accelerate import Accelerator

    _state()
    return Accelerator(cpu=not torch.cuda.is_available())


def launch_timeout() -> timedelta:
    """How long a process of a launch waits for the others at a collective: ``UNSEE_LAUNCH_TIMEOUT`` minutes.

    While the first process evaluates and attacks one run (one seed of ``--seeds``, one request of
    ``--requests``, one setting of ``unsee tune``), the others wait for it at the next run's first step;
    on a 7B model that takes longer than NCCL's own default of 10 minutes, after which it would stop
    the launch.
    """
    raw = os.environ.get("UNSEE_LAUNCH_TIMEOUT", "").strip()
    try:
        minutes = float(raw) if raw else LAUNCH_TIMEOUT_MIN
    except ValueError:
        minutes = math.nan
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"UNSEE_LAUNCH_TIMEOUT={raw!r}: give the minutes a process of a launch may wait for "
                          f"the others, a positive number (default {LAUNCH_TIMEOUT_MIN})")
    return timedelta(minutes=minutes)


def on_accelerator(adapter: Adapter) -> Adapter:
    """``adapter`` with a model loaded on the CPU moved to this process's accelerator, where there is one, so
    that scoring, steering and attacking a 7B model run there as its training does (the trainer moves the model
    itself). Under FSDP or DeepSpeed a whole model may not fit one device: it stays where it was loaded."""
    device = accelerator_device()
    if device.type != "cpu" and adapter.device.type == "cpu" and not fsdp_version() and not deepspeed_stage():
        adapter.model.to(device)
    return adapter


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def fsdp_version() -> int:
    """The FSDP version the launch config asks for; 0 when it asks for none."""
    return int(os.environ.get("FSDP_VERSION", "1")) if _env_true("ACCELERATE_USE_FSDP") else 0


def deepspeed_stage() -> int:
    """The ZeRO stage the launch config asks for; 0 when it asks for no DeepSpeed."""
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2") or 2) if _env_true("ACCELERATE_USE_DEEPSPEED") \
        else 0


def launch_mixed_precision(accelerator: Any = None) -> str:
    """``mixed_precision`` of the launch config, or of an Accelerator built with one (``accelerator``, else one
    the user's own code built: accelerate keeps one state per process, which the engine's Accelerator takes
    on): no, bf16, fp16, fp8. The engine autocasts by it, so the run records it and the stage keys hold it."""
    from accelerate.state import AcceleratorState

    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    built = getattr(accelerator, "mixed_precision", None) if accelerator is not None else \
        AcceleratorState._shared_state.get("_mixed_precision")
    if built is not None and str(built) != "no":
        value = str(built)
    return value.strip().lower() or "no"


def check_launch(method: Any = None, batch_size: int | None = None) -> None:
    """Refuse, in one line and before any model is loaded, a launch the engine would not honour.

    ``method`` is a method object or name (None: only the launch itself is checked); ``batch_size``,
    the global batch it trains on, must split evenly over the processes.
    """
    launch_timeout()  # a bad UNSEE_LAUNCH_TIMEOUT is refused here, not when the first collective sets up the group
    if batch_size is not None:
        check_split(batch_size, launch_world())
    precision = launch_mixed_precision()
    if precision not in ("no", "bf16"):
        raise ConfigError(
            f"mixed_precision {precision!r} in the launch config is not supported: the engine trains in bf16 "
            "autocast (mixed_precision: bf16) or fp32 (mixed_precision: 'no'); fp16 would need loss scaling")
    stage = deepspeed_stage()
    if stage:
        if not torch.cuda.is_available():
            raise ConfigError(f"DeepSpeed ZeRO-{stage} runs on GPUs only and this machine has none; on a CPU "
                              f"launch with {LAUNCH_CONFIGS / 'cpu.yaml'}")
        raise ConfigError(
            f"DeepSpeed ZeRO-{stage}: the engine's masks, projections and NaN guard need the gradients, which "
            f"DeepSpeed keeps in its own buffers; launch with {LAUNCH_CONFIGS / 'fsdp.yaml'} instead")
    version = fsdp_version()
    if version == 1:
        raise ConfigError(f"FSDP1 is not supported: set fsdp_version: 2 in the launch config (as "
                          f"{LAUNCH_CONFIGS / 'fsdp.yaml'} does)")
    if version and _env_true("FSDP_OFFLOAD_PARAMS"):
        raise ConfigError("fsdp_offload_params is not supported: the engine keeps the shards on the device; "
                          "use reference_device=cpu or a smaller scope to save memory")
    name = method if isinstance(method, str) else getattr(method, "name", "?")
    if launch_world() > 1 and (reason := unsplittable(method)):
        raise ConfigError(f"method {name!r} cannot run in several processes ({reason}); run it in one process")


def launch_world() -> int:
    """How many processes the launch started (1 without ``accelerate launch``), read before any model loads."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def batch_mean(total: torch.Tensor, count: torch.Tensor, world: int) -> torch.Tensor:
    """``total / count`` over the whole global batch, where each process holds ``total`` and ``count`` of its
    share: a token-level mean taken per process would weigh the tokens of a process with fewer more. The
    engine averages the processes' gradients, so each process's part is scaled by the process count."""
    if world == 1:
        return total / count.clamp(min=1)
    counted = count.detach().to(torch.float32).clone()
    torch.distributed.all_reduce(counted)
    return total * world / counted.clamp(min=1)


def unsplittable(method: Any) -> str:
    """Why ``method`` (with its config) cannot train on a batch split over processes, or an empty string.

    The simulated relearning of the CVF family splits the forget people of the batch into halves and
    moves the weights inside the loss by a step computed from them: each process would split its own
    slice of the batch, so the halves, the step and the weights would differ from the one-process run
    (and a slice of one person has no halves at all).
    """
    if method is None or isinstance(method, str):
        return ""
    mcfg = getattr(method, "cfg", None)
    if getattr(mcfg, "relearn_sim_steps", 0):
        return "relearn_sim_steps splits each process's slice of the batch, not the batch, into halves"
    return ""


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: the classes ``transformers`` never splits across devices."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def _unwrap(module: nn.Module) -> None:
    """Undo ``fully_shard`` on a module whose weights are plain again: its hooks, its state and its class.

    torch has no public inverse of ``fully_shard``; the finished model must be a plain
    ``transformers`` model again (to save, to evaluate in one process, to train once more).
    """
    from torch.distributed import _composable_state
    from torch.distributed._composable.contract import REGISTRY_KEY, STATE_KEY
    from torch.distributed.fsdp import FSDPModule, fully_shard

    state = module._get_fsdp_state()  # type: ignore[operator]
    for handle in {id(h): h for h in (state._pre_forward_hook_handle, state._post_forward_hook_handle)}.values():
        handle.remove()
    for group in state._fsdp_param_groups:
        for handles in (group._module_to_pre_save_state_dict_hook_handle,
                        group._module_to_pre_load_state_dict_hook_handle):
            for handle in handles.values():
                handle.remove()
            handles.clear()
    cls = type(module)
    assert cls.__mro__[1] is FSDPModule
    module.__class__ = cls.__mro__[2]
    _composable_state._module_state_mapping.pop(module, None)
    states = module.__dict__.get(STATE_KEY, {})
    for func in [f for f in states if getattr(f, "__name__", "") == fully_shard.__name__]:
        del states[func]
    module.__dict__.get(REGISTRY_KEY, {}).pop(fully_shard.__name__, None)


class _Step(nn.Module):
    """The FSDP root: calling it runs one step's loss, so FSDP gathers the weights around all of it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[], Any]) -> Any:
        return fn()


class Sharded:
    """The trained weights of ``model`` sharded over the processes with FSDP2: a unit per training block
    and a root around each step's loss.

    ``params`` are the sharded parameters (DTensors) the optimiser steps, in the order of
    ``trained``, and ``names`` their names; ``run(fn)`` calls
    ``fn`` with the full weights gathered; ``unshard()`` puts full, plain parameters back.
    """

    def __init__(self, model: nn.Module, trained: list[nn.Parameter], device: torch.device,
                 frozen: set[nn.Parameter]) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.model = model
        wanted = {id(p) for p in trained}
        name_of = {id(p): n for n, p in model.named_parameters()}
        names = [name_of[id(p)] for p in trained]  # in the order of ``trained``
        # Weights a constraint pins take no gradient at all: they stay out of FSDP and out of backward.
        self._grad_off = [p for p in frozen if p.requires_grad]
        for p in self._grad_off:
            p.requires_grad_(False)
        ignored = {p for p in model.parameters() if id(p) not in wanted}
        mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
        # Each transformer block that trains is a unit of its own: its weights are gathered only
        # while it runs (again in backward), so a step never holds all of them at once.
        self.blocks = [m for m in blocks(model) if any(id(p) in wanted for p in m.parameters())]
        after = _env_true("FSDP_RESHARD_AFTER_FORWARD") if "FSDP_RESHARD_AFTER_FORWARD" in os.environ else True
        for block in self.blocks:
            fully_shard(block, mesh=mesh, ignored_params=ignored, reshard_after_forward=after)
        self.root = _Step(model)
        fully_shard(self.root, mesh=mesh, ignored_params=ignored)
        by_name = dict(model.named_parameters())
        self.names = names
        self.params = [by_name[n] for n in names]

    def run(self, fn: Callable[[], Any]) -> Any:
        return self.root(fn)

    @torch.no_grad()
    def evaluate(self, fn: Callable[[], Any]) -> Any:
        """``fn``, an evaluation every process runs alike, with the weights gathered as in a step. The root keeps
        its weights gathered after its forward for the backward that follows; none follows here, so it is
        resharded at once (left gathered, the next step's plain weights would outlive their storage)."""
        try:
            return self.root(fn)
        finally:
            self.root.reshard()

    @torch.no_grad()
    def unshard(self, dtypes: dict[str, torch.dtype]) -> list[nn.Parameter]:
        """Gather every sharded weight (every process takes part) and register it as a plain parameter,
        cast back to ``dtypes[name]`` where given; the model is then free of FSDP. Returns the
        trained parameters, plain, in the order of ``params``."""
        from torch.distributed.tensor import DTensor

        full: dict[int, nn.Parameter] = {}
        owners = [(m, k, p) for m in self.model.modules() for k, p in m._parameters.items() if p is not None]
        for _, _, p in owners:  # one all-gather per distinct weight, in the same order in every process
            if isinstance(p, DTensor) and id(p) not in full:
                full[id(p)] = nn.Parameter(p.full_tensor(), requires_grad=p.requires_grad)
        for module, key, p in owners:
            if id(p) in full:
                module._parameters[key] = full[id(p)]
        # A run stopped by the NaN guard between forward and backward left the root's weights gathered
        # (plain already); those are cast back too.
        for name, p in self.model.named_parameters():
            if name in dtypes and p.dtype != dtypes[name]:
                p.data = p.data.to(dtypes[name])
        for block in self.blocks:
            _unwrap(block)
        self.blocks = []
        for module in self.model.modules():
            for attr in ("_is_fsdp_managed_module", "_fsdp_use_orig_params"):
                module.__dict__.pop(attr, None)
        for p in self._grad_off:
            p.requires_grad_(True)
        by_name = dict(self.model.named_parameters())
        self.params = []
        return [by_name[n] for n in self.names]


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a view), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor, gathered (every process takes part), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def placed(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` sharded as ``like`` is (each process keeps its own rows, no communication), where ``like`` is
    sharded; ``full`` itself otherwise."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The rows of ``full`` that this process holds of ``param`` (FSDP2 shards along the first dim)."""
    return local(placed(full, param))
