"""The training engine: input guards, scopes, the mask and projection hooks, the NaN guard and determinism.

Everything runs on a tiny LLaVA over a tiny built-in world, a couple of steps at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unsee import api
from unsee.data.collate import Stream
from unsee.data.schema import Suite
from unsee.engine.prepare import lr_lambda
from unsee.engine.trainer import Context, TrainConfig, train
from unsee.errors import ConfigError, DataError, OutputExistsError, TrainingError, UnseeError
from unsee.methods.base import BaseMethod, nll
from unsee.methods.baselines import GA
from unsee.models import HFAdapter, Turn, load_adapter
from unsee.report.card import base_model_name

# First three GA losses (lr 1e-3, batch 2, seed 0, scope full) on init_model("tiny-llava", seed=0) over the
# tiny world; a refactor that changes the numbers of the loop, the data order or the loss fails here.
PINNED_GA_LOSSES = (-14.250089645385742, -20.51447296142578, -21.481746673583984)


@pytest.fixture
def adapter(model_dir: Path) -> HFAdapter:
    """A fresh copy of the tiny model for each test (loading it takes a fraction of a second)."""
    return load_adapter(model_dir)


def cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"lr": 1e-3, "max_steps": 2, "batch_size": 2, "progress": False}
    base.update(kw)
    return TrainConfig(**base)


def snapshot(adapter: HFAdapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.model.named_parameters()}


def dir_hashes(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


# ---- guards ----------------------------------------------------------------------------------------
def test_check_forget_rejects_empty_forget_set(suite: Suite) -> None:
    empty = Suite("empty", {"train_forget": [], "train_retain": suite.groups["train_retain"]},
                  forget_entities=(), retain_entities=suite.retain_entities)
    with pytest.raises(DataError, match="empty"):
        api.check_forget(empty)


def test_check_forget_rejects_overlap(suite: Suite) -> None:
    both = dataclasses.replace(suite, retain_entities=(*suite.retain_entities, suite.forget_entities[0]))
    with pytest.raises(DataError, match="overlaps") as e:
        api.check_forget(both)
    assert suite.forget_entities[0] in str(e.value)


@pytest.mark.parametrize("kind", ["empty", "overlap"])
def test_unlearn_refuses_bad_suite_and_writes_nothing(kind: str, suite: Suite, world: Path, model_dir: Path,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "empty":
        bad = Suite("empty", {"train_forget": []}, forget_entities=(), retain_entities=suite.retain_entities)
    else:
        bad = dataclasses.replace(suite, retain_entities=(*suite.retain_entities, *suite.forget_entities))
    monkeypatch.setattr(api, "load_suite", lambda *a, **k: bad)
    out = tmp_path / "out"
    with pytest.raises(DataError):
        api.unlearn("ga", model_dir, world, out, overrides=["max_steps=1", "progress=false"], evaluate_after=False)
    assert not out.exists()


def test_unlearn_refuses_output_dir_with_a_file(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="overwrite"):
        api.unlearn("ga", model_dir, world, out, overrides=["max_steps=1", "progress=false"], evaluate_after=False)
    assert [f.name for f in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_unlearn_refuses_unknown_method(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        api.unlearn("nope", model_dir, world, out, evaluate_after=False)
    assert not out.exists()


def test_unlearn_refuses_unknown_option(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="nope"):
        api.unlearn("ga", model_dir, world, out, overrides=["nope=1"], evaluate_after=False)
    assert not out.exists()


class NaNLoss(BaseMethod):
    name = "nan"

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.tensor(float("nan"), requires_grad=True), {}


def test_nan_loss_raises_and_leaves_model_unchanged(adapter: HFAdapter, suite: Suite,
                                                    turns: dict[str, list[Turn]]) -> None:
    before = snapshot(adapter)
    with pytest.raises(TrainingError, match="step 0") as e:
        train(NaNLoss(), adapter, suite, turns, cfg())
    assert isinstance(e.value, UnseeError)
    assert "nan" in str(e.value)
    for n, p in adapter.model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_unlearn_never_modifies_input_model(world: Path, model_dir: Path, tmp_path: Path) -> None:
    before = dir_hashes(model_dir)
    out = api.unlearn("ga", model_dir, world, tmp_path / "out",
                      overrides=["max_steps=1", "batch_size=2", "progress=false"], evaluate_after=False)
    assert dir_hashes(model_dir) == before
    assert (out / "model" / "model.safetensors").exists()
    assert (out / "run.json").exists()


# ---- scopes ------------------------------------------------------------------------------------------
SCOPE_GROUPS = {"visual": {"vision", "projector"}, "projector": {"projector"}, "language": {"language"}}


@pytest.mark.parametrize("scope", sorted(SCOPE_GROUPS))
def test_scope_trains_only_its_groups(scope: str, adapter: HFAdapter, suite: Suite,
                                      turns: dict[str, list[Turn]]) -> None:
    before = snapshot(adapter)
    train(GA(), adapter, suite, turns, cfg(scope=scope))
    changed_groups = set()
    for group, params in adapter.groups().items():
        for n, p in params:
            if group in SCOPE_GROUPS[scope]:
                if not torch.equal(p, before[n]):
                    changed_groups.add(group)
            else:
                assert torch.equal(p, before[n]), f"{n} ({group}) moved under scope {scope}"
    assert changed_groups == SCOPE_GROUPS[scope]


# ---- the two hooks -------------------------------------------------------------------------------------
def first_linear(adapter: HFAdapter, group: str) -> nn.Linear:
    return next(m for _, m in adapter.linear_modules(group) if isinstance(m, nn.Linear))


class MaskedGA(GA):
    """GA with a random element mask on one weight."""

    def __init__(self, weight: nn.Parameter, mask: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.mask = weight, mask

    def setup(self, ctx: Context) -> None:
        ctx.constraints.masks = {self.weight: self.mask}


class ProjectedGA(GA):
    """GA with a fixed update projection on one weight."""

    def __init__(self, weight: nn.Parameter, proj: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.proj = weight, proj

    def setup(self, ctx: Context) -> None:
        ctx.constraints.projections = {self.weight: self.proj}


def test_mask_hook_keeps_masked_out_elements(adapter: HFAdapter, suite: Suite,
                                             turns: dict[str, list[Turn]]) -> None:
    w = first_linear(adapter, "projector").weight
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    old = w.detach().clone()
    train(MaskedGA(w, mask), adapter, suite, turns, cfg(scope="visual"))
    assert torch.equal(w[~mask], old[~mask])
    assert not torch.equal(w[mask], old[mask])


def test_projection_hook_keeps_update_in_range(adapter: HFAdapter, suite: Suite,
                                               turns: dict[str, list[Turn]]) -> None:
    w = first_linear(adapter, "projector").weight
    d_in, k = w.shape[1], 8
    q, _ = torch.linalg.qr(torch.randn(d_in, k, generator=torch.Generator().manual_seed(2)))
    proj = q @ q.T
    old = w.detach().clone()
    train(ProjectedGA(w, proj), adapter, suite, turns, cfg(scope="visual", max_steps=1))
    delta = (w.detach() - old).double()
    assert delta.norm() > 0
    off = delta @ (torch.eye(d_in, dtype=torch.float64) - proj.double())
    assert off.norm() <= 1e-4 * delta.norm()
    # the update has at most the rank of the projection
    assert torch.linalg.matrix_rank(delta, atol=1e-6 * delta.norm().item()) <= k


class WatchedGA(MaskedGA):
    """MaskedGA that records the watched weight each time its loss is taken."""

    def __init__(self, weight: nn.Parameter, mask: torch.Tensor) -> None:
        super().__init__(weight, mask)
        self.seen: list[torch.Tensor] = []

    def loss(self, ctx: Context, batch: dict[str, list]) -> Any:
        self.seen.append(self.weight.detach().clone())
        return super().loss(ctx, batch)


def test_sharpness_aware_step_takes_the_gradient_rho_uphill_and_comes_back(
        adapter: HFAdapter, model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """sam_rho: a second loss at weights moved rho along the masked gradient, the weights restored exactly before
    the step, masked-out elements untouched; an update other than the plain one."""
    w = first_linear(adapter, "projector").weight
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    start = snapshot(adapter)
    method = WatchedGA(w, mask)
    train(method, adapter, suite, turns, cfg(scope="projector", max_steps=1, sam_rho=0.05))
    assert len(method.seen) == 2
    first, moved = method.seen
    assert torch.equal(first, start[next(n for n, q in adapter.model.named_parameters() if q is w)])
    shift = moved - first
    assert torch.count_nonzero(shift[~mask]) == 0 and torch.count_nonzero(shift[mask]) > 0
    # every projector weight moves, together rho in L2; the watched one is a part of it
    assert 0 < shift.norm() <= 0.05 + 1e-6
    after = w.detach().clone()
    assert torch.equal(after[~mask], first[~mask])
    plain_adapter = load_adapter(model_dir)
    pw = first_linear(plain_adapter, "projector").weight
    train(MaskedGA(pw, mask), plain_adapter, suite, turns, cfg(scope="projector", max_steps=1))
    assert not torch.equal(pw.detach(), after)
    with pytest.raises(ConfigError, match="sam_rho"):
        cfg(sam_rho=-1).validate()


class SplitGA(MaskedGA):
    """GA on the forget answers plus descent on the retain answers, given in two parts; records the watched
    weight at each call, and at the first the gradient of each part with respect to it."""

    def __init__(self, weight: nn.Parameter, mask: torch.Tensor) -> None:
        super().__init__(weight, mask)
        self.seen: list[torch.Tensor] = []
        self.grads: dict[str, torch.Tensor] = {}

    def loss(self, ctx: Context, batch: dict[str, list]) -> Any:
        return BaseMethod.loss(self, ctx, batch)

    def split_loss(self, ctx: Context, batch: dict[str, list]) -> Any:
        self.seen.append(self.weight.detach().clone())
        f, r = -nll(ctx.adapter, batch["forget"]), nll(ctx.adapter, batch["forget"][:1])
        if len(self.seen) == 1:
            for name, part in (("forget", f), ("retain", r)):
                self.grads[name] = torch.autograd.grad(part, self.weight, retain_graph=True)[0] * self.mask
        return f, r, {}


@pytest.mark.parametrize("terms", ["forget", "all"])
def test_sharpness_aware_step_on_the_forgetting_alone_moves_along_its_gradient(
        adapter: HFAdapter, suite: Suite, turns: dict[str, list[Turn]], terms: str) -> None:
    """sam_terms=forget: the uphill move follows the forgetting part's masked gradient alone, not the whole
    objective's; sam_terms=all follows the sum. The weights come back either way."""
    w = first_linear(adapter, "projector").weight
    mask = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.5
    method = SplitGA(w, mask)
    train(method, adapter, suite, turns, cfg(scope="projector", max_steps=1, sam_rho=0.05, sam_terms=terms))
    assert len(method.seen) == 2
    shift = (method.seen[1] - method.seen[0]).flatten()
    assert 0 < shift.norm() <= 0.05 + 1e-6
    g = method.grads
    cos = {name: float(F.cosine_similarity(shift, d.flatten(), dim=0)) for name, d in
           (("forget", g["forget"]), ("all", g["forget"] + g["retain"]))}
    assert cos[terms] > 0.999
    assert cos["all" if terms == "forget" else "forget"] < 0.99


