"""MLLMEraser's options: the published construction by default, the sweep's grid beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unsee.config import opt
from unsee.errors import ConfigError


@dataclass
class EraserConfig:
    """Options of MLLMEraser. The defaults are the published construction (docs/methods.md); the shipped
    ``configs/unlearn/eraser.yaml`` is the setting the sweep chose (docs/methods.md says why)."""

    layers: list[int] = opt([], "decoder-layer indices to steer; empty = the span given by depth")
    depth: list[float] = opt(
        [1 / 3, 2 / 3], "with no layers, steer those in [lo*L, hi*L): by default the middle third, where "
        "identity features are formed but the output is not yet decided")
    strength: float = opt(-0.3, "s in h <- h + s*(h_last @ W_l); negative subtracts the recall direction")
    fit: Literal["joint", "nullspace"] = opt(
        "nullspace", "how W_l is fitted: 'nullspace' as published (least squares inside the null space of the kept "
        "activations); 'joint' one ridge least squares that sends forget activations to r_l and kept ones to 0")
    keep: list[str] = opt(
        ["train_retain"],
        "training groups whose prompts must not move (H_r); groups the suite lacks are skipped, "
        "train_retain is required")
    gate: float = opt(
        0.0, "threshold tau on c = <h_last W_l, r_l>/|r_l|^2 (c ~ 1 on forget, ~ 0 on kept prompts): the "
        "injection is s * max(c - tau, 0)/(1 - tau) * r_l, so kept prompts a linear map leaks onto are not "
        "steered; 0 = the published linear injection")
    null_ratio: float = opt(0.3, "fraction of the hidden size taken as the retain null space (last singular vectors)")
    lam: float = opt(0.1, "ridge weight lambda of the least-squares map")
    erasure: Literal["neutral", "refusal"] = opt(
        "neutral", "erasure inputs: forget prompts on neutral identities' images, or with a refusal instruction"
    )
    use_pgd: bool = opt(
        False, "strengthen recall with PGD-perturbed forget images (towards the correct answer) when computing r_l"
    )
    pgd_eps: float = opt(8 / 255, "PGD L-inf radius in [0,1] pixel units (scaled by the processor's image_std)")
    pgd_step: float = opt(2 / 255, "PGD step in [0,1] pixel units")
    pgd_steps: int = opt(10, "PGD iterations")
    max_items: int | None = opt(
        None, "use at most this many examples per group (forget, neutral, each keep group): a seeded draw")
    erasure_items: int = opt(64, "forget prompts that get an erasure counterpart (only their mean enters r_l)")
    batch_size: int = opt(32, "prompts per forward pass while collecting activations")
    sweep: bool = opt(
        False, "pick layers and strength by a grid on a validation slice built from the training QA "
        "(never the test items); the winner drops forget accuracy most while keeping retain")
    sweep_strengths: list[float] = opt([-2.0, -4.0, -6.0, -8.0], "strengths the sweep tries")
    sweep_gates: list[float] = opt([0.4, 0.5, 0.6], "gates the sweep tries")
    sweep_items: int = opt(
        96, "validation MCQ items per side (forget, retain) for the sweep, held out of the fit; fewer make "
        "its 95% retain bar a matter of one or two items")

    def validate(self) -> None:
        if not 0.0 < self.null_ratio < 1.0:
            raise ConfigError(f"null_ratio must be in (0, 1), got {self.null_ratio}")
        if self.lam < 0:
            raise ConfigError(f"lam must be >= 0, got {self.lam}")
        if not 0.0 <= self.gate < 1.0:
            raise ConfigError(f"gate must be in [0, 1), got {self.gate}")
        if "train_retain" not in self.keep:
            raise ConfigError(f"keep must include train_retain, got {self.keep}")
        if self.erasure_items < 1:
            raise ConfigError(f"erasure_items must be >= 1, got {self.erasure_items}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"max_items must be >= 1 or null, got {self.max_items}")
        if self.sweep and (not self.sweep_strengths or not self.sweep_gates or self.sweep_items < 1):
            raise ConfigError("the sweep needs at least one strength, one gate and sweep_items >= 1")
        if any(not 0.0 <= g < 1.0 for g in self.sweep_gates):
            raise ConfigError(f"sweep_gates must lie in [0, 1), got {self.sweep_gates}")
        if len(self.depth) != 2 or not 0.0 <= self.depth[0] < self.depth[1] <= 1.0:
            raise ConfigError(f"depth must be [lo, hi] with 0 <= lo < hi <= 1, got {self.depth}")
        if any(i < 0 for i in self.layers):
            raise ConfigError(f"layers must be non-negative indices, got {self.layers}")
        if self.use_pgd and (self.pgd_eps < 0 or self.pgd_step <= 0 or self.pgd_steps < 1):
            raise ConfigError("PGD needs pgd_eps >= 0, pgd_step > 0 and pgd_steps >= 1")

    def check_given(self, keys: set[str]) -> None:
        """Options given on the command line (or the API's overrides) that this config would not read."""
        unread = sorted(keys & {"strength", "gate", "depth"}) if self.sweep else []
        if unread:
            raise ConfigError(f"{', '.join(unread)} would not be read: with sweep=true (the shipped eraser setting) "
                              "the sweep picks the strength, the gate and the layers on each request; add "
                              "sweep=false to set them by hand, or narrow the sweep (sweep_strengths, sweep_gates, "
                              "layers)")


def layer_span(n_layers: int, lo: float = 1 / 3, hi: float = 2 / 3) -> list[int]:
    """Layers ``[int(lo*L), int(hi*L))``, at least one: by default the middle third."""
    first = min(n_layers - 1, int(lo * n_layers + 1e-9))
    return list(range(first, max(first + 1, int(hi * n_layers + 1e-9))))

