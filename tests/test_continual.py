"""Continual unlearning: a later request must not undo an earlier one.

CVF + NCU keeps an earlier request forgotten by adding its images to the covariance of the
next request's null space; the driver passes them on. The check is on the visual features
of request 1's images, which is what CVF changed: request 2 should barely move them with
the earlier images in the covariance, and move them more without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import stopping_at
from safetensors.torch import load_file

from unsee import api
from unsee.audit.attacks import pooled_features
from unsee.audit.common import image_mcq
from unsee.cli import main
from unsee.data.collate import qa_turns
from unsee.data.world import load_world_info
from unsee.engine.checkpoint import content_key, has_checkpoint, load_checkpoint, save_checkpoint
from unsee.engine.trainer import unique_images
from unsee.errors import ConfigError, DataError, OutputExistsError, TrainingError
from unsee.eval.results import load_results
from unsee.io import atomic_dir
from unsee.models import load_adapter, model_fingerprint
from unsee.report.tables import setting_of
from unsee.resume import Progress, partial_dir
from unsee.runs import with_all_costs

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


EVAL = {"generation": False, "max_items": 4, "progress": False}


def run_continual(model_dir: Path, world: Path, out: Path, overrides: list[str] = STEPS, seed: int = 0) -> Path:
    return api.continual("cvf_ncu", model_dir, world, out, ["forget_r1", "forget_r2"], config=None,
                         overrides=overrides, seed=seed, overwrite=False, allow_pickle=False, eval_kw=EVAL)


@pytest.fixture(scope="module")
def straight(model_dir: Path, world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two requests, run without a stop."""
    return run_continual(model_dir, world, tmp_path_factory.mktemp("continual") / "c")


def test_continual_driver_measures_every_earlier_request(straight: Path, world: Path) -> None:
    runs = load_results(straight / "results.json")["runs"]
    assert [r["request"] for r in runs] == [1, 2]
    assert all(r["retain_without"] == ["forget_r1", "forget_r2"] for r in runs)  # its own setting in a report
    assert "forget_r1" in runs[0]["metrics"] and {"forget_r1", "forget_r2"} <= set(runs[1]["metrics"])
    assert (straight / "model" / "model.safetensors").is_file()
    card = (straight / "model" / "README.md").read_text()  # shipped with its card, as any unlearned model
    assert "cvf_ncu" in card and all(p in card for r in ("forget_r1", "forget_r2")
                                     for p in load_world_info(world)["requests"][r])
    assert torch.isfinite(torch.tensor(runs[1]["metrics"]["forget_r1"]["mcq"]))
    assert not partial_dir(straight).exists()  # a run that lands leaves no progress behind


def test_seeds_of_a_continual_run_can_share_the_items_they_are_asked(straight: Path, model_dir: Path, world: Path,
                                                                      tmp_path: Path) -> None:
    """``data_seed`` holds the data drawn while the unlearning seed moves, as ``--seeds`` does for one request:
    seeds compared over one item set, and one setting in a report."""
    out = api.continual("cvf_ncu", model_dir, world, tmp_path / "s1", ["forget_r1", "forget_r2"], config=None,
                        overrides=STEPS, seed=1, overwrite=False, allow_pickle=False, eval_kw=EVAL, data_seed=0)
    other, base = (load_results(d / "results.json")["runs"] for d in (out, straight))
    assert [r["seed"] for r in other] == [1, 1] and [r["data"] for r in other] == [r["data"] for r in base]
    assert [setting_of(r) for r in other] == [setting_of(r) for r in base]


