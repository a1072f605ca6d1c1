"""Hardening a CVF run against relearning: a fresh initialisation of the visual module, mixed in and distilled out."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

from unsee import api
from unsee.data.schema import Suite
from unsee.engine.prepare import one_cycle
from unsee.engine.trainer import TrainConfig, train
from unsee.errors import ConfigError, TrainingError
from unsee.methods import redistil as redistil_module
from unsee.methods.cvf import CVFNCU, CVFConfig
from unsee.methods.redistil import distil_batch, distil_pools, fresh_visual, visual_roots
from unsee.models import Turn, load_adapter

if TYPE_CHECKING:
    from conftest import TinyModels


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_fresh_visual_draws_the_visual_module_anew_repeatably_and_leaves_the_model_alone(
        tiny_models: TinyModels, arch: str) -> None:
    adapter = tiny_models.adapter(arch)
    own = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    fresh = fresh_visual(adapter, seed=0)
    assert set(fresh) == {n for n in own if adapter.group_of(n) != "language"}
    assert all(adapter.group_of(r + ".x") != "language" for r in visual_roots(adapter))
    for n, p in adapter.model.named_parameters():
        assert torch.equal(p, own[n]), n  # copies are drawn, never the model's own weights
    drawn = [n for n in fresh if fresh[n].dim() == 2 and not torch.equal(fresh[n], own[n])]
    assert len(drawn) >= 4, drawn  # the tower's and projector's matrices at least
    again = fresh_visual(adapter, seed=0)
    assert all(torch.equal(again[n], fresh[n]) for n in fresh)
    other = fresh_visual(adapter, seed=1)
    assert any(not torch.equal(other[n], fresh[n]) for n in drawn)


def test_fresh_visual_gives_back_every_device_s_generator_as_it_found_it(
        tiny_models: TinyModels, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its seed must not reseed the run's own draws, on the CPU or on any GPU (faked here)."""
    forked: list[list[int]] = []
    real_fork = torch.random.fork_rng

    def fork(devices: list[int] | None = None, **kw: object) -> object:
        forked.append(list(devices or []))
        return real_fork(devices=[], **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: None)
    monkeypatch.setattr(torch.random, "fork_rng", fork)
    adapter = tiny_models.adapter("tiny-llava")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fresh_visual(adapter, seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert forked == [[0, 1]]


def _run(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]], **kw: float | str) -> tuple[dict, dict]:
    adapter = load_adapter(trained_dir)
    res = train(CVFNCU(CVFConfig(ncu_images=8, **kw)), adapter, suite, turns,  # type: ignore[arg-type]
                TrainConfig(lr=1e-3, max_steps=2, batch_size=2, progress=False, scope="visual"))
    return {n: p.detach().clone() for n, p in adapter.model.named_parameters()}, res.info


