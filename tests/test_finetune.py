"""The vanilla recipe: stage keys, the world's own pre-training pool, resuming stage 1, and a
short real training run whose first losses are pinned, so that a refactor which changes numbers fails."""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import launch_command
from PIL import Image

from unsee import finetune as ft
from unsee import stage_keys
from unsee.config import load_config
from unsee.data.collate import pack_turns, qa_turn, qa_turns
from unsee.data.mllmu import load_mllmu
from unsee.data.prompts import qa_prompt
from unsee.data.schema import Example
from unsee.data.world import build_world, load_world_info, world_pretrain_identities
from unsee.eval.evaluator import mcq_loglik
from unsee.eval.results import load_results
from unsee.methods.eraser.fit import erasure_turns, prompt_turns
from unsee.models import HFAdapter, load_adapter
from unsee.models.tiny import init_model
from unsee.unlearning import CachedDraws, find_reference

# A world small enough to train on in seconds: 4 people, 2 training views each.
WORLD = ["n_people=4", "n_known=2", "n_unknown=2", "n_neutral=2", "n_general_train=8", "n_general_eval=4",
         "n_train_views=2", "n_test_views=1", "n_requests=1", "request_size=1", "n_pretrain=20"]
# Stages 1 and 2 only long enough to run; stage 3 long enough to learn the 4 people (replay=0.1
# rounds to one copy of stage 2 against three of the fine-tune, 0.19).
RECIPE = ["vision_steps=4", "vision_batch=8", "base_steps=4", "ft_steps=80", "batch_size=8", "ft_lr=3e-3",
          "replay=0.1", "progress=false", "checkpoint_every=0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("ft") / "w", seed=0, config="quick", overrides=WORLD)


@pytest.fixture(scope="module")
def model(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-llava", tmp_path_factory.mktemp("ft_model") / "m", world=world, seed=0)


STAGE_LOSSES: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def trained(world: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The short recipe's vanilla model and the stage cache it was trained in, shared by the tests that read them.

    Each SFT stage's per-step losses are recorded in ``STAGE_LOSSES`` (by the stage's name)."""
    root = tmp_path_factory.mktemp("ft_trained")

    def recorded(*a, desc: str, **k):  # noqa: ANN002, ANN003, ANN202
        res = real(*a, desc=desc, **k)
        STAGE_LOSSES[desc] = list(res.losses)
        return res

    real = ft.train
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft, "train", recorded)
        out = ft.finetune(model, world, root / "v", config="quick", overrides=RECIPE, cache_dir=root / "c")
    return out, root / "c"


def test_every_recipe_option_determines_exactly_one_stage_or_none() -> None:
    fields = [f.name for f in dataclasses.fields(ft.FinetuneConfig)]
    listed = [*stage_keys.VISION_KEYS, *stage_keys.BASE_KEYS, *stage_keys.FT_KEYS, *stage_keys.UNHASHED_KEYS]
    assert sorted(listed) == sorted(fields)


def test_every_benchmark_recipe_option_is_in_its_key_or_named_as_not() -> None:
    from unsee.bench_recipe import BenchFinetuneConfig

    fields = [f.name for f in dataclasses.fields(BenchFinetuneConfig)]
    assert sorted([*stage_keys.BENCH_KEYS, *stage_keys.BENCH_UNHASHED_KEYS]) == sorted(fields)


def test_shipped_recipes_load() -> None:
    for name in ("default", "quick"):
        cfg = load_config(ft.FinetuneConfig, name, (), kind="finetune")
        assert cfg.vision_steps > 0 and cfg.ft_steps > 0


def test_an_empty_cache_variable_is_unset_not_the_current_folder(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """``UNSEE_CACHE=`` put every stage in the folder a command ran in, where the next run from elsewhere
    missed them; it means unset, as an empty ``--cache-dir`` does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("UNSEE_CACHE", "")
    assert ft.default_cache() == ft.cache_root("") == tmp_path / ".cache" / "unsee"
    monkeypatch.setenv("UNSEE_CACHE", str(tmp_path / "c"))
    assert ft.cache_root(None) == tmp_path / "c"


def test_stage1_trains_on_the_worlds_pool_and_is_shared_by_worlds_with_that_pool(
        world: Path, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list] = []
    real = ft.pretrain_vision

    def spy(adapter, cfg, identities, checkpoint=None):  # noqa: ANN001, ANN202
        seen.append(list(identities))
        return real(adapter, cfg, identities, checkpoint)

    monkeypatch.setattr(ft, "pretrain_vision", spy)
    short = [*RECIPE[:-3], "ft_steps=1", "progress=false"]
    cache = tmp_path / "cache"
    ft.finetune(model, world, tmp_path / "v1", config="quick", overrides=short, cache_dir=cache)
    assert seen == [world_pretrain_identities(load_world_info(world))]

    # Another world with the same pool (same seed and n_pretrain, one more person): stage 1 is
    # reused, stages 2 and 3 are not. A world with another pool trains its own stage 1.
    same_pool = build_world(tmp_path / "w2", seed=0, config="quick", overrides=[*WORLD, "n_people=5"])
    model2 = init_model("tiny-llava", tmp_path / "m2", world=same_pool, seed=0)
    ft.finetune(model2, same_pool, tmp_path / "v2", config="quick", overrides=short, cache_dir=cache)
    assert len(seen) == 1
    stages = json.loads((tmp_path / "v2" / "unsee_vanilla.json").read_text())["stages"]
    assert [s["cached"] for s in stages.values()] == [True, False, False]
    other_pool = build_world(tmp_path / "w3", seed=0, config="quick", overrides=[*WORLD, "n_pretrain=21"])
    model3 = init_model("tiny-llava", tmp_path / "m3", world=other_pool, seed=0)
    ft.finetune(model3, other_pool, tmp_path / "v3", config="quick", overrides=short, cache_dir=cache)
    assert len(seen) == 2 and len(seen[1]) == 21
    assert not list(cache.glob("*.partial"))  # finished stages leave no checkpoint behind


@pytest.mark.parametrize("general", [0, 3])
def test_stage1_resumes_from_its_checkpoint_with_the_same_weights(world: Path, model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    general: int) -> None:
    from unsee import vision_stage

    pool = world_pretrain_identities(load_world_info(world))
    cfg = load_config(ft.FinetuneConfig, "quick", ["vision_steps=5", "vision_batch=4", "checkpoint_every=2",
                                                   "progress=false", f"vision_general={general}"], kind="finetune")
    whole = load_adapter(model)
    stats = ft.pretrain_vision(whole, cfg, pool)
    assert ("general_acc" in stats) == (general > 0)

    real, calls = vision_stage.pretrain_batch, []

    def dies_on_the_fifth(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    ckpt = tmp_path / "stage1.partial"
    monkeypatch.setattr(vision_stage, "pretrain_batch", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        ft.pretrain_vision(load_adapter(model), cfg, pool, checkpoint=ckpt)
    monkeypatch.setattr(vision_stage, "pretrain_batch", real)
    resumed = load_adapter(model)
    again = ft.pretrain_vision(resumed, cfg, pool, checkpoint=ckpt)
    assert "resumed_s" not in stats and again["resumed_s"] > 0  # the stage's seconds count the steps before the stop
    ft._finish_stage(tmp_path / "stage1", resumed, again, 2.0, {}, visual_only=True)
    assert json.loads((tmp_path / "stage1" / ft.STAGE_FILE).read_text())["seconds"] == 2.0 + again["resumed_s"]
    a, b = ft.visual_state(whole), ft.visual_state(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not torch.equal(a[next(iter(a))], ft.visual_state(load_adapter(model))[next(iter(a))])


def test_stage1_general_scenes_teach_the_encoder(world: Path, model: Path) -> None:
    """The scenes' heads learn (their running accuracy rises over the steps) and the encoder moves with them."""
    pool = world_pretrain_identities(load_world_info(world))

    def stage1(steps: int, general: int) -> tuple[HFAdapter, dict[str, float]]:
        adapter = load_adapter(model)
        cfg = load_config(ft.FinetuneConfig, "quick", [f"vision_steps={steps}", "vision_batch=4", "vision_lr=3e-3",
                                                      "progress=false", f"vision_general={general}"], kind="finetune")
        return adapter, ft.pretrain_vision(adapter, cfg, pool)

    _, first = stage1(2, 8)
    stage1(10, 0)  # torch's one-cycle divided by a warm-up that ended at step 0: a traceback at 10 steps
    both, last = stage1(40, 8)
    only, _ = stage1(40, 0)
    assert last["general_acc"] > first["general_acc"] + 0.05
    a, b = ft.visual_state(only), ft.visual_state(both)
    assert any(not torch.equal(a[n], b[n]) for n in a)


# The first stage-3 losses of RECIPE on WORLD, recorded on CPU with torch 2.13. A change of the loop, the
# data order, the augmentation, the schedule or the loss moves them by far more than the tolerance. Only
# the first steps are pinned: by the end of the stage, other floating-point kernels have moved the loss in
# the fourth digit (final NLL 6.5945 with one thread, 6.5943 with two, 6.5931 on an AMD EPYC), while these
# three agree to 2e-7 between one and two threads; the tolerance leaves a wide margin over that.
PINNED_FT_FIRST_LOSSES = (11.373558044433594, 13.208066940307617, 16.971324920654297)
PINNED_RELATIVE_TOLERANCE = 1e-3
# Learning, on any machine: the stage-3 loss ends far below where it starts (11 to 17 nats; 6.59 here).
LEARNED_FT_NLL = 7.5


def test_short_finetune_learns_the_people_and_its_first_losses_are_pinned(world: Path,
                                                                          trained: tuple[Path, Path]) -> None:
    out = trained[0]
    meta = json.loads((out / "unsee_vanilla.json").read_text())
    stage3 = list(meta["stages"].values())[-1]["stats"]
    suite = load_mllmu(world, "forget_10")
    items = [e for g in ("forget", "retain") for e in suite.groups[g] if e.task == "mcq"]
    acc = float(np.mean(mcq_loglik(load_adapter(out), items)))
    assert acc >= 0.6, f"image-question accuracy {acc:.2f}; chance is 0.25"
    first = STAGE_LOSSES[next(k for k in STAGE_LOSSES if k.startswith("stage 3"))][:3]
    assert first == pytest.approx(list(PINNED_FT_FIRST_LOSSES), rel=PINNED_RELATIVE_TOLERANCE)
    assert stage3["final_nll"] < LEARNED_FT_NLL < min(first)


def test_packing_groups_one_image_and_closes_with_one_name(world: Path) -> None:
    suite = load_mllmu(world, "forget_10")
    names = set(load_world_info(world)["names"].values())
    images = suite.group("train_forget")
    photos = collections.Counter((e.entity, e.image) for e in images)
    per_photo = max(photos.values())
    named_on = collections.Counter((e.entity, e.image) for e in images if e.answer in names)
    assert max(named_on.values()) >= 2  # who-is-this and the cloze: two answers that are the name
    for size in (per_photo, 3):
        packs = pack_turns(images, size, np.random.default_rng(0), last=names)
        exchanges = [(t.prompt, t.answer) for t in packs] + [x for t in packs for x in t.follow]
        assert sorted(exchanges) == sorted((e.question, e.answer) for e in images)
        # as few conversations as hold a photo's questions, and one per name answer at least
        assert len(packs) == sum(max(named_on[k], -(-n // size)) for k, n in photos.items())
        for t in packs:
            named = [a in names for a in [t.answer, *(a for _, a in t.follow)]]
            assert len(named) <= size and sum(named) <= 1  # no name can be read off another
            assert named == sorted(named)  # a name answer closes its conversation
    # size 1 is the unpacked list, in order, and draws nothing from the generator
    rng = np.random.default_rng(0)
    assert pack_turns(images, 1, rng) == qa_turns(images)
    assert rng.integers(1 << 30) == np.random.default_rng(0).integers(1 << 30)
    with pytest.raises(ValueError, match="pack size"):
        pack_turns(images, 0, rng)


def test_training_asks_each_question_as_scoring_does() -> None:
    """A question read from a YAML block ends in a newline; trained raw, it was another prompt than the scored one."""
    first = Example(uid="a", entity="p", question="  Where was she born?\n", answer="Vintaro")
    second = dataclasses.replace(first, uid="b", question="What is her job?\n", answer="Cook")
    assert qa_turn(first).prompt == qa_prompt(first.question) == "Where was she born?"
    (packed,) = pack_turns([first, second], 2, np.random.default_rng(0))
    assert sorted([packed.prompt, *(q for q, _ in packed.follow)]) == ["What is her job?", "Where was she born?"]
    # the eraser's directions are read on the prompts it steers at test time
    assert prompt_turns([first])[0].prompt == "Where was she born?"
    photo = io.BytesIO()
    Image.new("RGB", (8, 8)).save(photo, format="PNG")
    shown = dataclasses.replace(first, image=photo.getvalue())
    assert erasure_turns([shown], [], "refusal")[0].prompt.startswith("Where was she born? ")


def test_replay_is_whole_copies_of_stage2_near_the_asked_fraction(world: Path) -> None:
    # the shapes of the default world: 7800 own turns, 4718 stage-2 turns
    assert ft.replay_copies(7800, 4718, 0.3) == (2, 1)
    for own, base, replay in [(7800, 4718, 0.5), (1716, 1200, 0.3), (1344, 1085, 0.3), (50, 3, 0.3)]:
        k, m = ft.replay_copies(own, base, replay)
        assert 1 <= k <= 3 and m >= 1
        assert abs(m * base / (k * own) - replay) <= 0.5 * replay
    assert ft.replay_copies(100, 30, 0.0) == (1, 0)
    assert ft.replay_copies(100, 0, 0.3) == (1, 0)

    # every stage-2 turn is replayed the same number of times
    cfg = load_config(ft.FinetuneConfig, "quick", ["replay=0.3"], kind="finetune")
    suite = load_mllmu(world, "forget_10")
    names = set(load_world_info(world)["names"].values())
    base = ft.stage2_turns(suite, cfg, names)
    own = ft.stage3_own_turns(suite, cfg, names)
    k, m = ft.replay_copies(len(own), len(base), cfg.replay)
    stage3 = ft.stage3_turns(suite, cfg, names)
    n = len(base)
    assert m >= 1 and len(stage3) == k * len(own) + m * n
    tail = stage3[k * len(own):]
    assert [(t.prompt, t.answer, t.follow) for t in tail[:n]] == [(t.prompt, t.answer, t.follow) for t in base]
    assert len({id(t) for t in tail[:n]}) == n and all(tail[i] is tail[i % n] for i in range(len(tail)))


def record_stage(out: Path) -> str:
    from unsee.retrain import RETRAINED_FILE

    return json.loads((out / RETRAINED_FILE).read_text())["stage"]


def test_retrain_leaves_out_the_forget_photos_keeps_their_text_and_is_cached(world: Path, model: Path,
                                                                               trained: tuple[Path, Path],
                                                                               tmp_path: Path) -> None:
    from unsee.data.collate import image_of
    from unsee.errors import DataError, ModelError
    from unsee.retrain import RETRAINED_FILE, retrain, retrain_turns

    vanilla, cache = trained
    suite = load_mllmu(world, "forget_10")
    names = set(load_world_info(world)["names"].values())
    cfg = load_config(ft.FinetuneConfig, json.loads((vanilla / "unsee_vanilla.json").read_text())["recipe"],
                      kind="finetune")
    full, (_, kept) = ft.stage3_turns(suite, cfg, names), retrain_turns(suite, suite, cfg, names)
    forget_photos = {id(image_of(e)) for e in suite.group("train_forget")}
    assert forget_photos and any(id(t.image) in forget_photos for t in full)
    assert not any(id(t.image) in forget_photos for t in kept)
    # questions packed two to a conversation are grouped at random: the reference keeps the vanilla model's
    # conversations, less those on the forget photos, rather than drawing every other one again
    packed = dataclasses.replace(cfg, pack=2)

    def conversations(turns: list) -> set:
        return {(t.prompt, t.answer, t.follow, id(t.image)) for t in turns}

    drawn = conversations([*ft.stage3_own_turns(suite, packed, names), *ft.stage2_turns(suite, packed, names)])
    assert conversations(retrain_turns(suite, suite, packed, names)[1]) == {
        c for c in drawn if c[3] not in forget_photos}
    text = sorted((t.prompt, t.answer) for t in full if t.image is None)
    assert text == sorted((t.prompt, t.answer) for t in kept if t.image is None)  # every text question stays
    named = load_world_info(world)["names"]
    assert any(named[who] in q for who in suite.forget_entities for q, _ in text)  # theirs too

    from unsee.retrain import cached_reference

    assert cached_reference(vanilla, world, "forget_10", cache) is None  # not trained yet: found, never trained
    out = retrain(vanilla, world, tmp_path / "r", cache_dir=cache)
    found = cached_reference(vanilla, world, "forget_10", cache)
    assert found is not None and found.parent == cache and found.name == record_stage(out)
    # trained at one thread, it is found from a process of two too (and the other way round under a launch)
    one = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert cached_reference(vanilla, world, "forget_10", cache) == found and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(one)
    assert cached_reference(vanilla, world, "forget_5", cache) is None
    assert cached_reference(model, world, "forget_10", cache) is None  # not a vanilla model of unsee finetune
    record = json.loads((out / RETRAINED_FILE).read_text())
    assert not record["cached"] and sorted(record["without"]) == sorted(suite.forget_entities)
    before, after = load_adapter(vanilla).model.state_dict(), load_adapter(out).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    again = retrain(vanilla, world, tmp_path / "r2", cache_dir=cache)
    assert json.loads((again / RETRAINED_FILE).read_text())["cached"]
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # under a launch the first process writes the reference, once, and the launch succeeds
    cmd, env = launch_command("cpu.yaml", "-m", "unsee.cli", "retrain", "--model", str(vanilla), "--data", str(world),
                              "--out", str(tmp_path / "r6"), "--cache-dir", str(cache))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("written to") == 1
    assert (tmp_path / "r6" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    # another draw of the same recipe: a second reference, cached under a key of its own; the audits still
    # find the recipe's own
    from unsee.cli import main

    assert main(["retrain", "--model", str(vanilla), "--data", str(world), "--out", str(tmp_path / "s1"),
                 "--cache-dir", str(cache), "--seed", "1"]) == 0
    drawn = json.loads((tmp_path / "s1" / RETRAINED_FILE).read_text())
    assert drawn["recipe"]["seed"] == 1 != record["recipe"]["seed"] and drawn["stage"] != record["stage"]
    assert (tmp_path / "s1" / "model.safetensors").read_bytes() != (out / "model.safetensors").read_bytes()
    assert cached_reference(vanilla, world, "forget_10", cache) == found
    # asked for by count, the cached draws come back in seed order, the recipe's own first; a missing one is named
    s1 = cached_reference(vanilla, world, "forget_10", cache, seed=1)
    assert s1 is not None and s1.name == drawn["stage"] != found.name
    assert find_reference(CachedDraws(2), vanilla, world, "forget_10", cache) == [found, s1]
    assert find_reference(CachedDraws(1), vanilla, world, "forget_10", cache) == found
    with pytest.raises(DataError, match=r"1 of the 3 draws .* \(--seed 2\): make each with `unsee retrain"):
        find_reference(CachedDraws(3), vanilla, world, "forget_10", cache)
    with pytest.raises(DataError, match=r"2 of the 2 draws .* \(the recipe's own, --seed 1\)"):
        find_reference(CachedDraws(2), vanilla, world, "forget_5", cache)
    # asked for by name, a wrong cache or split is said as such, not as draws missing from the cache
    with pytest.raises(ModelError, match="stage-2 checkpoint, which is not in .*empty: run unsee finetune"):
        find_reference(CachedDraws(2), vanilla, world, "forget_10", tmp_path / "empty")
    with pytest.raises(DataError, match="'nosuch' not found"):
        find_reference(CachedDraws(2), vanilla, world, "nosuch", cache)
    assert cached_reference(vanilla, world, "nosuch", cache) is None  # looked up unasked: none
    # the command line reads them as one reference beside the attacked model, each draw recorded
    assert main(["attack", "probe", "--model", str(vanilla), "--vanilla", str(vanilla), "--data", str(world),
                 "--out", str(tmp_path / "a.json"), "--reference-draws", "2", "--cache-dir", str(cache)]) == 0
    beside = load_results(tmp_path / "a.json")["runs"][0]["attacks"]["probe"]["reference"]
    assert beside["n_draws"] == 2 and len(beside["draws"]) == 2
    with pytest.raises(SystemExit) as both:  # one way to name the reference at a time
        main(["attack", "probe", "--model", str(vanilla), "--data", str(world), "--out", str(tmp_path / "b"),
              "--reference-draws", "2", "--reference", str(out)])
    assert both.value.code == 2 and not (tmp_path / "b").exists()

    with pytest.raises(ModelError, match="not made by unsee finetune"):
        retrain(model, world, tmp_path / "r3", cache_dir=cache)
    with pytest.raises(ModelError, match="stage-2 checkpoint"):
        retrain(vanilla, world, tmp_path / "r4", cache_dir=tmp_path / "empty")
    other = build_world(tmp_path / "w2", seed=1, config="quick", overrides=WORLD)
    with pytest.raises(DataError, match="another world"):
        retrain(vanilla, other, tmp_path / "r5", cache_dir=cache)



def test_a_damaged_cache_entry_is_refused_not_copied_out(world: Path, model: Path, trained: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """A finished stage whose weights were cut short afterwards is no finished model."""
    from unsee.errors import ModelError

    vanilla, cache = trained
    copy = Path(shutil.copytree(cache, tmp_path / "cache"))
    stage3 = sorted(json.loads((vanilla / "unsee_vanilla.json").read_text())["stages"])[-1]
    weights = next(p for p in copy.iterdir() if p.name == stage3) / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:1_000_000])
    with pytest.raises(ModelError, match="damaged .*truncated.*delete that folder"):
        ft.finetune(model, world, tmp_path / "v", config="quick", overrides=RECIPE, cache_dir=copy)
    assert not (tmp_path / "v").exists()
    # nor is one with no weights at all, or a record that does not read
    weights.unlink()
    with pytest.raises(ModelError, match="damaged .*no weights file.*delete that folder"):
        ft.finetune(model, world, tmp_path / "v", config="quick", overrides=RECIPE, cache_dir=copy)
    weights.write_bytes(whole)
    (weights.parent / ft.STAGE_FILE).write_text("{")
    with pytest.raises(ModelError, match="damaged .*delete that folder"):
        ft.finetune(model, world, tmp_path / "v", config="quick", overrides=RECIPE, cache_dir=copy)
    assert not (tmp_path / "v").exists()


def test_the_vanilla_record_names_its_base_model_from_anywhere(
        world: Path, model: Path, trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative --model is recorded resolved: the known people's reference reads it from any folder."""
    _, cache = trained
    monkeypatch.chdir(model.parent)
    out = ft.finetune(Path(model.name), world, tmp_path / "v", config="quick", overrides=RECIPE, cache_dir=cache)
    recorded = json.loads((out / "unsee_vanilla.json").read_text())["base_model"]
    assert Path(recorded).is_absolute() and Path(recorded) == model.resolve()


def test_a_stage_stopped_while_it_is_saved_keeps_its_checkpoint(world: Path, model: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint goes once the stage is saved: a run killed while it saves resumes from the checkpoint
    rather than training the whole stage again."""
    from unsee.engine.checkpoint import has_checkpoint

    real = ft._finish_stage

    def stopped_while_saving(path: Path, *args: Any, **kw: Any) -> None:
        if path.name.startswith("stage3"):
            raise KeyboardInterrupt
        real(path, *args, **kw)

    monkeypatch.setattr(ft, "_finish_stage", stopped_while_saving)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(model, world, tmp_path / "v", config="quick", cache_dir=cache,
                    overrides=[*RECIPE[:-1], "ft_steps=4", "checkpoint_every=2"])
    assert has_checkpoint(next(cache.glob("stage3-*.partial")))
    assert not list(cache.glob("stage2-*.partial"))  # a stage saved has none left


def test_a_hub_model_is_taught_the_world_from_its_snapshot(model: Path, world: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id is fetched to a folder first, as a benchmark's fine-tune does: stage 2's key holds its weights,
    where it held the hash of nothing, which named every hub model alike."""
    import huggingface_hub

    snapshots = {"fake/a": model, "fake/b": tmp_path / "b"}
    init_model("tiny-llava", snapshots["fake/b"], world=world, seed=7)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kw: str(snapshots[repo]))
    assert ft.local_model("fake/b") == snapshots["fake/b"]
    cfg = load_config(ft.FinetuneConfig, "quick", kind="finetune")
    keys = {repo: ft.vanilla_stages(ft.local_model(repo), world, cfg, tmp_path / "cache").stage2.name
            for repo in snapshots}
    assert keys["fake/a"] != keys["fake/b"]
    monkeypatch.chdir(model.parent)
    assert ft.local_model(model.name) == model.resolve()  # a folder is recorded whole


def test_a_run_that_finds_its_stage_in_training_waits_and_reuses_it(
        world: Path, model: Path, trained: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    """Two runs of one recipe on one cache (a sweep's jobs): the second waits for the stage the first is training
    and reuses it, rather than training it too and replacing the entry the first is reading."""
    import sys
    import threading

    vanilla, cache = trained
    copy = Path(shutil.copytree(cache, tmp_path / "cache"))
    stage3 = sorted(json.loads((vanilla / "unsee_vanilla.json").read_text())["stages"])[-1]
    landed = tmp_path / "landed"
    shutil.move(copy / stage3, landed)  # the stage the other run is training, and what it will land
    holder = subprocess.Popen(
        [sys.executable, "-c", "import shutil, sys\nfrom pathlib import Path\n"
         "from unsee.engine.checkpoint import training_lock\n"
         f"with training_lock(Path({str(copy / stage3)!r}), print):\n"
         "    print('held', flush=True)\n    sys.stdin.readline()\n"
         f"    shutil.copytree({str(landed)!r}, {str(copy / stage3)!r})\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    trained_again: list[str] = []
    monkeypatch.setattr(ft, "run_stage", lambda path, *a, **k: trained_again.append(path.name))
    run = threading.Thread(target=ft.finetune, args=(model, world, tmp_path / "v"),
                           kwargs={"config": "quick", "overrides": RECIPE, "cache_dir": copy})
    run.start()
    run.join(timeout=2)
    assert run.is_alive() and not trained_again  # waiting, not training
    holder.communicate("go\n", timeout=60)
    run.join(timeout=60)
    assert not run.is_alive() and not trained_again
    assert f"{stage3} is being trained by process {holder.pid} on " in capfd.readouterr().err
    record = json.loads((tmp_path / "v" / "unsee_vanilla.json").read_text())
    assert record["stages"][stage3]["cached"] is True  # this run trained nothing
    assert (tmp_path / "v" / "model.safetensors").read_bytes() == (landed / "model.safetensors").read_bytes()


def test_the_record_says_cached_only_of_stages_in_the_cache(world: Path, model: Path, trained: tuple[Path, Path],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage before a cached one that is gone from the cache is not trained again, and not called cached."""
    vanilla, cache = trained
    copy = Path(shutil.copytree(cache, tmp_path / "cache"))
    stage1, stage2, stage3 = sorted(json.loads((vanilla / "unsee_vanilla.json").read_text())["stages"])
    shutil.rmtree(copy / stage1)
    monkeypatch.setattr(ft, "pretrain_vision", lambda *a, **k: pytest.fail("stage 1 trained again"))
    out = ft.finetune(model, world, tmp_path / "v", config="quick", overrides=RECIPE, cache_dir=copy)
    stages = json.loads((out / "unsee_vanilla.json").read_text())["stages"]
    assert {name: s["cached"] for name, s in stages.items()} == {stage1: False, stage2: True, stage3: True}


def test_a_file_system_that_refuses_locks_trains_unlocked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared cache on a file system without flock (Lustre mounted without it) raised from the lock."""
    import errno

    from unsee.engine import checkpoint

    def refused(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoint.fcntl, "flock", refused)
    said: list[str] = []
    assert ft.train_once(tmp_path / "stage1-x", lambda: said.append("trained")) is True
    assert said == ["trained"]
