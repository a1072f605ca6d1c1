"""What a hostile but realistic user breaks: every bad input ends in one line and changes nothing,
and no broken model or misreported result leaves a run."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from unsee import api, errors, unlearning
from unsee.cli import main, method_options, parser
from unsee.data.request_example import write_world_request
from unsee.data.schema import Suite
from unsee.engine.checkpoint import has_checkpoint
from unsee.engine.trainer import Context, TrainConfig, train
from unsee.errors import ConfigError, DataError, ModelError, TrainingError
from unsee.eval.evaluator import mcq_loglik, run_evaluation
from unsee.methods import artifact
from unsee.methods.baselines import GA
from unsee.models import Turn, load_adapter

FAST = ["max_steps=1", "batch_size=2", "progress=false"]


def checksums(path: Path) -> dict[str, str]:
    """Every file under ``path`` by its content: equal before and after means untouched."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unsee: error: ") and "Traceback" not in err, err
    return lines[0]


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder nobody may create entries in: permission bits for a normal user; for root, whom
    they do not stop, a read-only file system."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    for candidate in (Path("/sys/fs"), Path("/proc/sys")):
        try:
            os.rmdir(tempfile.mkdtemp(dir=candidate))
        except OSError:
            return candidate
    pytest.skip("no unwritable folder on this machine")


@pytest.fixture
def own_model(model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny model inside a folder of its own, to put outputs around."""
    return Path(shutil.copytree(model_dir, tmp_path / "models" / "m"))


def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the command started working before checking its output")

    monkeypatch.setattr(api, "load_suite", boom)


# ---- outputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_unlearn_output_overlapping_the_model_is_refused_even_with_overwrite(
        where: str, own_model: Path, world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = {"is": own_model, "inside": own_model / "unlearned", "contains": own_model.parent}[where]
    before = checksums(own_model.parent)
    no_work(monkeypatch)
    with pytest.raises(errors.OutputError, match=f"{where if where != 'inside' else 'lies inside'} the input"):
        api.unlearn("ga", own_model, world, out, overrides=FAST, overwrite=True)
    assert checksums(own_model.parent) == before


def test_outputs_inside_the_data_or_around_a_results_file_are_refused(
        own_model: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_work(monkeypatch)
    with pytest.raises(errors.OutputError, match="lies inside the input"):
        api.evaluate(own_model, world, own_model / "eval.json", overwrite=True)
    with pytest.raises(errors.OutputError, match="lies inside the input"):
        api.evaluate(own_model, world, world / "eval.json", overwrite=True)
    results = tmp_path / "r" / "report.md"
    results.parent.mkdir()
    results.write_text("{}")
    with pytest.raises(errors.OutputError, match="is the input"):
        api.report([results], results.parent, overwrite=True)
    assert results.read_text() == "{}" and not (own_model / "eval.json").exists()


def test_an_output_over_the_photos_a_request_names_is_refused(
        own_model: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The photos a request file names are inputs too: --overwrite must not delete them."""
    photos = tmp_path / "photos"
    request = write_world_request(world, photos)
    moved = tmp_path / "requests" / "r.yaml"  # the file elsewhere, naming the photos by absolute path
    moved.parent.mkdir()
    text = request.read_text()
    for folder in ("photos/", "held_out/", "neutral", "general"):
        text = text.replace(f": {folder}", f": {photos}/{folder}")
    moved.write_text(text)
    request.unlink()
    before = checksums(photos)
    no_work(monkeypatch)
    for out in (photos, photos / "photos", tmp_path):
        with pytest.raises(errors.OutputError, match="the input"):
            api.forget(own_model, moved, out, overwrite=True, audit=False, overrides=FAST)
        with pytest.raises(errors.OutputError, match="the input"):
            api.unlearn("ga", own_model, moved, out, overrides=FAST, overwrite=True)
    assert checksums(photos) == before


def test_an_unwritable_output_fails_before_any_work(model_dir: Path, world: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ro = unwritable_dir(tmp_path)
    no_work(monkeypatch)
    assert main(["unlearn", "--method", "ga", "--model", str(model_dir), "--data", str(world),
                 "--out", str(ro / "out" / "u"), *FAST]) == 2
    assert "not writable" in one_error_line(capsys)
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(ro / "e.json")]) == 2
    assert "not writable" in one_error_line(capsys)


