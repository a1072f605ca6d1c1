"""Scale: hub-shaped configs, bf16 with fp32 masters, LoRA targets, and a two-process gloo run.

The hub shapes are built with tiny widths but the real structure; a full-size config is
only parsed, never instantiated, so these tests stay on a laptop's budget.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import launch_command
from safetensors.torch import load_file

from unsee import api
from unsee.cli import main
from unsee.data.collate import Stream, qa_turns
from unsee.data.schema import Suite
from unsee.engine.distributed import launch_timeout
from unsee.engine.prepare import apply_lora, frozen_copy
from unsee.engine.trainer import TrainConfig, train, unique_images
from unsee.errors import ConfigError, ModelError
from unsee.eval.results import load_results
from unsee.methods import method_class
from unsee.models import adapter_class, load_adapter, shapes
from unsee.models.base import Turn
from unsee.models.shapes import SHAPES, build_shaped, hub_config, init_shaped, shaped_config, shrink
from unsee.retrain import retrain

ROOT = Path(__file__).resolve().parents[1]
# (text hidden, text layers, vision layers, vision width) of each hub checkpoint
FULL = {
    "llava-1.5-7b": (4096, 32, 24, 1024),
    "llava-1.5-13b": (5120, 40, 24, 1024),
    "qwen2-vl-7b": (3584, 28, 32, 1280),
    "qwen2.5-vl-7b": (3584, 28, 32, 1280),
}


def keys(d: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= keys(v, f"{prefix}{k}.")
    return out


# ---- hub shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", list(SHAPES))
def test_hub_config_parses_to_the_published_size(shape: str) -> None:
    hidden, layers, v_layers, v_width = FULL[shape]
    cfg = shaped_config(shape)
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers) == (hidden, layers)
    v = cfg.vision_config
    assert getattr(v, "num_hidden_layers", getattr(v, "depth", None)) == v_layers
    assert getattr(v, "embed_dim", v.hidden_size) == v_width
    if cfg.model_type == "llava":
        assert cfg.vision_feature_layer == -2 and cfg.text_config.vocab_size == 32064
    else:
        assert cfg.text_config.vocab_size == 152064
        assert cfg.text_config.rope_parameters["mrope_section"] == [16, 24, 24]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shrink_keeps_every_key(shape: str) -> None:
    full = hub_config(shape)
    assert keys(shrink(full)) == keys(full)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_layers_cut_both_towers_and_refuse_none(shape: str) -> None:
    """``layers`` sets the visual and the language depth alike; a tower of no layers is refused, not built."""
    cfg = shaped_config(shape, tiny=True, layers=4)
    vision = cfg.vision_config
    vision_depth = vision.depth if hasattr(vision, "depth") else vision.num_hidden_layers
    assert vision_depth == 4 and cfg.get_text_config().num_hidden_layers == 4
    for bad in (0, -1):
        with pytest.raises(ModelError, match="at least 1"):
            build_shaped(shape, tiny=True, layers=bad)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_adapter_finds_parts_and_image_tokens(shape: str, make_image: Any) -> None:
    model, processor = build_shaped(shape, tiny=True)
    adapter = adapter_class(model.config.model_type)(model, processor, source=shape)
    groups = adapter.groups()
    assert all(groups[g] for g in ("vision", "projector", "language"))
    assert adapter.linear_modules("vision") and adapter.linear_modules("projector")
    assert len(adapter.decoder_layers()) == model.config.text_config.num_hidden_layers
    image = make_image(1, size=60)
    batch = adapter.training_batch([Turn(image, "Who is this?", "Mara Vell"), Turn(None, "Where?", "Osk")])
    n_tokens = int((batch["input_ids"][0] == adapter.image_token_id).sum())
    feats = adapter.visual_features(adapter.image_inputs([image]))
    assert n_tokens == feats[0].shape[0] > 0
    assert int((batch["input_ids"][1] == adapter.image_token_id).sum()) == 0
    hidden = adapter.image_token_hidden(batch, layer=-1)
    assert hidden[0].shape[0] == n_tokens and hidden[1].shape[0] == 0
    assert torch.isfinite(adapter.answer_logprobs(batch)).all()


@pytest.mark.parametrize("shape", ["llava-1.5-7b", "qwen2.5-vl-7b"])
def test_shaped_checkpoint_round_trip(shape: str, tmp_path: Path) -> None:
    out = init_shaped(shape, tmp_path / "m", tiny=True)
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    adapter = load_adapter(out)
    assert adapter.model.config.model_type == hub_config(shape)["model_type"]
    built, _ = build_shaped(shape, tiny=True)
    assert torch.equal(next(adapter.model.parameters()), next(built.parameters()))


@pytest.mark.parametrize(("shape", "precision"), [("llava-1.5-7b", torch.float16), ("qwen2-vl-7b", torch.bfloat16)])
def test_a_full_size_shape_is_written_in_the_hubs_precision(shape: str, precision: torch.dtype, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In fp32 a 7B shape was twice the size its help states; built tiny here, as the full one is too large."""
    asked: list[torch.dtype] = []

    def tiny_instead(name: str, *, tiny: bool, dtype: torch.dtype, **kw: Any) -> Any:
        asked.append(dtype)
        return build_shaped(name, tiny=True, dtype=dtype, **kw)

    monkeypatch.setattr(shapes, "build_shaped", tiny_instead)
    out = init_shaped(shape, tmp_path / "m", tiny=False)
    assert asked == [precision]
    assert json.loads((out / "config.json").read_text())["dtype"] == str(precision).removeprefix("torch.")