def test_a_stopped_run_goes_on_from_its_last_finished_request_with_the_same_numbers(
        straight: Path, model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(api, "unlearn_adapter", stopping_at(api.unlearn_adapter, 2,
                                                            TrainingError("the loss is not finite."), calls))
    out = tmp_path / "c"
    with pytest.raises(TrainingError, match=r"request 2 of 2 \(forget_r2\): .*request 1 is kept in .*c\.partial, "
                       r"and the same command goes on from request 2"):
        run_continual(model_dir, world, out)
    assert not out.exists() and (partial_dir(out) / "model" / "model.safetensors").is_file()

    with pytest.raises(ConfigError, match="another continual run"):  # other numbers: not resumed, nothing lost
        run_continual(model_dir, world, out, seed=1)
    assert len(calls) == 2 and partial_dir(out).is_dir()

    calls.clear()
    kept: list[list] = []  # what the resumed request is told to keep forgotten: request 1's photos, each once
    starts: list[str] = []  # the identity a request's training checkpoint is keyed by, as in the first run
    stopping = api.unlearn_adapter
    monkeypatch.setattr(api, "unlearn_adapter", lambda *a, **kw: kept.append(kw["forgotten_images"])
                        or starts.append(a[1].fingerprint()) or stopping(*a, **kw))
    run_continual(model_dir, world, out)
    assert len(calls) == 1  # request 1 was not trained again
    assert starts == [model_fingerprint(model_dir)]
    want_photos = request_images(world, "forget_r1")
    assert [im.tobytes() for im in kept[0]] == [im.tobytes() for im in want_photos] and want_photos
    assert not partial_dir(out).exists()
    got, want = (load_results(p / "results.json")["runs"] for p in (out, straight))
    assert [r["metrics"] for r in got] == [r["metrics"] for r in want]
    a, b = (load_file(p / "model" / "model.safetensors") for p in (out, straight))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_folder_in_the_way_of_the_progress_is_refused(model_dir: Path, world: Path, tmp_path: Path) -> None:
    mine = partial_dir(tmp_path / "c")
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="in the way"):
        run_continual(model_dir, world, tmp_path / "c")
    assert (mine / "notes.txt").read_text() == "mine"


def test_a_request_that_fails_to_train_is_named_and_nothing_is_written(model_dir: Path, world: Path,
                                                                      tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"request 1 of 2 \(forget_r1\): .*not finite.* Nothing is written"):
        run_continual(model_dir, world, tmp_path / "c", overrides=[*STEPS, "redistil_steps=3", "redistil_lr=1e30"])
    assert not (tmp_path / "c").exists() and not partial_dir(tmp_path / "c").exists()


def test_requests_that_share_a_person_are_refused_before_any_work(model_dir: Path, world: Path,
                                                                   tmp_path: Path) -> None:
    """forget_10 holds forget_5's people: as a second request it would hold its own photos forgotten (and in the
    null space) while it forgets them, and report them as new."""
    five = set(api.load_suite(world, "forget_5").forget_entities)
    assert five and five <= set(api.load_suite(world, "forget_10").forget_entities)
    with pytest.raises(ConfigError, match="whom forget_5 forgets already"):
        api.unlearn("cvf_ncu", model_dir, world, tmp_path / "c", requests="forget_5,forget_10", overrides=STEPS)
    assert not (tmp_path / "c").exists() and not partial_dir(tmp_path / "c").exists()


def test_a_failure_after_the_training_names_its_request_too(model_dir: Path, world: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kw: Any) -> Any:
        raise OSError("the evaluator's cache is unreadable")

    monkeypatch.setattr(api, "evaluation", broken)
    with pytest.raises(OSError, match="unreadable") as failed:
        run_continual(model_dir, world, tmp_path / "c")
    assert failed.value.__notes__ == [f"request 1 of 2 (forget_r1): Nothing is written to {tmp_path / 'c'}."]


