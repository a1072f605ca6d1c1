"""Membership inference and forget quality: can the answers still tell the forget items from unseen ones?

Each answer (the correct option of an image MCQ item) is scored three ways, higher meaning
"more likely trained on":

- ``loss``: minus the mean negative log-likelihood of the answer tokens;
- ``zlib``: minus the answer's mean negative log-likelihood over its zlib-compressed length
  in bytes (Carlini et al.), which discounts answers that are easy for any model;
- ``mink_pp``: Min-K%++ (Zhang et al.): each answer token's log-probability standardised by
  the mean and spread of the log-probabilities the model gives the whole vocabulary at that
  position, averaged over the lowest ``k`` fraction of the tokens.

The AUC of each score, forget items against items of people the model never saw (the
held-out set), is what a membership attacker achieves. On its own it says little: the
retrained reference never saw the forget photos and still knows the people from text. It is
read against the reference's AUC: PrivLeak = (AUC - AUC_ref) / AUC_ref, near 0 when the
unlearned model leaks no more than the reference (MUSE). Forget quality is the p-value of a
two-sample KS test between the unlearned model's and the reference's per-item truth ratios on
the forget items (open-unlearning); a p-value under 0.05 says the two distributions differ.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from unsee.audit.common import as_deployed, image_mcq
from unsee.data import prompts
from unsee.data.collate import image_of
from unsee.data.schema import Example, Suite
from unsee.errors import DataError
from unsee.eval import metrics
from unsee.eval.evaluator import option_logprobs
from unsee.models.base import Adapter, Turn

if TYPE_CHECKING:
    from unsee.audit.common import AttackConfig
    from unsee.methods.artifact import Artifact

SCORES = ("loss", "zlib", "mink_pp")
PER_ITEM = "per_item"  # raw per-item scores the comparison with the reference reads; never stored


def answer_of(ex: Example) -> str:
    return ex.options[ex.correct] if ex.options else ex.answer


def check_holdout(forget: Sequence[str], holdout: Sequence[Example], name: str) -> None:
    """The held-out set must hold people the forget set does not: otherwise members count as non-members."""
    overlap = sorted(set(forget) & {e.entity for e in holdout})
    if overlap:
        raise DataError(f"the MIA held-out set {name!r} overlaps the forget set on {overlap[:5]}; it must hold "
                        "people the model never saw")
    if not holdout:
        raise DataError(f"the MIA held-out set {name!r} has no image MCQ items: membership inference needs items "
                        "of people the model never saw (a group of the benchmark, or another split via "
                        "mia_holdout=NAME)")


@torch.no_grad()
def answer_scores(adapter: Adapter, items: Sequence[Example], k: float,
                  batch_size: int = 8) -> dict[str, list[float]]:
    """Per-item ``loss`` (mean NLL, lower is more member-like), ``zlib`` (the mean NLL over the answer's zlib
    bytes, as Carlini et al. and the Min-K% code define it) and ``mink_pp`` (higher is more member-like):
    the raw scores, signs as they are defined."""
    out: dict[str, list[float]] = {s: [] for s in SCORES}
    with adapter.eval_mode():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            turns = [Turn(image_of(e), prompts.qa_prompt(e.question), answer_of(e)) for e in chunk]
            logits, mask, labels = adapter.answer_positions(adapter.training_batch(turns))
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            prob = logp.exp()
            mu = (prob * logp).sum(-1)
            sigma = ((prob * logp.square()).sum(-1) - mu.square()).clamp(min=1e-12).sqrt()
            z = (tok - mu) / sigma
            for row, ex in enumerate(chunk):
                keep = mask[row]
                t = tok[row][keep].cpu()
                loss = float(-t.sum()) / max(len(t), 1)
                out["loss"].append(loss)
                out["zlib"].append(loss / len(zlib.compress(answer_of(ex).encode())))
                lowest = torch.sort(z[row][keep].cpu()).values[: max(1, math.ceil(k * len(t)))]
                out["mink_pp"].append(float(lowest.mean()) if len(lowest) else 0.0)
    return out


def truth_ratios(adapter: Adapter, items: Sequence[Example]) -> list[float]:
    """Per item, log of (geometric mean over wrong options of p(option)^(1/tokens)) / p(correct)^(1/tokens).

    TOFU's truth ratio on the MCQ options, as open-unlearning computes it (the wrong options' mean per-token
    loss against the right one's): below 0 the model prefers the truth, above 0 a wrong answer."""
    scores = option_logprobs(adapter, items)
    out = []
    for ex, lps in zip(items, scores, strict=True):
        per_token = [lp / max(len(adapter.text_ids(adapter.answer_text(o))), 1) for lp, o in zip(lps, ex.options,
                                                                                                  strict=True)]
        wrong = [v for i, v in enumerate(per_token) if i != ex.correct]
        out.append(sum(wrong) / len(wrong) - per_token[ex.correct])
    return out


