"""The evaluator's MCQ scoring: batching and padding are bookkeeping and must not change a single score.

Option log-likelihoods are summed in batches sorted by prompt length, each prompt encoded
once and its cache shared by the options, so an item's score could in principle depend on
its neighbours (padding length), on the tokenizer's padding side, on the batch size, or on
the cache. Every check compares against scoring one item at a time, or each (prompt, option)
sequence in full, on the three tiny architectures over the shared tiny world's questions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch
from transformers import BatchFeature

from unsee.data.collate import image_of
from unsee.data.schema import Example, Suite
from unsee.eval import metrics
from unsee.eval.evaluator import mcq_loglik, option_logprobs
from unsee.models import HFAdapter, Turn
from unsee.models.base import IGNORE
from unsee.models.tiny import ARCHS

if TYPE_CHECKING:
    from conftest import TinyModels

archs = pytest.mark.parametrize("arch", ARCHS)

# Scores are sums of 5-40 token log-probabilities of magnitude up to ~100 in float32; batching moves them by
# ~2e-6 here. Options of one question differ by far more than this, so a real dependence on the batch fails.
ATOL = 1e-4


@pytest.fixture(scope="module")
def mcq_items(suite: Suite) -> list[Example]:
    """A mix that makes batches uneven: image and text-only questions, several lengths, 3-4 options each."""
    items: list[Example] = []
    for group in ("forget", "text_forget", "retain", "general"):
        items += [e for e in suite.groups[group] if e.task == "mcq" and e.options][:3]
    assert len({e.has_image for e in items}) == 2 and len({len(e.question) for e in items}) > 4
    return items


def flat(scores: list[list[float]]) -> torch.Tensor:
    return torch.tensor([s for row in scores for s in row], dtype=torch.float64)


@archs
def test_batched_scores_equal_one_at_a_time(tiny_models: TinyModels, arch: str, mcq_items: list[Example]) -> None:
    adapter = tiny_models.adapter(arch)
    one = option_logprobs(adapter, mcq_items, batch_size=1)
    assert len({round(s, 3) for s in flat(one).tolist()}) > len(mcq_items)  # the scores tell options apart
    chosen = [metrics.loglik_choice(s) for s in one]
    for batch_size in (8, 16):
        batched = option_logprobs(adapter, mcq_items, batch_size=batch_size)
        torch.testing.assert_close(flat(batched), flat(one), rtol=0, atol=ATOL)
        assert [metrics.loglik_choice(s) for s in batched] == chosen, batch_size
    assert mcq_loglik(adapter, mcq_items, batch_size=16) == mcq_loglik(adapter, mcq_items, batch_size=1)


@archs
def test_shared_prompt_scores_equal_full_sequences(tiny_models: TinyModels, arch: str,
                                                   mcq_items: list[Example]) -> None:
    """The cached-prompt scores are the figures of scoring every (prompt, option) row on its own,
    also for a text-only batch right after an image batch (Qwen keeps per-batch M-RoPE offsets)."""
    adapter = tiny_models.adapter(arch)
    images = [e for e in mcq_items if e.has_image]
    texts = [e for e in mcq_items if not e.has_image]
    for chunk in (images, texts, mcq_items):
        shared = adapter.option_logprobs([Turn(image_of(e), e.question) for e in chunk], [e.options for e in chunk])
        with torch.no_grad(), adapter.eval_mode():
            full = [adapter.answer_logprobs(adapter.training_batch([Turn(image_of(e), e.question, o)
                                                                   for o in e.options])).tolist() for e in chunk]
        torch.testing.assert_close(flat(shared), flat(full), rtol=0, atol=ATOL)


@archs
def test_scores_do_not_depend_on_padding_length(tiny_models: TinyModels, arch: str,
                                                mcq_items: list[Example]) -> None:
    """A much longer question in the same batch pads every other row; their scores stay put."""
    adapter = tiny_models.adapter(arch)
    long = Example(uid="long", entity="x", task="mcq", answer="blue", options=("blue", "a green one"), correct=0,
                   question="Ignoring everything else you may have been told so far, and thinking carefully, " * 4
                   + "what colour is the sky on a clear day?")
    short = mcq_items[:6]
    rows = [Turn(None, e.question, e.options[0]) for e in [*short, long]]
    width = adapter.training_batch(rows)["attention_mask"].sum(-1)
    assert int(width[-1] - width[:-1].max()) >= 30  # the companion really does add padding
    alone = option_logprobs(adapter, short, batch_size=1)
    padded = option_logprobs(adapter, [*short, long], batch_size=64)[:-1]
    torch.testing.assert_close(flat(padded), flat(alone), rtol=0, atol=ATOL)


def left_padded(adapter: HFAdapter, batch: BatchFeature) -> BatchFeature:
    """The same rows moved to the right end of the batch, padding in front."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    new_ids = torch.full_like(ids, adapter.tokenizer.pad_token_id)
    new_mask, new_labels = torch.zeros_like(mask), torch.full_like(labels, IGNORE)
    for i, n in enumerate(mask.sum(-1).tolist()):
        new_ids[i, -n:], new_mask[i, -n:], new_labels[i, -n:] = ids[i, :n], 1, labels[i, :n]
    out = BatchFeature({**batch, "input_ids": new_ids, "attention_mask": new_mask, "labels": new_labels})
    if "mm_token_type_ids" in out:
        out["mm_token_type_ids"] = (new_ids == adapter.image_token_id).long()
    return out


