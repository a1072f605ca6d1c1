"""Snapshot tests: the exact text of every benchmark prompt.

A failure here means a prompt changed. If the change is deliberate, scores are no longer
comparable with earlier runs or published numbers: update the snapshot *and* say so.
"""

from __future__ import annotations

import pytest

from unsee.data import prompts
from unsee.errors import DataError

QUESTION = "What is the occupation of the person in the image?"
OPTIONS = ["Architect", "Chef", "Pilot", "Teacher"]


def test_constants_are_frozen() -> None:
    assert prompts.MCQ_SUFFIX == "Just give ONE letter representing the answer directly."
    assert prompts.CLOZE_SUFFIX == (
        "Please **ONLY** provide the correct answer that should replace the [Blank]."
    )
    assert prompts.GEN_IMAGE_SUFFIX == (
        "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
    )
    assert prompts.GEN_TEXT_SUFFIX == (
        "Answer the question based on your trained knowledge in one sentence in ENGLISH."
    )
    assert prompts.CLEAR_NAME_QUESTION == "What is the name of the person in the image?"
    assert prompts.UMU_CLOZE_SUFFIX == "Please **ONLY** provide the correct answer without any explanation"


def test_mcq_prompt_snapshot() -> None:
    assert prompts.mcq_prompt(QUESTION, OPTIONS) == (
        "What is the occupation of the person in the image?\n"
        "A: Architect\n"
        "B: Chef\n"
        "C: Pilot\n"
        "D: Teacher\n"
        "Just give ONE letter representing the answer directly."
    )


def test_mcq_prompt_accepts_the_benchmark_options_mapping() -> None:
    mapping = {"B": "Chef", "A": "Architect", "D": "Teacher", "C": "Pilot"}
    assert prompts.mcq_prompt(QUESTION, mapping) == prompts.mcq_prompt(QUESTION, OPTIONS)


@pytest.mark.parametrize("bad", [[], ["only one"], {"A": "x", "C": "y"}])
def test_mcq_prompt_rejects_bad_options(bad: object) -> None:
    with pytest.raises(DataError):
        prompts.mcq_prompt(QUESTION, bad)  # type: ignore[arg-type]


def test_cloze_prompt_snapshot() -> None:
    assert prompts.cloze_prompt("This person works as a __ in Lisbon.") == (
        "This person works as a [Blank] in Lisbon.\n"
        "Please **ONLY** provide the correct answer that should replace the [Blank]."
    )


def test_cloze_prompt_reads_three_underscores_as_one_blank() -> None:
    assert prompts.cloze_prompt("Born in ___.") == prompts.cloze_prompt("Born in __.")


def test_gen_prompt_snapshots() -> None:
    assert prompts.gen_prompt("Where does this person live?", with_image=True) == (
        "Where does this person live?\n"
        "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
    )
    assert prompts.gen_prompt("Where does Ana Silva live?", with_image=False) == (
        "Where does Ana Silva live?\n"
        "Answer the question based on your trained knowledge in one sentence in ENGLISH."
    )


def test_qa_prompt_is_the_bare_question() -> None:
    assert prompts.qa_prompt("  Where does Ana Silva live? ") == "Where does Ana Silva live?"


def test_clear_name_prompt_snapshot() -> None:
    assert prompts.clear_name_prompt(["Ana Silva", "Bo Chen", "Cy Diaz"]) == (
        "What is the name of the person in the image?\nA. Ana Silva\nB. Bo Chen\nC. Cy Diaz\n"
    )


def test_umu_prompt_snapshots() -> None:
    assert prompts.umu_classify_prompt("What is her job?", OPTIONS) == (
        "What is her job?\nSelect answer in ['Architect', 'Chef', 'Pilot', 'Teacher']"
    )
    assert prompts.umu_cloze_prompt("She works as a [Blank].") == (
        "She works as a [Blank].\nPlease **ONLY** provide the correct answer without any explanation"
    )


def test_clear_mcq_prompt_snapshot() -> None:
    assert prompts.clear_mcq_prompt("Which city is this?", ["Lisbon", "Porto"]) == (
        "Which city is this?\nA. Lisbon\nB. Porto\n"
    )
