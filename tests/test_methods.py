"""The training methods on a tiny LLaVA: baselines forget, MMUnlearner's masks, CVF's loss and NCU's projection."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unsee import api
from unsee.data import collate
from unsee.data.augment import augment, backdrop
from unsee.data.collate import image_of
from unsee.data.schema import Suite
from unsee.engine.gradients import after_relearning
from unsee.engine.prepare import frozen_copy
from unsee.engine.trainer import Context, TrainConfig, make_streams, train, unique_images
from unsee.errors import ConfigError
from unsee.methods import method_class, ncu
from unsee.methods.base import images_of, nll, pooled
from unsee.methods.cvf import CVFNCU, CVFConfig, CVFOnly, info_nce
from unsee.methods.mmunlearner import MMUnlearner, MMUnlearnerConfig, ratio_masks
from unsee.methods.ncu import contrast_space, null_space
from unsee.models import HFAdapter, Turn, load_adapter
from unsee.models.base import joined
from unsee.models.blocks import features_and_hidden, vision_blocks
from unsee.runs import save_model

if TYPE_CHECKING:
    from conftest import TinyModels
    from PIL import Image


def cfg(**kw: Any) -> TrainConfig:
    base: dict[str, Any] = {"lr": 1e-3, "max_steps": 3, "batch_size": 2, "progress": False}
    base.update(kw)
    return TrainConfig(**base)


@torch.no_grad()
def eval_nll(adapter: HFAdapter, turns: list[Turn]) -> float:
    with adapter.eval_mode():
        return float(nll(adapter, turns))


# ---- baselines ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ga", "graddiff", "kl", "npo"])
def test_baseline_raises_forget_nll(name: str, trained_dir: Path, suite: Suite,
                                    turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(trained_dir)
    forget, retain = turns["forget"], turns["retain"][:16]
    f0, r0 = eval_nll(adapter, forget), eval_nll(adapter, retain)
    cls = method_class(name)
    train(cls(), adapter, suite, turns, cfg())
    f1, r1 = eval_nll(adapter, forget), eval_nll(adapter, retain)
    assert f1 > f0, f"{name}: forget NLL {f0:.3f} -> {f1:.3f}"
    if name == "graddiff":
        # Three steps of ascent move the shared weights; the retain descent only anchors them. On this model GA
        # alone takes the retain NLL from ~9.8 to ~18 (+80%) while GradDiff moves it by ~2%: a 25% band is loose
        # enough for numeric noise and still catches a retain term that does nothing.
        assert abs(r1 - r0) <= 0.25 * r0, f"retain NLL {r0:.3f} -> {r1:.3f}"
        assert f1 - f0 > r1 - r0


# ---- MMUnlearner ----------------------------------------------------------------------------------------
def test_ratio_masks_match_hand_computation(trained_dir: Path, turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(trained_dir)
    forget, retain = [turns["forget"][:2]], [turns["retain"][:2]]
    masks = ratio_masks(adapter, forget, retain, retain)
    w = next(m for _, m in adapter.linear_modules("projector") if isinstance(m, nn.Linear)).weight
    (gf,) = torch.autograd.grad(-nll(adapter, forget[0]), [w])
    (gp,) = torch.autograd.grad(nll(adapter, retain[0]), [w])
    expected = (gf.float() ** 2 + 1e-15) / (gp.float() ** 2 + 1e-15) >= 1.0
    assert masks[w].dtype == torch.bool and masks[w].shape == w.shape
    assert torch.equal(masks[w], expected)
    assert 0 < expected.float().mean() < 1


def test_mmunlearner_reports_mask_fraction(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(trained_dir)
    res = train(MMUnlearner(MMUnlearnerConfig(fisher_batches=1)), adapter, suite, turns, cfg(max_steps=1))
    assert 0 < res.info["mask_fraction"] < 1
    assert res.info["retain_steps_per_forget_step"] >= 1


def test_mmunlearner_clips_the_whole_gradient_then_masks_it(trained_dir: Path, suite: Suite,
                                                          turns: dict[str, list[Turn]],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Its forget step's gradient is clipped to norm 1 and then masked, so the step it takes is shorter than 1
    by what the mask removed; masked first, it would be scaled up to norm 1 from the salient weights alone."""
    taken: list[float] = []
    real = torch.optim.AdamW.step

    def step(self: torch.optim.AdamW, *args: Any, **kw: Any) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        taken.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return real(self, *args, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    adapter = load_adapter(trained_dir)
    train(MMUnlearner(MMUnlearnerConfig(fisher_batches=1)), adapter, suite, turns, cfg(max_steps=1, lr=1e-4))
    assert 0 < taken[0] < 0.999, taken  # the forget step: the raw gradient's norm is far above 1 here


def test_a_lora_run_is_scored_as_it_ships(trained_dir: Path, suite: Suite, tmp_path: Path) -> None:
    """In bf16, LoRA factors held apart from the rounded weights scored another model than the merged one saved."""
    adapter = load_adapter(trained_dir, dtype="bf16")
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    api.unlearn_adapter("graddiff", adapter, suite, overrides=["max_steps=2", "scope=lora", "lr=1e-3",
                                                               "lora_dropout=0", "progress=false"])
    assert not hasattr(adapter.model, "merge_and_unload")  # folded into the weights before any scoring
    now = dict(adapter.model.named_parameters())
    assert now.keys() == before.keys() and any(not torch.equal(now[n], p) for n, p in before.items())
    save_model(adapter, tmp_path / "m", "tiny-llava")
    shipped = dict(load_adapter(tmp_path / "m", dtype="bf16").model.named_parameters())
    assert all(torch.equal(shipped[n], p) for n, p in now.items())


def test_mmunlearner_refuses_lora(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """Its masks select single weights, which LoRA's factors cannot carry: refused from a config and in code."""
    with pytest.raises(ConfigError, match="LoRA"):
        api.method_configs("mmunlearner", None, ["scope=lora"])
    adapter = load_adapter(trained_dir)
    before = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    with pytest.raises(ConfigError, match="LoRA"):
        train(MMUnlearner(MMUnlearnerConfig(fisher_batches=1)), adapter, suite, turns, cfg(max_steps=2, scope="lora"))
    api.method_configs("vkd", None, ["scope=lora", "saliency=false"])  # no mask, nothing to refuse
    # the null space constrains each weight's update: under LoRA it fell on the factors, and the merged
    # update left it; CVF without it may use LoRA, but not with the hardening, which moves the whole module
    for method in ("cvf_ncu", "ncu_only"):
        with pytest.raises(ConfigError, match="null-space constraint"):
            api.method_configs(method, None, ["scope=lora"])
    api.method_configs("cvf_only", None, ["scope=lora"])
    api.method_configs("cvf_ncu", None, ["scope=lora", "ncu=false"])  # without its null space it is cvf_only
    with pytest.raises(ConfigError, match="redistil_steps moves the whole visual module.*scope 'lora'"):
        api.method_configs("cvf_only", None, ["scope=lora", "redistil_steps=2"])
    with pytest.raises(ConfigError, match="LoRA"):
        api.method_configs("vkd", None, ["scope=lora"])
    # refused before a step: the model in memory (LoRA-wrapped by then) keeps every base weight
    base = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
            for n, p in adapter.model.named_parameters() if "lora_" not in n}
    assert base.keys() == before.keys() and all(torch.equal(p, before[n]) for n, p in base.items())


def test_saliency_masks_cover_linear_weights_alone(trained_dir: Path, turns: dict[str, list[Turn]]) -> None:
    """The Fisher-ratio masks are over the weights of linear layers; the patch-embedding convolution is not one."""
    adapter = load_adapter(trained_dir)
    convs = [m.weight for g in ("vision", "projector") for _, m in adapter.linear_modules(g)
             if not isinstance(m, nn.Linear)]
    assert convs  # the tiny tower embeds patches with a convolution
    masks = ratio_masks(adapter, [turns["forget"][:2]], [turns["retain"][:2]], [turns["retain"][:2]])
    assert not any(c in masks for c in convs)
    linear = [m.weight for g in ("vision", "projector", "language") for _, m in adapter.linear_modules(g)
              if isinstance(m, nn.Linear)]
    assert set(masks) == set(linear)


def test_mmunlearner_epoch_reads_each_forget_question_once(trained_dir: Path, suite: Suite,
                                                           turns: dict[str, list[Turn]]) -> None:
    """A forget step reads the forget stream alone and a retain step the retain stream alone, and the Fisher
    batches leave the streams where they were: one epoch of forget steps is one pass over the forget set."""
    seen: dict[str, list[int]] = {"forget": [], "retain": []}

    class Recording(MMUnlearner):
        def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
            for name, rows in batch.items():
                seen[name] += [id(t) for t in rows]
            return super().loss(ctx, batch)

    forget = turns["forget"][:8]
    data = {**turns, "forget": forget}
    res = train(Recording(MMUnlearnerConfig(fisher_batches=2, max_retain_ratio=2)), load_adapter(trained_dir), suite,
                data, cfg(max_steps=0, epochs=1, batch_size=2, lr=1e-5))
    assert res.info["retain_steps_per_forget_step"] == 2
    assert res.steps == 12  # four forget steps, each followed by two retain steps
    assert sorted(seen["forget"]) == sorted(id(t) for t in forget)
    assert len(seen["retain"]) == 2 * 4 * 2
    # min_steps floors all steps, the retain steps counted: below the run's own 12 it changes nothing
    for floor, steps in ((5, 12), (12, 12), (15, 15)):
        again = train(MMUnlearner(MMUnlearnerConfig(fisher_batches=2, max_retain_ratio=2)), load_adapter(trained_dir),
                      suite, data, cfg(max_steps=0, epochs=1, batch_size=2, lr=1e-5, min_steps=floor))
        assert again.steps == steps


def test_stream_preview_leaves_the_stream_where_it_was(turns: dict[str, list[Turn]]) -> None:
    streams = make_streams({"forget": turns["forget"]}, cfg(batch_size=3))
    ahead = streams["forget"].preview(4)
    assert [[id(t) for t in b] for b in ahead] == [[id(t) for t in next(streams["forget"])] for _ in range(4)]


# ---- CVF ------------------------------------------------------------------------------------------------
def cvf_context(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> tuple[HFAdapter, dict, Context]:
    """A fresh model, a batch of two photos a stream, and a step context with a frozen visual reference."""
    adapter = load_adapter(model_dir)
    batch = {k: turns[k][:2] for k in ("forget", "retain", "neutral")}
    return adapter, batch, Context(adapter, suite, cfg(), {}, reference=frozen_copy(adapter, visual_only=True))


def cvf_losses(ctx: Context, batch: dict, configs: dict[Any, CVFConfig]) -> dict[Any, tuple[torch.Tensor, dict]]:
    """One CVF loss (and its parts) per config, on the same batch and reference, without a gradient."""
    out = {}
    for key, config in configs.items():
        method = CVFNCU(config)
        method.setup(ctx)
        with torch.no_grad():
            out[key] = method.loss(ctx, batch)
    return out


def test_info_nce_falls_under_sgd() -> None:
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(4, 8, generator=g, requires_grad=True)
    pos = F.normalize(torch.randn(4, 2, 8, generator=g), dim=-1)
    neg = F.normalize(torch.randn(4, 5, 8, generator=g), dim=-1)
    opt = torch.optim.SGD([raw], lr=0.5)
    losses = []
    for _ in range(5):
        loss = info_nce(F.normalize(raw, dim=-1), pos, neg, tau=0.1)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_info_nce_prefers_identical_positives() -> None:
    eye = torch.eye(6)
    anchor = eye[:2]  # two unit anchors
    same = anchor.unsqueeze(1)  # positive identical to its anchor
    ortho = eye[2:4].unsqueeze(1)  # positive orthogonal to its anchor
    neg = eye[4:6].unsqueeze(0).expand(2, -1, -1)
    assert info_nce(anchor, same, neg, 0.1) < info_nce(anchor, ortho, neg, 0.1)


def test_cvf_ncu_touches_only_the_visual_module(trained_dir: Path, suite: Suite,
                                                turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(trained_dir)
    before = {n: p.detach().clone() for n, p in adapter.groups()["language"]}
    res = train(CVFNCU(CVFConfig(ncu_images=8)), adapter, suite, turns, cfg(scope="visual", max_steps=2))
    for n, p in adapter.groups()["language"]:
        assert torch.equal(p, before[n]), n
        assert p.grad is None, n
    layers = {n for n, _ in adapter.linear_modules("vision") + adapter.linear_modules("projector")}
    assert set(res.info["null_space_rank"]) == layers
    assert all(isinstance(r, int) and r >= 1 for r in res.info["null_space_rank"].values())


def test_ncu_projection_preserves_retained_outputs(trained_dir: Path, suite: Suite,
                                                   turns: dict[str, list[Turn]]) -> None:
    """One projected step moves a layer's output on the covariance's images less than an unprojected one."""
    n_images = 8
    images = [t.image for t in turns["retain"] if t.image is not None][:n_images]

    def relative_change(method: CVFOnly) -> float:
        adapter = load_adapter(trained_dir)
        name, layer = next((n, m) for n, m in adapter.linear_modules("vision") if isinstance(m, nn.Linear))
        inputs: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda _m, args, _o: inputs.append(args[0].detach().clone()))
        with torch.no_grad(), adapter.eval_mode():
            adapter.visual_features(adapter.image_inputs(images))
        hook.remove()
        x = inputs[0].reshape(-1, inputs[0].shape[-1])
        w0 = layer.weight.detach().clone()
        train(method, adapter, suite, turns, cfg(scope="visual", max_steps=1))
        dw = layer.weight.detach() - w0
        assert dw.norm() > 0, name
        return float((x @ dw.T).norm() / (x @ w0.T).norm())

    projected = relative_change(CVFNCU(CVFConfig(energy=0.05, ncu_images=n_images)))
    free = relative_change(CVFOnly())
    assert projected < free, (projected, free)
    assert projected < 0.25 * free, (projected, free)  # ~0.004 vs ~0.2 here


def test_contrast_space_keeps_the_directions_only_the_forget_inputs_use() -> None:
    """Retained inputs spread over six dimensions, weakest in the last two; forget inputs sit on
    the fifth. The null space keeps both weak dimensions; the contrast space only the fifth."""
    gen = torch.Generator().manual_seed(0)
    scale = torch.tensor([3.0, 3.0, 2.0, 2.0, 0.1, 0.1], dtype=torch.float64)
    retained = torch.randn(400, 6, generator=gen, dtype=torch.float64) * scale
    forget = torch.randn(50, 6, generator=gen, dtype=torch.float64) * 0.05
    forget[:, 4] += 1.0
    cov = (retained.T @ retained, 400)
    proj = contrast_space(cov, (forget.T @ forget, 50), rank=1 / 6)
    assert torch.allclose(proj, proj.T, atol=1e-6) and torch.allclose(proj @ proj, proj, atol=1e-5)
    assert round(torch.trace(proj).item()) == 1
    assert proj[4, 4] > 0.99 and proj[5, 5] < 0.01
    null = null_space(*cov, energy=0.01)
    assert null[4, 4] > 0.9 and null[5, 5] > 0.9  # the null space cannot tell the two apart
    # covariances gathered on an accelerator stay there (meta stands in for one): no tensor of the CPU's joins them
    on = (cov[0].to("meta"), 400), (forget.T.to("meta") @ forget.to("meta"), 50)
    assert contrast_space(*on, rank=1 / 6).is_meta


def test_cvf_ncu_contrast_subspace_installs_a_rank_of_the_asked_fraction(trained_dir: Path, suite: Suite,
                                                                         turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(trained_dir)
    res = train(CVFNCU(CVFConfig(ncu_images=8, subspace="contrast", contrast_rank=0.25)), adapter, suite, turns,
                cfg(scope="visual", max_steps=1))
    layers = dict(adapter.linear_modules("vision") + adapter.linear_modules("projector"))
    for name, rank in res.info["null_space_rank"].items():
        layer = layers[name]
        width = layer.weight[0].numel()  # a conv's unfolded input, a linear's input
        assert rank == max(1, round(0.25 * width)), (name, rank, width)
    with pytest.raises(ConfigError, match="contrast_rank"):
        CVFConfig(contrast_rank=1.5).validate()


def test_cvf_augment_draws_fresh_views_each_step(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """With augment the forget photos differ from step to step (the loss moves); without, it repeats."""
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    losses = {}
    for strength in (0.0, 1.0):
        method = CVFNCU(CVFConfig(augment=strength, ncu=False))
        method.setup(ctx)
        values = []
        for step in (0, 1):
            ctx.step = step
            with torch.no_grad():
                values.append(method.loss(ctx, batch)[0].item())
        losses[strength] = values
    assert losses[0.0][0] == losses[0.0][1]
    assert losses[1.0][0] != losses[1.0][1]


def test_pose_jitter_is_drawn_after_the_crops_and_leaves_them_as_they_were_when_off(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """``augment_pose`` rotates and squeezes each crop; at 0 the crops, and every draw after them, are those of
    before, so a config without it trains as it did."""
    photo = image_of(suite.group("train_forget")[0])
    plain, off = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(np.asarray(augment(photo, plain, 1.0)), np.asarray(augment(photo, off, 1.0, pose=0.0)))
    assert plain.random() == off.random()
    posed = augment(photo, np.random.default_rng(3), 1.0, pose=1.0)
    assert posed.size == photo.size and posed.mode == photo.mode
    assert not np.array_equal(np.asarray(posed), np.asarray(augment(photo, np.random.default_rng(3), 1.0)))
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    losses = []
    for pose in (0.0, 1.0):  # the same step draws the same crops, posed or not
        method = CVFNCU(CVFConfig(augment=1.0, augment_pose=pose, ncu=False))
        method.setup(ctx)
        with torch.no_grad():
            losses.append(method.loss(ctx, batch)[0].item())
    assert losses[0] != losses[1]
    with pytest.raises(ConfigError, match="augment_pose=-1.0: must not be negative"):
        CVFConfig(augment_pose=-1.0).validate()


def test_a_new_background_keeps_the_head_and_takes_the_donors_corners(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """``augment_background`` pastes each forget photo's centre onto a neutral photo: the head's pixels stay, the
    corners are the donor's; off, it draws nothing, so the crops after it are those of before."""
    photo, donor = image_of(suite.group("train_forget")[0]), turns["neutral"][0].image
    rng = np.random.default_rng(5)
    assert backdrop([photo], [donor], rng, 0.0)[0] is photo and backdrop([photo], [], rng, 1.0)[0] is photo
    assert rng.random() == np.random.default_rng(5).random()
    (swapped,) = backdrop([photo], [donor], np.random.default_rng(5), 1.0)
    a, b, d = (np.asarray(im.convert("RGB"), np.int16) for im in (photo, swapped, donor))
    h, w = a.shape[:2]
    assert swapped.size == photo.size and swapped.mode == photo.mode
    assert np.array_equal(b[h // 2, w // 2], a[h // 2, w // 2])
    assert np.array_equal(b[0, 0], d[0, 0]) and np.array_equal(b[-1, -1], d[-1, -1])
    assert not np.array_equal(a[0, 0], d[0, 0])  # the check above can fail
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    losses = cvf_losses(ctx, batch, {p: CVFConfig(augment=1.0, augment_background=p, ncu=False) for p in (0.0, 1.0)}
                        | {"without": CVFConfig(augment=1.0, ncu=False)})
    assert losses["without"][0].item() == losses[0.0][0].item() != losses[1.0][0].item()
    with pytest.raises(ConfigError, match="augment_background=-0.5: must not be negative"):
        CVFConfig(augment_background=-0.5).validate()
    with pytest.raises(ConfigError, match=r"augment_background is a probability in \[0, 1\], got 2.0"):
        CVFConfig(augment_background=2.0).validate()


def test_cvf_retained_augmentation_draws_fresh_views_and_leaves_the_forget_draws_alone(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """augment_retain crops the retained photos afresh each step, for the student and the reference alike, keeps
    no augmented photo in the caches, and leaves the forget photos' crops as they were without it."""
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    steps = {}
    for strength in (0.0, 1.0):
        method = CVFNCU(CVFConfig(augment=1.0, augment_retain=strength, ncu=False))
        method.setup(ctx)
        steps[strength] = []
        for step in (0, 1):
            ctx.step = step
            with torch.no_grad():
                steps[strength].append(method._prepare(ctx, batch))
        if strength:
            cached = {id(image) for image, _ in [*method._pixels.values(), *method._ref.values()]}
            assert not cached & {id(image) for s in steps[strength] for image in s.r_img}
    plain, crops = steps[0.0], steps[1.0]
    for a, b in zip(plain, crops, strict=True):
        assert torch.equal(a.f_in["pixel_values"], b.f_in["pixel_values"])
        assert not torch.equal(a.r_in["pixel_values"], b.r_in["pixel_values"])
        assert not torch.equal(a.ref_r, b.ref_r)  # the reference saw the same crops as the student
    assert torch.equal(plain[0].r_in["pixel_values"], plain[1].r_in["pixel_values"])
    assert not torch.equal(crops[0].r_in["pixel_values"], crops[1].r_in["pixel_values"])
    with pytest.raises(ConfigError, match="augment_retain and lambda_dv"):
        CVFNCU(CVFConfig(augment_retain=1.0, lambda_dv=1.0, ncu=False)).setup(ctx)
    for strengths in ({"augment": -1.0}, {"augment_retain": -0.5}):
        with pytest.raises(ConfigError, match="must not be negative"):
            CVFNCU(CVFConfig(**strengths, ncu=False)).setup(ctx)


def test_cvf_reference_cache_changes_nothing(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """The reference features of retained and neutral photos, and the retained photos' pixels, are computed
    once and reused: a loss drawn from the caches equals one computed afresh, and the second call runs the
    reference, and the image processor, on the forget photos alone."""
    adapter = load_adapter(model_dir)
    batch = {k: turns[k][:2] for k in ("forget", "retain", "neutral")}
    ref = frozen_copy(adapter, visual_only=True)
    seen: list[int] = []
    processed: list[int] = []
    ref.visual_features = (  # type: ignore[method-assign]
        lambda inputs, f=ref.visual_features: seen.append(inputs["pixel_values"].shape[0]) or f(inputs))
    adapter.image_inputs = (  # type: ignore[method-assign]
        lambda images, f=adapter.image_inputs: processed.append(len(images)) or f(images))
    ctx = Context(adapter, suite, cfg(), {}, reference=ref)
    cached = CVFNCU(CVFConfig(ncu=False))
    cached.setup(ctx)
    with torch.no_grad():
        first = cached.loss(ctx, batch)[0].item()
        seen.clear()
        processed.clear()
        again = cached.loss(ctx, batch)[0].item()
        assert seen == processed == [len(images_of(batch["forget"]))]
        fresh = CVFNCU(CVFConfig(ncu=False))
        fresh.setup(ctx)
        assert fresh.loss(ctx, batch)[0].item() == first == again


def test_cvf_reference_encodes_the_forget_and_the_retained_crops_in_one_call(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """With the retained photos cropped afresh, a step runs the frozen reference once over both sets of crops,
    and each crop gets the tokens a call of its own gives."""
    adapter = load_adapter(model_dir)
    batch = {k: turns[k][:2] for k in ("forget", "retain", "neutral")}
    ref = frozen_copy(adapter, visual_only=True)
    seen: list[int] = []
    ref.visual_features = (  # type: ignore[method-assign]
        lambda inputs, f=ref.visual_features: seen.append(inputs["pixel_values"].shape[0]) or f(inputs))
    ctx = Context(adapter, suite, cfg(), {}, reference=ref)
    method = CVFNCU(CVFConfig(augment=1.0, augment_retain=1.0, ncu=False))
    method.setup(ctx)
    with torch.no_grad():
        method._prepare(ctx, batch)  # the neutral photos' tokens are cached at the first step
        seen.clear()
        ctx.step = 1
        s = method._prepare(ctx, batch)
        assert seen == [len(s.f_img) + len(s.r_img)]
        for inputs, tokens in ((s.f_in, s.ref_f_tok), (s.r_in, s.ref_r_tok)):
            for joint, alone in zip(tokens, ref.visual_features(inputs), strict=True):
                torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-6)


def test_cvf_holds_already_forgotten_images_in_continual_runs(model_dir: Path, suite: Suite,
                                                             turns: dict[str, list[Turn]]) -> None:
    """With earlier targets' images, each step adds their token distillation onto the reference: zero while the
    student still equals the reference, ``lambda_k`` times its value once the student has moved."""
    adapter, batch, ctx = cvf_context(model_dir, suite, turns)
    done = images_of(turns["retain"][-3:])
    out = {}
    for weight in (0.0, 3.0):
        method = CVFNCU(CVFConfig(ncu=False, lambda_k=weight, forgotten_images=done))
        method.setup(ctx)
        with torch.no_grad():
            assert weight == 0 or method.loss(ctx, batch)[1]["distil_k"] < 1e-10
            first_linear = next(m for _, m in adapter.linear_modules("projector") if isinstance(m, nn.Linear))
            first_linear.weight.add_(0.05)
            out[weight] = method.loss(ctx, batch)
            first_linear.weight.sub_(0.05)
    assert "distil_k" not in out[0.0][1] and out[3.0][1]["distil_k"] > 0
    assert out[3.0][0].item() == pytest.approx(out[0.0][0].item() + 3.0 * out[3.0][1]["distil_k"], rel=1e-5)


PINNED_CVF_NCU_LOSSES = (2.4678516387939453, 5.0035905838012695, 3.120828151702881)


def test_cvf_ncu_loss_trajectory_is_pinned(trained_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """The first steps of the headline method, pinned, so that a refactor which changes its numbers fails."""
    res = train(CVFNCU(CVFConfig(ncu_images=8, augment=1.0)), load_adapter(trained_dir), suite, turns,
                cfg(scope="visual", max_steps=3, seed=0))
    assert res.losses == pytest.approx(list(PINNED_CVF_NCU_LOSSES), rel=1e-4)


def test_cvf_knows_whose_photo_each_is_past_the_cap_of_decoded_photos(model_dir: Path, world: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """CVF tells photos apart by object. Past the cap of decoded photos kept, the cache starts again; a photo
    decoded again there was a second object of one file, and to CVF a stranger's photo."""
    monkeypatch.setattr(collate, "_RECENT_CAP", 1)
    monkeypatch.setattr(collate, "_RECENT", {})
    suite = api.load_suite(world, "forget_10")
    turns = api.training_turns(suite)
    _, _, ctx = cvf_context(model_dir, suite, turns)
    method = CVFNCU(CVFConfig(ncu=False))
    method.setup(ctx)
    forget = [t.image for t in turns["forget"] if t.image is not None]
    retain = [t.image for t in turns["retain"] if t.image is not None]
    assert len({id(im) for im in forget}) > 1 and retain
    assert all(id(im) in method._person for im in forget) and all(id(im) in method._retained for im in retain)
    examples = [e for e in suite.groups["train_forget"] if e.has_image]
    assert all(image_of(e) is image_of(e) for e in examples)  # one object a file, each call clearing the rest


def test_cvf_token_term_adds_its_loss(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    out = cvf_losses(ctx, batch, {w: CVFConfig(lambda_t=w, ncu=False) for w in (0.0, 2.0)})
    assert "token_f" not in out[0.0][1] and out[2.0][1]["token_f"] > 0
    assert out[2.0][0].item() == pytest.approx(out[0.0][0].item() + 2.0 * out[2.0][1]["token_f"], rel=1e-5)


def test_cvf_person_token_targets_pair_each_forget_person_with_a_neutral_person_of_their_own(
        model_dir: Path, world: Path) -> None:
    """token_target=person: a forget person's photos share one target, the mean reference token of their
    seeded neutral partner's photos; two forget people get two partners, and the term is not the mean target's."""
    suite = api.load_suite(world, "forget_r1")  # a request of two people
    turns = api.training_turns(suite)
    adapter, batch, ctx = cvf_context(model_dir, suite, turns)
    method = CVFNCU(CVFConfig(lambda_t=2.0, ncu=False, token_target="person"))
    method.setup(ctx)
    by_person: dict[str, list[Turn]] = {}
    for t in turns["forget"]:
        by_person.setdefault(method._person[id(t.image)], []).append(t)
    first, second = sorted(by_person)[:2]
    batch["forget"] = by_person[first][:2] + by_person[second][:2]
    targets = method._paired_targets(ctx.reference, batch["forget"])
    assert torch.equal(targets[0], targets[1]) and torch.equal(targets[2], targets[3])
    assert not torch.allclose(targets[0], targets[2])
    neutral = [e for e in suite.groups["neutral"] if e.has_image]
    means = {p: torch.cat(method._reference(ctx.reference, [image_of(e) for e in neutral if e.entity == p])).mean(0)
             for p in {e.entity for e in neutral}}
    assert any(torch.allclose(targets[0], m) for m in means.values())
    with torch.no_grad():
        paired = method.loss(ctx, batch)[1]["token_f"]
    shared = cvf_losses(ctx, batch, {"mean": CVFConfig(lambda_t=2.0, ncu=False)})["mean"][1]["token_f"]
    assert paired > 0 and paired != pytest.approx(shared, rel=1e-3)
    again = CVFNCU(CVFConfig(lambda_t=2.0, ncu=False, token_target="person"))
    again.setup(ctx)
    assert torch.equal(again._paired_targets(ctx.reference, batch["forget"]), targets)  # seeded
    # some of the photos (the simulated relearning's unseen half) are each held to their own person's target
    s = method._prepare(ctx, batch)
    with torch.no_grad():
        tokens = adapter.visual_features(s.f_in)
        _, part = method._forget_terms(s, tokens[2:], rows=[2, 3])
    by_hand = torch.stack([F.mse_loss(t.float(), targets[i].expand_as(t)) for i, t in zip((2, 3), tokens[2:],
                                                                                       strict=True)]).mean()
    assert part is not None and part.item() == pytest.approx(by_hand.item(), rel=1e-6)
    relearning = CVFNCU(CVFConfig(lambda_t=2.0, ncu=False, token_target="person", relearn_sim_steps=1))
    relearning.setup(ctx)
    assert relearning.loss(ctx, batch)[1]["relearned_f"] > 0  # both options together


def test_cvf_split_loss_parts_are_its_forgetting_and_retaining_terms(model_dir: Path, suite: Suite,
                                                                     turns: dict[str, list[Turn]]) -> None:
    """split_loss: the ``*_f`` terms on one side, the rest on the other, the two summing to the loss; forget_loss
    gives the first alone."""
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    method = CVFNCU(CVFConfig(lambda_t=2.0, ncu=False))
    method.setup(ctx)
    with torch.no_grad():
        loss, parts = method.loss(ctx, batch)
        forget, retain, split_parts = method.split_loss(ctx, batch)
        alone = method.forget_loss(ctx, batch)  # without the retained photos' pass
    assert alone.item() == pytest.approx(forget.item(), rel=1e-6)
    assert split_parts == pytest.approx(parts, rel=1e-6)
    assert forget.item() == pytest.approx(parts["cvf_f"] + 2.0 * parts["token_f"], rel=1e-5)
    assert retain is not None
    assert set(parts) - {"cvf_f", "token_f"} == {"cvf_r", "distil"}
    assert retain.item() == pytest.approx(parts["cvf_r"] + parts["distil"], rel=1e-5)  # both weighted 1
    assert loss.item() == pytest.approx(forget.item() + retain.item(), rel=1e-5)


@pytest.mark.parametrize("tau", [0.0, -0.1])
def test_cvf_refuses_a_temperature_that_is_not_positive_before_training(tau: float, model_dir: Path, suite: Suite,
                                                                         turns: dict[str, list[Turn]]) -> None:
    _, _, ctx = cvf_context(model_dir, suite, turns)
    with pytest.raises(ConfigError, match="tau must be positive"):
        CVFNCU(CVFConfig(tau=tau, ncu=False)).setup(ctx)


def test_ncu_only_builds_its_null_space_from_each_photo_once_as_cvf_ncu_does(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]], monkeypatch: pytest.MonkeyPatch) -> None:
    """ncu_only reads questions, several a photo: its covariance must still take each retained and general photo
    once, the set cvf_ncu (which reads photos) takes, not the first photos repeated up to the cap."""
    seen: dict[str, list[int]] = {}
    covariances = ncu.input_covariances
    for name, streams in (("ncu_only", {k: turns[k] for k in ("forget", "retain", "general")}),
                          ("cvf_ncu", {k: unique_images(turns[k]) for k in ("forget", "retain", "general")})):
        _, _, ctx = cvf_context(model_dir, suite, turns)
        ctx.streams = make_streams(streams, cfg())
        monkeypatch.setattr(ncu, "input_covariances", lambda a, images, n=name, **kw: seen.setdefault(n, [
            id(i) for i in images]) and covariances(a, images, **kw))
        ncu.constrain_to_retained(ctx, ncu.NCUConfig(ncu_images=10_000))
    assert len(turns["retain"]) > len(unique_images(turns["retain"]))  # questions: photos repeat
    assert len(set(seen["ncu_only"])) == len(seen["ncu_only"]) and set(seen["ncu_only"]) == set(seen["cvf_ncu"])
    assert any(id(t.image) in seen["ncu_only"] for t in turns["general"])  # the general photos too
    shipped = {m: api.method_configs(m, None, [])[1].ncu_images for m in ("ncu_only", "cvf_ncu")}
    assert shipped["ncu_only"] == shipped["cvf_ncu"]


def test_cvf_known_distillation_reads_the_known_photos_and_only_when_asked(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]], monkeypatch: pytest.MonkeyPatch) -> None:
    """lambda_known: the known people's training photos become a stream, their tokens are distilled onto the
    reference (zero while the student is the reference, positive once it moves), they join NCU's covariance with
    known_covariance only; off, nothing of them is read; asked for on a benchmark without them, refused."""
    assert turns["known"] and all(t.image is not None for t in turns["known"])
    assert "known" not in CVFNCU().optional_streams
    adapter, batch, ctx = cvf_context(model_dir, suite, turns)
    ctx.streams = make_streams({k: unique_images(turns[k]) for k in ("forget", "retain", "known")}, cfg())
    batch["known"] = turns["known"][:2]
    method = CVFNCU(CVFConfig(lambda_known=3.0, ncu_images=10_000))
    assert method.optional_streams == ("general", "known")
    counted: list[int] = []
    covariances = ncu.input_covariances
    monkeypatch.setattr(ncu, "input_covariances", lambda a, images, **kw: counted.append(len(images))
                        or covariances(a, images, **kw))
    method.setup(ctx)
    CVFNCU(CVFConfig(lambda_known=3.0, ncu_images=10_000, known_covariance=True)).setup(ctx)
    photos = {k: len(ctx.streams[k].turns) for k in ("retain", "known")}
    assert counted == [photos["retain"], photos["retain"] + photos["known"]] and photos["known"] > 0
    with torch.no_grad():
        _, parts = method.loss(ctx, batch)
        assert parts["distil_known"] == pytest.approx(0.0, abs=1e-10)
        for p in adapter.linear_modules("projector")[0][1].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        loss, parts = method.loss(ctx, batch)
    assert parts["distil_known"] > 0
    method_off = CVFNCU(CVFConfig(ncu=False))
    method_off.setup(ctx)
    with torch.no_grad():
        base, base_parts = method_off.loss(ctx, batch)
    assert "distil_known" not in base_parts
    assert loss.item() == pytest.approx(base.item() + 3.0 * parts["distil_known"], rel=1e-5)
    ctx.streams.pop("known")
    with pytest.raises(ConfigError, match="lambda_known"):
        CVFNCU(CVFConfig(lambda_known=1.0)).setup(ctx)
    with pytest.raises(ConfigError, match="negative"):
        CVFNCU(CVFConfig(lambda_known=-1.0)).setup(ctx)


# no attack; an attack inside a ball of radius 0; an attack inside the default ball
ADV_SETTINGS: dict[str, dict] = {"clean": {}, "point": {"adv_steps": 2, "adv_eps": 0.0}, "ball": {"adv_steps": 2}}


def test_cvf_adversarial_photos_raise_the_forget_loss_and_a_ball_of_radius_0_changes_nothing(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """The inner attack climbs the forget InfoNCE; a ball of radius 0 leaves the step exactly as without it.
    (The ball's bound is the PGD audit's, tested in tests/test_attacks.py: both use ``linf_ascent``.)"""
    adapter, batch, ctx = cvf_context(model_dir, suite, turns)
    out = cvf_losses(ctx, batch, {key: CVFConfig(ncu=False, **kw) for key, kw in ADV_SETTINGS.items()})
    assert out["point"][0].item() == pytest.approx(out["clean"][0].item(), rel=1e-6)
    assert out["ball"][1]["cvf_f"] > out["clean"][1]["cvf_f"]
    assert out["ball"][1]["cvf_r"] == pytest.approx(out["clean"][1]["cvf_r"], rel=1e-6)
    assert all(p.grad is None for p in adapter.model.parameters())


def test_cvf_adversarial_ascent_climbs_the_token_term_too(model_dir: Path, suite: Suite,
                                                          turns: dict[str, list[Turn]]) -> None:
    """With token-level merging on, the inner attack climbs the whole forget loss: the attacked
    photos' half of the forget terms is higher than the clean photos' alone."""
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    out = cvf_losses(ctx, batch, {key: CVFConfig(ncu=False, lambda_t=5.0, **kw) for key, kw in ADV_SETTINGS.items()})

    def forget(key: str) -> float:
        return out[key][1]["cvf_f"] + 5.0 * out[key][1]["token_f"]

    assert forget("point") == pytest.approx(forget("clean"), rel=1e-6)
    assert forget("ball") > forget("clean")
    assert out["ball"][1]["token_f"] > out["clean"][1]["token_f"]  # the attacked tokens count in the token term


def test_after_relearning_takes_the_gradient_at_the_moved_weights_and_puts_them_back() -> None:
    """Two sign steps down ``restore`` move each weight by eps/2 twice; the value and the gradient
    are ``forget``'s there, and the weights come back bit for bit."""
    w = nn.Parameter(torch.tensor([0.3, -0.2, 0.0001]))
    before = w.detach().clone()
    target = torch.tensor([1.0, -1.0, 1.0])
    out = after_relearning([w], restore=lambda: ((w - target) ** 2).sum(), forget=lambda: (w**3).sum(),
                           steps=2, eps=0.1)
    assert torch.equal(w.detach(), before)
    moved = before + torch.tensor([0.1, -0.1, 0.1])  # every weight walked 0.1 toward the target
    assert out.item() == pytest.approx(float((moved**3).sum()), rel=1e-6)
    out.backward()
    assert w.grad is not None and torch.allclose(w.grad, 3 * moved**2)


def test_cvf_relearning_aware_term_splits_the_batch_by_person(model_dir: Path, suite: Suite) -> None:
    """The simulated relearning restores some people and scores the others: no person is on both
    sides, the loss grows by exactly its term, and the student's weights are unchanged after it.
    (The tiny world forgets one person; here two retained people are forgotten beside them.)"""
    groups = dict(suite.groups)
    groups["train_forget"] = [*groups["train_forget"], *[e for e in groups["train_retain"]
                                                         if e.entity in suite.retain_entities[:2]]]
    wider = dataclasses.replace(suite, groups=groups)
    forget = unique_images(api.training_turns(wider)["forget"])
    batch = {"forget": forget, "retain": forget[:1], "neutral": forget[:1]}
    adapter = load_adapter(model_dir)
    ctx = Context(adapter, wider, cfg(), {}, reference=frozen_copy(adapter, visual_only=True))
    method = CVFNCU(CVFConfig(ncu=False, relearn_sim_steps=2))
    method.setup(ctx)
    seen, unseen = method._halves(forget, step=0)
    person = [method._person[id(t.image)] for t in forget]
    assert len(set(person)) == 3 and sorted(seen + unseen) == list(range(len(forget)))
    assert seen and unseen and not {person[i] for i in seen} & {person[i] for i in unseen}
    before = [p.detach().clone() for p in adapter.model.parameters()]
    out = cvf_losses(ctx, batch, {"off": CVFConfig(ncu=False), "on": CVFConfig(ncu=False, relearn_sim_steps=2)})
    assert all(torch.equal(p, b) for p, b in zip(adapter.model.parameters(), before, strict=True))
    assert "relearned_f" not in out["off"][1] and out["on"][1]["relearned_f"] > 0
    assert out["on"][0].item() == pytest.approx(out["off"][0].item() + out["on"][1]["relearned_f"], rel=1e-5)


def test_cvf_relearning_aware_forgetting_of_one_person_is_refused(model_dir: Path, suite: Suite) -> None:
    """One person cannot be split into a relearned half and a forgotten one: the option would do nothing."""
    assert len({e.entity for e in suite.groups["train_forget"]}) == 1
    adapter = load_adapter(model_dir)
    ctx = Context(adapter, suite, TrainConfig(scope="visual"), {}, reference=frozen_copy(adapter, visual_only=True))
    with pytest.raises(ConfigError, match="forgets one person: set relearn_sim_steps=0"):
        CVFNCU(CVFConfig(ncu=False, relearn_sim_steps=2)).setup(ctx)


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_vision_block_tokens_come_per_image_from_the_same_pass(arch: str, tiny_models: TinyModels,
                                                               make_image: Callable[..., Image.Image]) -> None:
    adapter = tiny_models.adapter(arch)
    images = [make_image(i) for i in range(3)]
    inputs = adapter.image_inputs(images)
    with torch.no_grad():
        feats, (hidden, first) = features_and_hidden(adapter, inputs, [-1, 0])
        alone = features_and_hidden(adapter, adapter.image_inputs(images[1:2]), [-1])[1][0][0]
    assert len(hidden) == len(first) == len(feats) == 3
    assert all(torch.equal(f, g) for f, g in zip(feats, adapter.visual_features(inputs), strict=True))
    assert torch.allclose(hidden[1], alone, atol=1e-5)  # image 1's own tokens, not a slice of another's
    assert not torch.allclose(hidden[0], hidden[1]) and not torch.allclose(hidden[0], first[0])
    assert len(vision_blocks(adapter)) >= 2


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2-vl", "tiny-qwen2.5-vl"])
def test_one_visual_pass_over_two_image_batches_gives_each_batch_its_own_tokens(
        arch: str, tiny_models: TinyModels, make_image: Callable[..., Image.Image]) -> None:
    """CVF encodes the forget and the retained photos in one pass, their processor outputs concatenated:
    on every architecture each image's tokens come out as in a pass of its own batch."""
    adapter = tiny_models.adapter(arch)
    first, second = adapter.image_inputs([make_image(0)]), adapter.image_inputs([make_image(1), make_image(2)])
    with torch.no_grad():
        joint = adapter.visual_features(joined([first, second]))
        apart = adapter.visual_features(first) + adapter.visual_features(second)
    assert len(joint) == len(apart) == 3
    assert all(torch.allclose(j, a, atol=1e-5) for j, a in zip(joint, apart, strict=True))


def test_cvf_runs_the_student_once_over_forget_and_retained_photos(model_dir: Path, suite: Suite,
                                                                   turns: dict[str, list[Turn]]) -> None:
    """A step's student tokens come from one visual pass, and its loss and gradient are those of two passes."""
    adapter, batch, ctx = cvf_context(model_dir, suite, turns)
    passes: list[int] = []
    adapter.visual_features = (  # type: ignore[method-assign]
        lambda inputs, f=adapter.visual_features: passes.append(inputs["pixel_values"].shape[0]) or f(inputs))
    method = CVFNCU(CVFConfig(ncu=False, lambda_t=2.0))
    method.setup(ctx)
    params = [p for p in adapter.model.parameters() if p.requires_grad]

    def loss_and_grads() -> tuple[float, list[torch.Tensor]]:
        loss = method.loss(ctx, batch)[0]
        return loss.item(), [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]

    joint, joint_grads = loss_and_grads()
    assert len(passes) == 1 and passes[0] == sum(adapter.image_inputs([im])["pixel_values"].shape[0]
                                                 for im in images_of(batch["forget"] + batch["retain"]))
    method._student_tokens = lambda c, s: (  # type: ignore[method-assign]
        c.adapter.visual_features(s.f_in), c.adapter.visual_features(method._inputs(c.adapter, s.r_img)))
    apart, apart_grads = loss_and_grads()
    assert len(passes) == 3
    assert joint == pytest.approx(apart, rel=1e-5)
    assert joint_grads and all(torch.allclose(g, h, rtol=1e-4, atol=1e-7)
                               for g, h in zip(joint_grads, apart_grads, strict=True))


def test_cvf_tower_terms_add_their_losses(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]]) -> None:
    """The tower-level merge and the retained photos' tower distillation enter the loss with their weights;
    the distillation is zero on an untouched model, whose tower is the reference's."""
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    out = cvf_losses(ctx, batch, {"off": CVFConfig(ncu=False), "on": CVFConfig(ncu=False, lambda_v=2.0, lambda_dv=3.0),
                                  "early": CVFConfig(ncu=False, lambda_v=2.0, merge_block=0)})
    on, off = out["on"], out["off"]
    assert "tower_f" not in off[1] and on[1]["tower_f"] > 0 and on[1]["distil_v"] == pytest.approx(0.0, abs=1e-10)
    assert on[0].item() == pytest.approx(off[0].item() + 2.0 * on[1]["tower_f"], rel=1e-5)
    assert out["early"][1]["tower_f"] != pytest.approx(on[1]["tower_f"])


def test_a_reference_on_another_device_hands_its_block_tokens_to_the_models(model_dir: Path,
                                                                             turns: dict[str, list[Turn]]) -> None:
    """Under reference_device=cpu the features came back on the model's device and the block tokens did not:
    lambda_v and lambda_dv would compare tensors on two devices (``meta`` stands in for the GPU here)."""
    reference = frozen_copy(load_adapter(model_dir), visual_only=True)
    reference.output_device = torch.device("meta")
    feats, hidden = features_and_hidden(reference, reference.image_inputs(images_of(turns["forget"][:2])), [-1])
    assert {t.device.type for t in [*feats, *hidden[0]]} == {"meta"}


def test_tower_terms_read_the_block_the_language_model_reads(model_dir: Path, suite: Suite,
                                                           turns: dict[str, list[Turn]]) -> None:
    """LLaVA-1.5 feeds its language model the second-to-last vision block (``vision_feature_layer`` -2, where
    layer 0 is the patch embedding): lambda_v's default block is that one; a block the tower lacks is one line."""
    from unsee.models.blocks import read_block

    adapter = load_adapter(model_dir)
    n = len(vision_blocks(adapter))
    config = adapter.model.config
    assert read_block(adapter) == -1 and config.vision_feature_layer == -1  # the tiny model reads the last
    for layer, block in ((-2, -2), (2, 1), (n, n - 1)):
        config.vision_feature_layer = layer
        assert read_block(adapter) == block
    for layer in (0, [-2, -1]):
        config.vision_feature_layer = layer
        with pytest.raises(ConfigError, match="set merge_block"):
            read_block(adapter)
    config.vision_feature_layer = -2
    _, _, ctx = cvf_context(model_dir, suite, turns)
    ctx.adapter = adapter
    method = CVFNCU(CVFConfig(ncu=False, lambda_v=1.0))
    method.setup(ctx)
    assert method.block == -2
    for block in (n, -n - 1):
        with pytest.raises(ConfigError, match="not a vision block"):
            CVFNCU(CVFConfig(ncu=False, lambda_v=1.0, merge_block=block)).setup(ctx)
    CVFNCU(CVFConfig(ncu=False, merge_block=n)).setup(ctx)  # read only by the tower terms, which are off


def test_cvf_retained_anchors_take_other_peoples_photos_as_negatives(model_dir: Path, suite: Suite,
                                                                    turns: dict[str, list[Turn]]) -> None:
    """A retained photo's negatives are the forget photos and the other people's retained photos: another view
    of the same person is not pushed away. Checked against InfoNCE computed by hand on the step's features."""
    owner = {id(image_of(e)): e.entity for e in suite.groups["train_retain"] if e.has_image}
    photos = unique_images(turns["retain"])
    by_person: dict[str, list[Turn]] = {}
    for t in photos:
        by_person.setdefault(owner[id(t.image)], []).append(t)
    twice = next(views for views in by_person.values() if len(views) >= 2)
    other = next(views[0] for views in by_person.values() if views[0] not in twice)
    _, batch, ctx = cvf_context(model_dir, suite, turns)
    batch["retain"] = [twice[0], twice[1], other]
    method = CVFNCU(CVFConfig(ncu=False))
    method.setup(ctx)
    with torch.no_grad():
        s = method._prepare(ctx, batch)
        l_r, _, _ = method._retain(ctx, s, None)
        s_r = pooled(ctx.adapter.visual_features(s.r_in))
    negatives = [[s.ref_r[2]], [s.ref_r[2]], [s.ref_r[0], s.ref_r[1]]]  # by hand: each anchor's other people
    by_hand = torch.stack([info_nce(s_r[i : i + 1], s.ref_r[i : i + 1].unsqueeze(1),
                                    torch.stack([*neg, *s.all_f]).unsqueeze(0), 0.1)
                           for i, neg in enumerate(negatives)])
    assert l_r.item() == pytest.approx(by_hand.mean().item(), rel=1e-5)
    everyone = torch.stack([info_nce(s_r[i : i + 1], s.ref_r[i : i + 1].unsqueeze(1),
                                     torch.cat([s.ref_r[torch.arange(3) != i], s.all_f]).unsqueeze(0), 0.1)
                            for i in range(3)])
    assert l_r.item() != pytest.approx(everyone.mean().item(), rel=1e-5)  # the batch's every other photo differs


def test_the_forgotten_photos_term_over_processes_is_the_mean_over_every_photo_drawn() -> None:
    """lambda_k's draw shared unevenly (3 photos: 2 and 1, or 1: 1 and none): each share weighed by its size,
    a share of none adding zero, so the mean the engine takes over the processes is the one-process mean."""
    from types import SimpleNamespace

    def term(pool: list[float], world: int, rank: int) -> torch.Tensor | None:
        ctx = SimpleNamespace(step=0, world=world, rank=rank, shard=lambda items: items[rank::world],
                              adapter=SimpleNamespace(device=torch.device("cpu")))
        method = SimpleNamespace(cfg=SimpleNamespace(forgotten_images=pool), seed=3)
        method._forgotten_batch = lambda c, size: CVFOnly._forgotten_batch(method, c, size)
        method._distilled = lambda c, s, images: torch.tensor(float(sum(images)) / len(images))  # a photo's value
        return CVFOnly._kept(method, ctx, SimpleNamespace(f_img=[None] * (4 // world)))  # a global batch of 4

    for pool in ([1.0, 5.0, 9.0], [4.0], [2.0, 7.0, 3.0, 8.0, 6.0]):
        alone = term(pool, 1, 0)
        assert alone is not None
        shares = [term(pool, 2, rank) for rank in (0, 1)]
        assert all(t is not None for t in shares)
        assert float(sum(shares) / 2) == pytest.approx(float(alone))
    assert term([], 2, 0) is None and term([], 1, 0) is None
