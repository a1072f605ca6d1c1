"""The exact prompt strings of the public benchmarks, in one place.

Scores are only comparable with published numbers when the prompt text is the same to the
character, so every string lives here as a constant and ``tests/test_prompts.py`` freezes
it: a change to a prompt is a deliberate act that fails a test. The functions only join a
question to these constants; chat templates and image tokens are the adapters' business.

Sources (see ``docs/protocols.md``):

- MLLMU-Bench ``eval.py``: the MCQ, cloze and generation suffixes;
- UMU-bench ``eval.py``: ``Select answer in [...]`` and its cloze suffix;
- CLEAR evaluation (as run by MMUnlearner): ``A. text`` options after the question.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from unsee.data.schema import LETTERS
from unsee.errors import DataError

MCQ_SUFFIX = "Just give ONE letter representing the answer directly."
BLANK = "[Blank]"
CLOZE_SUFFIX = "Please **ONLY** provide the correct answer that should replace the [Blank]."
GEN_IMAGE_SUFFIX = (
    "Answer the question based on your trained knowledge in one sentence accurately in ENGLISH."
)
# MLLMU-Bench's text-only generation prompt has no "accurately"; kept as published.
GEN_TEXT_SUFFIX = "Answer the question based on your trained knowledge in one sentence in ENGLISH."
CLEAR_NAME_QUESTION = "What is the name of the person in the image?"
UMU_CLASSIFY_LEAD = "Select answer in"
UMU_CLOZE_SUFFIX = "Please **ONLY** provide the correct answer without any explanation"

# MLLMU-Bench writes the blank as "__"; some rows may use "___". Any run of two or more
# underscores is one blank, so both readings give the same prompt.
_BLANK_RUN = re.compile(r"_{2,}")


def _option_texts(options: Sequence[str] | Mapping[str, str]) -> list[str]:
    """Options in letter order; a mapping must be keyed ``A``, ``B``, ... without gaps."""
    if isinstance(options, Mapping):
        keys = sorted(options)
        expected = list(LETTERS[: len(keys)])
        if keys != expected:
            raise DataError(f"MCQ options must be keyed {expected}, got {keys}")
        texts = [str(options[k]) for k in keys]
    else:
        texts = [str(o) for o in options]
    if not 2 <= len(texts) <= len(LETTERS):
        raise DataError(f"an MCQ needs 2 to {len(LETTERS)} options, got {len(texts)}")
    return texts


def mcq_prompt(question: str, options: Sequence[str] | Mapping[str, str]) -> str:
    """MLLMU-Bench classification: the question, ``A: ..`` lines, then the one-letter instruction."""
    lines = [f"{letter}: {text}" for letter, text in zip(LETTERS, _option_texts(options), strict=False)]
    return f"{question}\n" + "\n".join(lines) + f"\n{MCQ_SUFFIX}"


def cloze_prompt(question: str) -> str:
    """MLLMU-Bench fill-in-the-blank: ``__`` becomes ``[Blank]``, then the answer-only instruction."""
    return _BLANK_RUN.sub(BLANK, question) + f"\n{CLOZE_SUFFIX}"


def gen_prompt(question: str, with_image: bool) -> str:
    """MLLMU-Bench generation; the image and text-only suffixes differ by one word, as published."""
    return f"{question}\n{GEN_IMAGE_SUFFIX if with_image else GEN_TEXT_SUFFIX}"


def qa_prompt(question: str) -> str:
    """The bare question: fine-tuning pairs, and log-likelihood MCQ, where the option text is scored."""
    return question.strip()


def clear_mcq_prompt(question: str, options: Sequence[str] | Mapping[str, str]) -> str:
    """CLEAR multiple choice (names, ``real_faces``, ``real_world``): the question, ``A. text`` lines,
    and a final newline; the reply's first letter is scored."""
    lines = [f"{letter}. {text}" for letter, text in zip(LETTERS, _option_texts(options), strict=False)]
    return f"{question}\n" + "\n".join(lines) + "\n"


def clear_name_prompt(names: Sequence[str]) -> str:
    """CLEAR name classification: :func:`clear_mcq_prompt` with the name question.

    CLEAR's ``perturbed_names`` hold wrong names only; the caller inserts the true one and
    keeps its letter for :func:`unsee.eval.metrics.clear_name_correct`.
    """
    return clear_mcq_prompt(CLEAR_NAME_QUESTION, list(names))


def umu_classify_prompt(question: str, options: Sequence[str] | Mapping[str, str]) -> str:
    """UMU-bench classification: ``Select answer in`` followed by the Python repr of the option list.

    The model is asked for the option *text*, which is scored by
    :func:`unsee.eval.metrics.option_string_correct`.
    """
    return f"{question}\n{UMU_CLASSIFY_LEAD} {_option_texts(options)!s}"


def umu_cloze_prompt(question: str) -> str:
    """UMU-bench fill-in-the-blank: its questions already hold ``[Blank]``; only the suffix is added."""
    return f"{question}\n{UMU_CLOZE_SUFFIX}"
