"""The options of CVF and its ablations (:mod:`unsee.methods.cvf`): the specification's, and the additions
each measured in docs/results.md, off unless the shipped config sets them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unsee.config import opt
from unsee.errors import ConfigError
from unsee.methods.ncu import NCUConfig
from unsee.methods.redistil import RedistilConfig


@dataclass
class CVFOnlyConfig(RedistilConfig):
    """CVF's options: all of ``cvf_only``'s."""

    tau: float = opt(0.1, "InfoNCE temperature")
    lambda_r: float = opt(1.0, "weight of the retain InfoNCE")
    lambda_d: float = opt(1.0, "weight of token-level distillation on retained images (an addition to the spec)")
    lambda_o: float = opt(0.0, "weight of an optional output-level retain NLL (touches only the visual module)")
    lambda_t: float = opt(
        0.0, "weight of a token-level forget term: every token of a forget image towards the reference's mean "
        "neutral token (an addition to the spec; the pooled InfoNCE leaves identity in the tokens)")
    token_target: Literal["mean", "person"] = opt(
        "mean", "lambda_t's target: 'mean', the batch's mean neutral token for every forget photo; 'person', each "
        "forget person the mean token of a neutral person of their own (a seeded pairing), so that the forget "
        "people stay apart and relearning some of them has no shared shift to undo for the rest")
    lambda_v: float = opt(
        0.0, "weight of a tower-level forget term: every token of a forget image after vision block merge_block "
        "towards the reference's mean neutral token there (an addition to the spec; the projector-level terms "
        "leave identity in the tower, where a relearning attack finds it)")
    lambda_dv: float = opt(0.0, "weight of the retained images' distillation after vision block merge_block, "
                           "where lambda_v moves the tower")
    merge_block: int | None = opt(None, "the vision block lambda_v and lambda_dv read (default: the language model's)")
    augment: float = opt(0.0, "strength of fresh crops and colour jitter on the forget photos at every step, so "
                         "that forgetting reaches other views of the person (0: off)")
    augment_retain: float = opt(0.0, "the same on the retained photos, distilled onto the reference's tokens of the "
                                "same crops, so that keeping reaches other views and nearby faces too (0: off)")
    augment_pose: float = opt(0.0, "strength of a pose jitter on every crop augment and augment_retain draw: a "
                              "rotation of up to 9 degrees and a horizontal squeeze of up to 8% at 1, as a tilted "
                              "or turned head gives, so that forgetting and keeping reach other poses (0: off)")
    augment_background: float = opt(
        0.0, "probability that a forget photo is seen on another background at a step: its centre, where a "
        "portrait's head sits, pasted onto one of the batch's neutral photos, so that forgetting binds to the "
        "person and not to the backgrounds of their few photos; for centred portraits (0: off)")
    adv_steps: int = opt(
        0, "adversarial forgetting: sign-gradient steps that move each forget photo, within adv_eps, back towards "
        "its own identity (up the forget InfoNCE) before the step trains on it, so that no nearby image is "
        "recognised either (0: off)")
    adv_eps: float = opt(8 / 255, "adversarial forgetting: L-inf radius in [0, 1] pixel units")
    relearn_sim_steps: int = opt(
        0, "relearning-aware forgetting: sign-gradient steps of a simulated relearning, in which the visual module "
        "restores half of the batch's forget people to their reference features; the loss is then taken on the "
        "other half, which must stay forgotten (0: off; needs two people to forget or more)")
    relearn_sim_eps: float = opt(3e-3, "relearning-aware forgetting: how far each weight may move in the simulation, "
                             "in all (a relearning attack's 30 Adam steps at 1e-4 move a weight by up to 3e-3)")
    lambda_k: float = opt(
        1.0, "continual: weight of token-level distillation of the already-forgotten targets' images onto the "
        "reference, the model after the previous request, which holds them forgotten (an addition to the spec)")
    forgotten_images: list = opt([], "images of already-forgotten targets", set_by="the continual driver")
    lambda_known: float = opt(
        0.0, "weight of token-level distillation of the known people's training photos (the benchmark's "
        "train_known) onto the reference, and their place in NCU's covariance: the people the model learned "
        "before the retained ones, kept the way the retained ones are (0: off; an addition to the spec)")
    known_covariance: bool = opt(
        False, "with lambda_known, the known people's photos also join NCU's covariance, so that the updates "
        "avoid their inputs (they share most of them with the forget faces, and forgetting suffers); off, they are "
        "distilled only, and the null space stays the retained photos'")


    def validate(self) -> None:
        """Read when the config is loaded, before any model is: a weight, a strength, a step count or a radius
        below zero would silently turn its term around or off."""
        if self.tau <= 0:  # InfoNCE divides by it: 0 gave a NaN loss at the first step
            raise ConfigError(f"tau must be positive, got {self.tau}")
        names = ("lambda_r", "lambda_d", "lambda_o", "lambda_t", "lambda_v", "lambda_dv", "lambda_k", "lambda_known",
                 "augment", "augment_retain", "augment_pose", "augment_background", "adv_steps", "adv_eps",
                 "relearn_sim_steps", "relearn_sim_eps")
        if negative := [f"{k}={getattr(self, k)}" for k in names if getattr(self, k) < 0]:
            raise ConfigError(f"{', '.join(negative)}: must not be negative")
        if self.augment_background > 1:  # a probability: 2 would read as 1, and hide a mistyped strength
            raise ConfigError(f"augment_background is a probability in [0, 1], got {self.augment_background}")
        super().validate()


@dataclass
class CVFConfig(NCUConfig, CVFOnlyConfig):
    """``cvf_ncu``'s options: CVF's and the null space's."""

    ncu: bool = opt(True, "constrain updates to the retained null space (false: as cvf_only)")
