"""The scoring protocols: each benchmark's official prompts, reply budgets and answer reading.

The prompt snapshots freeze the exact text sent under ``official``; a scripted adapter
(replies chosen per prompt) checks that the evaluator reads answers the benchmark's way
and that its figures are exactly what its item records add up to.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import fixtures_bench as fb
import pytest

from unsee.data.schema import Example, Suite
from unsee.errors import ConfigError
from unsee.eval import protocols
from unsee.eval.evaluator import aggregate, item_correctness, run_evaluation
from unsee.models import Turn

OPTIONS = ("Architect", "Chef", "Pilot", "Teacher")


def mcq(uid: str, *, correct: int = 1, image: bool = False, question: str = "What is her job?",
        pair: str | None = None) -> Example:
    return Example(uid=uid, entity="p1", question=question, answer=OPTIONS[correct], task="mcq",
                   image=fb.png(1) if image else None, options=OPTIONS, correct=correct, pair_key=pair)


def free(uid: str, task: str, question: str, answer: str, *, image: bool = False, pair: str | None = None) -> Example:
    return Example(uid=uid, entity="p1", question=question, answer=answer, task=task,  # type: ignore[arg-type]
                   image=fb.png(1) if image else None, pair_key=pair)


# ------------------------------------------------------------------ the official prompts, frozen


def test_mllmu_official_prompts_snapshot() -> None:
    assert protocols.prompt("mllmu", "official", mcq("a", image=True)) == (
        "What is her job?\nA: Architect\nB: Chef\nC: Pilot\nD: Teacher\n"
        "Just give ONE letter representing the answer directly."
    )
    assert protocols.prompt("builtin", "official", free("c", "cloze", "She works as a __.", "Chef")) == (
        "She works as a [Blank].\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
    )
    assert protocols.prompt("mllmu", "official", free("g", "gen", "What does she do?", "x", image=True)) == (
        "What does she do?\nAnswer the question based on your trained knowledge in one sentence accurately in "
        "ENGLISH."
    )
    assert protocols.prompt("mllmu", "official", free("g", "gen", "What does Ana do?", "x")) == (
        "What does Ana do?\nAnswer the question based on your trained knowledge in one sentence in ENGLISH."
    )


def test_clear_official_prompts_snapshot() -> None:
    name = Example(uid="n", entity="Ana", question="What is the name of the person in the image?", answer="Bo",
                   task="mcq", options=("Ana Silva", "Bo Chen", "Cy Diaz"), correct=1)
    assert protocols.prompt("clear", "official", name) == (
        "What is the name of the person in the image?\nA. Ana Silva\nB. Bo Chen\nC. Cy Diaz\n"
    )
    caption = free("cap", "gen", "Describe the image in detail.", "A woman.", image=True)
    assert protocols.prompt("clear", "official", caption) == "Describe the image in detail."
    # log-likelihood scoring keeps the bare question for MCQ and the MLLMU suffix for generation
    assert protocols.prompt("clear", "loglik", name) == "What is the name of the person in the image?"
    assert protocols.prompt("clear", "loglik", caption).endswith("accurately in ENGLISH.")


def test_umu_official_prompts_snapshot() -> None:
    assert protocols.prompt("umu", "official", mcq("a")) == (
        "What is her job?\nSelect answer in ['Architect', 'Chef', 'Pilot', 'Teacher']"
    )
    assert protocols.prompt("umu", "official", free("c", "cloze", "She works as [Blank].", "Chef")) == (
        "She works as [Blank].\nPlease **ONLY** provide the correct answer without any explanation"
    )
    assert protocols.prompt("umu", "official", free("g", "gen", "What does Ana do?", "x")) == (
        "What does Ana do?\nAnswer the question based on your trained knowledge in one sentence in ENGLISH."
    )


def test_reply_budgets_are_the_benchmarks_own() -> None:
    assert protocols.max_new_tokens("mllmu", "mcq") == 50
    assert protocols.max_new_tokens("clear", "gen") == 50
    assert protocols.max_new_tokens("umu", "gen") == 200
    assert protocols.max_new_tokens("umu", "gen", 7) == 7
    with pytest.raises(ConfigError):
        protocols.max_new_tokens("umu", "gen", 0)
    with pytest.raises(ConfigError, match="unknown protocol"):
        protocols.check_protocol("vibes")


# ------------------------------------------------------------------ reading the replies


def test_mcq_rules_per_benchmark_and_group() -> None:
    assert protocols.mcq_rule("builtin", "loglik", "forget") == "loglik"
    assert protocols.mcq_rule("mllmu", "official", "forget") == "letter"
    assert protocols.mcq_rule("clear", "official", "known") == "letter"
    assert protocols.mcq_rule("umu", "official", "forget") == "option_string"
    assert protocols.mcq_rule("umu", "official", "known") == "closest_option"


@pytest.mark.parametrize(("rule", "reply", "extracted", "ok"), [
    ("letter", "(b) Chef", "B", True),
    ("letter", "Answer: B", "A", False),  # strict, as MLLMU-Bench reads it
    ("letter", "...", None, False),
    ("option_string", "chef.", "chef.", True),
    ("option_string", "Chef, I think", "Chef, I think", False),
    ("closest_option", "Chef, I think", "Chef", True),
    ("closest_option", "Teach", "Teacher", False),
])
def test_read_mcq(rule: str, reply: str, extracted: str | None, ok: bool) -> None:
    assert protocols.read_mcq(rule, reply, mcq("a")) == (extracted, ok)


# ------------------------------------------------------------------ the evaluator, scripted


class Scripted:
    """An adapter whose replies are looked up by prompt, and whose option scores favour option 0."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.budgets: list[int] = []

    def generate(self, turns: Sequence[Turn], *, max_new_tokens: int = 32, batch_size: int = 16,
                 progress: bool = False, desc: str = "generate") -> list[str]:
        self.budgets.append(max_new_tokens)
        return [self.replies.get(t.prompt, "") for t in turns]

    def option_logprobs(self, turns: Sequence[Turn], options: Sequence[Sequence[str]]) -> list[list[float]]:
        return [[-float(i) for i in range(len(o))] for o in options]

    @contextmanager
    def eval_mode(self) -> Iterator[None]:
        yield


