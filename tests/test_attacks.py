"""Robustness audits: each attack's numbers, its budget, and that it never touches the audited model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import weights_hash
from PIL import Image
from safetensors.torch import load_file, save_file

from unsee import api
from unsee.audit import attacks
from unsee.audit.attacks import AttackConfig, fit_probe, pgd_pixels, pixel_bounds, run_attacks, shifted
from unsee.data.schema import Suite
from unsee.data.world import build_world
from unsee.errors import ConfigError, DataError, ModelError, OutputExistsError
from unsee.methods.eraser.steering import Steering
from unsee.models import HFAdapter, Turn, load_adapter, model_fingerprint
from unsee.models.tiny import init_model

WORLD = ["n_people=8", "n_known=2", "n_unknown=2", "n_neutral=4", "n_train_views=3", "n_test_views=1",
         "n_requests=2", "n_general_train=8", "n_general_eval=4", "n_pretrain=4"]
FAST = AttackConfig(relearn_steps=2, relearn_batch=4, pgd_steps=2, max_items=4, probe_steps=30, quant_bits=[4],
                    quant_max_items=4, quant_group=16, mia_holdout="retain", mia_max_items=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("attacks") / "w", config="quick", overrides=WORLD)


@pytest.fixture(scope="module")
def suite(world: Path) -> Suite:
    return api.load_suite(world, "forget_15")  # two forget people: one to relearn, one to measure


@pytest.fixture(scope="module")
def adapter(world: Path, tmp_path_factory: pytest.TempPathFactory) -> HFAdapter:
    return load_adapter(init_model("tiny-llava", tmp_path_factory.mktemp("attack_model") / "m", world=world))


@pytest.mark.parametrize("kind", attacks.ATTACKS)
def test_attack_reports_its_numbers_and_leaves_the_model_alone(kind: str, adapter: HFAdapter, suite: Suite) -> None:
    before = weights_hash(adapter)
    out = run_attacks(adapter, suite, [kind], FAST)[kind]
    assert weights_hash(adapter) == before
    expected = {
        "relearn": {"seen_before", "seen_after", "unseen_before", "unseen_after", "ag", "steps", "lr"},
        "pgd": {"forget_clean", "forget_attacked", "retain_clean", "retain_attacked", "eps"},
        "shift": {"forget_clean", "forget_crop", "forget_jitter", "forget_occlude", "retain_occlude"},
        "probe": {"forget_acc", "retain_acc", "chance", "classes"},
        "quant": {"forget_clean", "forget_int4_all", "forget_test_int4_all", "retain_int4_all", "linears"},
        "mia": {"auc_loss", "auc_zlib", "auc_mink_pp", "n_forget", "n_holdout"},
    }[kind]
    assert expected <= set(out)
    for k, v in out.items():
        if k.endswith(("_before", "_after", "_clean", "_attacked", "_acc", "_crop", "_jitter", "_occlude", "_all")) \
                or k.startswith("auc_"):
            assert 0.0 <= v <= 1.0, (k, v)
    if kind == "relearn":
        assert out["ag"] == pytest.approx(100 * (out["unseen_after"] - out["unseen_before"]), abs=0.01)
        assert out["people_seen"] == out["people_unseen"] == 1
        # two people give two halves, each relearned once; the figures are their means
        assert [len(r["seen"]) for r in out["splits"]] == [1, 1]
        assert {r["seen"][0] for r in out["splits"]} == set(suite.forget_entities)
        assert out["ag"] == pytest.approx(sum(r["ag"] for r in out["splits"]) / 2, abs=0.01)
        # rounded once, from the exact gains: rounding the halves first moved the mean by a hundredth
        exact = [100 * (r["unseen_after"] - r["unseen_before"]) for r in out["splits"]]
        assert out["ag"] == round(sum(exact) / len(exact), 2)
        assert (out["ag_min"], out["ag_max"]) == (round(min(exact), 2), round(max(exact), 2))


def test_the_relearning_gain_is_rounded_once_from_the_exact_gains(adapter: HFAdapter, suite: Suite,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Two halves losing one and two items of nine: gains -11.11... and -22.22..., whose mean is -16.67; the
    halves rounded first gave -16.66, and ``ag`` then disagreed with its own before and after figures."""
    p0, p1 = suite.forget_entities[:2]
    pool = [e for e in attacks.image_mcq(suite, "forget") if e.entity in (p0, p1)]
    scripted = iter([{}, {p1: 1}, {p0: 2}])  # per person, how many of their items each pass gets wrong

    def answers(model: Any, items: list) -> list[bool]:
        wrong, seen, out = next(scripted), dict.fromkeys((p0, p1), 0), []
        for e in items:
            seen[e.entity] += 1
            out.append(seen[e.entity] > wrong.get(e.entity, 0))
        return out

    n = {p: sum(e.entity == p for e in pool) for p in (p0, p1)}
    monkeypatch.setattr(attacks, "image_mcq", lambda s, g: pool)
    monkeypatch.setattr(attacks, "mcq_loglik", answers)
    monkeypatch.setattr(attacks, "train", lambda *a, **k: None)
    monkeypatch.setattr(attacks, "trainable_copy", lambda a: a)
    monkeypatch.setattr(attacks, "relearn_splits", lambda people, k, seed: [({p0}, {p1}), ({p1}, {p0})])
    out = attacks.relearn(adapter, suite, FAST)
    exact = [-100 / n[p1], -200 / n[p0]]
    assert [r["ag"] for r in out["splits"]] == [round(g, 2) for g in exact]
    assert out["ag"] == round(sum(exact) / 2, 2) and (out["ag_min"], out["ag_max"]) == (round(exact[1], 2),
                                                                                          round(exact[0], 2))
    if n[p0] == n[p1] == 9:
        assert out["ag"] == -16.67


