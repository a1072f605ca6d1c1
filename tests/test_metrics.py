from __future__ import annotations

import math
import warnings

import pytest

from unsee.errors import UnseeError
from unsee.eval import metrics as m


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("B", "B"),
        ("b", "B"),
        ("  c) Pilot", "C"),
        ("(d)", "D"),
        ("**A**", "A"),
        ("...B.", "B"),
        ("3", "3"),
        ("Answer: B", "A"),  # strict, as MLLMU-Bench reads it
        ("", None),
        ("  ?!  ", None),
    ],
)
def test_first_letter(reply: str, letter: str | None) -> None:
    assert m.first_letter(reply) == letter


def test_letter_correct() -> None:
    assert m.letter_correct("b. Chef", "B")
    assert m.letter_correct("B", "b")
    assert m.letter_correct("(C)", "C. Pilot")
    assert not m.letter_correct("", "A")
    assert not m.letter_correct("A", "")
    assert not m.letter_correct("D", "A")


def test_option_string_correct_normalisation() -> None:
    assert m.option_string_correct("Software Engineer", "Software Engineer")
    assert m.option_string_correct("  software engineer. ", "Software Engineer")
    assert m.option_string_correct("STRASSE", "straße")  # casefold, not lower
    assert not m.option_string_correct("a Software Engineer", "Software Engineer")
    assert not m.option_string_correct("", "")
    assert not m.option_string_correct("", "Chef")


def test_closest_option() -> None:
    assert m.closest_option("I think Chef.", ["Architect", "Chef", "Pilot"]) == 1
    assert m.closest_option("x", ["a", "b"]) == 0  # tie -> lowest index
    with pytest.raises(UnseeError):
        m.closest_option("x", [])


def test_cloze_correct() -> None:
    assert m.cloze_correct("She is a Pilot based in Porto.", "pilot")
    assert m.cloze_correct("PILOT", " Pilot ")
    assert not m.cloze_correct("She is a chef.", "pilot")
    assert not m.cloze_correct("anything", "")
    assert not m.cloze_correct("", "pilot")


def test_rouge_l_sanity() -> None:
    assert m.rouge_l("The cat sat on the mat", "The cat sat on the mat") == 1.0
    assert m.rouge_l("the cats running", "the cat runs") == 1.0  # stemming
    assert m.rouge_l("", "the cat") == 0.0
    assert m.rouge_l("dog", "the cat") == 0.0
    # LCS "the cat" (2) over 3 and 2 tokens: P 2/3, R 1.0, F 0.8
    assert m.rouge_l("the black cat", "the cat") == pytest.approx(0.8)


def test_bleu_sanity_and_offline() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no nltk download prompts or zero-count warnings
        assert m.bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
        assert m.bleu("", "the cat") == 0.0
        assert m.bleu("the cat", "") == 0.0
        partial = m.bleu("the cat sat on a rug", "the cat sat on the mat")
        assert 0.0 < partial < 1.0
        assert m.bleu("zzz", "the cat sat on the mat") < 0.05


def test_loglik_choice() -> None:
    assert m.loglik_choice([-3.0, -1.0, -2.0]) == 1
    assert m.loglik_choice([-1.0, -1.0, -5.0]) == 0  # tie -> lowest index
    assert m.loglik_choice([math.nan, -9.0]) == 1
    assert m.loglik_choice([-math.inf, -math.inf]) == 0
    with pytest.raises(UnseeError):
        m.loglik_choice([])


def test_all_modal() -> None:
    pairs = {"q1": (True, True), "q2": (True, False), "q3": (False, False), "q4": (False, True)}
    assert m.all_modal(pairs) == {"all_modal_acc": 0.25, "all_modal_err": 0.25, "n": 4}
    assert m.all_modal({}) == {"all_modal_acc": 0.0, "all_modal_err": 0.0, "n": 0}


def test_clear_name_correct() -> None:
    options = ["Bo Chen", "Ana Silva", "Cy Diaz"]
    assert m.clear_name_correct("B", "Ana Silva", options)
    assert m.clear_name_correct("b) Ana", "Ana Silva", options)
    assert not m.clear_name_correct("A", "Ana Silva", options)
    assert not m.clear_name_correct("D", "Ana Silva", options)  # letter beyond the options
    assert not m.clear_name_correct("", "Ana Silva", options)
    assert m.clear_name_correct("This is ana silva.", "Ana Silva")
    assert not m.clear_name_correct("This is Bo.", "Ana Silva")
    assert not m.clear_name_correct("anything", "")


VANILLA = {
    "forget": {"mcq": 0.95, "n": 120},
    "retain": {"mcq": 0.96, "n": 900},
    "text_forget": {"mcq": 0.97, "n": 120},
    "known": {"mcq": 0.90, "n": 200},
    "general": {"mcq": 0.80, "n": 200},
}


def test_unlearning_score_values() -> None:
    run = {
        "forget": {"mcq": 0.25, "n": 120},
        "retain": {"mcq": 0.96, "n": 900},
        "text_forget": {"mcq": 0.485, "n": 120},
        "known": {"mcq": 0.99, "n": 200},  # above vanilla: capped at 1
        "general": {"mcq": 0.80, "n": 200},
        "text_retain": {"mcq": 0.1, "n": 0},  # empty: skipped
    }
    s = m.unlearning_score(VANILLA, run)
    assert s["E"] == pytest.approx(1.0)
    assert s["R"] == pytest.approx(0.5)
    assert s["limiting"] == "text_forget"
    assert s["score"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_unlearning_score_clips_and_handles_edges() -> None:
    same = m.unlearning_score(VANILLA, VANILLA)
    assert same["E"] == 0.0 and same["R"] == 1.0 and same["score"] == 0.0
    below_chance = {**VANILLA, "forget": {"mcq": 0.0, "n": 120}}
    assert m.unlearning_score(VANILLA, below_chance)["E"] == 1.0
    worse = {**VANILLA, "forget": {"mcq": 0.99, "n": 120}}
    assert m.unlearning_score(VANILLA, worse)["E"] == 0.0
    collapsed = {k: {"mcq": 0.0, "n": v["n"]} for k, v in VANILLA.items()}
    assert m.unlearning_score(VANILLA, collapsed) == {"E": 1.0, "R": 0.0, "score": 0.0, "limiting": "retain"}
    untrained = {"forget": {"mcq": 0.2, "n": 10}, "retain": {"mcq": 0.5, "n": 10}}
    assert m.unlearning_score(untrained, untrained)["E"] == 0.0
    only_forget = m.unlearning_score({"forget": {"mcq": 0.9, "n": 5}}, {"forget": {"mcq": 0.3, "n": 5}})
    assert only_forget["R"] is None and only_forget["score"] is None
    with pytest.raises(UnseeError, match="forget"):
        m.unlearning_score({"retain": {"mcq": 0.9, "n": 5}}, VANILLA)
    # a group of generation items alone (no MCQ: n is 0) is scored on ROUGE-L, whose count is n_gen
    gen_only = {"forget": {"n": 0, "rougeL": 0.8, "n_gen": 10}, "retain": {"n": 0, "rougeL": 0.7, "n_gen": 10}}
    after = {"forget": {"n": 0, "rougeL": 0.2, "n_gen": 10}, "retain": {"n": 0, "rougeL": 0.7, "n_gen": 10}}
    assert m.unlearning_score(gen_only, after, chance=0.0, key="rougeL") == pytest.approx(
        {"E": 0.75, "R": 1.0, "score": 2 * 0.75 / 1.75, "limiting": "retain"})