# ---- memory: bf16, masters, offloaded reference, LoRA --------------------------------------------
def test_gradient_checkpointing_leaves_the_model_config_as_it_was(model_dir: Path, suite: Suite,
                                                                  tmp_path: Path) -> None:
    """A key it added to config.json made the same weights another model (the fingerprint hashes the file)."""
    adapter = load_adapter(model_dir)
    before = adapter.model.config.to_dict()
    cfg = TrainConfig(lr=1e-3, max_steps=1, batch_size=2, progress=False, gradient_checkpointing=True)
    train(method_class("graddiff")(), adapter, suite, api.training_turns(suite), cfg)
    assert adapter.model.config.to_dict() == before and not adapter.model.is_gradient_checkpointing


def test_bf16_model_trains_with_fp32_masters(model_dir: Path, suite: Suite) -> None:
    adapter = load_adapter(model_dir, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    cfg = TrainConfig(lr=1e-3, max_steps=2, batch_size=2, progress=False)
    res = train(method_class("graddiff")(), adapter, suite, api.training_turns(suite), cfg)
    assert all(torch.isfinite(torch.tensor(v)) for v in res.losses)
    after = dict(adapter.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in after.values())
    assert any(not torch.equal(before[n], p) for n, p in after.items())
    # AdamW's two moments are fp32 (8 bytes per trained parameter; bf16 would give 4)
    assert 7.5 * res.trainable_params < res.optimizer_state_bytes <= 8 * res.trainable_params + 4096


@pytest.mark.parametrize("scope", ["projector", "lora"])
def test_master_weights_model_keeps_the_optimizer_state_at_the_models_precision(model_dir: Path, suite: Suite,
                                                                               scope: str) -> None:
    """Half the optimizer's memory, as documented, under LoRA too: peft made the factors fp32 by itself."""
    state = {}
    for masters in ("fp32", "model"):
        cfg = TrainConfig(lr=1e-3, max_steps=1, batch_size=2, progress=False, scope=scope, master_weights=masters)
        res = train(method_class("ga")(), load_adapter(model_dir, dtype=torch.bfloat16), suite,
                    api.training_turns(suite), cfg)
        state[masters] = res.optimizer_state_bytes / res.trainable_params
    assert state["fp32"] > 7.5 and state["model"] < 4.5, state


def test_bf16_cvf_ncu_step_with_reference_on_cpu(model_dir: Path, suite: Suite) -> None:
    adapter = load_adapter(model_dir, dtype=torch.bfloat16)
    tcfg, mcfg, cls = api.method_configs("cvf_ncu", None, ["max_steps=2", "batch_size=2", "progress=false",
                                                           "reference_device=cpu", "ncu_images=8"])
    res = train(cls(mcfg), adapter, suite, api.training_turns(suite), tcfg)
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(v)) for v in res.losses)
    assert res.info["null_space_rank"]


