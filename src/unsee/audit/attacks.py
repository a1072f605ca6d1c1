"""Robustness audits: does the forgotten stay forgotten?

A method that only hides an answer has not unlearned. Each attack here works on a copy of
the model or on its inputs, never on the audited weights, and returns a flat dict that goes
into the run's ``attacks`` object in results.json:

- ``relearn``: fine-tune on the forget QA of half the forget people, measure the other half;
- ``pgd``: adversarial forget images that push towards the correct answer;
- ``shift``: crops, colour jitter and occlusion of the forget images;
- ``probe``: a linear probe on pooled visual features; can it still tell the people apart?
- ``quant``: round the weights to 8 or 4 bits (:mod:`unsee.audit.quant`); does the knowledge come back?
- ``mia``: membership inference and forget quality (:mod:`unsee.audit.mia`), read against the reference.

Where the retrained reference exists (the model fine-tuned without the forget photos), every
attack is run on it too and its figures sit beside the model's as ``reference``: what never
having seen the photos gives is the bar, not zero.

Every MCQ figure here is log-likelihood accuracy over image questions, as in the evaluator.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance

from unsee.audit.common import ATTACKS, SHIFT_NAMES, AttackConfig, accuracy, as_deployed, image_mcq
from unsee.audit.mia import PER_ITEM, mia, relative
from unsee.audit.quant import quant
from unsee.data import prompts
from unsee.data.collate import image_of, qa_turns
from unsee.data.schema import Example, Suite
from unsee.engine.adversarial import linf_ascent as linf_ascent  # the PGD steps live there; re-exported
from unsee.engine.adversarial import pgd_pixels
from unsee.engine.adversarial import pixel_bounds as pixel_bounds
from unsee.engine.distributed import Alone, on_accelerator
from unsee.engine.trainer import TrainConfig, train
from unsee.errors import ConfigError, DataError, did_you_mean
from unsee.eval import metrics
from unsee.eval.evaluator import mcq_loglik
from unsee.methods.base import pooled
from unsee.methods.baselines import SFT
from unsee.models.base import Adapter, Turn
from unsee.models.blocks import features_and_hidden, vision_blocks

if TYPE_CHECKING:
    from unsee.methods.artifact import Artifact


def trainable_copy(adapter: Adapter) -> Adapter:
    """A separate model to attack; the audited one is never touched."""
    return type(adapter)(copy.deepcopy(adapter.model), adapter.processor, source=adapter.source)


# ---------------------------------------------------------------------------- relearning
def relearn_splits(people: Sequence[str], n: int, seed: int) -> list[tuple[set[str], set[str]]]:
    """Up to ``n`` distinct (seen, unseen) halves of ``people``: a seeded ring, each split's seen
    half starting where the previous one's ended, so that every person is seen in one split and
    measured in others. The first split is the one a single split would give."""
    ring = sorted(people)
    random.Random(seed).shuffle(ring)
    half = len(ring) // 2
    splits: list[tuple[set[str], set[str]]] = []
    for i in range(n):
        seen = {ring[(i * half + j) % len(ring)] for j in range(half)}
        if any(seen == s for s, _ in splits):
            break
        splits.append((seen, set(ring) - seen))
    return splits


def relearn(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:
    """Fine-tune a copy on the seen half's forget QA; ``ag`` is the unseen half's gain, in points.

    The figures are means over ``relearn_splits`` halves, each attacked ``relearn_repeats``
    times with its own seed: with five forget people, one split is two people, and the same
    model gave +67, +11 and +4 points on three of them; one half gave +67 and +19 where only
    the attacker's batch order changed. ``ag_min`` and ``ag_max`` show that spread."""

    if len(suite.forget_entities) < 2:
        raise DataError("relearning needs at least two forget people: one half to relearn, one to measure")
    tcfg = TrainConfig(scope=cfg.relearn_scope, lr=cfg.relearn_lr, max_steps=cfg.relearn_steps,
                       batch_size=cfg.relearn_batch, seed=cfg.seed, progress=False)
    pool = image_mcq(suite, "forget")

    def correct(model: Adapter) -> list[bool]:
        """Each forget item's correctness: one pass, shared by both halves of a split."""
        if not pool:
            return []
        with as_deployed(model, artifact):
            return mcq_loglik(model, pool)

    def accuracy(ok: list[bool], people: set[str]) -> float | None:
        hits = [o for o, e in zip(ok, pool, strict=True) if e.entity in people]
        return sum(hits) / len(hits) if hits else None

    before = correct(adapter)  # the audited model does not change between splits
    runs = []
    for (seen, unseen), repeat in itertools.product(
            relearn_splits(suite.forget_entities, cfg.relearn_splits, cfg.seed), range(cfg.relearn_repeats)):
        train_items = [e for e in suite.group("train_forget") if e.entity in seen]
        if not train_items:
            raise DataError("the seen half of the forget people has no training QA to relearn from")
        attacked = trainable_copy(adapter)
        train(SFT(), attacked, suite, {"train": qa_turns(train_items)},  # alone: the first process audits
              dataclasses.replace(tcfg, seed=cfg.seed + repeat), accelerator=Alone(), desc="relearn")
        after = correct(attacked)
        del attacked
        halves = {"seen": seen, "unseen": unseen}
        run: dict[str, Any] = {f"{k}_{when}": accuracy(ok, people)
                               for when, ok in (("before", before), ("after", after)) for k, people in halves.items()}
        run["ag"] = None if None in (run["unseen_after"], run["unseen_before"]) else \
            100 * (run["unseen_after"] - run["unseen_before"])
        runs.append({**run, "seen": sorted(seen), "repeat": repeat,
                     **{f"n_{k}": sum(e.entity in people for e in pool) for k, people in halves.items()}})
    out: dict[str, Any] = {}
    for key in ("seen_before", "seen_after", "unseen_before", "unseen_after", "ag"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = round(sum(values) / len(values), 4 if key != "ag" else 2) if values else None
    gains = [r["ag"] for r in runs if r["ag"] is not None]
    out["ag_min"], out["ag_max"] = (round(min(gains), 2), round(max(gains), 2)) if gains else (None, None)
    for r in runs:  # rounded once each figure is taken from the exact gains
        r["ag"] = None if r["ag"] is None else round(r["ag"], 2)
    half = len(runs[0]["seen"])
    return {**out, "splits": runs, "repeats": cfg.relearn_repeats, "n_seen": sum(r["n_seen"] for r in runs),
            "n_unseen": sum(r["n_unseen"] for r in runs), "people_seen": half,
            "people_unseen": len(suite.forget_entities) - half, "steps": cfg.relearn_steps, "lr": cfg.relearn_lr,
            "scope": cfg.relearn_scope}


# ---------------------------------------------------------------------------- PGD
def split_pixels(batch: Any) -> list[torch.Tensor]:
    """One ``pixel_values`` block per image: a row of ``[B, C, H, W]``, or Qwen's patches per grid."""
    pv = batch["pixel_values"]
    if "image_grid_thw" in batch:
        sizes = batch["image_grid_thw"].prod(-1).tolist()
        return list(torch.split(pv, sizes))
    return [pv[i : i + 1] for i in range(pv.shape[0])]


@torch.no_grad()
def _scores_with_pixels(adapter: Adapter, ex: Example, pixels: torch.Tensor) -> list[float]:
    img = image_of(ex)
    batch = adapter.to_device(adapter.training_batch([Turn(img, prompts.qa_prompt(ex.question), o)
                                                      for o in ex.options]))
    batch["pixel_values"] = torch.cat([pixels] * len(ex.options)).to(batch["pixel_values"])
    with adapter.eval_mode():
        return adapter.answer_logprobs(batch).float().tolist()


def pgd_accuracy(adapter: Adapter, items: Sequence[Example], cfg: AttackConfig, batch_size: int = 8,
                 artifact: Artifact | None = None) -> float:
    """MCQ accuracy when each item's image is PGD-perturbed towards its correct option."""
    correct = 0
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        turns = [Turn(image_of(e), prompts.qa_prompt(e.question), e.options[e.correct]) for e in chunk]
        with as_deployed(adapter, artifact):
            pixels = pgd_pixels(adapter, turns, cfg.pgd_eps, cfg.pgd_step, cfg.pgd_steps)
            blocks = split_pixels({**adapter.training_batch(turns), "pixel_values": pixels})
            for ex, block in zip(chunk, blocks, strict=True):
                correct += int(metrics.loglik_choice(_scores_with_pixels(adapter, ex, block)) == ex.correct)
    return correct / len(items)


def pgd(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:
    """Forget accuracy under PGD, with retain under the same budget as the control."""
    out: dict[str, Any] = {"eps": cfg.pgd_eps, "step": cfg.pgd_step, "steps": cfg.pgd_steps}
    for group in ("forget", "retain"):
        items = image_mcq(suite, group)[: cfg.max_items]
        if not items:
            continue
        out[f"{group}_clean"] = accuracy(adapter, items, artifact)
        out[f"{group}_attacked"] = pgd_accuracy(adapter, items, cfg, artifact=artifact)
        out[f"n_{group}"] = len(items)
    if "forget_attacked" not in out:
        raise DataError(f"suite {suite.name!r} has no image MCQ on the forget people to attack")
    return out


# ---------------------------------------------------------------------------- shifts
def _crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cw, ch = int(w * 0.75), int(h * 0.75)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    out = ImageEnhance.Brightness(img).enhance(1 + rng.choice([-1, 1]) * 0.3)
    out = ImageEnhance.Contrast(out).enhance(1 + rng.choice([-1, 1]) * 0.3)
    return ImageEnhance.Color(out).enhance(1 + rng.choice([-1, 1]) * 0.4)


def _occlude(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    bw, bh = w // 3, h // 3
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, x0 + bw, y0 + bh), fill=(128, 128, 128))
    return out


SHIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "crop": _crop, "jitter": _jitter, "occlude": _occlude,
}
assert tuple(SHIFTS) == SHIFT_NAMES, "AttackConfig checks shifts against SHIFT_NAMES"


