"""CVF + NCU, the headline method, and its ablations ``cvf_only`` and ``ncu_only``.

CVF (contrastive visual forgetting) moves each forget image's pooled visual feature toward
the reference model's features of *neutral*, never-taught identities, and away from the
reference features of its own identity and of retained identities. Retained images keep
their own reference feature. Only the visual module runs: the language model sees no
forward pass and no gradient, which is what makes the method cheap.

NCU (:mod:`unsee.methods.ncu`) confines every update to the null space of the retained
images' layer inputs; its covariances are computed once per model and data, and cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature

from unsee.config import opt
from unsee.data.augment import augment
from unsee.data.collate import image_of
from unsee.engine.trainer import Context
from unsee.eval.attacks import linf_ascent
from unsee.methods.base import BaseMethod, images_of, nll, pooled, token_mse
from unsee.methods.ncu import add_covariances, input_covariances, install_projections
from unsee.models.base import HFAdapter, Turn
from unsee.models.blocks import features_and_hidden


@dataclass
class CVFConfig:
    tau: float = opt(0.1, "InfoNCE temperature")
    lambda_r: float = opt(1.0, "weight of the retain InfoNCE")
    lambda_d: float = opt(1.0, "weight of token-level distillation on retained images (an addition to the spec)")
    lambda_o: float = opt(0.0, "weight of an optional output-level retain NLL (touches only the visual module)")
    lambda_t: float = opt(
        0.0, "weight of a token-level forget term: every token of a forget image towards the reference's mean "
        "neutral token (an addition to the spec; the pooled InfoNCE leaves identity in the tokens)")
    lambda_v: float = opt(
        0.0, "weight of a tower-level forget term: every token of a forget image after vision block merge_block "
        "towards the reference's mean neutral token there (an addition to the spec; the projector-level terms "
        "leave identity in the tower, where a relearning attack finds it)")
    lambda_dv: float = opt(0.0, "weight of the retained images' distillation after vision block merge_block, "
                           "where lambda_v moves the tower")
    merge_block: int = opt(-1, "the vision block whose output lambda_v merges (-1: the last)")
    augment: float = opt(0.0, "strength of fresh crops and colour jitter on the forget photos at every step, so "
                         "that forgetting reaches other views of the person (0: off)")
    adv_steps: int = opt(
        0, "adversarial forgetting: sign-gradient steps that move each forget photo, within adv_eps, back towards "
        "its own identity (up the forget InfoNCE) before the step trains on it, so that no nearby image is "
        "recognised either (0: off)")
    adv_eps: float = opt(8 / 255, "adversarial forgetting: L-inf radius in [0, 1] pixel units")
    relearn_sim_steps: int = opt(
        0, "relearning-aware forgetting: sign-gradient steps of a simulated relearning, in which the visual module "
        "restores half of the batch's forget people to their reference features; the loss is then taken on the "
        "other half, which must stay forgotten (0: off)")
    relearn_sim_eps: float = opt(3e-3, "relearning-aware forgetting: how far each weight may move in the simulation, "
                             "in all (a relearning attack's 30 Adam steps at 1e-4 move a weight by up to 3e-3)")
    ncu: bool = opt(True, "constrain updates to the retained null space")
    energy: float = opt(0.01, "NCU: keep the eigen-directions holding at most this fraction of the energy")
    ncu_images: int = opt(256, "NCU: retained images used for the covariance")
    lambda_k: float = opt(
        1.0, "continual: weight of token-level distillation of the already-forgotten targets' images onto the "
        "reference, the model after the previous request, which holds them forgotten (an addition to the spec)")
    forgotten_images: list = opt([], "continual: images of already-forgotten targets (set by the driver)")


def info_nce(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive InfoNCE: ``-log sum_pos exp(a.p/t) / sum_all exp(a.k/t)``, mean over anchors.

    ``positives`` and ``negatives`` are [A, P, d] and [A, N, d]: each anchor has its own sets.
    """
    pos = torch.einsum("ad,apd->ap", anchor, positives) / tau
    neg = torch.einsum("ad,and->an", anchor, negatives) / tau
    return (torch.logsumexp(torch.cat([pos, neg], 1), 1) - torch.logsumexp(pos, 1)).mean()


