"""Training curves: the loss and each loss term every ``log_every`` steps, for ``run.json`` and trackers.

``run.json`` always gets the ``history``; ``report_to`` also streams it to Accelerate's
TensorBoard or Weights & Biases tracker, optional extras checked when the config is read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from unsee.errors import ConfigError

# tracker -> (module it needs, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def tracker_names(report_to: str) -> list[str]:
    return [t.strip().lower() for t in report_to.split(",") if t.strip() and t.strip().lower() != "none"]


def check_trackers(report_to: str) -> None:
    """One line for an unknown tracker or one whose package is missing, before any work."""
    for name in tracker_names(report_to):
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker {name!r} in report_to; choose from {', '.join(TRACKERS)}")
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracker {name!r} needs the {module!r} package: pip install 'unsee[{extra}]'")


def history(losses: list[float], logs: list[dict[str, float]], every: int) -> list[dict[str, float]]:
    """Step (1-based), loss and loss terms at every ``every``-th step and the last one."""
    every = max(1, every)
    last = len(losses) - 1
    return [{"step": i + 1, "loss": losses[i], **logs[i]} for i in range(len(losses)) if i % every == 0 or i == last]


class Trackers:
    """Accelerate's trackers for one run; a no-op when none is named (or outside the first process)."""

    def __init__(self, report_to: str, logging_dir: str, run_name: str, config: dict[str, Any],
                 main: bool = True) -> None:
        self.trackers: list[Any] = []
        if not main:
            return
        check_trackers(report_to)
        for name in tracker_names(report_to):
            if name == "tensorboard":
                from accelerate.tracking import TensorBoardTracker

                tracker = TensorBoardTracker(run_name, str(Path(logging_dir or "runs") / "tensorboard"))
            else:
                from accelerate.tracking import WandBTracker

                tracker = WandBTracker(run_name)
            tracker.start()
            tracker.store_init_configuration({k: v for k, v in config.items()
                                              if isinstance(v, int | float | str | bool)})
            self.trackers.append(tracker)

    def log(self, row: dict[str, float]) -> None:
        values = {f"train/{k}": v for k, v in row.items() if k != "step"}
        for tracker in self.trackers:
            tracker.log(values, step=int(row["step"]))

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