def umu_suite() -> Suite:
    """One person, each question in its image form (``forget``) and its text form (``text_forget``)."""
    groups = {
        "forget": [mcq("m1", image=True, pair="k1"), mcq("m2", image=True, pair="k2", question="Her work?"),
                   free("c1", "cloze", "She is a [Blank].", "Chef", image=True, pair="c"),
                   free("g1", "gen", "What does she do?", "She works as a chef.", image=True, pair="g")],
        "text_forget": [mcq("t1", pair="k1", question="What is Ana's job?"),
                        mcq("t2", pair="k2", question="Ana's work?"),
                        free("tc1", "cloze", "Ana is a [Blank].", "Chef", pair="c"),
                        free("tg1", "gen", "What does Ana do?", "Ana works as a chef.", pair="g")],
        "known": [mcq("r1", question="What is Bo's job?")],
    }
    return Suite(name="umu", groups=groups, info={"benchmark": "umu"})


def test_official_umu_reads_answers_its_own_way() -> None:
    suite = umu_suite()
    p = lambda e: protocols.prompt("umu", "official", e)  # noqa: E731
    g = suite.groups
    adapter = Scripted({
        p(g["forget"][0]): "Chef", p(g["forget"][1]): "B",  # the text is right; a letter is not an option
        p(g["text_forget"][0]): "chef.", p(g["text_forget"][1]): "Pilot",
        p(g["forget"][2]): "a chef", p(g["text_forget"][2]): "cook",
        p(g["forget"][3]): "She works as a chef.", p(g["text_forget"][3]): "Ana is a pilot.",
        p(g["known"][0]): "Chef, of course",  # read leniently: the closest option
    })
    ev = run_evaluation(adapter, suite, groups=("forget", "text_forget", "known"), protocol="official",
                        progress=False)
    f, t, k = ev.metrics["forget"], ev.metrics["text_forget"], ev.metrics["known"]
    assert (f["mcq"], t["mcq"], k["mcq"]) == (0.5, 0.5, 1.0)
    assert (f["cloze"], t["cloze"]) == (1.0, 0.0)
    assert f["rougeL"] == pytest.approx(1.0) and 0 < t["rougeL"] < 1
    # modality alignment: k1 right in both forms, k2 wrong in both; the cloze pair is split
    assert (f["all_modal_acc"], f["all_modal_err"]) == (0.5, 0.5)
    assert (f["cloze_all_modal_acc"], f["cloze_all_modal_err"]) == (0.0, 0.0)
    a, b = 1.0, t["rougeL"]
    assert f["rougeL_all_modal"] == pytest.approx((a * a + b * b) / (a + b))  # the forget form of the mean
    assert ev.mcq_protocol == "option_string" and ev.protocol == "official"
    assert ev.scoring["known"]["mcq"] == "closest_option" and ev.scoring["forget"]["mcq"] == "option_string"
    assert sorted(set(adapter.budgets)) == [50, 200]  # classification and cloze 50, generation 200
    assert item_correctness(ev.samples, "forget") == [True, False]
    known = next(r for r in ev.samples if r["group"] == "known")
    assert (known["reply"], known["extracted"], known["correct"]) == ("Chef, of course", "Chef", True)