def shifted(items: Sequence[Example], shift: str, seed: int) -> list[Example]:
    """The same questions on shifted images; one seeded draw per image, so every method sees the same."""
    rng = np.random.default_rng(seed)
    out = []
    for ex in items:
        buf = io.BytesIO()
        SHIFTS[shift](ex.pil_image().convert("RGB"), rng).save(buf, format="PNG")
        out.append(dataclasses.replace(ex, uid=f"{ex.uid}#{shift}", image=buf.getvalue()))
    return out


def shift(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:
    """Forget and retain MCQ accuracy on each shifted copy of their images."""
    out: dict[str, Any] = {}
    for group in ("forget", "retain"):
        items = image_mcq(suite, group)[: cfg.max_items]
        if not items:
            continue
        out[f"{group}_clean"] = accuracy(adapter, items, artifact)
        for name in cfg.shifts:
            out[f"{group}_{name}"] = accuracy(adapter, shifted(items, name, cfg.seed), artifact)
        out[f"n_{group}"] = len(items)
    if not out:
        raise DataError(f"suite {suite.name!r} has no image MCQ to shift")
    return out


# ---------------------------------------------------------------------------- feature probe
@torch.no_grad()
def pooled_features(adapter: Adapter, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
    """Mean projector output per image, L2-normalised: the feature CVF moves."""
    return pooled_block_features(adapter, images, [], batch_size)[0]


@torch.no_grad()
def pooled_block_features(adapter: Adapter, images: Sequence[Image.Image], blocks: Sequence[int],
                          batch_size: int = 32) -> list[torch.Tensor]:
    """:func:`pooled_features`, then the same pooling of each of ``blocks``' outputs, from one pass."""

    parts: list[list[torch.Tensor]] = [[] for _ in range(len(blocks) + 1)]
    with adapter.eval_mode():
        for i in range(0, len(images), batch_size):
            feats, hidden = features_and_hidden(adapter, adapter.image_inputs(images[i : i + batch_size]), blocks)
            for part, tokens in zip(parts, [feats, *hidden], strict=True):
                part.append(pooled(tokens).cpu())
    return [torch.cat(p) for p in parts]


def probe_images(suite: Suite, cfg: AttackConfig) -> tuple[list[Image.Image], list[str], list[int]]:
    """Every distinct training image of the forget people and of some retained people, with
    its view number: the probe holds out one view number at a time."""
    rng = random.Random(cfg.seed)
    retain = sorted(suite.retain_entities)
    rng.shuffle(retain)
    people = set(suite.forget_entities) | set(retain[: cfg.probe_retain_people])
    views: dict[str, dict[bytes, Image.Image]] = {}
    for group in ("train_forget", "train_retain"):
        for ex in suite.groups.get(group, []):
            if ex.has_image and ex.entity in people:
                views.setdefault(ex.entity, {}).setdefault(ex.image, image_of(ex))  # type: ignore[arg-type]
    images, labels, view = [], [], []
    for person in sorted(views):
        imgs = list(views[person].values())
        if len(imgs) < 2:
            continue
        for i, img in enumerate(imgs):
            images.append(img)
            labels.append(person)
            view.append(i)
    return images, labels, view


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int, seed: int) -> torch.nn.Linear:
    """Multinomial logistic regression, full batch, standardised inputs, light weight decay."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], n_classes)
    opt_ = torch.optim.Adam(head.parameters(), lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt_.zero_grad()
        torch.nn.functional.cross_entropy(head(x), y).backward()
        opt_.step()
    return head


def probe_predict(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, n_classes: int, steps: int,
                  seed: int) -> torch.Tensor:
    """Predictions for ``x_test`` by :func:`fit_probe` on ``x_fit``, both standardised by ``x_fit``'s moments."""
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp(min=1e-6)
    head = fit_probe((x_fit - mu) / sd, y_fit, n_classes, steps, seed)
    with torch.no_grad():
        return head((x_test - mu) / sd).argmax(-1)


def probe(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:
    """Held-out-view accuracy of a linear identity probe, split by forget and retained people.

    Leave one view out: the probe is fitted once per view number on every other view and
    tested on that one, so every photo is predicted once. (With one test photo per person,
    five forget people made the forget accuracy move in steps of 0.2.) It reads the visual
    module only, which steering does not touch: an eraser result keeps the vanilla probe
    accuracy, and that is what the audit should show."""
    images, labels, view = probe_images(suite, cfg)
    forget = set(suite.forget_entities)
    names = sorted(set(labels))
    if not any(label in forget for label in labels):
        raise DataError("the probe needs at least two training views of a forget person")

    blocks = list(range(len(vision_blocks(adapter)))) if cfg.probe_blocks else []
    feats, *by_block = pooled_block_features(adapter, images, blocks)
    y = torch.tensor([names.index(label) for label in labels])
    views = torch.tensor(view)
    is_forget = torch.tensor([names[i] in forget for i in y.tolist()])
    sides = {key: sel for key, sel in (("forget", is_forget), ("retain", ~is_forget)) if sel.any()}

    def accuracy(x: torch.Tensor) -> dict[str, float]:
        """Leave-one-view-out accuracy of the probe on features ``x``, for forget and retained people."""
        x = x.float()
        pred = torch.empty_like(y)
        for fold in views.unique().tolist():
            held = views == fold
            pred[held] = probe_predict(x[~held], y[~held], x[held], len(names), cfg.probe_steps, cfg.seed)
        return {key: float((pred[sel] == y[sel]).float().mean()) for key, sel in sides.items()}

    out: dict[str, Any] = {"classes": len(names), "chance": round(1 / len(names), 4),
                           "folds": len(views.unique())}
    for key, acc in accuracy(feats).items():
        out[f"{key}_acc"] = acc
        out[f"n_{key}"] = int(sides[key].sum())
    if by_block:
        per_block = [accuracy(x) for x in by_block]
        for key in per_block[0]:
            out[f"{key}_acc_by_block"] = [round(b[key], 4) for b in per_block]
    return out


# ---------------------------------------------------------------------------- all of them
def _quant(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:

    return quant(adapter, suite, cfg, artifact)


def _mia(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:

    return mia(adapter, suite, cfg, artifact)


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "relearn": relearn, "pgd": pgd, "shift": shift, "probe": probe, "quant": _quant, "mia": _mia,
}


def run_attacks(adapter: Adapter, suite: Suite, kinds: Sequence[str] = ATTACKS, cfg: AttackConfig | None = None,
                *, vanilla: Adapter | None = None, artifact: Artifact | None = None,
                strict: bool = True, changed: Sequence[str] | None = None,
                reference: Callable[[str], dict[str, Any]] | None = None,
                keep_items: bool = False) -> dict[str, dict[str, Any]]:
    """Run each attack in ``kinds``; with ``vanilla`` (its visual module is enough), the probe also
    reports the model before unlearning; with ``artifact``, the model is attacked as deployed;
    ``changed`` names the linear weights the method changed, for the quantization attack.

    ``reference(kind)`` gives the retrained reference's figures for an attack (computed once,
    by the caller, and cached): they go beside the model's as ``reference``, and the
    membership attack adds PrivLeak and forget quality relative to them.

    With ``strict=False`` (an audit after unlearning) an attack the data cannot support, such
    as relearning with a single forget person, is recorded as ``{"skipped": reason}``.
    ``keep_items`` keeps the per-item scores (what a reference's cached figures need)."""
    cfg = cfg or AttackConfig()
    cfg.validate()
    unknown = sorted(set(kinds) - set(RUNNERS))
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}{did_you_mean(unknown, ATTACKS)}; "
                          f"choose from {', '.join(ATTACKS)}")
    on_accelerator(adapter)
    out = {}
    for kind in kinds:
        try:
            if kind == "quant":
                out[kind] = quant(adapter, suite, cfg, artifact, changed=changed)
            else:
                out[kind] = RUNNERS[kind](adapter, suite, cfg, artifact)
        except DataError as e:
            if strict:
                raise
            out[kind] = {"skipped": str(e)}
            continue
        if kind == "probe" and vanilla is not None:
            before = probe(vanilla, suite, cfg)
            out[kind].update({f"vanilla_{k}": v for k, v in before.items() if k.endswith("_acc")})
        if reference is not None:
            ref = reference(kind)
            if kind == "mia" and PER_ITEM in ref:
                out[kind].update(relative(out[kind], ref))
            out[kind]["reference"] = {k: v for k, v in ref.items() if k != PER_ITEM}
        if not keep_items:
            out[kind].pop(PER_ITEM, None)
    return out