class WholeGA(GA):
    """GA whose loss comes whole, not in parts."""

    split_loss = None

    def loss(self, ctx: Context, batch: dict[str, list]) -> Any:
        return -nll(ctx.adapter, batch["forget"]), {}


def test_sharpness_aware_forgetting_alone_is_refused_for_a_loss_given_whole(
        adapter: HFAdapter, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    with pytest.raises(ConfigError, match="sam_terms=forget"):
        train(WholeGA(), adapter, suite, turns, cfg(scope="projector", max_steps=1, sam_rho=0.05, sam_terms="forget"))



class NaNAtSecondStep(GA):
    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = super().loss(ctx, batch)
        return (loss * float("nan") if ctx.step == 1 else loss), parts


def test_a_lora_run_that_fails_leaves_a_plain_model_holding_its_last_good_state(
        adapter: HFAdapter, suite: Suite, turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    """Left wrapped in peft, the model saved only its adapters and failed to train again."""
    with pytest.raises(TrainingError, match="step 1"):
        train(NaNAtSecondStep(), adapter, suite, turns, cfg(scope="lora", lora_dropout=0.0))
    assert not hasattr(adapter.model, "peft_config")
    assert all("lora_" not in n and torch.isfinite(p).all() for n, p in adapter.model.named_parameters())
    train(GA(), adapter, suite, turns, cfg(scope="lora", lora_dropout=0.0))  # and it trains again


def test_a_run_leaves_the_callers_random_streams_and_kernels_as_it_found_them(
        adapter: HFAdapter, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """A run seeds its own streams; a notebook's draws after it were the same every time."""
    import random

    import numpy as np

    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    expected = (random.random(), float(np.random.random()), float(torch.rand(())))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    deterministic = torch.are_deterministic_algorithms_enabled()
    train(GA(), adapter, suite, turns, cfg())
    assert (random.random(), float(np.random.random()), float(torch.rand(()))) == expected
    assert torch.are_deterministic_algorithms_enabled() == deterministic

# ---- determinism -----------------------------------------------------------------------------------------
def test_same_seed_gives_same_losses(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    runs = [train(GA(), load_adapter(model_dir), suite, turns, cfg(max_steps=3, seed=0)).losses for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0] == pytest.approx(list(PINNED_GA_LOSSES), rel=1e-4)


def _lengthy_turns(n: int) -> tuple[list[Turn], list[int]]:
    lengths = [(i * 7919) % 23 + 1 for i in range(n)]
    return [Turn(None, f"q{i}", "a" * k) for i, k in enumerate(lengths)], lengths


def test_grouped_stream_visits_every_turn_once_an_epoch_in_short_padding_batches() -> None:
    items, lengths = _lengthy_turns(103)  # not a multiple of the batch: an incomplete batch carries over
    plain = Stream(items, 4, seed=1)
    grouped = Stream(items, 4, seed=1, lengths=lengths, window=5)

    seen: list[int] = []
    pad = {"plain": 0, "grouped": 0}
    for name, stream in (("plain", plain), ("grouped", grouped)):
        for _ in range(25 * 3):  # three epochs of 103 turns, less a remainder
            batch = next(stream)
            assert len(batch) == 4
            rows = [len(t.answer) for t in batch]
            pad[name] += max(rows) * len(rows) - sum(rows)
            if name == "grouped":
                seen += [int(t.prompt[1:]) for t in batch]
    # what was served and what still waits make whole epochs: every turn, none dropped or doubled
    counts = torch.bincount(torch.tensor(seen + grouped._order), minlength=103)
    assert counts.min() == counts.max() == 3
    assert pad["grouped"] < 0.5 * pad["plain"]


def test_grouped_stream_is_seeded_shuffled_and_resumable() -> None:
    items, lengths = _lengthy_turns(64)

    def prompts(stream: Stream, n: int) -> list[list[str]]:
        return [[t.prompt for t in next(stream)] for _ in range(n)]

    a, b = (Stream(items, 4, seed=3, lengths=lengths) for _ in range(2))
    first = prompts(a, 7)
    assert first == prompts(b, 7)
    # batches are not served shortest first: the grouped batches are shuffled
    heads = [min(lengths[int(p[1:])] for p in batch) for batch in first]
    assert heads != sorted(heads)
    state = a.state_dict()
    c = Stream(items, 4, seed=99, lengths=lengths)
    c.load_state_dict(*state)
    assert prompts(c, 20) == prompts(a, 20)
    with pytest.raises(ValueError, match="lengths"):
        Stream(items, 4, seed=0, lengths=lengths[:-1])


def test_training_lengths_are_the_rows_of_the_training_batch(adapter: HFAdapter,
                                                              turns: dict[str, list[Turn]]) -> None:
    sample = [*turns["forget"][:3], Turn(None, "Where was Ada born?", "in a very long answer indeed"),
              dataclasses.replace(turns["forget"][0], follow=(("And the pet?", "a cat"),))]
    lengths = adapter.training_lengths(sample)
    assert lengths == [int(adapter.training_batch([t])["attention_mask"].sum()) for t in sample]
    assert lengths[-1] > lengths[0]


def test_group_by_length_trains_on_the_same_data_in_another_order(model_dir: Path, suite: Suite,
                                                                  turns: dict[str, list[Turn]]) -> None:
    plain = train(GA(), load_adapter(model_dir), suite, turns, cfg(max_steps=3)).losses
    grouped = [train(GA(), load_adapter(model_dir), suite, turns, cfg(max_steps=3, group_by_length=True)).losses
               for _ in range(2)]
    assert grouped[0] == grouped[1]
    assert grouped[0] != plain


def test_min_steps_lifts_a_small_request_and_max_steps_still_wins(adapter: HFAdapter, suite: Suite,
                                                                   turns: dict[str, list[Turn]]) -> None:
    from_epochs = train(GA(), adapter, suite, turns, cfg(max_steps=0, epochs=0.01)).steps
    assert from_epochs == 1
    assert train(GA(), adapter, suite, turns, cfg(max_steps=0, epochs=0.01, min_steps=3)).steps == 3
    assert train(GA(), adapter, suite, turns, cfg(max_steps=2, epochs=0.01, min_steps=3)).steps == 2
    with pytest.raises(ConfigError, match="min_steps"):
        cfg(min_steps=-1).validate()


def test_warm_up_is_the_nearest_number_of_steps_and_rises_to_the_peak() -> None:
    """A third of 375 steps (CLEAR's one epoch of three) rounded down to 124; no warm-up step runs at a zero rate."""
    clear = lr_lambda(cfg(warmup_ratio=0.3333, schedule="linear"), 375)
    assert [clear(k) for k in (0, 123, 124)] == [pytest.approx(1 / 125), pytest.approx(124 / 125), 1.0]
    assert clear(125) == 1.0 > clear(126)  # the decay starts from the peak once the warm-up is over
    five = lr_lambda(cfg(warmup_ratio=0.2, schedule="constant"), 10)
    assert [five(k) for k in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_unlearn_with_eraser_writes_steering_and_no_checkpoint(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """MLLMEraser's result is the base model plus a steering file: no weights, no card, zero trainable cost."""
    out = api.unlearn("eraser", model_dir, world, tmp_path / "out", overrides=["max_items=4", "sweep=false"],
                      evaluate_after=False)  # its sweep is test_eraser's
    assert (out / "steering.safetensors").is_file()
    assert not (out / "model").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "eraser" and run["metrics"] == {}
    assert run["cost"]["trainable_params"] == 0 and run["cost"]["optimizer_state_bytes"] == 0
    assert run["config"]["max_items"] == 4 and "scope" not in run["config"]


def test_unlearn_writes_a_card_and_training_cost(world: Path, model_dir: Path, tmp_path: Path) -> None:
    out = api.unlearn("ga", model_dir, world, tmp_path / "out",
                      overrides=["max_steps=1", "batch_size=2", "progress=false"], evaluate_after=False)
    run = json.loads((out / "run.json").read_text())
    card = (out / "model" / "README.md").read_text()
    # The card names the base model as whoever receives it can read it: never a local path.
    assert "(ga)" in card and str(model_dir) not in card
    assert f"- Model: `{base_model_name(str(model_dir))[0]}`" in card
    assert run["cost"]["trainable_params"] == sum(p.numel() for p in load_adapter(model_dir).model.parameters())
    assert run["cost"]["optimizer_state_bytes"] > 0
    assert run["config"]["scope"] == "full" and run["config"]["max_steps"] == 1


def test_a_resumed_run_s_cost_counts_the_training_before_its_stop(world: Path, model_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The seconds the checkpoint kept (its training says how many) reach results.json and the card."""
    from unsee import unlearning

    real = unlearning.unlearn_adapter

    def resumed(*a: Any, **k: Any) -> Any:
        res, resolved = real(*a, **k)
        res.resumed_s = 50.0
        return res, resolved

    monkeypatch.setattr(unlearning, "unlearn_adapter", resumed)
    out = api.unlearn("ga", model_dir, world, tmp_path / "out",
                      overrides=["max_steps=1", "batch_size=2", "progress=false"], evaluate_after=False)
    cost = json.loads((out / "run.json").read_text())["cost"]
    assert cost["resumed_s"] == 50.0 and 50.0 <= cost["wall_s"] < 50.0 + 60
    assert f"- Wall time: {cost['wall_s']:.1f} s" in (out / "model" / "README.md").read_text()


# ---- checkpoints -----------------------------------------------------------------------------------
class _Interrupted(Exception):
    """Stands in for a kill: raised from inside the loop, after some checkpoints were written."""


class StopAt(GA):
    """GA that raises at step ``at``, as a run killed mid-stage would stop."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        if ctx.step == self.at:
            raise _Interrupted
        return super().loss(ctx, batch)


def test_an_interrupted_run_resumes_from_its_checkpoint_with_the_same_result(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    from unsee.engine.checkpoint import has_checkpoint

    steps = dict(max_steps=7, seed=3, schedule="cosine", warmup_ratio=0.2, eval_every=2)

    def on_eval(step: int) -> dict:  # the figures a run records every eval_every steps
        return {"forget": step / 10}

    whole = load_adapter(model_dir)
    ref = train(GA(), whole, suite, turns, cfg(**steps), on_eval=on_eval)

    ckpt = tmp_path / "ckpt"
    resumed = load_adapter(model_dir)
    with pytest.raises(_Interrupted):
        train(StopAt(5), resumed, suite, turns, cfg(**steps, checkpoint_dir=str(ckpt), checkpoint_every=2),
              on_eval=on_eval)
    assert has_checkpoint(ckpt)
    resumed = load_adapter(model_dir)  # a new process: the weights on disk are the initial ones
    res = train(StopAt(-1), resumed, suite, turns, cfg(**steps, checkpoint_dir=str(ckpt), checkpoint_every=2),
                on_eval=on_eval)
    assert res.losses == ref.losses  # steps 0-3 come from the checkpoint, 4-6 were trained again
    # the figures taken before the stop come back with the checkpoint
    assert res.info["evals"] == ref.info["evals"] and [e["step"] for e in ref.info["evals"]] == [2, 4, 6]
    a, b = snapshot(whole), snapshot(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    # and so does the time steps 0-3 took, which a cost of the resumed process alone would leave out
    assert ref.resumed_s == 0 and res.resumed_s > 0
    from unsee.provenance import CostMeter

    with CostMeter() as meter:
        meter.resumed_s = res.resumed_s
    assert meter.cost()["resumed_s"] == round(res.resumed_s, 3) <= meter.cost()["wall_s"]
    assert "resumed_s" not in CostMeter().cost()


def test_a_checkpoint_of_other_parameters_is_refused(model_dir: Path, suite: Suite,
                                                       turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Interrupted):
        train(StopAt(3), load_adapter(model_dir), suite, turns,
              cfg(max_steps=5, checkpoint_dir=str(ckpt), checkpoint_every=2))
    with pytest.raises(TrainingError, match="another run"):
        train(GA(), load_adapter(model_dir), suite, turns,
              cfg(max_steps=5, scope="projector", checkpoint_dir=str(ckpt), checkpoint_every=2))


def test_eval_every_records_the_course_of_a_run(world: Path, model_dir: Path, tmp_path: Path) -> None:
    """``eval_every`` is an engine option every training method takes: its figures land in the run."""
    out = api.unlearn("ga", model_dir, world, tmp_path / "out", forget="forget_15",
                      overrides=["max_steps=3", "eval_every=2", "progress=false"], evaluate_after=False)
    evals = json.loads((out / "run.json").read_text())["info"]["evals"]
    assert [e["step"] for e in evals] == [2]
    assert set(evals[0]) == {"step", "forget", "retain"} and all(0 <= evals[0][g] <= 1 for g in ("forget", "retain"))


@pytest.mark.parametrize("method", ["cvf_only", "vkd"])
def test_a_visual_method_trains_the_visual_module_whatever_the_scope(method: str, world: Path, model_dir: Path,
                                                                     tmp_path: Path) -> None:
    """Their losses read the visual module alone: a wider scope moves nothing more, and the trainable count
    says so; a scope without a visual weight is one line, not an autograd error."""
    with pytest.raises(ConfigError, match="leaves nothing to train"):
        api.unlearn(method, model_dir, world, tmp_path / "lang", forget="forget_15",
                    overrides=["max_steps=1", "scope=language", "progress=false"], evaluate_after=False)
    assert not (tmp_path / "lang").exists()
    full = api.unlearn(method, model_dir, world, tmp_path / "full", forget="forget_15",
                       overrides=["max_steps=1", "scope=full", "progress=false"], evaluate_after=False)
    adapter = load_adapter(model_dir)
    visual = sum(p.numel() for g in ("vision", "projector") for _, p in adapter.groups()[g])
    trainable = json.loads((full / "run.json").read_text())["cost"]["trainable_params"]
    assert 0 < trainable <= visual
    if method == "vkd":  # its saliency mask chooses among the linear layers' weights; nothing else can move,
        # the patch-embedding convolution included
        linear = sum(m.weight.numel() for g in ("vision", "projector") for _, m in adapter.linear_modules(g)
                     if isinstance(m, nn.Linear))
        assert trainable == linear < visual


def test_an_evaluation_mid_run_finds_the_parked_language_model_back(model_dir: Path, suite: Suite,
                                                                    turns: dict[str, list[Turn]],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On an accelerator a visual method parks the language model on the CPU; ``eval_every`` scores answers
    with it, so it comes back for each evaluation and is parked again after (recorded here on the CPU, where
    nothing is parked otherwise)."""
    from unsee.engine import trainer
    from unsee.methods.vkd import VKD

    calls: list[str] = []
    monkeypatch.setattr(trainer, "park_language", lambda adapter, device, uses: calls.append(f"park {uses}") or [])
    monkeypatch.setattr(trainer, "unpark", lambda parked, device: calls.append("unpark"))
    train(VKD(), load_adapter(model_dir), suite, turns, cfg(scope="visual", max_steps=2, eval_every=1),
          on_eval=lambda step: calls.append("eval") or {"forget": 0.5})
    assert calls == ["park False", "unpark", "eval", "park False", "unpark", "eval", "park False", "unpark"]


def test_a_checkpoint_keeps_each_gpu_s_random_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dropout on a GPU draws from the GPU's generator: a resumed run gets it back as it was at the checkpoint,
    or its later steps would draw the masks of its first ones (two GPUs stood in for by tensors here)."""
    from unsee.engine import checkpoint

    states = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in states])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: states.__setitem__(slice(None), list(new)))
    w = nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    checkpoint.save_checkpoint(tmp_path / "c", step=3, params={"w": w}, optimizer=opt)
    states[:] = [torch.zeros(8, dtype=torch.uint8)] * 2  # the generators moved on, or a new process seeded them
    assert checkpoint.load_checkpoint(tmp_path / "c", params={"w": w}, optimizer=opt)[0] == 3
    assert [int(s[0]) for s in states] == [1, 2]


def test_a_model_loaded_on_the_cpu_is_scored_and_attacked_on_the_accelerator(model_dir: Path, suite: Suite,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Training moves the model to the accelerator; scoring and the audits do too, or a 7B model would be scored
    on the host of a GPU machine while its record named the GPU (meta stands in for the GPU here)."""
    from unsee import runs
    from unsee.audit import attacks
    from unsee.engine import distributed

    monkeypatch.setattr(distributed, "accelerator_device", lambda: torch.device("meta"))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # a sharded launch: a whole model may not fit one device
    assert distributed.on_accelerator(load_adapter(model_dir)).device.type == "cpu"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert distributed.on_accelerator(load_adapter(model_dir)).device.type == "meta"
    moved: list[str] = []
    monkeypatch.setattr(distributed, "on_accelerator", lambda a: moved.append("evaluation") or a)
    monkeypatch.setattr(attacks, "on_accelerator", lambda a: moved.append("attacks") or a)
    adapter = load_adapter(model_dir)
    runs.evaluation(adapter, suite, groups=("forget",), max_items=1, generation=False, progress=False)
    attacks.run_attacks(adapter, suite, [])
    assert moved == ["evaluation", "attacks"]


def _our_bars(err: str) -> list[str]:
    """The lines of unsee's own bars (training, evaluation); transformers' loading bars follow
    ``HF_HUB_DISABLE_PROGRESS_BARS``."""
    return [line for line in err.replace("\r", "\n").splitlines() if line.startswith(("ga:", "eval "))]


@pytest.mark.parametrize(("progress", "shown"), [("true", True), ("false", False)])
def test_a_run_told_progress_false_shows_no_bar_while_it_evaluates_either(
        progress: str, shown: bool, world: Path, model_dir: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    api.unlearn("ga", model_dir, world, tmp_path / "out", overrides=["max_steps=2", "batch_size=2",
                                                                      f"progress={progress}"], max_items=2)
    ours = _our_bars(capfd.readouterr().err)
    assert any(line.startswith("ga:") for line in ours) is shown
    assert any(line.startswith("eval forget") for line in ours) is shown


def test_tqdm_disable_in_the_environment_hides_every_bar_of_a_run(world: Path, model_dir: Path,
                                                                  tmp_path: Path) -> None:
    """What a batch job sets to keep bars out of its log. tqdm reads it when imported, hence a process of its own."""
    done = subprocess.run([sys.executable, "-m", "unsee", "unlearn", "--method", "ga", "--model", str(model_dir),
                           "--data", str(world), "--out", str(tmp_path / "out"), "--max-items", "2",
                           "max_steps=2", "batch_size=2"], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _our_bars(done.stderr) == []