def test_redistil_moves_every_visual_weight_distils_back_and_repeats(
        trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    before = {n: p.detach().clone() for n, p in load_adapter(trained_dir).model.named_parameters()}
    plain, _ = _run(trained_dir, suite, turns)
    hardened, info = _run(trained_dir, suite, turns, redistil_steps=8, redistil_batch=8)
    language = [n for n in before if load_adapter(trained_dir).group_of(n) == "language"]
    assert language and all(torch.equal(hardened[n], before[n]) for n in language)
    # NCU freezes the visual biases and norms; the mix moves them, as it moves every visual weight
    frozen = [n for n in before if n not in language and n.endswith(".bias") and torch.equal(plain[n], before[n])]
    fresh = fresh_visual(load_adapter(trained_dir), seed=0)  # the run's seed
    still = [n for n in frozen if torch.equal(hardened[n], before[n])]
    assert frozen and len(still) < len(frozen) / 4, still
    assert all(torch.equal(fresh[n], before[n]) for n in still), still  # a mix of equals, left without a gradient
    stats = info["redistil"]
    assert stats["steps"] == 8 and stats["params"] == sum(before[n].numel() for n in before if n not in language)
    assert stats["last_mse"] < stats["first_mse"], stats
    again, _ = _run(trained_dir, suite, turns, redistil_steps=8, redistil_batch=8)
    assert all(torch.equal(again[n], hardened[n]) for n in hardened)


@pytest.mark.parametrize("steps", [1, 5, 10, 11])
def test_one_cycle_runs_at_any_length_and_nears_its_rate(steps: int) -> None:
    """At 10 steps torch's warm-up of a tenth ends at step 0 and divides by zero: the hardening crashed there."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = one_cycle(opt, 0.1, steps)
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(math.isfinite(r) for r in rates) and (steps < 5 or max(rates) > 0.09)


def test_a_ten_step_hardening_runs(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    _, info = _run(trained_dir, suite, turns, redistil_steps=10, redistil_batch=2)
    assert info["redistil"]["steps"] == 10


@pytest.mark.parametrize("teacher", ["start", "forgotten"])
def test_the_photos_to_keep_go_onto_the_chosen_teacher_and_forget_photos_onto_the_forgotten_model(
        trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]], monkeypatch: pytest.MonkeyPatch,
        teacher: str) -> None:
    seen: list[tuple[list, list]] = []
    real_batch, real_mse = redistil_module.distil_batch, redistil_module.token_mse
    monkeypatch.setattr(redistil_module, "distil_batch", lambda *a: seen.append((real_batch(*a), [])) or seen[-1][0])
    monkeypatch.setattr(redistil_module, "token_mse",
                        lambda s, t: seen[-1][1].extend(x.detach().clone() for x in t) or real_mse(s, t))
    # as in a continual run's later request: the earlier requests' forget photos come along
    earlier = [t.image for t in turns["forget"] if t.image is not None][:2]
    _, info = _run(trained_dir, suite, turns, redistil_steps=1, redistil_batch=32, redistil_teacher=teacher,
                   forgotten_images=earlier)
    assert info["redistil"]["teacher"] == teacher
    (batch, targets), = seen
    start = load_adapter(trained_dir)  # the model the run started from: its reference
    with torch.no_grad():
        before = start.visual_features(start.image_inputs([im for _, im in batch]))
    same = [torch.allclose(t, b, atol=1e-5) for t, b in zip(targets, before, strict=True)]
    kinds = {k for k, _ in batch}
    assert {"forget", "earlier"} <= kinds and len(kinds) >= 3, kinds
    # this request's forget photos are always read by the forgotten model, which the two CVF steps moved
    assert not any(s for (k, _), s in zip(batch, same, strict=True) if k == "forget")
    # under `start` every other photo, the earlier requests' forget photos among them, is read as it was
    kept = [s for (k, _), s in zip(batch, same, strict=True) if k != "forget"]
    assert all(kept) if teacher == "start" else not any(kept)


@pytest.mark.parametrize("bad", [{"redistil_alpha": 0.0}, {"redistil_alpha": 1.5}, {"redistil_steps": -1},
                                 {"redistil_batch": 0}, {"redistil_teacher": "vanilla"},
                                 {"redistil_earlier": -0.1}, {"redistil_earlier": 0.6}])
def test_redistil_refuses_settings_that_mean_nothing(trained_dir: Path, suite: Suite,
                                                     turns: dict[str, list[Turn]], bad: dict) -> None:
    with pytest.raises(ConfigError, match="redistil"):
        _run(trained_dir, suite, turns, **{"redistil_steps": 1, **bad})


@pytest.mark.parametrize("scope", ["projector", "vision_tower"])  # lora: cvf_ncu's null space refuses it first
def test_redistil_refuses_a_scope_that_keeps_part_of_the_visual_module(world: Path, model_dir: Path, tmp_path: Path,
                                                                        suite: Suite, turns: dict[str, list[Turn]],
                                                                        scope: str) -> None:
    """The hardening moves the whole tower and projector: under a narrower scope the run would change
    weights the user kept fixed, and report the scope's count. Refused before a model loads."""
    with pytest.raises(ConfigError, match=f"redistil_steps moves the whole visual module.*scope '{scope}'"):
        api.unlearn("cvf_ncu", model_dir, world, tmp_path / "out", forget="forget_15",
                    overrides=[f"scope={scope}", "redistil_steps=2", "max_steps=1", "progress=false"],
                    evaluate_after=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="redistil_steps moves the whole visual module"):  # a config built in code
        adapter = load_adapter(model_dir)
        train(CVFNCU(CVFConfig(ncu_images=8, redistil_steps=2)), adapter, suite, turns,
              TrainConfig(max_steps=1, progress=False, scope=scope))


def test_the_distilled_photos_hold_every_share_and_the_earlier_requests_forget_photos(
        make_image: Callable[..., Image.Image], monkeypatch: pytest.MonkeyPatch) -> None:
    def stream(n: int, at: int) -> SimpleNamespace:
        return SimpleNamespace(turns=[Turn(prompt="q", answer="a", image=make_image(at + i)) for i in range(n)])

    ctx = SimpleNamespace(streams={"retain": stream(4, 0), "neutral": stream(2, 10), "forget": stream(2, 20)})
    earlier = [make_image(30)]
    pools = distil_pools(ctx, earlier)  # type: ignore[arg-type]
    assert [len(pools[k]) for k in ("retain", "general", "neutral", "forget", "earlier")] == [4, 0, 2, 2, 1]
    assert pools["earlier"] == earlier
    monkeypatch.setattr(redistil_module, "augment", lambda im, rng, strength: im)  # to count photos by source
    batch = distil_batch(pools, 16, np.random.default_rng(0), earlier=0.125)
    share = {id(im): k for k, pool in pools.items() for im in pool}
    assert all(share[id(im)] == k for k, im in batch)  # each photo is labelled with the pool it came from
    counts = {k: sum(share[id(im)] == k for _, im in batch) for k in pools}
    # an eighth each of neutral, forget and earlier photos; the missing general quarter goes to the retained half
    assert counts == {"retain": 10, "general": 0, "neutral": 2, "forget": 2, "earlier": 2}, counts
    more = distil_batch(pools, 16, np.random.default_rng(0), earlier=0.25)
    assert [k for k, _ in more].count("earlier") == 4 and [k for k, _ in more].count("retain") == 8
    alone = distil_batch(distil_pools(ctx, []), 16, np.random.default_rng(0), earlier=0.125)  # type: ignore[arg-type]
    assert [k for k, _ in alone].count("retain") == 12  # a single request: its share is the retained photos'
    assert [im for k, im in alone if k != "retain"] == [im for k, im in batch if k not in ("retain", "earlier")]


def test_redistil_stops_on_a_loss_that_is_not_finite(trained_dir: Path, suite: Suite,
                                                     turns: dict[str, list[Turn]]) -> None:
    with pytest.raises(TrainingError, match="hardening"):
        _run(trained_dir, suite, turns, redistil_steps=3, redistil_lr=1e30, redistil_batch=4)


def test_a_distillation_that_ends_further_from_its_teachers_than_it_began_is_refused() -> None:
    falling = list(np.linspace(0.02, 0.005, 60))
    redistil_module.check_converged(falling)
    redistil_module.check_converged([0.1, 0.2] * 10)  # too short to judge: passes, rising or not
    with pytest.raises(TrainingError, match="did not converge"):
        redistil_module.check_converged([0.097] * 6 + [0.16] * 54)  # the collapse that ended at retain 0.30


def test_redistil_stops_when_its_distillation_diverges(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    before = {n: p.detach().clone() for n, p in load_adapter(trained_dir).model.named_parameters()}
    calls: list[int] = []
    real_mse = redistil_module.token_mse
    # a loss that grows with every step, as the student walks away from its teachers
    monkeypatch.setattr(redistil_module, "token_mse",
                        lambda s, t: calls.append(1) or real_mse(s, t) * 1.1 ** len(calls))
    with pytest.raises(TrainingError, match="did not converge"):
        _run(trained_dir, suite, turns, redistil_steps=50, redistil_batch=4)
    assert len(calls) == 50
    after = {n: p.detach().clone() for n, p in load_adapter(trained_dir).model.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)  # the input model is untouched


def test_redistil_runs_on_bf16_weights_beside_the_null_space(trained_dir: Path, suite: Suite,
                                                            turns: dict[str, list[Turn]]) -> None:
    """NCU trains the linear weights in fp32 master copies and leaves the norms in bf16: the hardening, which
    trains both, reads them under the run's autocast."""
    adapter = load_adapter(trained_dir, dtype="bf16")
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    res = train(CVFNCU(CVFConfig(ncu_images=8, redistil_steps=3, redistil_batch=8)), adapter, suite, turns,
                TrainConfig(lr=1e-3, max_steps=1, batch_size=2, progress=False, scope="visual"))
    after = dict(adapter.model.named_parameters())
    assert {p.dtype for p in after.values()} == {torch.bfloat16}
    assert res.info["redistil"]["steps"] == 3 and np.isfinite(res.info["redistil"]["last_mse"])
    assert any(not torch.equal(after[n], before[n]) for n in before if n.endswith(".bias"))