def test_eval_out_a_directory_is_one_line(model_dir: Path, world: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(tmp_path),
                 "--overwrite"]) == 2
    assert "is a directory; give a file path, such as" in one_error_line(capsys)
    monkeypatch_cwd = os.getcwd()
    try:  # the folder one stands in, named as '.': one line too, not a traceback from its empty name
        os.chdir(tmp_path)
        assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", "."]) == 2
        assert "is a directory" in one_error_line(capsys)
    finally:
        os.chdir(monkeypatch_cwd)
    # a folder where the item records beside the results go is in the way: no path inside it is suggested
    (tmp_path / "e.samples.jsonl").mkdir()
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(tmp_path / "e.json")]) == 2
    line = one_error_line(capsys)
    assert "e.samples.jsonl is a directory; move it, or give another path" in line and "such as" not in line


def test_a_truncated_weight_file_is_one_line(own_model: Path, world: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    weights = own_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["eval", "--model", str(own_model), "--data", str(world), "--out", str(tmp_path / "e.json")]) == 2
    assert "truncated" in one_error_line(capsys)
    assert main(["unlearn", "--method", "ga", "--model", str(own_model), "--data", str(world),
                 "--out", str(tmp_path / "u"), *FAST]) == 2
    assert "truncated" in one_error_line(capsys)
    weights.write_bytes(b"\xff" * 16)
    with pytest.raises(ModelError, match="corrupt header"):
        load_adapter(own_model)


# ---- no non-finite model -------------------------------------------------------------------------
def test_a_learning_rate_that_breaks_the_model_fails_the_run(model_dir: Path, world: Path, tmp_path: Path) -> None:
    """lr=1e12: the one loss is finite, the update leaves weights of 1e12 whose answers overflow."""
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="not finite"):
        api.unlearn("graddiff", model_dir, world, out, overrides=["lr=1e12", *FAST], evaluate_after=False)
    assert not out.exists()


def test_non_finite_weights_after_the_last_step_fail_the_run(model_dir: Path, suite: Suite,
                                                              turns: dict[str, list[Turn]]) -> None:
    class Poison(GA):
        def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
            loss, parts = super().loss(ctx, batch)
            if ctx.step == 1:  # the loss is finite; the weights are poisoned afterwards, as an overflow would
                next(ctx.adapter.model.parameters()).data.fill_(float("inf"))
            return loss, parts

    with pytest.raises(TrainingError, match="trained weights are not finite"):
        train(Poison(), load_adapter(model_dir), suite, turns, TrainConfig(max_steps=2, batch_size=2, progress=False))


def test_the_evaluator_refuses_non_finite_scores(model_dir: Path, suite: Suite) -> None:
    adapter = load_adapter(model_dir)
    with torch.no_grad():
        adapter.model.get_output_embeddings().weight.fill_(float("nan"))
    items = [e for e in suite.groups["forget"] if e.task == "mcq"]
    with pytest.raises(ModelError, match="NaN or infinite"):
        mcq_loglik(adapter, items)