def test_a_continual_command_stopped_by_hand_says_what_it_keeps(model_dir: Path, world: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(api, "unlearn_adapter", stopping_at(api.unlearn_adapter, 2, KeyboardInterrupt(), []))
    out = tmp_path / "c"
    assert main(["unlearn", "--method", "cvf_ncu", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 "--requests", "forget_r1,forget_r2", "--max-items", "4", *STEPS]) == 130
    err = capsys.readouterr().err
    assert f"request 1 is kept in {partial_dir(out)}, and the same command goes on from request 2" in err
    assert "nothing was written" not in err and not out.exists()


def test_a_run_resumed_with_another_thread_count_goes_on_and_says_so(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    parts = {"method": "cvf_ncu", "seed": 0}
    mine = partial_dir(tmp_path / "c")
    mine.mkdir()
    state = {"key": content_key(parts), "done": 1, "threads": torch.get_num_threads() + 3, "runs": [{"request": 1}]}
    (mine / "state.json").write_text(json.dumps(state))
    progress = Progress.open(tmp_path / "c", parts)
    assert progress.done == 1 and progress.runs == [{"request": 1}]
    assert f"written with {torch.get_num_threads() + 3} threads" in capsys.readouterr().err
    (mine / "state.json").write_text(json.dumps({**state, "threads": torch.get_num_threads()}))
    Progress.open(tmp_path / "c", parts)
    assert capsys.readouterr().err == ""


def test_saved_progress_a_kill_left_moved_aside_is_found_not_started_over(tmp_path: Path) -> None:
    """A save moves the previous folder aside, then lands the new one: killed between the two, the next run
    looked for the folder, found none, started from the first step and then wrote over the saved work."""
    w = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([w], lr=0.1)
    save_checkpoint(tmp_path / "ck", step=3, params={"w": w}, optimizer=opt)
    (tmp_path / "ck").rename(tmp_path / ".ck.old")
    assert has_checkpoint(tmp_path / "ck") and load_checkpoint(tmp_path / "ck", params={"w": w}, optimizer=opt)[0] == 3
    parts = {"method": "cvf_ncu", "seed": 0}
    state = {"key": content_key(parts), "done": 2, "threads": torch.get_num_threads(), "runs": [{"request": 1}] * 2}
    with atomic_dir(partial_dir(tmp_path / "c"), mine=True) as tmp:
        (tmp / "state.json").write_text(json.dumps(state))
    aside = partial_dir(tmp_path / "c")
    aside.rename(aside.with_name(f".{aside.name}.old"))
    assert Progress.open(tmp_path / "c", parts).done == 2


def test_requests_given_but_empty_are_refused_not_run_as_one_request(model_dir: Path, world: Path,
                                                                      tmp_path: Path) -> None:
    """An empty list file or a bare comma would otherwise unlearn --forget's split, as if --requests were not given."""
    (tmp_path / "none.txt").write_text("# no request yet\n")
    for given in (str(tmp_path / "none.txt"), ",", []):
        with pytest.raises(ConfigError, match="names no request"):
            api.unlearn("cvf_ncu", model_dir, world, tmp_path / "o", requests=given, overrides=STEPS)
    assert not (tmp_path / "o").exists()


def test_a_request_named_twice_is_refused_before_any_work(model_dir: Path, world: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="forget_r1 appears more than once"):
        api.continual("cvf_ncu", model_dir, world, tmp_path / "c", ["forget_r1", "forget_r2", "forget_r1"],
                      config=None, overrides=STEPS, seed=0, overwrite=False, allow_pickle=False, eval_kw=EVAL)
    assert not (tmp_path / "c").exists() and not partial_dir(tmp_path / "c").exists()


def test_a_request_the_data_does_not_hold_is_named_even_after_one_it_holds(model_dir: Path, world: Path,
                                                                            tmp_path: Path) -> None:
    """Each request's people are left out of every request's retained ones: a mistyped later request is named
    when the first is loaded, as a split the data does not hold."""
    with pytest.raises(DataError, match="'forget_r9': neither a split nor a person of .*a continual request"):
        api.unlearn("cvf_ncu", model_dir, world, tmp_path / "o", requests="forget_r1,forget_r9", overrides=STEPS)
    assert not (tmp_path / "o").exists() and not partial_dir(tmp_path / "o").exists()


def test_continual_requests_with_audits_are_refused_not_skipped(model_dir: Path, world: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """--requests runs no audits; asking for them must not end in a run that quietly has none."""
    monkeypatch.setattr(api, "continual", lambda *a, **k: pytest.fail("it started the requests"))
    (tmp_path / "reference").mkdir()
    for kw in ({"audit": True}, {"reference": tmp_path / "reference"}):
        with pytest.raises(ConfigError, match="--requests runs no audits"):
            api.unlearn("cvf_ncu", model_dir, world, tmp_path / "c", requests="forget_r1,forget_r2",
                        overrides=STEPS, **kw)


def test_a_continual_run_s_tracker_logs_go_to_its_output_as_a_single_run_s_do(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--report-to's logs are in OUT/logs; each request's went to ./runs/tensorboard in the working folder."""
    import accelerate.tracking

    from unsee.engine import tracking

    folders: list[Path] = []

    class Tracker:  # TensorBoard stands in; its package is optional
        def __init__(self, run_name: str, logging_dir: str) -> None:
            folders.append(Path(logging_dir))

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: None

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", ("json", "tensorboard"))
    monkeypatch.setattr(accelerate.tracking, "TensorBoardTracker", Tracker)
    monkeypatch.chdir(tmp_path)
    api.unlearn("graddiff", model_dir, world, tmp_path / "c", requests="forget_r1,forget_r2", report_to="tensorboard",
                overrides=["max_steps=2", "batch_size=2", "progress=false"], max_items=2)
    assert len(folders) == 2 and all(f.parent.name == "logs" and f.parent.parent.parent == tmp_path for f in folders)
    assert not (tmp_path / "runs").exists()


def test_a_continual_run_s_cost_keeps_a_resumed_request_s_training(model_dir: Path, world: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The second request resumed from its checkpoint: its seconds before the stop count in its cost and in the
    run's, whose combined cost took only the keys of the first request's."""
    real, calls = api.unlearn_adapter, []

    def second_resumed(*a: Any, **k: Any) -> Any:
        res, resolved = real(*a, **k)
        calls.append(1)
        res.resumed_s = 40.0 if len(calls) == 2 else 0.0
        return res, resolved

    monkeypatch.setattr(api, "unlearn_adapter", second_resumed)
    out = api.unlearn("graddiff", model_dir, world, tmp_path / "c", requests="forget_r1,forget_r2",
                      overrides=["max_steps=2", "batch_size=2", "progress=false"], max_items=2)
    first, second = load_results(out / "results.json")["runs"][-2:]
    assert "resumed_s" not in first["cost"] and second["cost"]["resumed_s"] == 40.0
    assert with_all_costs([first, second])["cost"]["resumed_s"] == 40.0


def test_each_request_keeps_its_own_training_checkpoint(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """With keep_checkpoint, the checkpoint request 1 leaves belongs to another run than request 2's: in one
    folder request 2 found it and refused it, and so did every retry."""
    kept = [f"checkpoint_dir={tmp_path / 'ck'}", "checkpoint_every=2", "keep_checkpoint=true"]
    out = api.unlearn("cvf_ncu", model_dir, world, tmp_path / "c", requests="forget_r1,forget_r2",
                      overrides=[*STEPS, *kept], max_items=4)
    assert all(has_checkpoint(tmp_path / "ck" / f"request-{i}") for i in (1, 2))
    # the model card states the unlearning time of both requests
    wall = sum(r["cost"]["wall_s"] for r in load_results(out / "results.json")["runs"])
    assert f"- Wall time: {wall:.1f} s (all 2 requests)" in (out / "model" / "README.md").read_text()
    api.attack("shift", out / "model", world, out, overrides=["max_items=2"])  # the card is written again
    card = (out / "model" / "README.md").read_text()
    assert f"- Wall time: {wall:.1f} s (all 2 requests)" in card and "| shift |" in card
    # attacked as the last request, its retained people are the run's: without the earlier requests' people
    api.attack("quant", out / "model", world, out, forget="forget_r2",
               overrides=["quant_bits=[4]", "quant_max_items=0"])
    run = load_results(out / "results.json")["runs"][-1]
    kept = api.load_suite(world, "forget_r2", retain_exclude=run["retain_without"])
    assert run["attacks"]["quant"]["n_retain"] == len(image_mcq(kept, "retain"))
    assert len(image_mcq(kept, "retain")) < len(image_mcq(api.load_suite(world, "forget_r2"), "retain"))