class CVFNCU(BaseMethod):
    name = "cvf_ncu"
    streams = ("forget", "retain", "neutral")
    optional_streams = ("general",)
    images_only = True  # streams hold each distinct image once
    reference = "visual"
    default_scope = "visual"
    Config = CVFConfig

    @property
    def uses_language(self) -> bool:  # type: ignore[override]
        return self.cfg.lambda_o > 0

    def setup(self, ctx: Context) -> None:
        self.seed = ctx.cfg.seed
        self._ref: dict[int, tuple[Any, torch.Tensor]] = {}
        self._pixels: dict[int, tuple[Any, BatchFeature]] = {}
        self._ref_hidden: dict[int, tuple[Any, torch.Tensor]] = {}
        # whose photo each forget image is; image_of hands out one object per file
        self._person = {id(image_of(e)): e.entity for e in ctx.suite.groups.get("train_forget", []) if e.has_image}
        if self.cfg.ncu:
            retain = [t.image for t in ctx.streams["retain"].turns if t.image is not None]
            general = [t.image for t in ctx.streams["general"].turns if t.image is not None] \
                if "general" in ctx.streams else []
            images = (retain + general)[: self.cfg.ncu_images]
            covs = input_covariances(ctx.adapter, ctx.shard(images), ctx=ctx)
            if self.cfg.forgotten_images:
                done = ctx.shard(self.cfg.forgotten_images)
                covs = add_covariances(covs, input_covariances(ctx.adapter, done, ctx=ctx))
            ranks = install_projections(ctx, covs, self.cfg.energy)
            ctx.info["null_space_rank"] = ranks

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        a, ref = ctx.adapter, ctx.reference
        assert ref is not None
        f_img, r_img, n_img = (images_of(batch[k]) for k in ("forget", "retain", "neutral"))
        if self.cfg.augment > 0:
            rng = np.random.default_rng(self.seed + ctx.step)
            f_img = [augment(im, rng, self.cfg.augment) for im in f_img]
        f_in = a.image_inputs(f_img)  # the reference and the student see the same augmented pixels
        with torch.no_grad():
            ref_f_tok = ref.visual_features(f_in)
        ref_f = pooled(ref_f_tok)
        ref_r_tok = self._reference(ref, r_img)
        ref_n_tok = self._reference(ref, n_img)
        ref_r, ref_n = pooled(ref_r_tok), pooled(ref_n_tok)
        # With several processes each holds a slice of the batch; the contrastive terms compare an
        # image with the whole batch's references, gathered, as in one process.
        all_f, all_r, all_n = ctx.gather(ref_f), ctx.gather(ref_r), ctx.gather(ref_n)
        A = len(f_img)
        # forget anchors: positives = neutral refs; negatives = own-identity refs + retained refs
        pos = all_n.unsqueeze(0).expand(A, -1, -1)
        neg = torch.cat([all_f.unsqueeze(0).expand(A, -1, -1), all_r.unsqueeze(0).expand(A, -1, -1)], 1)

        target = _mean_token(ctx, ref_n_tok) if self.cfg.lambda_t > 0 else None

        def forget_terms(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
            nce = info_nce(pooled(tokens), pos[: len(tokens)], neg[: len(tokens)], self.cfg.tau)
            if target is None:
                return nce, None
            return nce, torch.stack([F.mse_loss(t.float(), target.expand_as(t)) for t in tokens]).mean()

        def weighted(l_f: torch.Tensor, l_t: torch.Tensor | None) -> torch.Tensor:
            return l_f if l_t is None else l_f + self.cfg.lambda_t * l_t

        def at(pixels: torch.Tensor) -> list[torch.Tensor]:
            return a.visual_features(BatchFeature({**f_in, "pixel_values": pixels}))

        held = None
        if self.cfg.relearn_sim_steps > 0:
            # a simulated relearning restores half of the batch's people; the other half must stay forgotten.
            # It moves the weights in place, so it runs before any other forward pass of the student.
            seen, unseen = self._halves(batch["forget"], ctx.step)
            if seen and unseen:
                seen_in, unseen_in = (a.image_inputs([f_img[i] for i in rows]) for rows in (seen, unseen))
                held = after_relearning(
                    [p for p in a.model.parameters() if p.requires_grad],
                    restore=lambda: token_mse(a.visual_features(seen_in), [ref_f_tok[i] for i in seen]),
                    forget=lambda: weighted(*forget_terms(a.visual_features(unseen_in))),
                    steps=self.cfg.relearn_sim_steps, eps=self.cfg.relearn_sim_eps)
        f_hidden = None
        if self.cfg.lambda_v > 0:
            f_tok, (f_hidden,) = features_and_hidden(a, f_in, [self.cfg.merge_block])
        else:
            f_tok = at(f_in["pixel_values"])
        l_f, l_t = forget_terms(f_tok)
        if self.cfg.adv_steps > 0:
            # the clean photos stay anchors too: trained on the attacked ones alone, the clean forgetting
            # weakened; the ascent climbs the whole forget loss, so that it also undoes the token merging
            attacked = linf_ascent(a, f_in["pixel_values"], lambda pv: weighted(*forget_terms(at(pv))),
                                   self.cfg.adv_eps, 2.5 * self.cfg.adv_eps / self.cfg.adv_steps,
                                   self.cfg.adv_steps)
            adv_nce, adv_t = forget_terms(at(attacked))
            l_f = (l_f + adv_nce) / 2
            if l_t is not None and adv_t is not None:
                l_t = (l_t + adv_t) / 2
        l_forget = weighted(l_f, l_t)
        if held is not None:
            l_forget = l_forget + held
        l_v = None
        if f_hidden is not None:
            tower_target = _mean_token(ctx, self._reference_hidden(ref, n_img))
            l_v = torch.stack([F.mse_loss(h.float(), tower_target.expand_as(h)) for h in f_hidden]).mean()
            l_forget = l_forget + self.cfg.lambda_v * l_v
        # the student's retained tokens come after the simulated relearning, which moves the weights in place
        s_r_hidden = None
        if self.cfg.lambda_dv > 0:
            s_r_tok, (s_r_hidden,) = features_and_hidden(a, self._inputs(a, r_img), [self.cfg.merge_block])
        else:
            s_r_tok = a.visual_features(self._inputs(a, r_img))
        s_r = pooled(s_r_tok)
        # retain anchors: positive = own reference; negatives = the other identities in the batch
        R, G = s_r.shape[0], all_r.shape[0]
        others = torch.stack([torch.cat([all_r[torch.arange(G) != ctx.gathered_index(i)], all_f]) for i in range(R)])
        l_r = info_nce(s_r, ref_r.unsqueeze(1), others, self.cfg.tau)
        l_d = token_mse(s_r_tok, ref_r_tok)
        loss = l_forget + self.cfg.lambda_r * l_r + self.cfg.lambda_d * l_d
        parts = {"cvf_f": l_f.item(), "cvf_r": l_r.item(), "distil": l_d.item()}
        if s_r_hidden is not None:
            l_dv = token_mse(s_r_hidden, self._reference_hidden(ref, r_img))
            loss = loss + self.cfg.lambda_dv * l_dv
            parts["distil_v"] = l_dv.item()
        if l_t is not None:
            parts["token_f"] = l_t.item()
        if held is not None:
            parts["relearned_f"] = held.item()
        if l_v is not None:
            parts["tower_f"] = l_v.item()
        kept = self._forgotten_batch(ctx, len(f_img))
        if kept and self.cfg.lambda_k > 0:
            l_k = token_mse(a.visual_features(self._inputs(a, kept)), self._reference(ref, kept))
            loss = loss + self.cfg.lambda_k * l_k
            parts["distil_k"] = l_k.item()
        if self.cfg.lambda_o > 0:
            o = nll(a, batch["retain"])
            loss = loss + self.cfg.lambda_o * o
            parts["nll_r"] = o.item()
        return loss, parts

    def _halves(self, turns: list[Turn], step: int) -> tuple[list[int], list[int]]:
        """Rows of the batch split by person into two seeded halves (the simulated relearning's)."""
        who = [self._person.get(id(t.image), str(i)) for i, t in enumerate(turns)]
        people = sorted(set(who))
        rng = np.random.default_rng(self.seed + 104729 * (step + 1))
        seen = {people[i] for i in rng.permutation(len(people))[: len(people) // 2]}
        return [i for i, w in enumerate(who) if w in seen], [i for i, w in enumerate(who) if w not in seen]

    @torch.no_grad()
    def _reference_hidden(self, ref: HFAdapter, images: list) -> list[torch.Tensor]:
        """The frozen reference's tokens after vision block ``merge_block``, each image's computed once."""
        block = [self.cfg.merge_block]
        return _per_image(self._ref_hidden, images,
                          lambda missing: features_and_hidden(ref, self._inputs(ref, missing), block)[1][0])

    def _forgotten_batch(self, ctx: Context, size: int) -> list:
        """This step's share of the already-forgotten images: a seeded draw, the same in every process.

        The covariance keeps their layer inputs to first order; over a request's steps the
        second-order drift brought earlier targets back, so they are held explicitly too.
        """
        pool = self.cfg.forgotten_images
        if not pool or size == 0:
            return []
        rng = np.random.default_rng(self.seed + 7919 * (ctx.step + 1))
        chosen = [pool[i] for i in rng.choice(len(pool), size=min(size * ctx.world, len(pool)), replace=False)]
        return ctx.shard(chosen)

    def _inputs(self, adapter: HFAdapter, images: list) -> BatchFeature:
        """The image processor's output for un-augmented images, each image processed once.

        Retained photos come back every pass; preprocessing them again was a seventh of a
        step. Each image's tensors are kept alone and concatenated along the batch axis,
        which is how the processor batches them (pixel rows, or patch rows with their grids).
        The reference is a copy of the student, with the same processor, so both share it.
        """
        parts = _per_image(self._pixels, images, lambda missing: [adapter.image_inputs([im]) for im in missing])
        return BatchFeature({k: torch.cat([p[k] for p in parts]) for k in parts[0]})

    @torch.no_grad()
    def _reference(self, ref: HFAdapter, images: list) -> list[torch.Tensor]:
        """The frozen reference's tokens of un-augmented images, each computed once.

        Retained and neutral photos come back every epoch and the reference never changes,
        so recomputing them would be most of a step's visual compute.
        """
        return _per_image(self._ref, images, lambda missing: ref.visual_features(self._inputs(ref, missing)))


def after_relearning(params: list[torch.nn.Parameter], restore: Callable[[], torch.Tensor],
                     forget: Callable[[], torch.Tensor], steps: int, eps: float) -> torch.Tensor:
    """``forget()`` after a simulated relearning, with its gradient carried back to the weights.

    A relearning attack fine-tunes the visual module a little way on some forget people, and
    the rest come back with them: on the shipped model, relearning the visual module alone
    gained more than relearning all of it (docs/results.md). So the weights first take
    ``steps`` sign-gradient steps down ``restore()`` (those people back to their reference
    features), each weight moving by ``eps / steps`` as an Adam step would, and ``forget()``
    is taken there. Its gradient at the moved weights is applied to the current ones (first
    order, as in first-order MAML) through a surrogate whose value is ``forget()``'s. The
    weights are put back before returning, whatever happens.
    """
    saved = [p.detach().clone() for p in params]
    try:
        with torch.enable_grad():
            for _ in range(steps):
                grads = torch.autograd.grad(restore(), params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, grads, strict=True):
                        if g is not None:
                            p.sub_(g.sign() * (eps / steps))
            value = forget()
            grads = torch.autograd.grad(value, params, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
    surrogate = sum(((p * g.to(p.dtype)).sum() for p, g in zip(params, grads, strict=True) if g is not None),
                    torch.zeros(()))
    return value.detach() + surrogate - surrogate.detach()


def _mean_token(ctx: Context, tokens: list[torch.Tensor]) -> torch.Tensor:
    """The mean token over every image of the batch, in every process."""
    rows = torch.cat([t.float() for t in tokens])
    if ctx.world == 1:
        return rows.mean(0)
    total = ctx.all_reduce_(rows.sum(0))
    return total / ctx.all_reduce_(torch.tensor(float(rows.shape[0]), device=rows.device))


def _per_image(cache: dict[int, tuple[Any, Any]], images: list, compute: Callable[[list], list]) -> list:
    """``compute`` of each image, looked up by ``id`` and computed once for the images not seen yet.

    The image is kept beside its value so that its ``id`` cannot be reused by another object.
    """
    missing = list({id(im): im for im in images if id(im) not in cache}.values())
    if missing:
        for im, value in zip(missing, compute(missing), strict=True):
            cache[id(im)] = (im, value)
    return [cache[id(im)][1] for im in images]


class CVFOnly(CVFNCU):
    """Ablation: CVF without the null-space constraint."""

    name = "cvf_only"

    def __init__(self, cfg: CVFConfig | None = None) -> None:
        super().__init__(cfg)
        self.cfg.ncu = False


class NCUOnly(CVFNCU):
    """Ablation: GA-style forgetting of the forget answers, confined to the NCU null space."""

    name = "ncu_only"
    streams = ("forget", "retain")
    reference = "none"
    images_only = False

    @property
    def uses_language(self) -> bool:  # type: ignore[override]
        return True

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        f = nll(ctx.adapter, batch["forget"])
        return -f, {"nll_f": f.item()}

