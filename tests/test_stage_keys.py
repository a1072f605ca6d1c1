"""Each cached stage's key (``unsee.stage_keys``): what moves it, what does not, and the first
losses of each stage pinned beside the STAGE_VERSION they were recorded at.

A change of a stage's losses on the same inputs means a cached stage trained by the old code
would be reused for the new one: the change must come with a bump of that stage's version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fixtures_bench as fb
import pytest
import torch
from safetensors.torch import load_file, save_file

from unsee import finetune as ft
from unsee import stage_keys
from unsee.config import load_config
from unsee.data.detect import resolve
from unsee.errors import ModelError
from unsee.models.base import IGNORE, HFAdapter
from unsee.models.qwen_vl import Qwen2VLAdapter
from unsee.models.tiny import init_model
from unsee.stage_keys import StageKey

if TYPE_CHECKING:
    from conftest import TinyModels

# Three steps of each stage on the tiny world of conftest.py (stage 1 with two general scenes per step). The
# pins guard the stages' code, so every option they read is fixed here, not taken from the shipped recipe.
RECIPE = ["vision_steps=3", "vision_batch=4", "vision_general=2", "base_steps=3", "ft_steps=3", "batch_size=4",
          "replay=0.3", "vision_lr_factor=0.4", "ft_vision_lr_factor=0.4", "progress=false", "checkpoint_every=0"]
BENCH_RECIPE = ["max_steps=3", "batch_size=2", "dtype=fp32", "gradient_checkpointing=false", "progress=false",
                "lr=1e-3"]

# Stage -> (its STAGE_VERSION when pinned, its first three losses), recorded on CPU with one thread.
PINNED: dict[str, tuple[int, tuple[float, float, float]]] = {
    "stage1": (1, (13.835908889770508, 25.422365188598633, 20.376556396484375)),
    "stage2": (1, (14.686680793762207, 63.432823181152344, 57.387691497802734)),
    "stage3": (1, (13.491658210754395, 11.783918380737305, 14.851783752441406)),
    "retrained": (1, (13.668325424194336, 10.633645057678223, 12.063414573669434)),
    "retrained-known": (1, (15.47370433807373, 13.20938777923584, 13.565125465393066)),
    "benchmark-finetune": (1, (38.487937927246094, 43.114524841308594, 40.362239837646484)),
}
RELATIVE_TOLERANCE = 1e-3


def check_pinned(stage: StageKey, losses: list[float]) -> None:
    """The first losses match the pin, and the pin was made at the stage's current version."""
    version, pinned = PINNED[stage.name]
    first = [float(x) for x in losses[:3]]
    same = first == pytest.approx(list(pinned), rel=RELATIVE_TOLERANCE)
    if not same and stage.version == version:
        pytest.fail(f"{stage.name}'s losses changed: bump STAGE_VERSION and re-pin "
                    f"(first losses {first}, pinned {list(pinned)} at version {version})")
    if not same:
        pytest.fail(f"{stage.name}'s STAGE_VERSION is {stage.version}: re-pin its losses at {first}")
    assert stage.version == version, f"{stage.name}'s STAGE_VERSION is {stage.version}: re-pin it at that version"