def test_relearn_splits_are_distinct_halves_that_see_everyone() -> None:
    people = [f"p{i}" for i in range(5)]
    splits = attacks.relearn_splits(people, 3, seed=0)
    assert len(splits) == 3
    assert len({frozenset(seen) for seen, _ in splits}) == 3
    for seen, unseen in splits:
        assert len(seen) == 2 and seen.isdisjoint(unseen) and seen | unseen == set(people)
    assert set().union(*(seen for seen, _ in splits)) == set(people)
    assert attacks.relearn_splits(people, 1, seed=0) == splits[:1]  # one split: what a single split gave
    assert len(attacks.relearn_splits(people[:2], 3, seed=0)) == 2  # no half is relearned twice


def test_relearning_changes_the_copy(adapter: HFAdapter, suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fine-tune really runs on the copy: its seen-half likelihoods move, the original's do not."""
    copies: list[HFAdapter] = []
    real = attacks.trainable_copy
    monkeypatch.setattr(attacks, "trainable_copy", lambda a: copies.append(real(a)) or copies[-1])
    attacks.relearn(adapter, suite, FAST)
    assert weights_hash(copies[0]) != weights_hash(adapter)


def test_relearning_scope_confines_the_attacker(adapter: HFAdapter, suite: Suite,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """``relearn_scope`` picks what the attacker fine-tunes: with ``language`` the copy's visual module stays put
    and its language model moves; an unknown scope is refused before anything runs."""
    copies: list[HFAdapter] = []
    real = attacks.trainable_copy
    monkeypatch.setattr(attacks, "trainable_copy", lambda a: copies.append(real(a)) or copies[-1])
    cfg = AttackConfig(**{**vars(FAST), "relearn_scope": "language", "relearn_splits": 1})
    out = attacks.relearn(adapter, suite, cfg)
    assert out["scope"] == "language"

    def part(a: HFAdapter, group: str) -> list[torch.Tensor]:
        return [p.detach() for n, p in a.model.named_parameters() if (a.group_of(n) == "language") == (group == "lm")]

    assert all(torch.equal(x, y) for x, y in zip(part(copies[0], "visual"), part(adapter, "visual"), strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(part(copies[0], "lm"), part(adapter, "lm"), strict=True))
    with pytest.raises(ConfigError, match="relearn_scope"):
        AttackConfig(relearn_scope="everything").validate()


def test_relearning_needs_two_forget_people(adapter: HFAdapter, world: Path) -> None:
    one = api.load_suite(world, "forget_5")
    assert len(one.forget_entities) == 1
    with pytest.raises(DataError, match="two forget people"):
        attacks.relearn(adapter, one, FAST)


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2.5-vl"])
def test_pgd_stays_inside_its_eps_ball_and_valid_pixels(arch: str, tiny_models: Any, make_image: Any) -> None:
    a = tiny_models.adapter(arch)
    turns = [Turn(make_image(i), "Who is this?", "Mara Vell") for i in range(3)]
    clean = a.training_batch(turns)["pixel_values"]
    eps = 8 / 255
    adv = pgd_pixels(a, turns, eps, 2 / 255, 5)
    mean, std = pixel_bounds(a, clean)
    moved = ((adv - clean) * std).abs()
    assert moved.max() <= eps + 1e-5
    assert moved.max() > eps / 2  # it did move
    pixels = adv * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_pgd_raises_the_answer_likelihood(tiny_models: Any, make_image: Any) -> None:
    a = tiny_models.adapter("tiny-llava")
    turns = [Turn(make_image(7), "Who is this?", "Mara Vell")]
    batch = a.training_batch(turns)
    with torch.no_grad():
        clean = a.answer_logprobs(batch)
        batch["pixel_values"] = pgd_pixels(a, turns, 8 / 255, 2 / 255, 5)
        attacked = a.answer_logprobs(batch)
    assert attacked.item() > clean.item()


def test_shifts_are_seeded_and_change_the_image(suite: Suite) -> None:
    items = attacks.image_mcq(suite, "forget")[:3]
    for name in attacks.SHIFTS:
        a, b = shifted(items, name, seed=0), shifted(items, name, seed=0)
        assert [e.image for e in a] == [e.image for e in b]
        assert all(x.image != y.image for x, y in zip(a, items, strict=True))
        assert all(x.question == y.question for x, y in zip(a, items, strict=True))


def test_probe_detects_identity_when_it_is_there() -> None:
    """Sanity: well-separated clusters are read perfectly; shuffled labels fall to chance."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 32, generator=g) * 3
    y = torch.arange(10).repeat_interleave(6)
    x = centres[y] + 0.3 * torch.randn(60, 32, generator=g)
    test = torch.arange(60) % 6 == 5
    head = fit_probe(x[~test], y[~test], 10, 200, seed=0)
    assert (head(x[test]).argmax(-1) == y[test]).float().mean() == 1.0
    shuffled = y[torch.randperm(60, generator=g)]
    head = fit_probe(x[~test], shuffled[~test], 10, 200, seed=0)
    assert (head(x[test]).argmax(-1) == shuffled[test]).float().mean() <= 0.5


def test_probe_on_near_duplicate_views_is_near_perfect(adapter: HFAdapter, suite: Suite,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the model: when each person's views are the same photo, the probe must find them."""
    images, labels, views = attacks.probe_images(suite, FAST)
    first: dict[str, Image.Image] = {}
    for img, label in zip(images, labels, strict=True):
        first.setdefault(label, img)
    monkeypatch.setattr(attacks, "probe_images", lambda s, c: ([first[lab] for lab in labels], labels, views))
    out = attacks.probe(adapter, suite, AttackConfig(probe_steps=100))
    assert out["forget_acc"] == 1.0 and out["retain_acc"] == 1.0
    # every vision block's output is read too, from the same pass
    from unsee.models.blocks import vision_blocks

    assert out["forget_acc_by_block"] == out["retain_acc_by_block"] == [1.0] * len(vision_blocks(adapter))
    # leave one view out: every photo is predicted once
    assert out["folds"] == max(views) + 1
    n_forget = sum(label in set(suite.forget_entities) for label in labels)
    assert (out["n_forget"], out["n_retain"]) == (n_forget, len(labels) - n_forget)


def test_unknown_attack_and_shift_are_refused(adapter: HFAdapter, suite: Suite) -> None:
    with pytest.raises(ConfigError, match="unknown attack"):
        run_attacks(adapter, suite, ["nope"], FAST)
    with pytest.raises(ConfigError, match="unknown shift"):
        run_attacks(adapter, suite, ["shift"], AttackConfig(shifts=["blur"]))


# ---- the command line: unsee attack, unsee unlearn --audit ------------------------------------------
def test_attack_command_adds_to_an_unlearn_results_file(adapter: HFAdapter, world: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import shutil

    from unsee.cli import main
    from unsee.eval.results import load_results

    out = tmp_path / "ga"
    model = Path(adapter.source)
    api.unlearn("ga", model, world, out, forget="forget_15", overrides=["max_steps=1", "progress=false"],
                evaluate_after=False)
    args = ["attack", "probe", "--model", str(out / "model"), "--data", str(world), "--out", str(out),
            "--forget", "forget_15", "--vanilla", str(model), "probe_steps=20"]
    assert main(args) == 0
    run = load_results(out / "results.json")["runs"][0]
    assert run["method"] == "ga" and {"forget_acc", "vanilla_forget_acc"} <= set(run["attacks"]["probe"])
    assert json.loads((out / "run.json").read_text())["attacks"] == run["attacks"]
    before = (out / "results.json").read_bytes()
    assert main(args) == 2  # already recorded: refused, file untouched
    assert (out / "results.json").read_bytes() == before
    # figures of another split, model or dataset would read as the run's own: refused, file untouched
    other_world = tmp_path / "other_world"
    shutil.copytree(world, other_world)
    (other_world / "notes.json").write_text("{}")  # other contents, the same splits
    shift = ["attack", "shift", "--model", str(out / "model"), "--data", str(world), "--out", str(out), "max_items=2"]
    for wrong, message in (
        (["--forget", "forget_5"], "records a run on forget_15, and the attack would measure forget_5"),
        (["--model", str(model)], f"records the run of the model in {out / 'model'}, not {model}"),
        (["--data", str(other_world)], "not the data given"),
        (["--seed", "1"], "items were drawn with seed 0, and the attack's with seed 1"),
    ):
        assert main([*shift, *wrong]) == 2
        assert message in capsys.readouterr().err
        assert (out / "results.json").read_bytes() == before
    assert main(shift) == 0  # --forget left out: the run's own split
    assert "forget_crop" in load_results(out / "results.json")["runs"][0]["attacks"]["shift"]

    fresh = tmp_path / "fresh.json"
    assert main(["attack", "shift", "--model", str(model), "--data", str(world), "--out", str(fresh),
                 "--forget", "forget_15", "max_items=2"]) == 0
    run = load_results(fresh)["runs"][0]
    assert run["method"] == "attacked" and "forget_crop" in run["attacks"]["shift"]
    assert run["model_hash"] == model_fingerprint(model)  # two models attacked alike are not one run
    # an `unsee eval` results file holds no model to compare paths with: the weights it measured say whose it is
    measured = tmp_path / "vanilla.json"
    api.evaluate(model, world, measured, forget="forget_15", max_items=2)
    before = measured.read_bytes()
    assert main([*shift[:3], str(out / "model"), *shift[4:7], str(measured), "--forget", "forget_15"]) == 2
    assert "records the run of another model" in capsys.readouterr().err and measured.read_bytes() == before
    assert main([*shift[:3], str(model), *shift[4:7], str(measured), "--forget", "forget_15", "max_items=2"]) == 0


def test_an_attack_of_the_same_kind_that_lands_meanwhile_is_not_written_over(adapter: HFAdapter, world: Path,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Two attacks of one kind started together both passed the check made before they ran, and the one that
    finished last replaced the other's figures without --overwrite: it is refused under the lock, and its
    figures are kept beside the output."""
    from unsee.eval.results import load_results

    out = tmp_path / "ga"
    api.unlearn("ga", Path(adapter.source), world, out, forget="forget_15", overrides=["max_steps=1", "progress=false"],
                evaluate_after=False)
    real = api.audit_adapter

    def meanwhile(*args: Any, **kw: Any) -> dict:
        monkeypatch.setattr(api, "audit_adapter", real)
        api.attack("shift", out / "model", world, out, overrides=["max_items=2", "shifts=[crop]"])
        return real(*args, **kw)

    monkeypatch.setattr(api, "audit_adapter", meanwhile)
    with pytest.raises(OutputExistsError, match="while this one ran") as e:
        api.attack("shift", out / "model", world, out, overrides=["max_items=2"])
    landed = load_results(out / "results.json")["runs"][0]["attacks"]["shift"]
    assert "forget_crop" in landed and "forget_jitter" not in landed  # the first to land keeps its figures
    (kept,) = out.glob("results.attacks-*.json")
    assert str(kept) in str(e.value) and "forget_jitter" in json.loads(kept.read_text())["shift"]
    # asked to, the later attack records its own
    api.attack("shift", out / "model", world, out, overrides=["max_items=2"], overwrite=True)
    assert "forget_jitter" in load_results(out / "results.json")["runs"][0]["attacks"]["shift"]


def test_attacks_side_by_side_on_one_output_keep_each_others_figures(adapter: HFAdapter, world: Path,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A second attack that lands while the first is still running is not written over by the first, and the
    model card of the attacked checkpoint is written again with both."""
    from unsee.eval.results import load_results
    from unsee.report.card import card_source

    out = tmp_path / "ga"
    api.unlearn("ga", Path(adapter.source), world, out, forget="forget_15", overrides=["max_steps=1", "progress=false"],
                evaluate_after=False)
    real = api.audit_adapter
    other = {"done": False}

    def meanwhile(*args: Any, **kw: Any) -> dict:
        if not other["done"]:  # the other attack, run to its end while this one works
            other["done"] = True
            api.attack("shift", out / "model", world, out, overrides=["max_items=2"])
        return real(*args, **kw)

    card = out / "model" / "README.md"
    written = card.read_text()
    assert "No audits were run on this checkpoint." in written
    monkeypatch.setattr(api, "audit_adapter", meanwhile)
    api.attack("probe", out / "model", world, out, overrides=["probe_steps=5", "probe_blocks=false"])
    assert other["done"]
    assert set(load_results(out / "results.json")["runs"][0]["attacks"]) == {"shift", "probe"}
    # the checkpoint's card says what both attacks found, and still what it was made from
    again = card.read_text()
    assert "No audits were run" not in again and "| shift |" in again and "| probe |" in again
    assert card_source(again) == card_source(written) is not None and "## Base model" in again
    # a card that does not record what it was made from is left as it was
    older = written.replace("unsee:", "other:", 1)
    card.write_text(older)
    api.attack("shift", out / "model", world, out, overrides=["max_items=2"], overwrite=True)
    assert card.read_text() == older
    card.write_text(again)
    # measured again, the unlearned model is named after its method, never taken for the vanilla baseline
    evaluated = api.evaluate(out / "model", world, tmp_path / "e.json", forget="forget_15", max_items=2)
    assert evaluated["runs"][0]["method"] == "ga"
    # and its cost, the evaluation's, is never shown as what the method spent
    assert evaluated["runs"][0]["cost"]["covers"] == "evaluation"
    api.report([tmp_path / "e.json"], tmp_path / "rep")
    (row,) = [r for r in (tmp_path / "rep" / "report.md").read_text().splitlines() if r.startswith("| ga |")]
    assert row.endswith("| \u2014 | \u2014 | \u2014 | \u2014 |")  # wall s, peak RSS, peak GPU, trainable params
    # attacked in a file beside the unlearning's, that run keeps its run.json and the model its card
    beside = out / "eval.json"
    api.evaluate(out / "model", world, beside, forget="forget_15", max_items=2)
    kept = {f: (out / f).read_bytes() for f in ("run.json", "model/README.md")}
    api.attack("shift", out / "model", world, beside, overrides=["max_items=2"])
    assert "shift" in load_results(beside)["runs"][0]["attacks"]
    assert {f: (out / f).read_bytes() for f in kept} == kept
    # so too a file an attack made beside it, attacked again: its run measured no cost and is not the output's
    for kind in ("shift", "probe"):
        api.attack(kind, out / "model", world, out / "more.json", overrides=["max_items=2", "probe_steps=5",
                                                                         "probe_blocks=false"])
    assert set(load_results(out / "more.json")["runs"][0]["attacks"]) == {"shift", "probe"}
    assert {f: (out / f).read_bytes() for f in kept} == kept


def test_an_attack_on_an_output_unlearned_again_meanwhile_adds_nothing(adapter: HFAdapter, world: Path,
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Its figures measure the model that was replaced: set beside the new run, they would read as its."""
    from unsee.eval.results import load_results

    out = tmp_path / "ga"
    common = {"forget": "forget_15", "evaluate_after": False}
    api.unlearn("ga", Path(adapter.source), world, out, overrides=["max_steps=1", "progress=false"], **common)
    real = api.audit_adapter

    def meanwhile(*args: Any, **kw: Any) -> dict:
        api.unlearn("ga", Path(adapter.source), world, out, overrides=["max_steps=2", "progress=false"], seed=7,
                    overwrite=True, **common)
        return real(*args, **kw)

    monkeypatch.setattr(api, "audit_adapter", meanwhile)
    with pytest.raises(DataError, match="written again while the attack ran"):
        api.attack("shift", out / "model", world, out, overrides=["max_items=2"])
    run = load_results(out / "results.json")["runs"][0]
    assert run["seed"] == 7 and "attacks" not in run
    assert "No audits were run on this checkpoint." in (out / "model" / "README.md").read_text()


def test_attack_on_a_steering_run_needs_its_steering_file(adapter: HFAdapter, world: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An eraser run is the base model with its steering file on: the base model alone is another model."""
    from unsee.cli import main
    from unsee.eval.results import load_results

    out = tmp_path / "eraser"
    api.unlearn("eraser", Path(adapter.source), world, out, forget="forget_15",
                overrides=["max_items=4", "sweep=false"], evaluate_after=False)
    before = (out / "results.json").read_bytes()
    shift = ["attack", "shift", "--model", str(adapter.source), "--data", str(world), "--out", str(out), "max_items=2"]
    assert main(shift) == 2
    assert "records the run of the steering file" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main([*shift, "--steering", str(out / "steering.safetensors")]) == 0
    assert "forget_crop" in load_results(out / "results.json")["runs"][0]["attacks"]["shift"]
    # evaluated with its steering file, the model is no vanilla model, and is never named one
    steered = api.evaluate(adapter.source, world, tmp_path / "steered.json", forget="forget_15", max_items=2,
                           steering=out / "steering.safetensors")
    assert steered["runs"][0]["method"] == "eraser"
    with pytest.raises(ConfigError, match="not the vanilla model"):
        api.evaluate(adapter.source, world, tmp_path / "v.json", forget="forget_15", method="vanilla",
                     steering=out / "steering.safetensors")
    with pytest.raises(ConfigError, match="not the vanilla model"):  # an attack names its run as eval does
        api.attack("shift", adapter.source, world, tmp_path / "v.json", forget="forget_15", method="vanilla",
                   steering=out / "steering.safetensors", overrides=["max_items=2"])
    # the probe reads no steering, and took another model's tower for the eraser's
    moved = tmp_path / "moved"
    shutil.copytree(adapter.source, moved)
    weights = load_file(moved / "model.safetensors")
    save_file({k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}, moved / "model.safetensors",
              metadata={"format": "pt"})
    kept = (out / "results.json").read_bytes()
    with pytest.raises(ModelError, match="fingerprint"):
        api.attack("probe", moved, world, out, forget="forget_15", steering=out / "steering.safetensors",
                   overrides=["probe_steps=2"])
    assert (out / "results.json").read_bytes() == kept
    # a run that `unsee eval --steering` measured names its file: attacked without it, or with another, or a run
    # measured without one attacked with one, the figures would be another model's
    other = tmp_path / "other.safetensors"
    Steering.load(out / "steering.safetensors").select(strength=-60.0).save(other)
    plain = api.evaluate(adapter.source, world, tmp_path / "plain.json", forget="forget_15", max_items=2)
    assert "steering" not in plain["runs"][0]
    for results, given, said in ((tmp_path / "steered.json", None, "the steering file"),
                                 (tmp_path / "steered.json", other, "the steering file"),
                                 (tmp_path / "plain.json", other, "the model without a steering file")):
        with pytest.raises(DataError, match=said):
            api.attack("shift", adapter.source, world, results, forget="forget_15", steering=given,
                       overrides=["max_items=2"])
    copy = Path(shutil.copy(out / "steering.safetensors", tmp_path / "copy.safetensors"))  # the same bytes
    api.attack("shift", adapter.source, world, tmp_path / "steered.json", forget="forget_15", steering=copy,
               overrides=["max_items=2"])
    # a run an attack makes names its steering file too, whole: the next attack, from anywhere, finds it
    api.attack("shift", adapter.source, world, tmp_path / "made.json", forget="forget_15", steering=copy,
               overrides=["max_items=2"])
    with pytest.raises(DataError, match="the steering file"):
        api.attack("pgd", adapter.source, world, tmp_path / "made.json", forget="forget_15",
                   overrides=["pgd_steps=1", "max_items=2"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    api.attack("pgd", adapter.source, world, tmp_path / "made.json", forget="forget_15",
               steering=Path("..") / "copy.safetensors", overrides=["pgd_steps=1", "max_items=2"])


def test_attack_on_a_run_over_seeds_goes_to_the_seed_attacked(adapter: HFAdapter, world: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from unsee.cli import main
    from unsee.eval.results import load_results

    out = tmp_path / "ga"
    api.unlearn("ga", Path(adapter.source), world, out, forget="forget_15", seeds=2,
                overrides=["max_steps=1", "progress=false"], evaluate_after=False)
    before = (out / "results.json").read_bytes()
    probe = ["attack", "probe", "--data", str(world), "--out", str(out), "probe_steps=5", "probe_blocks=false"]
    assert main([*probe, "--model", str(adapter.source)]) == 2  # which seed's figures would these be?
    assert "holds the runs of 2 unlearning seeds" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before
    assert main([*probe, "--model", str(out / "seed-1" / "model")]) == 0
    res = load_results(out / "results.json")
    assert [sorted(r.get("attacks", {})) for r in res["runs"]] == [[], ["probe"]]
    summary = res["seeds"][0]["attacks"]["probe"]["forget_acc"]  # over the one seed that has it
    assert summary["sd"] == 0 and summary["mean"] == res["runs"][1]["attacks"]["probe"]["forget_acc"]
    assert summary["n"] == 1  # one seed's figure: the report says so, not a spread of 0
    from unsee.report import render_report

    assert "(1 of 2 seeds)" in render_report(res)
    assert json.loads((out / "seed-1" / "run.json").read_text())["attacks"] == res["runs"][1]["attacks"]
    assert "attacks" not in json.loads((out / "seed-0" / "run.json").read_text())
    card = (out / "seed-1" / "model" / "README.md").read_text()  # written again with the probe
    assert "| probe |" in card  # the seed's own cost, not both seeds' summed as a chain of requests
    assert f"- Wall time: {res['runs'][1]['cost']['wall_s']:.1f} s\n" in card and "requests)" not in card


def test_unlearn_with_audit_records_attacks_in_run_and_card(adapter: HFAdapter, world: Path, tmp_path: Path) -> None:
    from unsee.eval.results import load_results

    out = api.unlearn("ga", Path(adapter.source), world, tmp_path / "ga", forget="forget_15",
                      overrides=["max_steps=1", "progress=false"], evaluate_after=False, audit=True,
                      audit_overrides=["relearn_steps=2", "pgd_steps=2", "max_items=4", "probe_steps=30",
                                       "quant_bits=[4]", "quant_max_items=4", "mia_max_items=4"])
    found = load_results(out / "results.json")["runs"][0]["attacks"]
    assert set(found) == set(attacks.ATTACKS)
    assert found["relearn"]["ag"] is not None
    # the quantization attack knows which weights the method moved; ga trains everything
    assert 0 < found["quant"]["linears_changed"] <= found["quant"]["linears"]
    # membership inference against the world's held-out people; no reference here, so no PrivLeak
    assert 0 <= found["mia"]["auc_loss"] <= 1 and "privleak_loss" not in found["mia"]
    assert "| relearn | ag |" in (out / "model" / "README.md").read_text()


def test_an_empty_list_of_audits_runs_none_and_no_list_runs_every_one(adapter: HFAdapter, suite: Suite,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """"No audits" must never be read as "all of them": that trains a relearning attack nobody asked for."""
    from unsee import unlearning

    asked: list[list[str]] = []
    monkeypatch.setattr(unlearning, "run_attacks", lambda a, s, kinds, *x, **k: asked.append(list(kinds)) or {})
    assert api.audit_adapter(adapter, suite, kinds=[]) == {}
    api.audit_adapter(adapter, suite, kinds=None)
    api.audit_adapter(adapter, suite, kinds=["probe"])
    assert asked == [[], list(attacks.ATTACKS), ["probe"]]
    nowhere = Path("unused")
    run, _ = unlearning.unlearn_and_save("ga", load_adapter(adapter.source), suite, steering_dir=nowhere,
                                         model_dir=nowhere, model="tiny-llava", base_model="m", base_hash="h",
                                         forget="forget_15", seed=0, overrides=["max_steps=1", "progress=false"],
                                         evaluate_after=False, audit=True, audit_kinds=[], save=False)
    assert "attacks" not in run and len(asked) == 3


def test_relearning_repeats_each_half_with_its_own_seed(adapter: HFAdapter, suite: Suite,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``relearn_repeats`` attacks each half again with another batch order: the first run is the single
    run's, the copies differ, and the reported gain is the mean of the runs, inside their spread."""
    copies: list[HFAdapter] = []
    real = attacks.trainable_copy
    monkeypatch.setattr(attacks, "trainable_copy", lambda a: copies.append(real(a)) or copies[-1])
    one = attacks.relearn(adapter, suite, AttackConfig(**{**vars(FAST), "relearn_splits": 1}))
    two = attacks.relearn(adapter, suite, AttackConfig(**{**vars(FAST), "relearn_splits": 1, "relearn_repeats": 2}))
    assert [r["repeat"] for r in two["splits"]] == [0, 1] and two["repeats"] == 2
    assert two["splits"][0] == one["splits"][0]
    assert weights_hash(copies[1]) != weights_hash(copies[2])
    gains = [r["ag"] for r in two["splits"]]
    assert two["ag"] == round(sum(gains) / 2, 2) and two["ag_min"] == min(gains) and two["ag_max"] == max(gains)
    with pytest.raises(ConfigError, match="relearn_repeats"):
        AttackConfig(relearn_repeats=0).validate()


def test_audit_options_are_checked_before_training(adapter: HFAdapter, world: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped --audit-set must not cost the training it would follow."""
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("the command started working before checking its audit options")

    monkeypatch.setattr(api, "load_suite", boom)
    # a relearning that trains nothing, or climbs, would read as "nothing comes back"; a negative cap drops an item
    for bad, message in ((["nokey=1"], "nokey"), (["relearn_scope=bogus"], "relearn_scope"),
                         (["quant_bits=3"], "4 or 8|4, 8"), (["seed=3"], "set by the command's --seed"),
                         (["relearn_steps=-1"], "relearn_steps >= 1"), (["relearn_lr=-1"], "relearn_lr > 0"),
                         (["relearn_batch=0"], "relearn_batch >= 1"), (["probe_steps=-1"], "probe_steps >= 1"),
                         (["max_items=-1"], "max_items must be at least 1"),
                         (["quant_max_items=-1"], "must not be negative")):
        with pytest.raises(ConfigError, match=message):
            api.unlearn("ga", Path(adapter.source), world, tmp_path / "o", overrides=["max_steps=1"], audit=True,
                        audit_overrides=bad)
    # an attack whose options held another seed than the run records would draw other halves than it says
    with pytest.raises(ConfigError, match="set by the command's --seed"):
        api.attack("relearn", Path(adapter.source), world, tmp_path / "r.json", forget="forget_15", seed=1,
                   overrides=["seed=0"])
    assert not (tmp_path / "r.json").exists()
    # so a mistyped key is not told that seed= is one it could give
    with pytest.raises(ConfigError, match="relearn_steps") as typo:
        api.audit_config(["relearn_stepz=1"], 3)
    assert "seed" not in str(typo.value) and api.audit_config([], 3).seed == 3
    # options of audits that will not run are refused, not dropped: a typo there hid as well
    for bad in (["relearn_steps=1"], ["relearn_stepz=1"]):
        with pytest.raises(ConfigError, match="no audit runs"):
            api.unlearn("ga", Path(adapter.source), world, tmp_path / "o", overrides=["max_steps=1"],
                        audit_overrides=bad)
        with pytest.raises(ConfigError, match="no audit runs"):
            api.forget(Path(adapter.source), world / "request" / "request.yaml", tmp_path / "o", audit=False,
                       audit_overrides=bad)
    # and a reference to attack beside the model, which was neither checked nor recorded
    with pytest.raises(ConfigError, match="--reference is the model the audits attack.*no audit runs"):
        api.unlearn("ga", Path(adapter.source), world, tmp_path / "o", overrides=["max_steps=1"],
                    reference=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="--reference-draws is the model the audits attack.*leave out --reference-d"):
        api.unlearn("ga", Path(adapter.source), world, tmp_path / "o", overrides=["max_steps=1"],
                    reference=api.CachedDraws(2))
    for count in (0, -1, 1.5, True):  # a count of draws, not a truth value or a fraction
        with pytest.raises(ConfigError, match="whole number from 1"):
            api.CachedDraws(count)  # type: ignore[arg-type]
    # the cached draws belong to a vanilla model: an attack given none is told how to name them
    with pytest.raises(ConfigError, match="attack: --vanilla"):
        api.attack("probe", Path(adapter.source), world, tmp_path / "r.json", reference=api.CachedDraws(2))
    assert not (tmp_path / "o").exists() and not (tmp_path / "r.json").exists()


def test_list_options_take_one_value_as_a_list_of_one() -> None:
    from unsee.config import load_config

    cfg = load_config(attacks.AttackConfig, None, ["quant_bits=4", "shifts=crop"])
    assert cfg.quant_bits == [4] and cfg.shifts == ["crop"]


def test_attack_all_without_a_reference_records_the_membership_aucs(adapter: HFAdapter, world: Path,
                                                                   tmp_path: Path) -> None:
    """As --audit does: the AUCs stand without the reference; PrivLeak and forget quality need it."""
    found = api.attack("all", Path(adapter.source), world, tmp_path / "a.json", forget="forget_15",
                       overrides=["relearn_steps=2", "relearn_splits=1", "pgd_steps=1", "max_items=4",
                                  "probe_steps=5", "probe_blocks=false", "quant_bits=4", "quant_max_items=4",
                                  "mia_max_items=4", "shifts=crop"])
    assert set(found) == set(attacks.ATTACKS) and "skipped" not in found["mia"]
    assert 0 <= found["mia"]["auc_loss"] <= 1 and "privleak_loss" not in found["mia"]
    with pytest.raises(DataError, match="unsee retrain"):  # mia alone is read against the reference
        api.attack("mia", Path(adapter.source), world, tmp_path / "m.json", forget="forget_15")


def test_quant_against_the_same_model_in_bf16_finds_no_weight_changed(adapter: HFAdapter, world: Path,
                                                                       tmp_path: Path) -> None:
    """``--vanilla`` is read in the attacked model's precision: the weights the method changed are found by their
    bytes, and a model loaded in bf16 against its own fp32 checkpoint changed none."""
    found = api.attack("quant", Path(adapter.source), world, tmp_path / "q.json", forget="forget_15",
                       vanilla=Path(adapter.source), dtype="bf16", overrides=["quant_bits=[4]", "quant_max_items=2"])
    assert found["quant"]["linears"] > 0 and found["quant"]["linears_changed"] == 0


def test_quant_compares_a_model_saved_in_bf16_with_its_base_at_that_precision(adapter: HFAdapter, world: Path,
                                                                             tmp_path: Path) -> None:
    """Unlearned in bf16, saved in bf16 and loaded in fp32 (no --dtype): against its fp32 base every linear read
    as changed, and the "changed" scope became all of them."""
    model = load_adapter(Path(adapter.source), dtype="bf16")
    name, linear = next((n, m) for n, m in model.model.named_modules() if n.endswith("mm_projector.linear_1")
                        or n.endswith("multi_modal_projector.linear_1"))
    with torch.no_grad():
        linear.weight.add_(0.5)
    model.save(tmp_path / "bf16")
    found = api.attack("quant", tmp_path / "bf16", world, tmp_path / "q.json", forget="forget_15",
                       vanilla=Path(adapter.source), overrides=["quant_bits=[4]", "quant_max_items=2"])
    assert found["quant"]["linears_changed"] == 1, name


def test_an_attack_into_a_new_file_whose_samples_place_is_taken_stops_before_attacking(
        adapter: HFAdapter, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other results' samples sit where the new file's would go: refused at once, not after the whole attack."""
    from unsee.errors import OutputExistsError

    (tmp_path / "a.samples.jsonl").write_text("")
    monkeypatch.setattr(api, "audit_adapter", lambda *a, **k: pytest.fail("the attack ran"))
    with pytest.raises(OutputExistsError, match="a.samples.jsonl already exists"):
        api.attack("shift", Path(adapter.source), world, tmp_path / "a.json", forget="forget_15")
    monkeypatch.undo()
    api.attack("shift", Path(adapter.source), world, tmp_path / "a.json", forget="forget_15", overwrite=True,
               overrides=["max_items=2"])
    assert (tmp_path / "a.json").is_file()


def test_a_pickled_reference_loads_where_pickle_is_allowed(adapter: HFAdapter, world: Path, tmp_path: Path) -> None:
    """--allow-pickle told the user to pass it, and the reference was checked and loaded without it."""
    from unsee.unlearning import ReferenceAudits

    ref = Path(shutil.copytree(adapter.source, tmp_path / "reference"))
    torch.save(load_file(ref / "model.safetensors"), ref / "pytorch_model.bin")
    (ref / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickle"):
        api.find_reference(ref, None, world, "forget_15")
    assert api.find_reference(ref, None, world, "forget_15", allow_pickle=True) == ref
    suite = api.load_suite(world, "forget_15")
    cfg = api.audit_config(["probe_steps=2"])
    figures = ReferenceAudits(ref, suite, cfg, tmp_path / "cache", allow_pickle=True)("probe")
    assert "forget_acc" in figures


def test_a_cache_that_cannot_be_written_loses_no_audit(adapter: HFAdapter, world: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The reference's figures are kept in the cache: one that could not be written (read-only, or a file)
    stopped ``unlearn --audit`` after its training and evaluation, and nothing landed."""
    from unsee.unlearning import ReferenceAudits

    cache = tmp_path / "cache"
    cache.write_text("a file, not a folder")
    suite = api.load_suite(world, "forget_15")
    figures = ReferenceAudits(Path(adapter.source), suite, api.audit_config(["probe_steps=2"]), cache)("probe")
    assert "forget_acc" in figures and "are not kept in" in capsys.readouterr().err


def test_an_attack_on_a_request_file_records_the_request_as_its_split(adapter: HFAdapter, world: Path,
                                                                    tmp_path: Path) -> None:
    """--forget is no split of a request: recorded as one, the next attack on the same file was refused."""
    from unsee.data.request_example import write_world_request
    from unsee.eval.results import load_results

    request = write_world_request(world, tmp_path / "req")
    out = tmp_path / "a.json"
    with pytest.raises(ConfigError, match="a removal request has no retrained reference in the cache"):
        api.attack("probe", adapter.source, request, out, vanilla=adapter.source, reference=api.CachedDraws(2))
    with pytest.raises(ConfigError, match="is a request: its own split"):
        api.attack("shift", adapter.source, request, out, forget="forget_5", overrides=["max_items=2"])
    api.attack("shift", adapter.source, request, out, overrides=["max_items=2"])
    assert load_results(out)["runs"][0]["forget_split"] == request.stem
    api.attack("pgd", adapter.source, request, out, overrides=["pgd_steps=1", "max_items=2"])


def test_a_continual_run_on_requests_is_told_apart_before_its_data_is(tmp_path: Path) -> None:
    """Its advice (pass the request file) led to a second refusal: one request cannot stand for the run."""
    from unsee.attacked import attacked_run

    run = {"method": "cvf_ncu", "benchmark": "request", "forget_split": "req1+req2",
           "data": {"path": "req1.yaml,req2.yaml"}}
    with pytest.raises(DataError, match="continual run on the requests req1\\+req2, which one request cannot"):
        attacked_run({"runs": [run]}, tmp_path / "results.json", tmp_path / "model", None, data=tmp_path)
    for one in ("req1.yaml", "/requests/Smith, J/request.yaml"):  # a comma in a folder's name joins no requests
        with pytest.raises(DataError, match="pass the request file it ran on"):
            attacked_run({"runs": [{**run, "data": {"path": one}}]}, tmp_path / "results.json",
                         tmp_path / "model", None, data=tmp_path)


def test_the_figures_go_to_the_run_whose_folder_holds_the_attacked_model(tmp_path: Path) -> None:
    """Each layout of an output of several runs: a demo's (a folder a method, one a seed within it, the vanilla
    model in the cache), ``unlearn --seeds`` (a folder a seed) and one model's (its last run)."""
    from unsee.attacked import attacked_run

    demo, cache = tmp_path / "demo", tmp_path / "cache" / "vanilla-x"
    for folder in ("cvf_ncu/seed-0", "cvf_ncu/seed-1", "graddiff/seed-0", "graddiff/seed-1"):
        (demo / folder).mkdir(parents=True)
    cache.mkdir(parents=True)
    (demo / "demo.json").write_text(json.dumps({"vanilla": str(cache)}))
    runs = [{"method": m, "seed": s} for m, s in (("vanilla", 0), ("cvf_ncu", 0), ("cvf_ncu", 1), ("graddiff", 0),
                                                   ("graddiff", 1))]
    seeded = {"runs": runs, "seeds": {}}
    picked = demo / "graddiff" / "seed-1"
    assert attacked_run(seeded, demo / "results.json", picked, None) == (4, picked)
    assert attacked_run(seeded, demo / "results.json", cache, None) == (0, demo)  # nothing is written in the cache
    for other in (demo / "graddiff", tmp_path):  # two seeds' runs, and no run's model
        with pytest.raises(DataError, match="holds a demo's 5 runs.*METHOD/seed-K"):
            attacked_run(seeded, demo / "results.json", other, None)
    (demo / "demo.json").write_text(json.dumps({"vanilla": 123}))  # edited by hand: no vanilla model named
    with pytest.raises(DataError, match="holds a demo's 5 runs"):
        attacked_run(seeded, demo / "results.json", cache, None)
    (demo / "demo.json").write_text(json.dumps({"vanilla": str(cache)}))
    one = {"runs": runs[:2] + runs[3:4]}
    shutil.rmtree(demo / "cvf_ncu" / "seed-0")
    assert attacked_run(one, demo / "results.json", demo / "cvf_ncu", None) == (1, demo / "cvf_ncu")
    unlearned = tmp_path / "unlearned"
    for k in (0, 1):
        (unlearned / f"seed-{k}" / "model").mkdir(parents=True)
    seeds = {"runs": [{"method": "ga", "seed": 0}, {"method": "ga", "seed": 1}], "seeds": {}}
    assert attacked_run(seeds, unlearned / "results.json", unlearned / "seed-1" / "model", None) == \
        (1, unlearned / "seed-1")
    chain = {"runs": [{"method": "ga", "seed": 0, "request": 1}, {"method": "ga", "seed": 0, "request": 2}]}
    assert attacked_run(chain, unlearned / "results.json", unlearned / "model", None) == (1, unlearned)
