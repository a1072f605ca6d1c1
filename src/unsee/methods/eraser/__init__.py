"""MLLMEraser: training-free, test-time erasure by steering the residual stream.

No weight changes: the result is the base model plus one steering file that the hooks
switch on at inference (``docs/methods.md``, "MLLMEraser"). The package holds its options
(:mod:`.config`), the file (:mod:`.steering`), the hooks (:mod:`.hooks`), the fit
(:mod:`.fit`), the sweep over layers, gate and strength (:mod:`.sweep`), and the unlearner that
puts them together and returns the steering as its artifact (:mod:`.method`).
"""

from unsee.methods.eraser.config import EraserConfig, layer_span
from unsee.methods.eraser.fit import (
    REFUSAL_SUFFIX,
    build_steering,
    collect_last_token,
    draw,
    erasure_turns,
    joint_map,
    layer_map,
    pgd_pixels,
)
from unsee.methods.eraser.hooks import find_prompt_ends, generation_marker, generation_overhead, prompt_ends, steer
from unsee.methods.eraser.method import Eraser, SteeringArtifact, fit_steering, run_eraser
from unsee.methods.eraser.steering import FORMAT, STEERING_FILE, Steering
from unsee.methods.eraser.sweep import SweepResult, layer_candidates, mcq_accuracy, sweep, validation_items

__all__ = [
    "FORMAT", "REFUSAL_SUFFIX", "STEERING_FILE", "Eraser", "EraserConfig", "Steering", "SteeringArtifact",
    "SweepResult",
    "build_steering", "collect_last_token", "draw", "erasure_turns", "find_prompt_ends", "fit_steering",
    "generation_marker", "generation_overhead", "joint_map", "layer_candidates", "layer_map", "layer_span",
    "mcq_accuracy", "pgd_pixels", "prompt_ends", "run_eraser", "steer", "sweep", "validation_items",
]