def test_reference_copy_skips_the_language_model(model_dir: Path) -> None:
    adapter = load_adapter(model_dir)
    ref = frozen_copy(adapter, visual_only=True, device="cpu")
    n_ref = sum(p.numel() for p in ref.model.parameters())
    n_visual = sum(p.numel() for g in ("vision", "projector") for _, p in adapter.groups()[g])
    assert n_ref == n_visual
    assert sum(p.numel() for _, p in adapter.groups()["language"]) > 0  # the original keeps its LM
    assert not any(p.requires_grad for p in ref.model.parameters())


def test_lora_targets_only_linear_layers_by_full_name() -> None:
    """A Sequential merger names its linears ``0`` and ``2``; a suffix match would also hit ``layers.0``."""
    model, processor = build_shaped("qwen2.5-vl-7b", tiny=True)
    adapter = adapter_class("qwen2_5_vl")(model, processor)
    apply_lora(adapter, TrainConfig(scope="lora"))
    params = adapter.set_scope("lora")
    assert params
    names = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n in names)
    assert any("merger" in n for n in names) and any("language_model" in n for n in names)
    assert not any(".visual.blocks." in n for n in names)


def test_image_only_streams_hold_each_image_once(suite: Suite) -> None:
    turns = qa_turns(suite.groups["train_forget"])
    images = {id(t.image) for t in turns if t.image is not None}
    assert len(images) < len(turns)  # several questions are asked about each photo
    unique = unique_images(turns)
    assert len(unique) == len(images) == len({t.image.tobytes() for t in unique})