@archs
def test_scores_do_not_depend_on_padding_side(tiny_models: TinyModels, arch: str, mcq_items: list[Example]) -> None:
    adapter = tiny_models.adapter(arch)
    reference = option_logprobs(adapter, mcq_items, batch_size=16)
    # a tokenizer left in left-padding state (generation sets it) must not leak into scoring
    side = adapter.tokenizer.padding_side
    try:
        adapter.tokenizer.padding_side = "left"
        torch.testing.assert_close(flat(option_logprobs(adapter, mcq_items, batch_size=16)), flat(reference),
                                   rtol=0, atol=0)
    finally:
        adapter.tokenizer.padding_side = side
    # and the adapter scores a left-padded batch as it scores the right-padded one
    turns = [Turn(image_of(e), e.question, e.options[e.correct or 0]) for e in mcq_items[:8]]
    right = adapter.training_batch(turns)
    assert bool((right["attention_mask"] == 0).any())  # rows of different lengths: there is padding to move
    with torch.no_grad(), adapter.eval_mode():
        expected = adapter.answer_logprobs(right)
        got = adapter.answer_logprobs(left_padded(adapter, right))
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_seed_means_resample_items_scored_by_the_seeds_that_got_them() -> None:
    """aggregate_seeds: the seeds' mean, an interval over items and the per-seed spread; mismatched items refused."""
    from unsee.errors import UnseeError
    from unsee.eval.evaluator import aggregate_seeds

    def records(correct: list[bool], group: str = "forget") -> list[dict]:
        return [{"group": group, "uid": f"q{i}", "person": f"p{i // 2}", "task": "mcq", "correct": c}
                for i, c in enumerate(correct)]

    a = records([True, True, False, False]) + [{"group": "forget", "uid": "g0", "task": "gen", "correct": True}]
    b = records([True, False, False, False])
    out = aggregate_seeds([a, b])["forget"]
    assert out["n"] == 4 and out["mcq"] == pytest.approx(0.375)
    assert out["seeds"] == {"mean": 0.375, "sd": pytest.approx(0.1768, abs=1e-4), "min": 0.25, "max": 0.5}
    assert out["ci95"] == metrics.bootstrap_ci([1.0, 0.5, 0.0, 0.0])  # each item scored by its share of seeds
    assert aggregate_seeds([a])["forget"]["ci95"] == metrics.bootstrap_ci([1.0, 1.0, 0.0, 0.0])
    assert out["ci95_people"] == metrics.cluster_bootstrap_ci([1.0, 0.5, 0.0, 0.0], ["p0", "p0", "p1", "p1"])
    with pytest.raises(UnseeError, match="other items"):
        aggregate_seeds([a, records([True, True, True])])
    with pytest.raises(UnseeError, match="at least one"):
        aggregate_seeds([])


def test_a_forget_group_gives_each_persons_accuracy_and_the_other_groups_do_not() -> None:
    """A request is answered when each of its people is forgotten: results.json names each one's figure."""
    from unsee.eval.evaluator import aggregate, aggregate_seeds

    recs = [{"group": g, "uid": f"{g}{i}", "person": f"p{i // 2}", "task": "mcq", "correct": c}
            for g in ("forget", "forget_test", "retain") for i, c in enumerate([True, True, False, True])]
    out = aggregate(recs)
    assert out["forget"]["people"] == out["forget_test"]["people"] == {"p0": 1.0, "p1": 0.5}
    assert "people" not in out["retain"]
    flipped = [{**r, "correct": not r["correct"]} for r in recs]  # a second seed
    assert aggregate_seeds([recs, flipped])["forget"]["people"] == {"p0": 0.5, "p1": 0.5}
    assert "people" not in aggregate([{k: v for k, v in r.items() if k != "person"} for r in recs])["forget"]


def test_interval_over_people_is_wider_when_a_person_fails_as_a_whole() -> None:
    """Items that succeed or fail by person: the interval over people is wider than the one over items,
    and it equals the item interval when every person has one item."""
    from unsee.eval import metrics

    values = [1.0] * 20 + [0.0] * 20
    people = [f"p{i // 10}" for i in range(40)]  # four people, each all right or all wrong
    by_items, by_people = metrics.bootstrap_ci(values), metrics.cluster_bootstrap_ci(values, people)
    assert by_people[1] - by_people[0] > 2 * (by_items[1] - by_items[0])
    assert metrics.cluster_bootstrap_ci(values, [f"{i:02d}" for i in range(40)]) == by_items
    assert metrics.cluster_bootstrap_ci(values, people) == by_people  # seeded
    with pytest.raises(metrics.UnseeError, match="cluster labels"):
        metrics.cluster_bootstrap_ci(values, people[:3])


@pytest.mark.parametrize("values", [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.5] * 7])
def test_an_interval_always_holds_the_accuracy_it_surrounds(values: list[float]) -> None:
    """One person's items resample as one: the interval is the point 2/3, which rounded to the nearest
    (0.6667) would leave the accuracy out."""
    from unsee.eval import metrics

    mean = sum(values) / len(values)
    for low, high in (metrics.cluster_bootstrap_ci(values, ["p"] * len(values)), metrics.bootstrap_ci(values)):
        assert 0 <= low <= mean <= high <= 1, (low, mean, high)
