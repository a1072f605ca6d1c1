"""Scoring functions: each a small pure function on strings or numbers.

They follow the published benchmark code so that a figure here means what it means in the
papers (MLLMU-Bench, CLEAR, UMU-bench; see ``docs/benchmarks.md``). Where that code
is loose (empty replies, empty ground truths, ties) the choice made is stated in the
docstring. Nothing here touches a model, so the whole module is tested in milliseconds.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from unsee.data.schema import LETTERS
from unsee.errors import UnseeError

# Groups whose accuracy must survive unlearning; the score's R is their worst ratio.
RETENTION_GROUPS = ("retain", "text_forget", "text_retain", "known", "general")


def first_letter(reply: str) -> str | None:
    """The first alphanumeric character, upper-cased: MLLMU-Bench's reading of an MCQ reply.

    ``"(b) Paris"`` reads as ``"B"``; a reply with no letter or digit reads as ``None``.
    Like the benchmark, ``"Answer: B"`` reads as ``"A"``: the letter protocol is strict.
    """
    for ch in reply:
        if ch.isalnum():
            return ch.upper()
    return None


def letter_correct(reply: str, gold_letter: str) -> bool:
    """Whether the reply's first letter is the gold letter (``"B"``, ``"b"`` or ``"B. text"``)."""
    gold = first_letter(gold_letter)
    return gold is not None and first_letter(reply) == gold


def _normalise_option(text: str) -> str:
    return text.strip().casefold().rstrip(".").strip()


def option_string_correct(reply: str, option_text: str) -> bool:
    """UMU-bench classification: the reply is the correct option's text.

    Both sides are normalised by stripping whitespace, case-folding and dropping trailing
    periods, so ``"Paris."`` matches ``"paris"``; nothing else is forgiven (UMU compares
    exact strings). An empty option never matches.
    """
    gold = _normalise_option(option_text)
    return bool(gold) and _normalise_option(reply) == gold


def closest_option(reply: str, options: Sequence[str]) -> int:
    """Index of the option most similar to the reply (difflib ratio), as UMU-bench's lenient mode.

    Ties go to the lowest index. Use it to map free text onto options before
    :func:`option_string_correct`, when the protocol allows it.
    """
    if not options:
        raise UnseeError("closest_option needs at least one option")
    ratios = [difflib.SequenceMatcher(None, reply, o).ratio() for o in options]
    return ratios.index(max(ratios))


def cloze_correct(reply: str, truth: str) -> bool:
    """Cloze: the lower-cased ground truth (stripped) is a substring of the lower-cased reply.

    An empty ground truth is always a substring, so it is scored False rather than free credit.
    """
    gold = truth.strip().lower()
    return bool(gold) and gold in reply.lower()


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(reply: str, truth: str) -> float:
    """ROUGE-L F-measure with Porter stemming (``rouge_score``), as the benchmarks report it.

    ``rouge_score`` keeps only ASCII letters and digits, so text with neither scores 0.
    """
    return float(_rouge_scorer().score(truth, reply)["rougeL"].fmeasure)