def member_score(kind: str, values: Sequence[float]) -> list[float]:
    """The raw score turned so that higher means member."""
    return list(values) if kind == "mink_pp" else [-v for v in values]


def mia(adapter: Adapter, suite: Suite, cfg: AttackConfig, artifact: Artifact | None = None) -> dict[str, Any]:
    """AUC of each score, forget items (members) against the held-out group ``cfg.mia_holdout``.

    ``per_item`` keeps the raw scores (and the forget items' truth ratios) for the comparison
    with the reference; :func:`relative` reads them and the stored figures leave them out."""

    cap = cfg.mia_max_items or None
    forget = image_mcq(suite, "forget")[:cap]
    if not forget:
        raise DataError(f"suite {suite.name!r} has no image MCQ on the forget people for membership inference")
    holdout = image_mcq(suite, cfg.mia_holdout)[:cap]
    check_holdout(suite.forget_entities, holdout, cfg.mia_holdout)
    with as_deployed(adapter, artifact):
        members, others = answer_scores(adapter, forget, cfg.mia_k), answer_scores(adapter, holdout, cfg.mia_k)
        ratios = truth_ratios(adapter, forget)
    out: dict[str, Any] = {f"auc_{s}": round(_auc(s, members, others), 4) for s in SCORES}
    out.update({"k": cfg.mia_k, "holdout": cfg.mia_holdout, "n_forget": len(forget), "n_holdout": len(holdout),
                PER_ITEM: {"forget": {**members, "truth_ratio": ratios}, "holdout": others}})
    return out


def _auc(score: str, members: Mapping[str, Sequence[float]], others: Mapping[str, Sequence[float]]) -> float:
    return metrics.auc(member_score(score, members[score]), member_score(score, others[score]))


def relative(mine: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    """PrivLeak of each score and forget quality, from this model's and the reference's :func:`mia` figures
    (the AUCs taken again from their per-item scores: the stored ones are rounded).

    A reference of several draws (:func:`unsee.audit.verdicts.reference_of_draws`) holds a list of per-item
    scores: its AUC is the mean of the draws' AUCs, and forget quality tests this model's items against the
    draws' items pooled, the spread of never having seen the photos as the draws sample it. The pooled items
    are no independent sample (one item's scores move together across draws), so the p-value against each draw
    alone goes beside it (``forget_quality_per_draw``): how far the verdict rests on the draws."""
    items = mine[PER_ITEM]
    draws = reference[PER_ITEM] if isinstance(reference[PER_ITEM], list) else [reference[PER_ITEM]]
    out: dict[str, Any] = {}
    for s in SCORES:
        a = _auc(s, items["forget"], items["holdout"])
        ref = sum(_auc(s, d["forget"], d["holdout"]) for d in draws) / len(draws)
        out[f"privleak_{s}"] = None if not ref else round((a - ref) / ref, 4)
    for score, suffix, ks in (("truth_ratio", "", "ks_truth_ratio"), ("loss", "_loss", "ks_loss")):
        # a p-value is kept to 6 significant digits, not places: 2e-10 is a finding, 0.0 would be none
        d, p = metrics.ks_2samp(items["forget"][score], [v for draw in draws for v in draw["forget"][score]])
        out[f"forget_quality{suffix}"], out[ks] = float(f"{p:.6g}"), round(d, 4)
    if len(draws) > 1:
        alone = [metrics.ks_2samp(items["forget"]["truth_ratio"], draw["forget"]["truth_ratio"])[1] for draw in draws]
        out["forget_quality_per_draw"] = [float(f"{p:.6g}") for p in alone]
    return out