# ---- several processes -----------------------------------------------------------------------------
def launch(*args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with the shipped two-process CPU config."""
    cmd, env = launch_command("cpu.yaml", *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_two_process_gloo_run_matches_one_process(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """Covariances, Fisher diagonals, losses and weights of a 2-process run equal the 1-process ones."""
    from accelerate import Accelerator

    sys.path.insert(0, str(Path(__file__).parent))
    from dist_worker import compute

    out = tmp_path / "dist.safetensors"
    proc = launch(str(Path(__file__).parent / "dist_worker.py"), str(model_dir), str(world), str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_file(out)
    assert int(two.pop("world_size")) == 2
    one = compute(model_dir, world, Accelerator(cpu=True))
    assert set(one) == set(two)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=2e-4, atol=1e-6, msg=k)


def test_a_batch_that_does_not_split_evenly_over_the_processes_is_refused_before_any_work(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unequal shares would weigh the rows of the smaller one more; a share of none would crash its process."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    for size in (4, 2):
        with pytest.raises(ConfigError, match=f"batch_size {size} does not split evenly over 3 processes"):
            api.unlearn("graddiff", model_dir, world, tmp_path / "o", overrides=[f"batch_size={size}"])
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="batch_size 4 does not split evenly over 3 processes"):
        Stream(list(range(10)), 4, seed=0, rank=0, world=3)  # the engine's own check, under whatever launched it
    assert len(next(Stream(list(range(10)), 3, seed=0, rank=0, world=1))) == 3  # one process alone (an audit) takes any


@pytest.mark.slow
def test_a_launch_resumed_from_its_checkpoint_ends_with_the_weights_of_one_never_stopped(
        model_dir: Path, world: Path, tmp_path: Path) -> None:
    """Every process restores the checkpoint the first one wrote (weights, optimiser, data order, random
    states); one that started over, or kept its own state, would train other weights."""
    opts = ["max_steps=4", "batch_size=4", "lr=1e-3", "progress=false", f"checkpoint_dir={tmp_path / 'ck'}",
            "checkpoint_every=2", "keep_checkpoint=true"]
    for out in ("whole", "resumed"):  # the first keeps its step-2 checkpoint, from which the second resumes
        proc = launch("-m", "unsee.cli", "unlearn", "--method", "cvf_ncu", "--model", str(model_dir), "--data",
                      str(world), "--out", str(tmp_path / out), "--max-items", "2", *opts)
        assert proc.returncode == 0, proc.stderr[-3000:]
    costs = [load_results(tmp_path / out / "results.json")["runs"][0]["cost"] for out in ("whole", "resumed")]
    assert "resumed_s" not in costs[0] and costs[1]["resumed_s"] > 0
    whole, resumed = (load_file(tmp_path / out / "model" / "model.safetensors") for out in ("whole", "resumed"))
    assert whole.keys() == resumed.keys()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []
    before = load_file(model_dir / "model.safetensors")
    assert any(not torch.equal(whole[k], before[k]) for k in whole)  # and it trained at all


def test_unlearn_command_under_two_processes_writes_once(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli unlearn --audit`: the first process audits (its relearning trains in it
    alone) and writes one checkpoint, equal to a 1-process run."""
    opts = ["max_steps=2", "batch_size=4", "lr=1e-3", "progress=false"]
    audit = ["--audit", *(f"--audit-set={o}" for o in ("relearn_steps=2", "pgd_steps=1", "probe_steps=5",
                                                        "probe_blocks=false", "max_items=4"))]
    proc = launch("-m", "unsee.cli", "unlearn", "--method", "graddiff", "--model", str(model_dir), "--data",
                  str(world), "--out", str(tmp_path / "two"), "--max-items", "4", *audit, *opts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("written to") == 1  # said once
    assert "relearn" in load_results(tmp_path / "two" / "results.json")["runs"][0]["attacks"]
    api.unlearn("graddiff", model_dir, world, tmp_path / "one", overrides=opts, evaluate_after=False)
    two, one = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("two", "one"))
    start = load_file(model_dir / "model.safetensors")
    assert set(two) == set(one) == set(start)
    # Adam's first steps divide by sqrt(v): elements whose gradient is ~0 amplify summation-order
    # noise, so compare the updates as a whole rather than element by element.
    moved = sum(float((one[k] - start[k]).pow(2).sum()) for k in one)
    apart = sum(float((two[k] - one[k]).pow(2).sum()) for k in one)
    assert moved > 0 and apart < 1e-4 * moved
    written = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert written == [".unsee", "model", "results.json", "run.json", "samples.jsonl"]


def test_gpu_benchmark_runs_on_cpu_sized_shapes(tmp_path: Path) -> None:
    """The GPU benchmark's code path, CPU-sized: every field it reports is there and sane."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--tiny", "--device", "cpu", "--shapes", "llava-1.5-7b", "--methods", "cvf_ncu", "eraser",
              "--people", "20", "--steps", "2", "--warmup", "0", "--eraser-items", "8", "--gen-prompts", "2",
              "--new-tokens", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    shape = result["shapes"][0]
    cvf, eraser = shape["rows"]
    assert cvf["variant"] == "cvf_ncu" and cvf["step_s_median"] > 0 and cvf["step_tflop"] >= 0
    assert 0 < cvf["trainable_params"] < shape["params"]
    assert eraser["build_s"] > 0 and eraser["generation"]["plain_s"] > 0
    assert shape["image_tokens"] == 16  # 56 px, patch 14


def test_dtype_option_loads_bf16_and_rejects_unknown(model_dir: Path) -> None:
    assert next(load_adapter(model_dir, dtype="bf16").model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ModelError, match="unknown dtype 'int3'"):
        load_adapter(model_dir, dtype="int3")


def test_fp16_weights_are_evaluated_but_never_trained(model_dir: Path, world: Path, suite: Suite,
                                                      turns: dict[str, list[Turn]], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Training fp16 weights needs loss scaling, which the engine does not do: refused before any model is
    loaded (a training method, or the relearning audit), and by the engine itself for weights that are fp16."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    for method, audit, who in (("cvf_ncu", False, "cvf_ncu"), ("eraser", True, "the relearning audit")):
        with pytest.raises(ConfigError, match=f"{who} cannot train fp16 weights"):
            api.unlearn(method, model_dir, world, tmp_path / method, dtype="fp16", audit=audit)
    for kind in ("relearn", "all"):  # the relearning audit of a model already unlearned, too
        with pytest.raises(ConfigError, match="the relearning audit cannot train fp16 weights"):
            api.attack(kind, model_dir, world, tmp_path / "attacked.json", dtype="fp16")
    assert not list(tmp_path.iterdir())
    adapter = load_adapter(model_dir, dtype="fp16")
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    with pytest.raises(ConfigError, match="the weights are fp16"):
        train(method_class("graddiff")(), adapter, suite, turns, TrainConfig(max_steps=1, progress=False))
    assert all(torch.equal(before[k], v) for k, v in adapter.model.state_dict().items())


def test_continual_command_under_two_processes_writes_once(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli unlearn --requests`: one output and no progress left behind, written
    by the first process alone, with the weights of a 1-process run."""
    opts = ["max_steps=2", "batch_size=4", "lr=1e-3", "progress=false", "ncu_images=16", "augment=0",
            "augment_retain=0"]  # crops are drawn per process
    args = ["--method", "cvf_ncu", "--model", str(model_dir), "--data", str(world), "--requests",
            "forget_r1,forget_r2", "--max-items", "2", *opts]
    proc = launch("-m", "unsee.cli", "unlearn", "--out", str(tmp_path / "two"), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["unlearn", "--out", str(tmp_path / "one"), *args]) == 0
    two, one = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("two", "one"))
    start = load_file(model_dir / "model.safetensors")
    moved = sum(float((one[k] - start[k]).pow(2).sum()) for k in one)
    apart = sum(float((two[k] - one[k]).pow(2).sum()) for k in one)
    assert moved > 0 and apart < 1e-4 * moved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no progress, no stray temporary
    runs = load_results(tmp_path / "two" / "results.json")["runs"]
    assert [r["request"] for r in runs] == [1, 2]


