"""What every audit shares: its options, the items it reads, and the artifact applied while it runs,
so that each attack sees a result as it is deployed."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unsee.config import opt
from unsee.data.schema import Example, Suite
from unsee.errors import ConfigError
from unsee.eval.evaluator import mcq_loglik
from unsee.models.base import SCOPES, Adapter

if TYPE_CHECKING:
    from unsee.methods.artifact import Artifact

SHIFT_NAMES = ("crop", "jitter", "occlude")


QUANT_BITS = (4, 8)


def check_bits(bits: Sequence[int]) -> None:
    bad = [b for b in bits if b not in QUANT_BITS]
    if not bits:
        raise ConfigError("no quantization bit width given: choose 4, 8 or both (quant_bits=4,8)")
    if bad:
        widths = ", ".join(map(str, bad))
        raise ConfigError(f"quantization bit width{'s' if len(bad) > 1 else ''} {widths} not supported: choose 4 or 8")


ATTACKS = ("relearn", "pgd", "shift", "probe", "quant", "mia")


@dataclass
class AttackConfig:
    """One protocol for every method: the same budgets, the same items, the same seed."""

    relearn_steps: int = opt(30, "relearning: fine-tuning steps on the seen half")
    relearn_lr: float = opt(1e-4, "relearning: learning rate (AdamW)")
    relearn_scope: str = opt("full", "relearning: the parameters the attacker fine-tunes (an engine scope: full, "
                             "visual, language, ...); full is the audit, the others say which part brings them back")
    relearn_batch: int = opt(8, "relearning: batch size")
    relearn_splits: int = opt(3, "relearning: distinct halves of the forget people, each relearned on a fresh copy; "
                              "the figures are their means")
    relearn_repeats: int = opt(1, "relearning: attacker runs per half, each with its own seed (its batch order); "
                               "the figures are means over every run, ag_min and ag_max their spread")
    pgd_eps: float = opt(8 / 255, "PGD: L-inf radius in [0, 1] pixel units")
    pgd_step: float = opt(2 / 255, "PGD: step size in [0, 1] pixel units")
    pgd_steps: int = opt(10, "PGD: iterations")
    max_items: int = opt(48, "PGD and shifts: MCQ items per group (the first ones, so the set is fixed)")
    shifts: list[str] = opt(["crop", "jitter", "occlude"], "image shifts to apply to forget and retain images")
    probe_retain_people: int = opt(30, "probe: retained people beside the forget people")
    probe_steps: int = opt(300, "probe: full-batch optimisation steps of the logistic regression")
    probe_blocks: bool = opt(True, "probe: also read the pooled output of every vision block, to show where in "
                             "the tower the identity is kept or lost")
    quant_bits: list[int] = opt([8, 4], "quantization: bit widths to round the weights to (4 and/or 8)")
    quant_group: int = opt(128, "quantization: input columns sharing one scale")
    quant_max_items: int = opt(0, "quantization: MCQ items per group (the first ones; 0: all)")
    mia_holdout: str = opt("holdout", "membership inference: the group (or, on the command line, the split) of "
                           "people the model never saw, the non-members")
    mia_k: float = opt(0.2, "membership inference: the fraction of lowest-scoring tokens Min-K%++ averages")
    mia_max_items: int = opt(0, "membership inference: items per side (the first ones; 0: all)")
    # the command's seed also draws the items and is what results.json records
    seed: int = opt(0, "seed of the half split, the shifts and the probe", set_by="the command's --seed")

    def validate(self) -> None:
        unknown = sorted(set(self.shifts) - set(SHIFT_NAMES))
        if unknown:
            raise ConfigError(f"unknown shift(s) {unknown}; choose from {sorted(SHIFT_NAMES)}")
        if self.relearn_scope not in SCOPES:
            raise ConfigError(f"relearn_scope {self.relearn_scope!r} is not one of {', '.join(SCOPES)}")
        if self.relearn_splits < 1 or self.relearn_repeats < 1:
            raise ConfigError("relearn_splits and relearn_repeats must be at least 1")
        # a relearning that trains nothing (or climbs) would read as "nothing comes back"
        if self.relearn_steps < 1 or self.relearn_batch < 1 or not self.relearn_lr > 0:
            raise ConfigError(f"relearning needs relearn_steps >= 1, relearn_batch >= 1 and relearn_lr > 0, got "
                              f"{self.relearn_steps}, {self.relearn_batch} and {self.relearn_lr}")
        if self.probe_steps < 1 or self.probe_retain_people < 0:
            raise ConfigError(f"the probe needs probe_steps >= 1 and probe_retain_people >= 0, got "
                              f"{self.probe_steps} and {self.probe_retain_people}")
        if self.max_items < 1:
            raise ConfigError(f"max_items must be at least 1, got {self.max_items}")
        if self.quant_max_items < 0 or self.mia_max_items < 0:
            raise ConfigError("quant_max_items and mia_max_items must not be negative (0: all items)")
        if self.pgd_eps < 0 or self.pgd_step <= 0 or self.pgd_steps < 1:
            raise ConfigError("PGD needs pgd_eps >= 0, pgd_step > 0 and pgd_steps >= 1")

        check_bits(list(self.quant_bits))
        if self.quant_group < 1:
            raise ConfigError(f"quant_group must be at least 1, got {self.quant_group}")
        if not 0 < self.mia_k <= 1:
            raise ConfigError(f"mia_k must be in (0, 1], got {self.mia_k}")


def image_mcq(suite: Suite, group: str, entities: set[str] | None = None) -> list[Example]:
    return [e for e in suite.groups.get(group, []) if e.task == "mcq" and e.options and e.has_image
            and (entities is None or e.entity in entities)]


def as_deployed(adapter: Adapter, artifact: Artifact | None) -> AbstractContextManager[Any]:
    """The result's artifact applied while a block runs (hooks for a steering, nothing for changed
    weights or no artifact): every result is attacked as it is deployed."""
    return nullcontext() if artifact is None else artifact.applied(adapter)


def accuracy(adapter: Adapter, items: Sequence[Example], artifact: Artifact | None = None) -> float | None:
    if not items:
        return None
    with as_deployed(adapter, artifact):
        ok = mcq_loglik(adapter, items)
    return sum(ok) / len(ok)