def bleu(reply: str, truth: str) -> float:
    """Sentence BLEU on whitespace tokens with smoothing method 1 (nltk), as the benchmarks do.

    Needs no nltk data download. An empty reply or ground truth scores 0.0.
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hypothesis = reply.split()
    reference = truth.split()
    if not hypothesis or not reference:
        return 0.0
    return float(sentence_bleu([reference], hypothesis, smoothing_function=SmoothingFunction().method1))


def loglik_choice(option_logprobs: Sequence[float]) -> int:
    """The option with the highest log-likelihood; ties go to the lowest index.

    NaN counts as minus infinity, so a broken score never wins. Fixed tie-breaking keeps
    accuracy deterministic when a collapsed model assigns equal scores.
    """
    if len(option_logprobs) == 0:
        raise UnseeError("loglik_choice needs at least one option score")
    best, best_value = 0, -math.inf
    for i, value in enumerate(option_logprobs):
        v = float(value)
        if math.isnan(v):
            v = -math.inf
        if v > best_value:
            best, best_value = i, v
    return best


def all_modal(pairs: Mapping[str, tuple[bool, bool]]) -> dict[str, float | int]:
    """UMU-bench modality alignment over question pairs ``key -> (unimodal_ok, multimodal_ok)``.

    ``all_modal_acc``: the fraction where both forms are answered correctly;
    ``all_modal_err``: the fraction where both are wrong. An effective unlearner lowers the
    first on the forget set without raising the second on the retain set. No pairs gives 0.0.
    """
    n = len(pairs)
    both_right = sum(1 for uni, multi in pairs.values() if uni and multi)
    both_wrong = sum(1 for uni, multi in pairs.values() if not uni and not multi)
    return {
        "all_modal_acc": both_right / n if n else 0.0,
        "all_modal_err": both_wrong / n if n else 0.0,
        "n": n,
    }


def clear_name_correct(reply: str, name: str, options: Sequence[str] | None = None) -> bool:
    """CLEAR name recognition.

    With ``options`` (the prompt of :func:`unsee.data.prompts.clear_name_prompt`), the reply's
    first letter must point at ``name`` among them, as CLEAR scores it. Without options, the
    name must appear in the reply, case-insensitively. An empty name is never correct.
    """
    gold = name.strip()
    if not gold:
        return False
    if options is None:
        return gold.casefold() in reply.casefold()
    letter = first_letter(reply)
    if letter is None or letter not in LETTERS[: len(options)]:
        return False
    return options[LETTERS.index(letter)].strip() == gold


# The item count behind each figure: ``n`` counts the MCQ items only.
COUNT_KEYS = {"cloze": "n_cloze", "rougeL": "n_gen", "bleu": "n_gen"}


def _figure(metrics: Mapping[str, Any], group: str, key: str) -> float | None:
    """A group's figure, or None when the group is absent, has no items behind that figure or lacks it."""
    entry = metrics.get(group)
    if not isinstance(entry, Mapping) or not entry.get(COUNT_KEYS.get(key, "n")) or entry.get(key) is None:
        return None
    return float(entry[key])


def unlearning_score(
    vanilla: Mapping[str, Any], run: Mapping[str, Any], chance: float = 0.25, *, key: str = "mcq"
) -> dict[str, Any]:
    """One number for the forget/retain trade-off, from two ``metrics`` dicts of results.json.

    - E (efficacy) = clip((vanilla_forget - forget) / (vanilla_forget - chance), 0, 1): how
      much of the above-chance knowledge of the targets is gone. If the vanilla model is not
      above chance there is nothing measurable to remove, and E is 0.
    - R (retention) = the minimum, over retain, text_forget, text_retain, known and general,
      of run / vanilla, each ratio capped at 1. Groups missing on either side, with n = 0 or
      with a vanilla figure of 0 are skipped. The minimum, not the mean, so that one
      destroyed ability is not averaged away. With no group to judge, R and score are None.
    - score = 2ER / (E + R), their harmonic mean (0 when both are 0).

    Returns ``{"E", "R", "score", "limiting"}``, ``limiting`` naming the group that set R.
    """
    v_forget = _figure(vanilla, "forget", key)
    forget = _figure(run, "forget", key)
    if v_forget is None or forget is None:
        raise UnseeError(f"unlearning_score needs a non-empty 'forget' group with {key!r} in both metrics")
    span = v_forget - chance
    efficacy = min(max((v_forget - forget) / span, 0.0), 1.0) if span > 0 else 0.0

    retention: float | None = None
    limiting: str | None = None
    for group in RETENTION_GROUPS:
        before, after = _figure(vanilla, group, key), _figure(run, group, key)
        if before is None or after is None or before <= 0:
            continue
        ratio = min(after / before, 1.0)
        if retention is None or ratio < retention:
            retention, limiting = ratio, group
    if retention is None:
        return {"E": efficacy, "R": None, "score": None, "limiting": None}
    total = efficacy + retention
    score = 2 * efficacy * retention / total if total > 0 else 0.0
    return {"E": efficacy, "R": retention, "score": score, "limiting": limiting}