def test_a_whole_evaluation_refuses_broken_weights_before_it_decodes(model_dir: Path, suite: Suite,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding is the long part of an evaluation on a CPU: a diverged model is refused by its MCQ scores first."""
    adapter = load_adapter(model_dir)
    with torch.no_grad():
        adapter.model.get_output_embeddings().weight.fill_(float("nan"))
    asked: list[int] = []
    monkeypatch.setattr(adapter, "generate", lambda turns, **k: asked.append(len(turns)) or [""] * len(turns))
    with pytest.raises(ModelError, match="NaN or infinite"):
        run_evaluation(adapter, suite, max_items=2, progress=False)
    assert asked == []


# ---- checkpoints ---------------------------------------------------------------------------------
def _ckpt(tmp_path: Path, **kw: object) -> TrainConfig:
    base: dict = {"lr": 1e-3, "max_steps": 3, "batch_size": 2, "progress": False,
                  "checkpoint_dir": str(tmp_path / "ckpt"), "checkpoint_every": 1}
    return TrainConfig(**{**base, **kw})


def test_a_checkpoint_resumes_only_its_own_run(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]],
                                               tmp_path: Path) -> None:
    train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path, keep_checkpoint=True, max_steps=2))
    assert has_checkpoint(tmp_path / "ckpt")  # kept: asked for
    other = load_adapter(model_dir)
    before = {n: p.clone() for n, p in other.model.named_parameters()}
    with pytest.raises(TrainingError, match="belongs to another run"):
        train(GA(), other, suite, turns, _ckpt(tmp_path, lr=1e-4))
    assert all(torch.equal(before[n], p) for n, p in other.model.named_parameters())
    other_data = {**turns, "forget": turns["forget"][1:]}
    with pytest.raises(TrainingError, match="belongs to another run"):
        train(GA(), load_adapter(model_dir), suite, other_data, _ckpt(tmp_path))


def test_a_lora_checkpoint_resumes_only_the_weights_it_was_written_on(model_dir: Path, suite: Suite,
                                                                       turns: dict[str, list[Turn]],
                                                                       tmp_path: Path) -> None:
    """LoRA's factors start alike whatever they wrap: a continual run's later request, whose frozen weights the
    earlier requests changed under the same fingerprint, must not resume another run's checkpoint."""
    cfg = _ckpt(tmp_path, keep_checkpoint=True, max_steps=2, scope="lora", lora_dropout=0.0)
    first = train(GA(), load_adapter(model_dir), suite, turns, cfg)
    moved = load_adapter(model_dir)  # what an earlier request left: other frozen weights, the same source
    with torch.no_grad():
        next(p for n, p in moved.model.named_parameters() if "layers.0" in n and n.endswith("q_proj.weight")).add_(0.1)
    with pytest.raises(TrainingError, match="belongs to another run"):
        train(GA(), moved, suite, turns, cfg)
    assert train(GA(), load_adapter(model_dir), suite, turns, cfg).losses == first.losses  # its own: resumed


def test_a_checkpoint_killed_while_it_is_removed_does_not_block_the_next_run(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its folder goes at once; a half-deleted one was refused as holding other files."""
    real = shutil.rmtree

    def killed(path: Path, **kw: object) -> None:
        if Path(path).name.startswith(".ckpt.") and (Path(path) / "state.safetensors").exists():
            raise KeyboardInterrupt  # the finished run's checkpoint, being deleted
        real(path, **kw)

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path, max_steps=2))
    monkeypatch.undo()
    assert not (tmp_path / "ckpt").exists()
    train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path, max_steps=2))
    assert not (tmp_path / "ckpt").exists()  # the leftover is this live process's: a later run's to remove


def test_a_checkpoint_edited_into_another_shape_is_one_line(model_dir: Path, suite: Suite,
                                                            turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path, keep_checkpoint=True, max_steps=2))
    (tmp_path / "ckpt" / "state.json").write_text("[]")
    with pytest.raises(TrainingError, match="cannot read the checkpoint .*delete it to start over"):
        train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path, keep_checkpoint=True, max_steps=2))


def test_a_loss_not_finite_before_any_step_blames_the_model_not_the_rate(model_dir: Path, suite: Suite,
                                                                        turns: dict[str, list[Turn]]) -> None:
    adapter = load_adapter(model_dir)
    with torch.no_grad():
        adapter.model.get_output_embeddings().weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="at step 0.*Nothing was trained yet") as info:
        train(GA(), adapter, suite, turns, TrainConfig(max_steps=2, batch_size=2, progress=False))
    assert "Lower lr" not in str(info.value)


def test_a_finished_run_removes_its_checkpoint(model_dir: Path, suite: Suite, turns: dict[str, list[Turn]],
                                               tmp_path: Path) -> None:
    train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path))
    assert not (tmp_path / "ckpt").exists()


def test_a_checkpoint_dir_holding_other_files_is_refused(model_dir: Path, suite: Suite,
                                                         turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path))
    assert (tmp_path / "ckpt" / "notes.txt").read_text() == "mine"


def test_checkpoints_and_the_stage_cache_never_go_into_an_input(model_dir: Path, world: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The input model and data are never written to: a training checkpoint or a stage cache placed inside
    one is refused before any work, as an --out there is."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    before = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    for inside in (model_dir / "ck", world / "ck"):
        with pytest.raises(errors.OutputError, match="lies inside the input"):
            api.unlearn("ga", model_dir, world, tmp_path / "o", overrides=[f"checkpoint_dir={inside}"])
    with pytest.raises(errors.OutputError, match="lies inside the input"):
        api.finetune(model_dir, world, tmp_path / "v", cache_dir=model_dir / "cache")
    with pytest.raises(errors.OutputError, match="lies inside the input"):
        api.attack("pgd", model_dir, world, tmp_path / "a.json", cache_dir=model_dir / "cache")
    # the retrained reference an audit reads is an input too: an output inside it, or over it, is refused
    reference = tmp_path / "reference"
    shutil.copytree(model_dir, reference)
    for out, overwrite in ((reference / "o", False), (reference, True)):
        with pytest.raises(errors.OutputError, match="input"):
            api.unlearn("ga", model_dir, world, out, audit=True, reference=reference, overwrite=overwrite)
    assert sorted(p.name for p in reference.iterdir()) == sorted(p.name for p in model_dir.iterdir())
    shutil.rmtree(reference)
    for inside in (model_dir / "cache", world / ".cache"):  # the same cache named by the environment
        monkeypatch.setenv("UNSEE_CACHE", str(inside))
        with pytest.raises(errors.OutputError, match="lies inside the input"):
            api.finetune(model_dir, world, tmp_path / "v")
        with pytest.raises(errors.OutputError, match="lies inside the input"):
            api.retrain(model_dir, world, tmp_path / "r")
        with pytest.raises(errors.OutputError, match="lies inside the input"):
            api.unlearn("ga", model_dir, world, tmp_path / "o")
    assert {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("bad", "message"), [
    ("ft_steps=-3", "ft_steps must be at least 1"), ("vision_steps=0", "vision_steps must be at least 1"),
    ("batch_size=0", "batch_size must be at least 1"), ("replay=-1", "replay, .* must not be negative"),
    ("base_lr=0", "base_lr must be positive"), ("warmup_ratio=1", "warmup_ratio must lie in"),
])
def test_a_vanilla_recipe_that_would_train_nothing_is_refused(bad: str, message: str, model_dir: Path, world: Path,
                                                              tmp_path: Path) -> None:
    """It would be saved as "the vanilla model" untrained, or fail in torch once the model is loaded."""
    with pytest.raises(ConfigError, match=message):
        api.finetune(model_dir, world, tmp_path / "v", config="quick", overrides=[bad])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("bad", "message"), [
    ("visual_lr_scale=-1", "visual_lr_scale must be positive"), ("weight_decay=-1", "weight_decay"),
    ("grad_clip=-1", "grad_clip"), ("warmup_ratio=2", "warmup_ratio must lie in"),
    ("lora_r=0", "lora_r"), ("lora_dropout=2", "lora_dropout"), ("seed=-1", "seed must be a whole number in"),
    ("log_every=0", "log_every must be at least 1"),
])
def test_engine_options_that_would_train_uphill_or_fail_in_torch_are_refused(
        bad: str, message: str, model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=message):
        api.unlearn("ga", model_dir, world, tmp_path / "o", overrides=[bad])
    with pytest.raises(ConfigError, match="seed must be a whole number in"):
        api.unlearn("ga", model_dir, world, tmp_path / "o", seed=2**32)
    assert not list(tmp_path.iterdir())


def test_every_api_command_refuses_a_seed_the_generators_cannot_take(model_dir: Path, world: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """As the command line does: before any model loads, and not recorded as if it were a seed."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    request = write_world_request(world, tmp_path / "req")
    calls = (lambda bad: api.evaluate(model_dir, world, tmp_path / "e.json", seed=bad),
             lambda bad: api.evaluate(model_dir, request, tmp_path / "e.json", seed=bad),
             lambda bad: api.attack("shift", model_dir, world, tmp_path / "a.json", seed=bad),
             lambda bad: api.init_model("tiny-llava", tmp_path / "m", seed=bad),
             lambda bad: api.init_shaped("llava-1.5-7b", tmp_path / "s", seed=bad),
             lambda bad: api.continual("ga", model_dir, world, tmp_path / "c", ["forget_r1", "forget_r2"], config=None,
                                       overrides=(), seed=bad, overwrite=False, allow_pickle=False))
    for bad in (-1, 2**32, 2**64, 1.5, True):
        for call in calls:
            with pytest.raises(ConfigError, match=r"seed must be a whole number in \[0, 2\*\*32\)"):
                call(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["req"]
    with pytest.raises(ConfigError, match="seed must be a whole number"):  # a fine-tune's seed, set after its config
        api.finetune(model_dir, world, tmp_path / "f", seed=-1)
    # the last of several seeds is checked before the first one trains, not when it would start
    for call in (lambda: api.unlearn("ga", model_dir, world, tmp_path / "u", seed=2**32 - 1, seeds=2),
                 lambda: api.demo(tmp_path / "d", seed=2**32 - 1, seeds=2, quick=True)):
        with pytest.raises(ConfigError, match=r"the last seed \(--seed \+ --seeds - 1 = 4294967296\)"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["req"]


def test_a_demo_s_architecture_and_recipe_keys_are_checked_before_its_world_is_built(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="unknown architecture 'bogus'"):
        api.demo(tmp_path / "d", arch="bogus", quick=True, cache_dir=cache)
    with pytest.raises(ConfigError, match="unknown config key 'bogus' for FinetuneConfig"):
        api.demo(tmp_path / "d", quick=True, cache_dir=cache, config={"recipe_overrides": ["bogus=1"]})
    assert not cache.exists() or not any(cache.iterdir())


def test_help_options_that_would_be_ignored_are_refused_and_examples_are_the_command_s_own(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["model", "init", "--arch", "tiny-llava", "--full-size", "--out", str(tmp_path / "m")]) == 2
    assert "--full-size builds a --shape model" in capsys.readouterr().err and not (tmp_path / "m").exists()
    for command, example in (("world", "n_people=40"), ("finetune", "batch_size=8"), ("unlearn", "lr=1e-4"),
                             ("attack", "relearn_steps=20")):
        sub = parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        assert f"e.g. {example}" in sub.format_help()
    with pytest.raises(SystemExit) as ended:
        main(["attack", "--help"])
    assert ended.value.code == 0 and "relearn_steps (int" in capsys.readouterr().out
    # a run with --config starts from the method's own scope, which its help names as the default
    assert "scope (str, default 'visual')" in method_options("vkd")
    assert "scope (str, default 'full')" in method_options("graddiff")
    assert "bookkeeping" in method_options("eraser")


@pytest.mark.parametrize(("method", "bad", "message"), [
    ("npo", "beta=0", "beta must be positive"), ("npo", "beta=-0.1", "beta must be positive"),
    ("mmunlearner", "fisher_batches=0", "fisher_batches and max_retain_ratio must be at least 1"),
    ("mmunlearner", "max_retain_ratio=-3", "fisher_batches and max_retain_ratio must be at least 1"),
    ("vkd", "fisher_batches=0", "fisher_batches must be at least 1"),
])
def test_method_options_that_would_divide_by_zero_or_open_every_weight_are_refused(
        method: str, bad: str, message: str, model_dir: Path, world: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """beta=0 divided by zero mid-run; a Fisher of no batch opened the whole saliency mask without a word."""
    monkeypatch.setattr(api, "load_adapter", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=message):
        api.unlearn(method, model_dir, world, tmp_path / "o", overrides=[bad])
    assert not list(tmp_path.iterdir())


# ---- the suite guards of eval, and images decoded before training -----------------------------------
@pytest.mark.parametrize("kind", ["empty", "overlap"])
def test_eval_runs_the_suite_guards_of_unlearn(kind: str, suite: Suite, world: Path, model_dir: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if kind == "empty":
        bad = dataclasses.replace(suite, groups={**suite.groups, "forget": [], "train_forget": []},
                                  forget_entities=())
    else:
        bad = dataclasses.replace(suite, retain_entities=(*suite.retain_entities, *suite.forget_entities))
    monkeypatch.setattr(api, "load_suite", lambda *a, **k: bad)
    with pytest.raises(DataError, match="empty" if kind == "empty" else "overlaps"):
        api.evaluate(model_dir, world, tmp_path / "e.json")
    assert not (tmp_path / "e.json").exists()


def test_a_corrupt_evaluation_image_stops_unlearn_before_training(suite: Suite, world: Path, model_dir: Path,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    general = list(suite.groups["general"])
    victim = next(i for i, e in enumerate(general) if e.has_image)
    general[victim] = dataclasses.replace(general[victim], uid="broken-photo", image=b"not an image")
    bad = dataclasses.replace(suite, groups={**suite.groups, "general": general})
    monkeypatch.setattr(api, "load_suite", lambda *a, **k: bad)
    trained: list[int] = []
    real = artifact.train
    monkeypatch.setattr(artifact, "train", lambda *a, **k: trained.append(1) or real(*a, **k))
    with pytest.raises(DataError, match="broken-photo"):
        api.unlearn("ga", model_dir, world, tmp_path / "out", overrides=FAST)
    assert trained == [] and not (tmp_path / "out").exists()


# ---- messages ------------------------------------------------------------------------------------
def _cli_options() -> set[str]:
    seen: set[str] = set()
    todo = [parser()]
    while todo:
        p = todo.pop()
        for action in p._actions:
            seen.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action.choices, dict):
                todo.extend(action.choices.values())
    return seen


def test_every_flag_a_message_suggests_exists() -> None:
    import re

    import unsee

    options = _cli_options() | {"--porcelain", "--untracked-files", "--error-unmatch",  # git's, in provenance
                                "--repo-type", "--local-dir", "--include"}  # huggingface-cli's, in download hints
    suggested: dict[str, str] = {}
    for f in Path(unsee.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", node.value):
                    suggested.setdefault(flag, f.name)
    unknown = {flag: where for flag, where in suggested.items() if flag not in options}
    assert not unknown, f"messages suggest flags no command accepts: {unknown}"


def test_interrupting_unlearn_says_what_is_kept(model_dir: Path, world: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(unlearning, "unlearn_adapter", ctrl_c)
    out = tmp_path / "out"
    assert main(["unlearn", "--method", "ga", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 *FAST]) == 130
    err = capsys.readouterr().err
    assert "nothing was written" in err and "resume" not in err and not out.exists()


def test_a_schedulers_stop_is_handled_as_ctrl_c(model_dir: Path, world: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM (Slurm, Kubernetes) killed the process outright: no word of what was kept, and the run's
    staging folder (a model's worth) left beside --out. It now stops the run as Ctrl-C does."""
    import os
    import signal

    def term(*a: object, **k: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal stops the run before this line")

    monkeypatch.setattr(unlearning, "unlearn_adapter", term)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    assert main(["unlearn", "--method", "ga", "--model", str(model_dir), "--data", str(world), "--out", str(out),
                 *FAST]) == 128 + signal.SIGTERM
    assert "unsee: stopped (SIGTERM); nothing was written" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no staging folder left
    assert signal.getsignal(signal.SIGTERM) is before  # the caller's own handler is back


def test_ctrl_c_while_an_evaluation_is_shown_says_it_is_written(model_dir: Path, world: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped while its table printed, `unsee eval` said nothing was written, and the rerun it invited was
    refused: the results were there."""
    from unsee import api

    def ctrl_c(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "print_results", ctrl_c)
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(model_dir), "--data", str(world), "--out", str(out), "--max-items", "1",
                 "--forget", "forget_5"]) == 130
    err = capsys.readouterr().err
    assert f"the results are written to {out}" in err and "nothing was written" not in err and out.is_file()


def test_a_stop_after_training_keeps_the_checkpoint_until_the_output_lands(
        model_dir: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The engine removed the checkpoint when training ended; a stop in the evaluation, the audits or the save
    after it lost the training, and the rerun began at step 0. Kept until the output lands, the rerun resumes."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    args = ["unlearn", "--method", "ga", "--model", str(model_dir), "--data", str(world), "--out", str(out),
            "--forget", "forget_5", "--max-items", "1", "max_steps=4", "batch_size=2", "progress=false",
            f"checkpoint_dir={ckpt}", "checkpoint_every=2"]
    real = unlearning.evaluation

    def stopped(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(unlearning, "evaluation", stopped)
    assert main(args) == 130
    assert has_checkpoint(ckpt) and not out.exists()
    assert f"unsee: interrupted; the checkpoint in {ckpt} is kept" in capsys.readouterr().err
    monkeypatch.setattr(unlearning, "evaluation", real)
    assert main(args) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["cost"]["resumed_s"] > 0  # it went on from the checkpoint, not from step 0
    assert not ckpt.exists() or not has_checkpoint(ckpt)  # and, the output landed, the checkpoint is gone


def test_a_reader_that_goes_away_gets_no_traceback() -> None:
    """`unsee ... | head -1`: the output was written, then a BrokenPipeError traceback ended the command."""
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m unsee world --help | head -c 1 > /dev/null; "
                          f"{sys.executable} -c 'import sys, unsee.api as api, unsee.cli as c; "
                          "api.build_world = lambda *a, **k: print(\"x\" * 10**6) or \"w\"; "
                          "sys.exit(c.main([\"world\", \"--out\", \"w\"]))' | head -c 1",
                          shell=True, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_an_interrupted_run_with_a_checkpoint_says_so_and_the_rerun_resumes(
        model_dir: Path, suite: Suite, turns: dict[str, list[Turn]], tmp_path: Path) -> None:
    class CtrlC(GA):
        def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
            if ctx.step == 2:
                raise KeyboardInterrupt
            return super().loss(ctx, batch)

    whole = train(GA(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path / "a"))
    with pytest.raises(KeyboardInterrupt) as info:
        train(CtrlC(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path))
    assert any("is kept: the same command resumes" in n for n in info.value.__notes__)
    calls: list[int] = []

    class Counting(GA):
        def loss(self, ctx: Context, batch: dict[str, list[Turn]]) -> tuple[torch.Tensor, dict[str, float]]:
            calls.append(ctx.step)
            return super().loss(ctx, batch)

    resumed = train(Counting(), load_adapter(model_dir), suite, turns, _ckpt(tmp_path))
    assert calls == [2] and resumed.losses == whole.losses


# ---- the architecture name survives unlearning -----------------------------------------------------
def test_an_unlearned_checkpoint_keeps_its_architecture_name(model_dir: Path, world: Path, tmp_path: Path) -> None:
    assert api.model_name(model_dir) == "tiny-llava"
    out = api.unlearn("ga", model_dir, world, tmp_path / "out", overrides=FAST, evaluate_after=False)
    assert json.loads((out / "model" / "unsee.json").read_text())["arch"] == "tiny-llava"
    assert api.model_name(out / "model") == "tiny-llava"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["unlearn", "--help"], ["attack", "relearn"],
                                  ["finetune", "--model", "m", "--data", "d", "--out", "o", "--bogus"]])
def test_help_version_and_usage_errors_answer_without_loading_torch(argv: list[str]) -> None:
    """They are what a new user types first, and importing torch and transformers took seconds before each."""
    code = ("import sys\nfrom unsee.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('loaded:', sorted({'torch', 'transformers', 'unsee.api'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("loaded: []"), done.stdout + done.stderr