def test_evaluation_and_attack_under_two_processes_run_once(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """`unsee eval` and `unsee attack` share nothing out: under a launch the first process does the work
    and the other leaves it alone, instead of racing it to the same file (which failed the launch)."""
    out = tmp_path / "eval.json"
    proc = launch("-m", "unsee.cli", "eval", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                  "--max-items", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("unsee results") == 1  # one table
    proc = launch("-m", "unsee.cli", "attack", "probe", "--model", str(model_dir), "--data", str(world),
                  "--out", str(out), "probe_steps=5", "probe_blocks=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"probe"') == 1
    run = load_results(out)["runs"][0]
    assert run["method"] == "vanilla" and "forget_acc" in run["attacks"]["probe"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".eval.json.lock", "eval.json", "eval.samples.jsonl"]


def test_a_launch_waits_for_its_first_process_as_long_as_unsee_launch_timeout_says() -> None:
    """While the first process evaluates and attacks a run, the others wait at the next run's first step, on a
    real model longer than NCCL's 10-minute default: the launch's process group is set up with the wait asked."""
    code = ("import torch, torch.distributed as dist; from unsee.engine.distributed import training_accelerator; "
            "training_accelerator(); print(dist.group.WORLD._get_backend(torch.device('cpu')).options._timeout)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, env = launch_command("cpu.yaml")
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
            "UNSEE_LAUNCH_TIMEOUT": "7"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0:07:00"]


@pytest.mark.parametrize(("value", "minutes"), [(None, 360), ("90", 90), ("0.5", 0.5), ("", 360)])
def test_unsee_launch_timeout_is_read_in_minutes(value: str | None, minutes: float,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("UNSEE_LAUNCH_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("UNSEE_LAUNCH_TIMEOUT", value)
    assert launch_timeout() == timedelta(minutes=minutes)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "inf", "nan"])
def test_a_launch_timeout_that_is_no_positive_number_is_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNSEE_LAUNCH_TIMEOUT", value)
    with pytest.raises(ConfigError, match="UNSEE_LAUNCH_TIMEOUT"):
        launch_timeout()


def test_a_bad_launch_timeout_is_refused_before_the_model_is_loaded(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process group is set up at the first collective, after the model has loaded (minutes on a 7B model):
    a typo in the variable is refused before that."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setenv("UNSEE_LAUNCH_TIMEOUT", "ten")
    for method in ("graddiff", "eraser"):
        with pytest.raises(ConfigError, match="UNSEE_LAUNCH_TIMEOUT='ten'"):
            api.unlearn(method, model_dir, world, tmp_path / "o")
    with pytest.raises(ConfigError, match="UNSEE_LAUNCH_TIMEOUT='ten'"):
        api.evaluate(model_dir, world, tmp_path / "o" / "results.json")
    with pytest.raises(ConfigError, match="UNSEE_LAUNCH_TIMEOUT='ten'"):
        api.attack("probe", model_dir, world, tmp_path / "o" / "results.json", overrides=["probe_steps=1"])
    with pytest.raises(ConfigError, match="UNSEE_LAUNCH_TIMEOUT='ten'"):
        retrain(model_dir, world, tmp_path / "o")
    assert not (tmp_path / "o").exists()
