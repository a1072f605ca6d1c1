"""How each benchmark asks its questions and reads the replies: the two scoring protocols.

``loglik`` is unsee's own reading, made for tiny models that never learn an answer format:
an MCQ is answered by the option whose text is most likely after the bare question, and
cloze and generation items get MLLMU-Bench's prompts. ``official`` is each benchmark's
published evaluation (see ``docs/protocols.md``): its prompt text, greedy replies cut at
its own ``max_new_tokens``, its way of reading an answer out of the reply, and its metric.
Only with ``official`` can a figure be set beside a published table.

Everything here is a pure function of the benchmark, the group and the item, so the
evaluator stays one loop and the rules can be tested without a model.
"""

from __future__ import annotations

from collections.abc import Mapping

from unsee.data import prompts
from unsee.data.schema import LETTERS, Example
from unsee.errors import ConfigError
from unsee.eval import metrics

PROTOCOLS = ("loglik", "official")
BENCHMARKS = ("builtin", "mllmu", "clear", "umu")

# Reply budgets of the authors' evaluation scripts (LLaVA path): MLLMU-Bench eval.py and the
# CLEAR evaluation run by MMUnlearner give every task 50 new tokens; UMU-bench eval.py gives
# classification and cloze 50 and generation 200.
MAX_NEW_TOKENS: Mapping[str, Mapping[str, int]] = {
    "builtin": {"mcq": 50, "cloze": 50, "gen": 50},
    "mllmu": {"mcq": 50, "cloze": 50, "gen": 50},
    "clear": {"mcq": 50, "cloze": 50, "gen": 50},
    "umu": {"mcq": 50, "cloze": 50, "gen": 200},
}

# UMU-bench reads the classification reply of its real people leniently (the closest option),
# and of everyone else strictly (the exact option text).
_UMU_LENIENT_GROUPS = ("known", "text_known")

# What each figure means, as recorded in results.json (``evaluation.scoring``).
CLOZE_RULE = "substring"  # the lower-cased ground truth is in the lower-cased reply
GEN_RULES = {"rougeL": "rougeL_f_stemmed", "bleu": "bleu_whitespace_smooth1"}


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def benchmark_of(name: str) -> str:
    """The benchmark whose rules apply; an unknown suite is read like MLLMU-Bench (the common layout)."""
    return name if name in BENCHMARKS else "mllmu"


def max_new_tokens(benchmark: str, task: str, override: int | None = None) -> int:
    """The reply budget of ``task``: ``override`` when given, else the benchmark's own."""
    if override is not None:
        if override < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {override}")
        return override
    return MAX_NEW_TOKENS[benchmark_of(benchmark)][task]


def mcq_rule(benchmark: str, protocol: str, group: str) -> str:
    """How an MCQ of ``group`` is scored: ``loglik``, ``letter``, ``option_string`` or ``closest_option``."""
    if protocol == "loglik":
        return "loglik"
    if benchmark_of(benchmark) == "umu":
        return "closest_option" if group in _UMU_LENIENT_GROUPS else "option_string"
    return "letter"


def prompt(benchmark: str, protocol: str, item: Example) -> str:
    """The exact text sent with ``item`` (the adapter adds the chat template and image tokens)."""
    bench = benchmark_of(benchmark)
    if item.task == "mcq":
        if protocol == "loglik":
            return prompts.qa_prompt(item.question)
        if bench == "umu":
            return prompts.umu_classify_prompt(item.question, item.options)
        if bench == "clear":
            return prompts.clear_mcq_prompt(item.question, item.options)
        return prompts.mcq_prompt(item.question, item.options)
    if item.task == "cloze":
        if protocol == "official" and bench == "umu":
            return prompts.umu_cloze_prompt(item.question)
        return prompts.cloze_prompt(item.question)
    if item.task == "gen":
        if protocol == "official" and bench == "clear":
            return prompts.qa_prompt(item.question)  # CLEAR asks its caption and TOFU questions bare
        return prompts.gen_prompt(item.question, item.has_image)
    return prompts.qa_prompt(item.question)


def read_mcq(rule: str, reply: str, item: Example) -> tuple[str | None, bool]:
    """(the answer read from a generated reply, whether it is the right one) under ``rule``.

    ``letter`` reads a letter (the first alphanumeric character); ``option_string`` takes the
    whole reply as the option text; ``closest_option`` maps the reply to the most similar option.
    """
    gold = item.correct
    if gold is None or not item.options:
        return None, False
    if rule == "letter":
        letter = metrics.first_letter(reply)
        return letter, letter is not None and letter == LETTERS[gold]
    if rule == "option_string":
        return reply, metrics.option_string_correct(reply, item.options[gold])
    if rule == "closest_option":
        chosen = item.options[metrics.closest_option(reply, list(item.options))]
        return chosen, chosen == item.options[gold]
    raise ConfigError(f"no reply reading for MCQ rule {rule!r}")