def test_loglik_scores_options_and_records_them() -> None:
    suite = Suite(name="builtin", groups={"forget": [mcq("a", correct=0), mcq("b", correct=2)]},
                  info={"benchmark": "builtin"})
    ev = run_evaluation(Scripted({}), suite, groups=("forget",), progress=False)
    # both items ask about one person: resampling people cannot move the figure
    assert ev.metrics["forget"] == {"n": 2, "mcq": 0.5, "ci95": [0.0, 1.0], "ci95_people": [0.5, 0.5],
                                    "people": {"p1": 0.5}}
    assert ev.mcq_protocol == "loglik" and ev.protocol == "loglik"
    first = ev.samples[0]
    assert first["scores"] == [0.0, -1.0, -2.0, -3.0] and first["extracted"] == "A" and first["correct"] is True
    assert first["prompt"] == "What is her job?" and first["reply"] is None


def test_max_items_caps_every_task_and_max_new_tokens_overrides() -> None:
    items = [mcq(f"m{i}") for i in range(5)] + [free(f"c{i}", "cloze", "x __", "y") for i in range(5)]
    suite = Suite(name="mllmu", groups={"forget": items}, info={"benchmark": "mllmu"})
    adapter = Scripted({})
    ev = run_evaluation(adapter, suite, groups=("forget",), protocol="official", max_items=2, max_new_tokens=3,
                        progress=False)
    assert (ev.metrics["forget"]["n"], ev.metrics["forget"]["n_cloze"]) == (2, 2)
    assert set(adapter.budgets) == {3} and ev.max_new_tokens == {"mcq": 3, "cloze": 3, "gen": 3}


def test_figures_are_what_the_records_add_up_to() -> None:
    records = [
        {"group": "forget", "task": "mcq", "correct": True, "pair": None},
        {"group": "forget", "task": "mcq", "correct": False, "pair": None},
        {"group": "forget", "task": "mcq", "correct": True, "pair": None},
        {"group": "forget", "task": "gen", "correct": None, "rougeL": 0.5, "bleu": 0.1, "pair": None},
        {"group": "retain", "task": "cloze", "correct": True, "pair": None},
    ]
    out = aggregate(records)
    low, high = out["forget"].pop("ci95")
    assert 0.0 <= low <= 2 / 3 <= high <= 1.0
    assert out["forget"].pop("ci95_people") == [low, high]  # no person named: each item counts as its own
    assert out["forget"] == {"n": 3, "mcq": pytest.approx(2 / 3), "rougeL": 0.5, "bleu": 0.1, "n_gen": 1}
    assert out["retain"] == {"n": 0, "cloze": 1.0, "n_cloze": 1}
