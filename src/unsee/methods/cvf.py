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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature

from unsee.data.augment import augment, backdrop
from unsee.data.collate import image_of
from unsee.engine.adversarial import linf_ascent
from unsee.engine.gradients import after_relearning
from unsee.engine.trainer import Context
from unsee.errors import ConfigError
from unsee.methods.base import BaseMethod, images_of, keep_to_visual, nll, per_image, pooled, token_mse
from unsee.methods.cvf_config import CVFConfig, CVFOnlyConfig
from unsee.methods.ncu import NCUConfig, constrain_to_retained
from unsee.methods.redistil import redistil
from unsee.models.base import Adapter, Turn, joined
from unsee.models.blocks import features_and_hidden, read_block


def info_nce(anchor: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """Multi-positive InfoNCE: ``-log sum_pos exp(a.p/t) / sum_all exp(a.k/t)``, mean over anchors.

    ``positives`` and ``negatives`` are [A, P, d] and [A, N, d]: each anchor has its own sets.
    """
    pos = torch.einsum("ad,apd->ap", anchor, positives) / tau
    neg = torch.einsum("ad,and->an", anchor, negatives) / tau
    return (torch.logsumexp(torch.cat([pos, neg], 1), 1) - torch.logsumexp(pos, 1)).mean()


@dataclass
class _Step:
    """One step's photos and the reference's side of every term: what the terms share."""

    ref: Adapter
    f_img: list
    r_img: list
    n_img: list
    f_in: BatchFeature  # the forget photos' pixels; the reference and the student see the same augmented ones
    r_in: BatchFeature  # the retained photos' pixels, likewise
    both_in: BatchFeature  # the two joined, forget photos first: what the joint passes take
    ref_f_tok: list[torch.Tensor]
    ref_r_tok: list[torch.Tensor]
    ref_r: torch.Tensor
    all_f: torch.Tensor  # the whole batch's pooled references, gathered over processes
    all_r: torch.Tensor
    r_who: torch.Tensor  # whose photo each retained image is (a code per person), and the whole batch's, gathered
    all_who: torch.Tensor
    pos: torch.Tensor  # forget anchors' positives: the neutral references
    neg: torch.Tensor  # forget anchors' negatives: their own identities' and the retained references
    target: torch.Tensor | None  # lambda_t's target: one mean neutral token [d], or one per forget photo [A, d]


LOGGED = ("cvf_f", "cvf_r", "distil", "distil_v", "token_f", "relearned_f", "tower_f", "distil_k", "distil_known",
          "nll_r")  # the order run.json's history and the progress bar list the terms in


def _weighted_sum(terms: list[tuple[str, float, torch.Tensor]]) -> torch.Tensor:
    """Sum of weight * value, left to right (the order fixes the float result)."""
    total = terms[0][1] * terms[0][2]
    for _, weight, value in terms[1:]:
        total = total + weight * value
    return total


def _logged(terms: list[tuple[str, float, torch.Tensor]]) -> dict[str, float]:
    values = {name: value.item() for name, _, value in terms}
    return {name: values[name] for name in LOGGED if name in values}


class CVFOnly(BaseMethod):
    """CVF alone: its loss, with no constraint on the updates (the ablation of ``cvf_ncu`` without NCU)."""

    name = "cvf_only"
    streams = ("forget", "retain", "neutral")
    images_only = True  # streams hold each distinct image once
    reference = "visual"
    default_scope = "visual"
    Config = CVFOnlyConfig
    cfg: CVFOnlyConfig

    @property
    def uses_language(self) -> bool:  # type: ignore[override]
        return self.cfg.lambda_o > 0

    @property
    def optional_streams(self) -> tuple[str, ...]:  # type: ignore[override]
        """The general photos widen NCU's covariance; the known people's are read when lambda_known asks."""
        return ("general", "known") if self.cfg.lambda_known > 0 else ("general",)

    def setup(self, ctx: Context) -> None:
        self.cfg.validate()  # a config built in code has not been through load_config
        if self.cfg.augment_retain > 0 and self.cfg.lambda_dv > 0:  # its reference is cached per photo
            raise ConfigError("augment_retain and lambda_dv cannot be combined: lambda_dv's reference tokens are "
                              "computed once per photo, and augmented photos are new at every step")
        if self.cfg.lambda_known > 0 and "known" not in ctx.streams:
            raise ConfigError(f"{self.name}: lambda_known distils the known people's training photos, and this "
                              "benchmark has none (train_known); set lambda_known=0")
        self.cfg.check_launch(ctx.world)
        keep_to_visual(ctx, self.name)
        self.block = read_block(ctx.adapter, self.cfg.merge_block) if self.cfg.lambda_v or self.cfg.lambda_dv else -1
        self.seed = ctx.cfg.seed
        self._ref: dict[int, tuple[Any, torch.Tensor]] = {}
        self._pixels: dict[int, tuple[Any, BatchFeature]] = {}
        self._ref_hidden: dict[int, tuple[Any, torch.Tensor]] = {}
        # whose photo each forget image is, by object (image_of hands out one per file); the photos are held
        # here, so that no other object can take one of their ids
        self._photos = [(image_of(e), e.entity, group) for group in ("train_forget", "train_retain")
                        for e in ctx.suite.groups.get(group, []) if e.has_image]
        self._person = {id(im): who for im, who, group in self._photos if group == "train_forget"}
        retained = {id(im): who for im, who, group in self._photos if group == "train_retain"}
        codes = {name: i for i, name in enumerate(sorted(set(retained.values())))}  # the same in every process
        self._retained = {k: codes[name] for k, name in retained.items()}
        if self.cfg.relearn_sim_steps and len(set(self._person.values())) < 2:
            raise ConfigError("relearn_sim_steps relearns some of the people to forget and keeps the others "
                              "forgotten, and this request forgets one person: set relearn_sim_steps=0")
        self._suite = ctx.suite
        self._pair: dict[str, torch.Tensor] = {}  # token_target 'person': each forget person's target

    def finish(self, ctx: Context) -> None:
        """With ``redistil_steps``, the hardening against relearning (:mod:`unsee.methods.redistil`)."""
        if self.cfg.redistil_steps:
            ctx.info["redistil"] = redistil(ctx, self.cfg, self.seed, self.cfg.forgotten_images)

    def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The sum of CVF's terms, each with its weight, in the order of :meth:`_terms`."""
        on = self._terms(ctx, batch)
        return _weighted_sum(on), _logged(on)

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                              dict[str, float]]:
        """CVF's forgetting terms (``*_f``) summed, and its retaining terms summed."""
        on = self._terms(ctx, batch)
        kept = [t for t in on if not t[0].endswith("_f")]
        return _weighted_sum([t for t in on if t[0].endswith("_f")]), _weighted_sum(kept) if kept else None, _logged(on)

    def forget_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> torch.Tensor:
        """The forgetting terms alone, without the retained photos' pass of the student."""
        return _weighted_sum(self._terms(ctx, batch, forget_only=True))

    def _terms(self, ctx: Context, batch: dict[str, list[Turn]],
               forget_only: bool = False) -> list[tuple[str, float, torch.Tensor]]:
        """CVF's terms that are on, as (logged name, weight, value); the forgetting ones come first.

        The terms are computed in the order below: the simulated relearning moves the weights
        in place, so it runs before any other pass of the student.
        """
        c = self.cfg
        s = self._prepare(ctx, batch)
        relearned = self._relearned(ctx, s, batch["forget"]) if c.relearn_sim_steps > 0 else None
        joint = c.lambda_v == 0 and c.lambda_dv == 0 and not forget_only
        f_tok, s_r_tok = self._student_tokens(ctx, s) if joint else (None, None)
        forget, token, f_hidden = self._forget(ctx, s, f_tok)
        tower = self._tower(ctx, s, f_hidden) if f_hidden is not None else None
        forgetting = [("cvf_f", 1.0, forget), ("token_f", c.lambda_t, token), ("relearned_f", 1.0, relearned),
                      ("tower_f", c.lambda_v, tower)]
        if forget_only:
            return [(name, weight, value) for name, weight, value in forgetting if value is not None]
        retain, distil, r_hidden = self._retain(ctx, s, s_r_tok)
        distil_v = token_mse(r_hidden, self._reference_hidden(s.ref, s.r_img)) if r_hidden is not None else None
        distil_k = self._kept(ctx, s) if c.lambda_k > 0 else None
        known = images_of(batch.get("known", [])) if c.lambda_known > 0 else []
        distil_known = self._distilled(ctx, s, known) if known else None
        nll_r = nll(ctx.adapter, batch["retain"]) if c.lambda_o > 0 else None
        terms = [
            *forgetting,
            ("cvf_r", c.lambda_r, retain),
            ("distil", c.lambda_d, distil),
            ("distil_v", c.lambda_dv, distil_v),
            ("distil_k", c.lambda_k, distil_k),
            ("distil_known", c.lambda_known, distil_known),
            ("nll_r", c.lambda_o, nll_r),
        ]
        return [(name, weight, value) for name, weight, value in terms if value is not None]

    def _prepare(self, ctx: Context, batch: dict[str, list[Turn]]) -> _Step:
        """The step's photos (the forget ones augmented) and everything the frozen reference gives the terms."""
        a, ref = ctx.adapter, ctx.reference
        assert ref is not None
        f_img, r_img, n_img = (images_of(batch[k]) for k in ("forget", "retain", "neutral"))
        # a photo of no known person (a request's folder of photos) stands for a person of its own
        r_who = torch.tensor([self._retained.get(id(im), -1 - ctx.gathered_index(i)) for i, im in enumerate(r_img)])
        rng = np.random.default_rng(self.seed + ctx.step)  # the forget photos draw first, as without augment_retain
        f_img = backdrop(f_img, n_img, rng, self.cfg.augment_background)  # draws nothing when off
        f_img, f_in = _cropped(a, f_img, rng, self.cfg.augment, self.cfg.augment_pose)
        fresh = self.cfg.augment_retain > 0  # fresh crops: nothing to look up, and nothing kept past the step
        r_img, r_in = _cropped(a, r_img, rng, self.cfg.augment_retain, self.cfg.augment_pose) if fresh \
            else (r_img, self._inputs(a, r_img))
        both = joined([f_in, r_in])
        with torch.no_grad():  # one pass over every crop: each image is encoded on its own, and one call of
            # twice the batch costs less than two (bit-identical tokens on the tiny model of each architecture)
            tokens = ref.visual_features(both if fresh else f_in)
        ref_f_tok, ref_r_tok = tokens[: len(f_img)], (tokens[len(f_img):] if fresh else self._reference(ref, r_img))
        ref_n_tok = self._reference(ref, n_img)
        ref_f, ref_r, ref_n = pooled(ref_f_tok), pooled(ref_r_tok), pooled(ref_n_tok)
        # With several processes each holds a slice of the batch; the contrastive terms compare an
        # image with the whole batch's references, gathered, as in one process.
        all_f, all_r, all_n = ctx.gather(ref_f), ctx.gather(ref_r), ctx.gather(ref_n)
        r_who = r_who.to(all_r.device)
        A = len(f_img)
        # forget anchors: positives = neutral refs; negatives = own-identity refs + retained refs
        pos = all_n.unsqueeze(0).expand(A, -1, -1)
        neg = torch.cat([all_f.unsqueeze(0).expand(A, -1, -1), all_r.unsqueeze(0).expand(A, -1, -1)], 1)
        target = None
        if self.cfg.lambda_t > 0:
            target = (self._paired_targets(ref, batch["forget"]) if self.cfg.token_target == "person"
                      else _mean_token(ctx, ref_n_tok))
        return _Step(ref, f_img, r_img, n_img, f_in, r_in, both, ref_f_tok, ref_r_tok, ref_r, all_f, all_r, r_who,
                     ctx.gather(r_who), pos, neg, target)

    def _forget_terms(self, s: _Step, tokens: list[torch.Tensor], rows: list[int] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forget InfoNCE of forget photos' tokens and, with lambda_t, their distance to the mean neutral token
        (or, with ``token_target: person``, to each photo's own target). ``rows``: which of the batch's forget
        photos ``tokens`` are, where they are some of them."""
        nce = info_nce(pooled(tokens), s.pos[: len(tokens)], s.neg[: len(tokens)], self.cfg.tau)
        if s.target is None:
            return nce, None
        targets = s.target.expand(len(tokens), -1) if s.target.dim() == 1 else \
            s.target if rows is None else s.target[rows]
        return nce, torch.stack([F.mse_loss(t.float(), y.expand_as(t)) for t, y in zip(tokens, targets,
                                                                                       strict=True)]).mean()

    def _forget_loss(self, s: _Step, tokens: list[torch.Tensor], rows: list[int] | None = None) -> torch.Tensor:
        """The InfoNCE plus lambda_t times the token term: what the inner attack and the simulated relearning climb."""
        l_f, l_t = self._forget_terms(s, tokens, rows)
        return l_f if l_t is None else l_f + self.cfg.lambda_t * l_t

    def _relearned(self, ctx: Context, s: _Step, turns: list[Turn]) -> torch.Tensor | None:
        """The forget loss of half of the batch's people after a simulated relearning of the other half.

        None when the batch holds a single person, which cannot be split.
        """
        a = ctx.adapter
        seen, unseen = self._halves(turns, ctx.step)
        if not (seen and unseen):
            return None
        seen_in, unseen_in = (a.image_inputs([s.f_img[i] for i in rows]) for rows in (seen, unseen))
        return after_relearning(
            [p for p in a.model.parameters() if p.requires_grad],
            restore=lambda: token_mse(a.visual_features(seen_in), [s.ref_f_tok[i] for i in seen]),
            forget=lambda: self._forget_loss(s, a.visual_features(unseen_in), unseen),
            steps=self.cfg.relearn_sim_steps, eps=self.cfg.relearn_sim_eps)

    def _student_tokens(self, ctx: Context, s: _Step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The student's tokens of the forget and the retained photos, from one pass over both.

        One pass of twice the batch costs less than two passes (about a sixth of a step on the
        tiny LLaVA): each image is encoded on its own either way, so only the rounding moves.
        It runs after the simulated relearning, which moves the weights in place.
        """
        tokens = ctx.adapter.visual_features(s.both_in)
        return tokens[: len(s.f_img)], tokens[len(s.f_img):]

    def _forget(self, ctx: Context, s: _Step, f_tok: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
        """The forget InfoNCE and token term, and the forget photos' tower tokens when lambda_v reads them.

        ``f_tok``: the student's tokens of the forget photos when a joint pass computed them.
        With adv_steps each term is the mean of its value on the clean and on the attacked photos.
        """
        a = ctx.adapter

        def at(pixels: torch.Tensor) -> list[torch.Tensor]:
            return a.visual_features(BatchFeature({**s.f_in, "pixel_values": pixels}))

        f_hidden = None
        if self.cfg.lambda_v > 0:
            f_tok, (f_hidden,) = features_and_hidden(a, s.f_in, [self.block])
        elif f_tok is None:
            f_tok = at(s.f_in["pixel_values"])
        l_f, l_t = self._forget_terms(s, f_tok)
        if self.cfg.adv_steps > 0:
            # the clean photos stay anchors too: trained on the attacked ones alone, the clean forgetting
            # weakened; the ascent climbs the whole forget loss, so that it also undoes the token merging
            attacked = linf_ascent(a, s.f_in["pixel_values"], lambda pv: self._forget_loss(s, at(pv)),
                                   self.cfg.adv_eps, 2.5 * self.cfg.adv_eps / self.cfg.adv_steps,
                                   self.cfg.adv_steps)
            adv_nce, adv_t = self._forget_terms(s, at(attacked))
            l_f = (l_f + adv_nce) / 2
            if l_t is not None and adv_t is not None:
                l_t = (l_t + adv_t) / 2
        return l_f, l_t, f_hidden

    def _tower(self, ctx: Context, s: _Step, f_hidden: list[torch.Tensor]) -> torch.Tensor:
        """lambda_v's term: every forget token after vision block merge_block towards the reference's mean neutral
        token there."""
        target = _mean_token(ctx, self._reference_hidden(s.ref, s.n_img))
        return torch.stack([F.mse_loss(h.float(), target.expand_as(h)) for h in f_hidden]).mean()

    def _retain(self, ctx: Context, s: _Step, s_r_tok: list[torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """The retain InfoNCE and the retained photos' token distillation, from one pass of the student, and
        their tower tokens when lambda_dv reads them.

        ``s_r_tok``: the student's tokens of the retained photos when a joint pass computed them.
        They come after the simulated relearning, which moves the weights in place.
        """
        a = ctx.adapter
        s_r_hidden = None
        if self.cfg.lambda_dv > 0:
            s_r_tok, (s_r_hidden,) = features_and_hidden(a, s.r_in, [self.block])
        elif s_r_tok is None:
            s_r_tok = a.visual_features(s.r_in)
        s_r = pooled(s_r_tok)
        # retain anchors: positive = own reference; negatives = the other identities in the batch: the forget
        # photos and the other people's retained photos, not the person's own other views
        others = [torch.cat([s.all_r[s.all_who != who], s.all_f]) for who in s.r_who]
        l_r = torch.stack([info_nce(s_r[i : i + 1], s.ref_r[i : i + 1].unsqueeze(1), neg.unsqueeze(0), self.cfg.tau)
                           for i, neg in enumerate(others)]).mean()
        return l_r, token_mse(s_r_tok, s.ref_r_tok), s_r_hidden

    def _kept(self, ctx: Context, s: _Step) -> torch.Tensor | None:
        """lambda_k's term: the already-forgotten targets' tokens onto the reference's (None: none in this run).

        The step's draw is shared over the processes unevenly when it does not split evenly (3 photos: 2
        and 1), so each share's mean is weighed by its size, and a process with none adds zero: the mean
        the engine takes over the processes is then the mean over every photo drawn, as in one process."""
        kept, drawn = self._forgotten_batch(ctx, len(s.f_img))
        if not drawn:
            return None
        if not kept:
            return torch.zeros((), device=ctx.adapter.device)
        share = self._distilled(ctx, s, kept)
        return share if ctx.world == 1 else share * (len(kept) * ctx.world / drawn)

    def _distilled(self, ctx: Context, s: _Step, images: list) -> torch.Tensor:
        """Token-level distillation of un-augmented photos onto the reference's tokens of them."""
        return token_mse(ctx.adapter.visual_features(self._inputs(ctx.adapter, images)), self._reference(s.ref, images))

    @torch.no_grad()
    def _paired_targets(self, ref: Adapter, turns: list[Turn]) -> torch.Tensor:
        """token_target 'person': each forget photo's target, its person's neutral partner's mean reference token.

        The pairing is seeded and fixed for the run: the forget people, sorted, take neutral people in a seeded
        order (round the list again when there are more forget people than neutral ones). A neutral photo
        without a person (a benchmark's folder of photos) stands for a person of its own.
        """
        if not self._pair:
            groups = self._suite.groups
            neutral: dict[str, list] = {}
            for i, e in enumerate(e for e in groups.get("neutral", []) if e.has_image):
                neutral.setdefault(e.entity or f"photo-{i}", []).append(image_of(e))
            order = sorted(neutral)
            order = [order[i] for i in np.random.default_rng(self.seed).permutation(len(order))]
            forget = sorted(set(self._person.values()))
            for k, person in enumerate(forget):
                photos = neutral[order[k % len(order)]]
                self._pair[person] = torch.cat([t.float() for t in self._reference(ref, photos)]).mean(0)
        return torch.stack([self._pair[self._person[id(t.image)]] for t in turns])

    def _halves(self, turns: list[Turn], step: int) -> tuple[list[int], list[int]]:
        """Rows of the batch split by person into two seeded halves (the simulated relearning's)."""
        who = [self._person.get(id(t.image), str(i)) for i, t in enumerate(turns)]
        people = sorted(set(who))
        rng = np.random.default_rng(self.seed + 104729 * (step + 1))
        seen = {people[i] for i in rng.permutation(len(people))[: len(people) // 2]}
        return [i for i, w in enumerate(who) if w in seen], [i for i, w in enumerate(who) if w not in seen]

    @torch.no_grad()
    def _reference_hidden(self, ref: Adapter, images: list) -> list[torch.Tensor]:
        """The frozen reference's tokens after vision block ``merge_block``, each image's computed once."""
        block = [self.block]
        return per_image(self._ref_hidden, images,
                          lambda missing: features_and_hidden(ref, self._inputs(ref, missing), block)[1][0])

    def _forgotten_batch(self, ctx: Context, size: int) -> tuple[list, int]:
        """This process's share of the step's already-forgotten images, and how many were drawn: a seeded draw,
        the same in every process.

        The covariance keeps their layer inputs to first order; over a request's steps the
        second-order drift brought earlier targets back, so they are held explicitly too.
        """
        pool = self.cfg.forgotten_images
        if not pool or size == 0:
            return [], 0
        rng = np.random.default_rng(self.seed + 7919 * (ctx.step + 1))
        chosen = [pool[i] for i in rng.choice(len(pool), size=min(size * ctx.world, len(pool)), replace=False)]
        return ctx.shard(chosen), len(chosen)

    def _inputs(self, adapter: Adapter, images: list) -> BatchFeature:
        """The image processor's output for un-augmented images, each image processed once.

        Retained photos come back every pass; preprocessing them again was a seventh of a
        step. Each image's tensors are kept alone and ``joined`` into a batch. The reference
        is a copy of the student, with the same processor, so both share it.
        """
        return joined(per_image(self._pixels, images, lambda missing: [adapter.image_inputs([im]) for im in missing]))

    @torch.no_grad()
    def _reference(self, ref: Adapter, images: list) -> list[torch.Tensor]:
        """The frozen reference's tokens of un-augmented images, each computed once.

        Retained and neutral photos come back every epoch and the reference never changes,
        so recomputing them would be most of a step's visual compute.
        """
        return per_image(self._ref, images, lambda missing: ref.visual_features(self._inputs(ref, missing)))


def _cropped(adapter: Adapter, images: list, rng: np.random.Generator,
             strength: float, pose: float = 0.0) -> tuple[list, BatchFeature]:
    """Fresh crops of ``images`` (the images themselves at strength 0), posed with ``pose``, and their pixels."""
    if strength > 0:
        images = [augment(im, rng, strength, pose) for im in images]
    return images, adapter.image_inputs(images)


def _mean_token(ctx: Context, tokens: list[torch.Tensor]) -> torch.Tensor:
    """The mean token over every image of the batch, in every process."""
    rows = torch.cat([t.float() for t in tokens])
    if ctx.world == 1:
        return rows.mean(0)
    total = ctx.all_reduce_(rows.sum(0))
    return total / ctx.all_reduce_(torch.tensor(float(rows.shape[0]), device=rows.device))


class CVFNCU(CVFOnly):
    """CVF + NCU, the headline method: CVF's loss, every update confined to the retained null space."""

    name = "cvf_ncu"
    Config = CVFConfig
    cfg: CVFConfig

    def setup(self, ctx: Context) -> None:
        super().setup(ctx)
        if self.cfg.ncu:
            constrain_to_retained(ctx, self.cfg, known=self.cfg.known_covariance)


class NCUOnly(BaseMethod):
    """Ablation: GA-style forgetting of the forget answers, confined to the NCU null space."""

    name = "ncu_only"
    streams = ("forget", "retain")
    optional_streams = ("general",)  # the general photos widen the covariance, as in cvf_ncu
    default_scope = "visual"
    Config = NCUConfig
    cfg: NCUConfig

    def setup(self, ctx: Context) -> None:
        self.cfg.validate()  # a config built in code has not been through load_config
        constrain_to_retained(ctx, self.cfg)

    def split_loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, None, dict[str, float]]:
        f = nll(ctx.adapter, batch["forget"])
        return -f, None, {"nll_f": f.item()}
