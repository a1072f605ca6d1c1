"""Past data parallelism: FSDP2 on two gloo processes, launch checks, mixed precision, training logs.

The FSDP run is one ``accelerate launch`` of ``tests/fsdp_worker.py`` with the shipped
``fsdp.yaml``; the one-process reference is computed meanwhile in the test process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import launch_command
from safetensors.torch import load_file

from unsee import api
from unsee.cli import main
from unsee.data.schema import Suite
from unsee.engine.distributed import blocks
from unsee.engine.trainer import TrainConfig, train
from unsee.eval.evaluator import run_evaluation
from unsee.eval.results import load_results
from unsee.methods import method_class
from unsee.models import load_adapter

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


def _launch(*args: str) -> subprocess.Popen:
    cmd, env = launch_command("fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no", *args)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_fsdp_two_processes_match_one_process(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """graddiff, npo, cvf_ncu (projections) and vkd (masks) under FSDP2 on two processes: the losses of three
    steps, their terms and the weights afterwards equal the one-process run's within 1e-5; graddiff's
    checkpoint is a plain one."""
    from accelerate import Accelerator

    sys.path.insert(0, str(Path(__file__).parent))
    from fsdp_worker import METHODS, compute

    out = tmp_path / "fsdp.safetensors"
    proc = _launch(str(Path(__file__).parent / "fsdp_worker.py"), str(model_dir), str(world), str(out))
    try:
        one = compute(model_dir, world, Accelerator(cpu=True))
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    two = load_file(out)
    assert int(two.pop("world_size")) == 2
    # every transformer block that trains is an FSDP unit of its own, beside the root; the visual
    # methods train no decoder layer, and vkd's mask leaves the patch embedding (CLIPVisionEmbeddings) frozen
    units = [type(m).__name__ for m in blocks(load_adapter(model_dir).model)]
    vision = sum(name.startswith("CLIP") for name in units)
    assert 0 < vision < len(units)
    assert {k: int(two.pop(f"units.{k}")) for k in METHODS[1:]} == {"npo": 1 + len(units),
                                                                   "cvf_ncu": 1 + vision, "vkd": vision}
    assert all(int(one.pop(f"units.{k}")) == 0 for k in METHODS[1:])
    torch.testing.assert_close(two.pop("again.losses"), one.pop("again.losses"), rtol=0, atol=TOL)
    assert int(two.pop("nan.stopped_at")) == int(one.pop("nan.stopped_at")) == 1  # the NaN guard, sharded
    assert set(one) == set(two)
    start = {n: p.detach() for n, p in load_adapter(model_dir).model.named_parameters()}
    saved = load_file(model_dir / "model.safetensors")
    assert {k.removeprefix("graddiff.w.") for k in two if k.startswith("graddiff.w.")} == set(saved)
    for method in METHODS:
        assert one[f"{method}.losses"].numel() == 3
        torch.testing.assert_close(two[f"{method}.losses"], one[f"{method}.losses"], rtol=0, atol=TOL)
        torch.testing.assert_close(two[f"{method}.terms"], one[f"{method}.terms"], rtol=0, atol=TOL)
        weights = [k for k in one if k.startswith(f"{method}.w.")]
        apart = max(float((two[k] - one[k]).abs().max()) for k in weights)
        assert apart <= TOL, f"{method}: weights {apart:.2e} apart"
        if method != "graddiff":  # graddiff's names are the checkpoint's, the others' the module's
            moved = max(float((one[k] - start[k.removeprefix(f'{method}.w.')]).abs().max()) for k in weights)
            assert moved > 10 * TOL, f"{method} barely trained ({moved:.2e})"
    moved = max(float((one[f"graddiff.w.{k}"] - saved[k]).abs().max()) for k in saved)
    assert moved > 10 * TOL


@pytest.mark.slow
def test_an_fsdp_launch_resumed_from_its_checkpoint_ends_with_the_weights_of_one_never_stopped(
        model_dir: Path, world: Path, tmp_path: Path) -> None:
    """Under FSDP each process holds a shard: the checkpoint gathers whole weights and moments into the file a
    run without sharding writes, and every process takes its own shard of it back. A process that kept its
    own shard, or restored the whole tensor where its shard belongs, would end with other weights."""
    ck = tmp_path / "ck"
    opts = ["max_steps=4", "batch_size=4", "lr=1e-3", "progress=false", f"checkpoint_dir={ck}",
            "checkpoint_every=2", "keep_checkpoint=true", "eval_every=2"]
    for out in ("whole", "resumed"):  # the first keeps its step-2 checkpoint, from which the second resumes
        cmd, env = launch_command("fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no", "-m",
                                  "unsee.cli", "unlearn", "--method", "graddiff", "--model", str(model_dir),
                                  "--data", str(world), "--out", str(tmp_path / out), "--max-items", "2", *opts)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "no mid-run checkpoint" not in done.stderr
    costs = [load_results(tmp_path / out / "results.json")["runs"][0]["cost"] for out in ("whole", "resumed")]
    assert "resumed_s" not in costs[0] and costs[1]["resumed_s"] > 0
    whole, resumed = (load_file(tmp_path / out / "model" / "model.safetensors") for out in ("whole", "resumed"))
    before = load_file(model_dir / "model.safetensors")
    assert whole.keys() == resumed.keys() == before.keys()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    assert any(not torch.equal(whole[k], before[k]) for k in whole)  # and it trained at all
    # the evaluations during training read the weights whole: the last is the saved model's own figure
    evals = [load_results(tmp_path / out / "results.json")["runs"][0]["info"]["evals"] for out in ("whole", "resumed")]
    assert [e["step"] for e in evals[0]] == [2, 4] and evals[1] == evals[0]  # the resumed run kept step 2's
    found = run_evaluation(load_adapter(tmp_path / "whole" / "model"), api.load_suite(world, "forget_10"),
                           groups=("forget", "retain"), generation=False, progress=False)
    assert {g: f["mcq"] for g, f in found.metrics.items()} == {g: evals[0][-1][g] for g in ("forget", "retain")}
    # the checkpoint holds whole tensors under the module's names, as one of a run without sharding does
    state = load_file(ck / "state.safetensors")
    shapes = {n: p.shape for n, p in load_adapter(model_dir).model.named_parameters()}
    assert {k.removeprefix("param."): v.shape for k, v in state.items() if k.startswith("param.")} == shapes
    # Adam's moments too (a weight no loss reaches has none): a process's half rows would be no weight's shape
    moments = Counter(tuple(v.shape) for k, v in state.items() if k.startswith("optim.") and k.endswith(".exp_avg"))
    assert moments and not moments - Counter(tuple(s) for s in shapes.values())


def test_launch_mixed_precision_bf16_is_honoured(model_dir: Path, suite: Suite, world: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``mixed_precision: bf16`` in the launch config runs the loss under bf16 autocast, like ``bf16=true``."""
    turns = api.training_turns(suite)
    cfg = {"max_steps": 1, "batch_size": 2, "progress": False}

    def first_loss(**kw: object) -> float:
        res = train(method_class("graddiff")(), load_adapter(model_dir), suite, turns, TrainConfig(**{**cfg, **kw}))
        return res.losses[0]

    plain, asked = first_loss(), first_loss(bf16=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    launched = first_loss()
    assert asked != plain and launched == asked
    # and the run records it: a results.json that said bf16 false described another training
    api.unlearn("graddiff", model_dir, world, tmp_path / "u", forget="forget_10", evaluate_after=False,
                      overrides=["max_steps=1", "batch_size=2", "progress=false"])
    assert load_results(tmp_path / "u" / "results.json")["runs"][0]["config"]["bf16"] is True


@pytest.mark.parametrize(("env", "overrides", "message"), [
    ({"ACCELERATE_MIXED_PRECISION": "fp16"}, [], "mixed_precision 'fp16' in the launch config is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, [],
     "DeepSpeed ZeRO-3 runs on GPUs only"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [], "FSDP1 is not supported"),
    ({"WORLD_SIZE": "2"}, ["relearn_sim_steps=3"],
     "method 'cvf_ncu' cannot run in several processes (relearn_sim_steps splits each process's slice"),
    ({}, ["--report-to", "wandb"], "tracker 'wandb' needs the 'wandb' package: pip install 'unsee[wandb]'"),
    ({}, ["report_to=mlflow"], "unknown tracker 'mlflow'"),
])
def test_launches_the_engine_cannot_honour_are_refused_in_one_line(
        env: dict[str, str], overrides: list[str], message: str, model_dir: Path, world: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if "wandb" in overrides and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    if "ACCELERATE_USE_DEEPSPEED" in env and torch.cuda.is_available():
        pytest.skip("a GPU machine: DeepSpeed is refused with another message")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "out"
    assert main(["unlearn", "--method", "cvf_ncu", "--model", str(model_dir), "--data", str(world),
                 "--out", str(out), *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    # a launch config the advice names is one the user has, run from any folder, installed or not
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in re.findall(r"[^\s()]+\.yaml", err))


def test_zero_configs_ask_for_deepspeed_and_the_fsdp_config_for_version_2() -> None:
    import yaml

    configs = ROOT / "src/unsee/configs/accelerate"
    for stage in (2, 3):
        cfg = yaml.safe_load((configs / f"zero{stage}.yaml").read_text())
        assert cfg["distributed_type"] == "DEEPSPEED" and cfg["deepspeed_config"]["zero_stage"] == stage
    fsdp = yaml.safe_load((configs / "fsdp.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2


def test_shipped_configs_rendezvous_on_a_free_port_of_their_own() -> None:
    """Two launches side by side on one machine must not meet at accelerate's default port (29500)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    ports = []
    for config in sorted((ROOT / "src/unsee/configs/accelerate").glob("*.yaml")):
        args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "unsee.cli", "unlearn"])
        args = _validate_launch_command(args)[0]
        assert args.main_process_port == 0, config.name  # accelerate's "pick an open port"
        if args.multi_gpu or args.use_fsdp:  # the DeepSpeed launcher resolves 0 alike, but needs deepspeed
            prepare_multi_gpu_env(args)
            ports.append(int(args.master_port))
    assert len(ports) == 3 and 29500 not in ports


def test_history_reaches_run_json_and_tensorboard(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """Every log_every-th step's loss and terms go to run.json and, with report_to, to TensorBoard;
    the report draws them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    api.unlearn("graddiff", model_dir, world, out, report_to="tensorboard", evaluate_after=False,
                overrides=["max_steps=5", "log_every=2", "batch_size=2", "progress=false"])
    history = json.loads((out / "run.json").read_text())["history"]
    assert [row["step"] for row in history] == [1, 3, 5]
    assert all({"loss", "nll_f", "nll_r"} <= set(row) for row in history)
    assert json.loads((out / "results.json").read_text())["runs"][0]["history"] == history
    (logs,) = (out / "logs" / "tensorboard").iterdir()
    events = EventAccumulator(str(logs))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert logged == [(row["step"], pytest.approx(row["loss"], rel=1e-6)) for row in history]
    report = api.report([out / "results.json"], tmp_path / "report")
    assert (report / "losses.png").stat().st_size > 0