# ---------------------------------------------------------------------------- statistics of per-item figures
def bootstrap_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of ``values`` (each item resampled with replacement).

    A forget group of 45 items moves by 2 points per item, so a single figure without its
    interval cannot say whether a target holds. Seeded, so the same items give the same
    interval. No items gives ``[nan, nan]``; the bounds are rounded to 4 places.
    """
    import numpy as np

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return [math.nan, math.nan]
    idx = np.random.default_rng(seed).integers(0, x.size, size=(n_boot, x.size))
    return _percentiles(x[idx].mean(axis=1), level)


def cluster_bootstrap_ci(values: Sequence[float], clusters: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
                         level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of the mean of ``values``, resampling whole ``clusters`` (people).

    One person's items, and the several askings of one fact, succeed or fail together, so an
    interval over items is narrower than the data warrant; resampling people gives the interval
    a new draw of people would show. Seeded; no items gives ``[nan, nan]``.
    """
    import numpy as np

    if len(values) != len(clusters):
        raise UnseeError(f"{len(values)} values but {len(clusters)} cluster labels")
    if not values:
        return [math.nan, math.nan]
    names = sorted(set(clusters))
    at = {c: i for i, c in enumerate(names)}
    sums, counts = np.zeros(len(names)), np.zeros(len(names))
    for v, c in zip(values, clusters, strict=True):
        sums[at[c]] += float(v)
        counts[at[c]] += 1
    idx = np.random.default_rng(seed).integers(0, len(names), size=(n_boot, len(names)))
    return _percentiles(sums[idx].sum(axis=1) / counts[idx].sum(axis=1), level)


def _percentiles(means: Any, level: float) -> list[float]:
    """The central ``level`` interval of bootstrap means, rounded outwards to 4 places: rounded to the
    nearest, a point interval (one person) could leave out the accuracy it surrounds."""
    import numpy as np

    tail = (1 - level) / 2
    low, high = float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
    return [max(0.0, math.floor(low * 1e4 + 1e-9) / 1e4), min(1.0, math.ceil(high * 1e4 - 1e-9) / 1e4)]


def auc(members: Sequence[float], non_members: Sequence[float]) -> float:
    """ROC AUC of a score that should be higher for members: P(member > non-member), ties counted half.

    0.5 is a score that cannot tell the two sets apart. Computed exactly by ranks (Mann-Whitney U).
    """
    if not members or not non_members:
        raise UnseeError("an AUC needs at least one member and one non-member score")
    _finite(members, non_members, "an AUC")
    pooled = sorted([(float(v), 1) for v in members] + [(float(v), 0) for v in non_members])
    rank_sum, i = 0.0, 0
    while i < len(pooled):  # average ranks over ties
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        mid = (i + j + 1) / 2
        rank_sum += mid * sum(1 for k in range(i, j) if pooled[k][1])
        i = j
    n1, n0 = len(members), len(non_members)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0)


def ks_2samp(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic D and its exact two-sided p-value.

    The p-value is P(D' >= D) under the null that both samples come from one continuous
    distribution, by counting the lattice paths that stay inside the band (exact integers,
    so no overflow or rounding at forget-set sizes). Ties make it slightly conservative.
    This is what open-unlearning's Forget Quality reports, with scipy's exact method.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise UnseeError("a KS test needs two non-empty samples")
    _finite(a, b, "a KS test")
    xs, ys = sorted(float(v) for v in a), sorted(float(v) for v in b)
    # D * n * m as an integer: the largest gap between the two empirical CDFs over every value
    i = j = 0
    gap = 0
    for v in sorted(set(xs) | set(ys)):
        while i < n and xs[i] <= v:
            i += 1
        while j < m and ys[j] <= v:
            j += 1
        gap = max(gap, abs(i * m - j * n))
    if gap == 0:
        return 0.0, 1.0
    # paths from (0, 0) to (n, m) whose every point keeps |i*m - j*n| < gap
    row = [0] * (m + 1)
    for ii in range(n + 1):
        for jj in range(m + 1):
            if abs(ii * m - jj * n) >= gap:
                row[jj] = 0
            elif ii == 0 and jj == 0:
                row[jj] = 1
            else:
                row[jj] = (row[jj] if ii > 0 else 0) + (row[jj - 1] if jj > 0 else 0)
    total = math.comb(n + m, n)
    p = (total - row[m]) / total  # the paths outside, counted as integers: a p of 1e-30 is kept, not 0.0
    return gap / (n * m), min(max(p, 0.0), 1.0)


def _finite(a: Sequence[float], b: Sequence[float], what: str) -> None:
    """A NaN compares false with everything: ranks and CDFs over one would be wrong without a word."""
    if any(not math.isfinite(float(v)) for v in (*a, *b)):
        raise UnseeError(f"{what} needs finite scores; a NaN or infinite one came from the model")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max, unrounded: whoever shows them
    rounds once (a mean stored at 4 places and shown at 3 can show the wrong third digit)."""
    if not values:
        raise UnseeError("spread needs at least one value")
    xs = [float(v) for v in values]
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(xs), "max": max(xs)}
