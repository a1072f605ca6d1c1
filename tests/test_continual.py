"""Continual unlearning: a later request must not undo an earlier one.

CVF + NCU keeps an earlier request forgotten by adding its images to the covariance of the
next request's null space; the driver passes them on. The check is on the visual features
of request 1's images, which is what CVF changed: request 2 should barely move them with
the earlier images in the covariance, and move them more without.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unsee import api
from unsee.audit.attacks import pooled_features
from unsee.data.collate import qa_turns
from unsee.engine.trainer import unique_images
from unsee.errors import TrainingError
from unsee.eval.results import load_results
from unsee.models import load_adapter

STEPS = ["max_steps=4", "batch_size=4", "lr=3e-3", "progress=false", "ncu_images=64", "augment=0"]


def request_images(world: Path, split: str) -> list:
    suite = api.load_suite(world, split, retain_exclude=["forget_r1", "forget_r2"])
    return [t.image for t in unique_images(qa_turns(suite.group("train_forget")))]


def drift_of_request_1(model_dir: Path, world: Path, pass_forgotten: bool) -> float:
    adapter = load_adapter(model_dir)
    r1 = api.load_suite(world, "forget_r1", retain_exclude=["forget_r1", "forget_r2"])
    r2 = api.load_suite(world, "forget_r2", retain_exclude=["forget_r1", "forget_r2"])
    api.unlearn_adapter("cvf_ncu", adapter, r1, overrides=STEPS)
    images = request_images(world, "forget_r1")
    after_1 = pooled_features(adapter, images)
    api.unlearn_adapter("cvf_ncu", adapter, r2, overrides=STEPS, forgotten_images=images if pass_forgotten else ())
    after_2 = pooled_features(adapter, images)
    return float((after_2 - after_1).norm() / after_1.norm())


def test_request_2_leaves_request_1_features_in_place(model_dir: Path, world: Path) -> None:
    kept = drift_of_request_1(model_dir, world, pass_forgotten=True)
    free = drift_of_request_1(model_dir, world, pass_forgotten=False)
    assert kept < 0.5 * free, (kept, free)


def test_continual_driver_measures_every_earlier_request(model_dir: Path, world: Path, tmp_path: Path) -> None:
    out = api.continual("cvf_ncu", model_dir, world, tmp_path / "c", ["forget_r1", "forget_r2"], config=None,
                        overrides=STEPS, seed=0, overwrite=False, allow_pickle=False,
                        eval_kw={"generation": False, "max_items": 4, "progress": False})
    runs = load_results(out / "results.json")["runs"]
    assert [r["request"] for r in runs] == [1, 2]
    assert "forget_r1" in runs[0]["metrics"] and {"forget_r1", "forget_r2"} <= set(runs[1]["metrics"])
    assert (out / "model" / "model.safetensors").is_file()
    assert torch.isfinite(torch.tensor(runs[1]["metrics"]["forget_r1"]["mcq"]))


def test_a_request_that_fails_to_train_is_named_and_nothing_is_written(model_dir: Path, world: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"request 1 of 2 \(forget_r1\): .*not finite"):
        api.continual("cvf_ncu", model_dir, world, tmp_path / "c", ["forget_r1", "forget_r2"], config=None,
                      overrides=[*STEPS, "redistil_steps=3", "redistil_lr=1e30"], seed=0, overwrite=False,
                      allow_pickle=False, eval_kw={"generation": False, "max_items": 4, "progress": False})
    assert not (tmp_path / "c").exists()