@pytest.fixture(scope="module")
def trained(world: Path, model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The short recipe's vanilla model and its retrained reference, with every stage's per-step losses."""
    from unsee.retrain import retrain

    root = tmp_path_factory.mktemp("stage_keys")
    losses: dict[str, list[float]] = {"stage1": []}
    real_train, real_vision = ft.train, ft.pretrain_vision

    def recorded(*a: Any, desc: str, **k: Any) -> Any:
        res = real_train(*a, desc=desc, **k)
        name = "retrained" if "without" in desc else desc.split(":")[0].replace(" ", "")
        losses[name] = list(res.losses)
        return res

    def vision(*a: Any, **k: Any) -> Any:
        return real_vision(*a, **k, on_step=lambda step, loss: losses["stage1"].append(loss))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "train", recorded)
        mp.setattr(ft, "pretrain_vision", vision)
        vanilla = ft.finetune(model_dir, world, root / "v", config="quick", overrides=RECIPE, cache_dir=root / "c")
        retrained = retrain(vanilla, world, root / "r", cache_dir=root / "c")
    return {"losses": losses, "cache": root / "c", "vanilla": vanilla, "retrained": retrained}


@pytest.mark.parametrize("stage", [stage_keys.STAGE1, stage_keys.STAGE2, stage_keys.STAGE3, stage_keys.RETRAINED],
                         ids=lambda s: s.name)
def test_each_stages_first_losses_are_pinned_at_its_version(trained: dict[str, Any], stage: StageKey) -> None:
    check_pinned(stage, trained["losses"][stage.name])


def test_the_reference_of_known_people_trains_stage_2_again_without_their_photos(
        trained: dict[str, Any], world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """known_forget_X: stages 2 and 3 again from stage 1, their photos out of both (stage 3 replays stage 2);
    pinned like every stage, cached, and found by cached_reference."""
    from unsee import retrain as retrain_mod
    from unsee.data.collate import image_of
    from unsee.data.mllmu import load_mllmu
    from unsee.data.world import load_world_info

    seen: dict[str, list] = {}
    real = ft.train

    def recorded(*a: Any, desc: str, **k: Any) -> Any:
        seen[desc] = [t for t in a[3]["train"]]
        res = real(*a, desc=desc, **k)
        seen[desc + ":losses"] = list(res.losses)
        return res

    # the reference starts from the base model the vanilla record names, and refuses one changed since
    record = json.loads((trained["vanilla"] / "unsee_vanilla.json").read_text())
    changed = Path(shutil.copytree(record["base_model"], tmp_path / "changed-base"))
    weights = load_file(changed / "model.safetensors")
    name = sorted(weights)[0]
    save_file({**weights, name: weights[name] + 1}, changed / "model.safetensors")
    moved = Path(shutil.copytree(trained["vanilla"], tmp_path / "moved"))
    (moved / "unsee_vanilla.json").write_text(json.dumps({**record, "base_model": str(changed)}))
    with pytest.raises(ModelError, match="no longer the model the vanilla model was fine-tuned from"):
        retrain_mod.retrain(moved, world, tmp_path / "r0", forget="known_forget_10", cache_dir=trained["cache"])

    monkeypatch.setattr(ft, "train", recorded)
    info = load_world_info(world)
    gone = set(info["known_splits"]["known_forget_10"])
    out = retrain_mod.retrain(trained["vanilla"], world, tmp_path / "r", forget="known_forget_10",
                              cache_dir=trained["cache"])
    assert list(seen) == ["stage 2 without known_forget_10's photos", "stage 2 without known_forget_10's photos:losses",
                          "stage 3 without known_forget_10's photos", "stage 3 without known_forget_10's photos:losses"]
    check_pinned(stage_keys.RETRAINED_KNOWN, seen["stage 2 without known_forget_10's photos:losses"])
    suite = load_mllmu(world, "known_forget_10")
    photos = {image_of(e).tobytes() for e in suite.groups["train_forget"]}
    assert photos and all(e.entity in gone for e in suite.groups["train_forget"])
    for desc in ("stage 2 without known_forget_10's photos", "stage 3 without known_forget_10's photos"):
        trained_on = {t.image.tobytes() for t in seen[desc] if t.image is not None}
        assert trained_on and not photos & trained_on, desc
    record = json.loads((out / "unsee_retrained.json").read_text())
    assert set(record["without"]) == gone and not record["cached"]
    assert retrain_mod.cached_reference(trained["vanilla"], world, "known_forget_10", trained["cache"]) == \
        trained["cache"] / record["stage"]
    seen.clear()
    again = retrain_mod.retrain(trained["vanilla"], world, tmp_path / "again", forget="known_forget_10",
                                cache_dir=trained["cache"])
    assert not seen and json.loads((again / "unsee_retrained.json").read_text())["cached"]


def test_the_benchmark_finetunes_first_losses_are_pinned_at_its_version(tiny_models: TinyModels, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from unsee import finetune_bench
    from unsee.finetune_bench import finetune_benchmark

    losses: list[float] = []
    real = finetune_bench.train

    def recorded(*a: Any, **k: Any) -> Any:
        res = real(*a, **k)
        losses.extend(res.losses)
        return res

    monkeypatch.setattr(finetune_bench, "train", recorded)
    ref = resolve(fb.write_mllmu(tmp_path / "mllmu"))
    finetune_benchmark(tiny_models.dir("tiny-llava"), ref, "mllmu", tmp_path / "v", overrides=BENCH_RECIPE,
                       cache_dir=tmp_path / "c")
    check_pinned(stage_keys.BENCHMARK, losses)


def test_finetune_trains_into_the_stages_its_keys_name_and_they_are_stable(trained: dict[str, Any], world: Path,
                                                                           model_dir: Path) -> None:
    cfg = load_config(ft.FinetuneConfig, "quick", RECIPE, kind="finetune")
    first = ft.vanilla_stages(model_dir, world, cfg, trained["cache"]).paths
    assert first == ft.vanilla_stages(model_dir, world, cfg, trained["cache"]).paths
    assert all(ft.stage_done(p) for p in first)
    assert sorted(p.name for p in trained["cache"].iterdir() if not p.name.startswith(("retrained-", "."))) == \
        sorted(p.name for p in first)
    # beside them only the hidden files that let one run at a time train each (no staging folder is left)
    assert {p.name for p in trained["cache"].iterdir() if p.name.startswith(".")} == \
        {f".{p.name}.lock" for p in trained["cache"].iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def qwen(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-qwen2-vl", tmp_path_factory.mktemp("qwen_keys") / "m", world=world, seed=0)


def keys(model: Path, world: Path, tmp_path: Path) -> list[str]:
    cfg = load_config(ft.FinetuneConfig, "quick", RECIPE, kind="finetune")
    return [p.name for p in ft.vanilla_stages(model, world, cfg, tmp_path).paths]


def masking_one_more_token(real: Callable[..., Any]) -> Callable[..., Any]:
    """``training_batch`` with the first answer token of every row left out of the loss."""

    def batch(self: HFAdapter, turns: Any) -> Any:
        enc = real(self, turns)
        labels = enc["labels"].clone()
        for row in labels:
            row[int((row != IGNORE).nonzero()[0])] = IGNORE
        enc["labels"] = labels
        return enc

    return batch


def test_label_masking_moves_the_keys_of_stages_2_and_3(qwen: Path, world: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = keys(qwen, world, tmp_path)
    assert before == keys(qwen, world, tmp_path)
    monkeypatch.setattr(Qwen2VLAdapter, "training_batch", masking_one_more_token(Qwen2VLAdapter.training_batch))
    after = keys(qwen, world, tmp_path)
    assert after[0] == before[0]  # stage 1 trains on no turns
    assert after[1] != before[1] and after[2] != before[2]


def test_generation_and_docstrings_leave_the_keys_alone(qwen: Path, world: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    before = keys(qwen, world, tmp_path)

    def generate(self: HFAdapter, turns: Any, **kw: Any) -> list[str]:
        """Edited."""
        return ["edited"] * len(turns)

    monkeypatch.setattr(HFAdapter, "generate", generate)
    monkeypatch.setattr(Qwen2VLAdapter, "__doc__", "Edited.")
    assert keys(qwen, world, tmp_path) == before


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch at ``n`` intra-op threads inside the block, put back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_the_thread_count_and_the_cpu_move_every_key(model_dir: Path, world: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage trained at another thread count or on another CPU is another model: it is never reused for it."""
    before = keys(model_dir, world, tmp_path)
    more = torch.get_num_threads() + 1
    with torch_threads(more):
        more_threads = keys(model_dir, world, tmp_path)
    assert all(a != b for a, b in zip(before, more_threads, strict=True))
    assert keys(model_dir, world, tmp_path) == before
    monkeypatch.setattr(stage_keys, "device_name", lambda: "cpu (Another CPU, AVX2)")
    assert all(a != b for a, b in zip(before, keys(model_dir, world, tmp_path), strict=True))
    # on a GPU the CPU's threads leave the weights alone: an hours-long fine-tune is not keyed on them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(stage_keys, "device_name", lambda: "NVIDIA H200")
    on_gpu = stage_keys.numerics()
    gpu_keys = keys(model_dir, world, tmp_path)
    with torch_threads(more):
        assert stage_keys.numerics() == on_gpu == {"torch": torch.__version__, "device": "NVIDIA H200"}
        # stage 1 trains on the CPU there too: its key keeps the count, and so do the stages built on it
        assert all(a != b for a, b in zip(gpu_keys, keys(model_dir, world, tmp_path), strict=True))


def test_the_data_loader_and_the_augmentation_move_the_keys(model_dir: Path, world: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from unsee.data import augment as aug

    before = keys(model_dir, world, tmp_path)
    real_load = ft.load_mllmu

    def one_known_less(*a: Any, **k: Any) -> Any:
        suite = real_load(*a, **k)
        return dataclasses.replace(suite, groups={**suite.groups, "train_known": suite.groups["train_known"][1:]})

    monkeypatch.setattr(ft, "load_mllmu", one_known_less)
    dropped = keys(model_dir, world, tmp_path)
    assert dropped[0] == before[0] and dropped[1] != before[1] and dropped[2] != before[2]
    monkeypatch.setattr(ft, "load_mllmu", real_load)

    real_augment = aug.augment

    def darker(img: Any, rng: Any, strength: float = 1.0) -> Any:
        return real_augment(img, rng, strength).point(lambda v: v // 2)

    monkeypatch.setattr(ft, "augment", darker)
    edited = keys(model_dir, world, tmp_path)
    assert edited[0] == before[0] and edited[1] != before[1] and edited[2] != before[2]


def test_the_renderer_moves_stage_1s_key(model_dir: Path, world: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from unsee import vision_stage

    before = keys(model_dir, world, tmp_path)
    real = vision_stage.pretrain_batch

    def brighter(*a: Any, **k: Any) -> Any:
        arrays, labels = real(*a, **k)
        return [a // 2 + 64 for a in arrays], labels

    monkeypatch.setattr(vision_stage, "pretrain_batch", brighter)
    assert keys(model_dir, world, tmp_path)[0] != before[0]


def test_the_visual_config_and_the_image_processor_move_stage_1s_key(model_dir: Path, world: Path,
                                                                    tmp_path: Path) -> None:
    """Stage 1 starts from the visual module: the same weights under another tower config, another block read
    or other pixel statistics train another module; a copy of the model is the same start."""
    before = keys(model_dir, world, tmp_path)
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    assert keys(copy, world, tmp_path) == before
    edits = {"config.json": lambda c: c["vision_config"].update(hidden_act="gelu"),
             "processor_config.json": lambda c: c["image_processor"].update(image_mean=[0.5, 0.5, 0.5])}
    for name, edit in edits.items():
        model = Path(shutil.copytree(model_dir, tmp_path / name))
        config = json.loads((model / name).read_text())
        edit(config)
        (model / name).write_text(json.dumps(config))
        assert keys(model, world, tmp_path)[0] != before[0], name


def test_turns_fingerprint_sees_every_turn_and_the_tensors_of_a_fixed_sample(model_dir: Path, world: Path) -> None:
    from unsee.data.mllmu import load_mllmu
    from unsee.models import load_adapter

    suite = load_mllmu(world, "forget_10")
    cfg = load_config(ft.FinetuneConfig, "quick", RECIPE, kind="finetune")
    turns = ft.stage2_turns(suite, cfg, set())
    adapter = stage_keys.batch_adapter(model_dir)
    fp = stage_keys.turns_fingerprint(adapter, turns)
    assert fp == stage_keys.turns_fingerprint(load_adapter(model_dir), turns)  # weights play no part
    assert stage_keys.sample_turns(turns) == stage_keys.sample_turns(list(turns))
    assert fp != stage_keys.turns_fingerprint(adapter, turns[:-1])
    assert fp != stage_keys.turns_fingerprint(adapter, [turns[1], turns[0], *turns[2:]])
    edited = dataclasses.replace(turns[-1], answer=turns[-1].answer + "!")
    assert fp != stage_keys.turns_fingerprint(adapter, [*turns[:-1], edited])
    # the weightless adapter builds the batches the loaded one does
    full = load_adapter(model_dir).training_batch(turns[:2])
    assert all(torch.equal(v, full[k]) for k, v in adapter.training_batch(turns[:2]).items())


def test_a_world_without_forget_10_is_fine_tuned_all_the_same(tmp_path: Path) -> None:
    """The fine-tune teaches every person, whichever split names them: a world built with other forget splits
    is not refused for want of forget_10."""
    from unsee.data.world import build_world

    world = build_world(tmp_path / "w", config="quick", overrides=[
        "n_people=8", "n_known=2", "n_unknown=2", "n_neutral=4", "n_train_views=2", "n_test_views=1", "n_requests=1",
        "n_general_train=8", "n_general_eval=4", "n_pretrain=4", "forget_splits=[20]", "val_forget_splits=[]",
        "known_forget_splits=[]"])
    model = init_model("tiny-llava", tmp_path / "m", world=world, seed=0)
    cfg = load_config(ft.FinetuneConfig, "quick", RECIPE, kind="finetune")
    assert len(ft.vanilla_stages(model, world, cfg, tmp_path / "cache").paths) == 3


def test_a_launchs_mixed_precision_moves_every_key(model_dir: Path, world: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages trained under a launch's bf16 (or an Accelerator the user's own code built with it) are other
    models: a plain run took them from the cache as its own, and nothing on them said how they were trained."""
    from accelerate.state import AcceleratorState

    before = keys(model_dir, world, tmp_path)
    assert "mixed_precision" not in stage_keys.numerics()  # the keys of stages trained without it are unchanged
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert stage_keys.numerics()["mixed_precision"] == "bf16"
    launched = keys(model_dir, world, tmp_path)
    assert all(a != b for a, b in zip(before, launched, strict=True))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    monkeypatch.setitem(AcceleratorState._shared_state, "_mixed_precision", "bf16")
    assert keys(model_dir, world, tmp_path) == launched
