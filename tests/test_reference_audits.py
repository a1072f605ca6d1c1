"""Audits read against the retrained reference: quantization, membership inference, forget quality,
the reference beside every figure, and the statistics behind them (AUC, exact KS, bootstrap)."""

from __future__ import annotations

import gc
import itertools
import json
import math
import random
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import weights_hash

from unsee import api, unlearning
from unsee.audit import mia, quant
from unsee.audit.attacks import AttackConfig, run_attacks
from unsee.audit.verdicts import mean_attacks, reference_checks, reference_of_draws
from unsee.cli import main
from unsee.data.schema import Suite
from unsee.data.world import build_world
from unsee.errors import ConfigError, DataError, ModelError
from unsee.eval import metrics
from unsee.eval.results import ResultsError, load_results, new_results, seed_summary, validate_results
from unsee.models import HFAdapter, load_adapter
from unsee.models.tiny import init_model
from unsee.report.card import model_card

WORLD = ["n_people=8", "n_known=2", "n_unknown=2", "n_neutral=4", "n_train_views=2", "n_test_views=1",
         "n_requests=2", "n_general_train=8", "n_general_eval=4", "n_pretrain=4"]
# "retain" stands in for the held-out people: an untrained model has seen nobody
FAST = AttackConfig(quant_bits=[8, 4], quant_group=16, quant_max_items=6, mia_holdout="retain", mia_max_items=6,
                    probe_steps=20)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("refaudit") / "w", config="quick", overrides=WORLD)


@pytest.fixture(scope="module")
def suite(world: Path) -> Suite:
    return api.load_suite(world, "forget_15")


@pytest.fixture(scope="module")
def model(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model("tiny-llava", tmp_path_factory.mktemp("refaudit_m") / "m", world=world, seed=0)


@pytest.fixture(scope="module")
def reference(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model standing in for the retrained reference: different weights, same tokenizer world."""
    return init_model("tiny-llava", tmp_path_factory.mktemp("refaudit_r") / "r", world=world, seed=1)


@pytest.fixture(scope="module")
def second_draw(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model standing in for another draw of the reference (``unsee retrain --seed``)."""
    return init_model("tiny-llava", tmp_path_factory.mktemp("refaudit_r2") / "r", world=world, seed=2)


@pytest.fixture(scope="module")
def adapter(model: Path) -> HFAdapter:
    return load_adapter(model)


# ---- statistics ------------------------------------------------------------------------------------------
def test_auc_counts_pairs_and_ties() -> None:
    assert metrics.auc([3, 4], [1, 2]) == 1.0
    assert metrics.auc([1, 2], [3, 4]) == 0.0
    assert metrics.auc([1, 1], [1, 1]) == 0.5
    assert metrics.auc([2, 0], [1]) == 0.5  # one pair won, one lost
    with pytest.raises(Exception, match="member"):
        metrics.auc([], [1.0])
    # a NaN compares false with everything: refused, not ranked (it looped for ever) or read as a gap
    for bad in (float("nan"), float("inf")):
        with pytest.raises(Exception, match="finite"):
            metrics.auc([bad, 1.0], [0.5, 2.0])
        with pytest.raises(Exception, match="finite"):
            metrics.ks_2samp([bad, 1.0, 2.0], [0.0, 1.0, 2.0])


def _ks_by_enumeration(a: list[float], b: list[float]) -> float:
    """P(D >= observed) over every way of labelling the pooled values: the exact test, by brute force."""
    pooled = a + b
    observed = metrics.ks_2samp(a, b)[0]
    hits = total = 0
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        x = [pooled[i] for i in idx]
        y = [pooled[i] for i in range(len(pooled)) if i not in idx]
        hits += metrics.ks_2samp(x, y)[0] >= observed - 1e-12
        total += 1
    return hits / total


def test_ks_two_sample_exact_p_value() -> None:
    d, p = metrics.ks_2samp([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert d == 1.0 and p == pytest.approx(2 / math.comb(10, 5))
    # fully apart at forget-set sizes: p is tiny, never 0.0 (1 - 1e-17 in floats was)
    for n in (18, 30, 45):
        d, p = metrics.ks_2samp(list(range(n)), [v + 1000.0 for v in range(n)])
        assert d == 1.0 and p == pytest.approx(2 / math.comb(2 * n, n), rel=1e-9) and p > 0
    assert metrics.ks_2samp([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    rng = random.Random(0)
    for n, m in ((4, 5), (5, 3), (6, 6)):
        a = [rng.random() for _ in range(n)]
        b = [rng.random() + 0.3 for _ in range(m)]
        assert metrics.ks_2samp(a, b)[1] == pytest.approx(_ks_by_enumeration(a, b), abs=1e-9)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0] * 13 + [0.0] * 32
    ci = metrics.bootstrap_ci(values)
    assert ci == metrics.bootstrap_ci(values)
    assert ci[0] < sum(values) / len(values) < ci[1]
    wide, narrow = metrics.bootstrap_ci(values[:9] + values[-9:]), metrics.bootstrap_ci(values * 10)
    assert narrow[1] - narrow[0] < ci[1] - ci[0] < wide[1] - wide[0]
    assert metrics.bootstrap_ci([1.0] * 5) == [1.0, 1.0]
    assert metrics.spread([1, 2, 3]) == {"mean": 2.0, "sd": 1.0, "min": 1.0, "max": 3.0}


# ---- quantization ----------------------------------------------------------------------------------------
def test_round_to_nearest_lands_on_a_symmetric_grid_per_group() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, 40)
    q4, q8 = quant.rtn(w, 4, 16), quant.rtn(w, 8, 16)
    assert q4.shape == w.shape and q4.dtype == w.dtype
    for start in range(0, 40, 16):  # each group: at most 15 levels, the largest weight kept exactly
        g, qg = w[:, start : start + 16], q4[:, start : start + 16]
        scale = g.abs().amax(-1, keepdim=True) / 7
        assert torch.allclose(qg / scale, torch.round(qg / scale), atol=1e-4)
        assert torch.allclose(qg.abs().amax(-1), g.abs().amax(-1))
        assert ((qg - g).abs() <= scale / 2 + 1e-6).all()
    assert (q8 - w).abs().max() < (q4 - w).abs().max()
    assert torch.equal(quant.rtn(torch.zeros(2, 8), 4, 128), torch.zeros(2, 8))
    with pytest.raises(ConfigError, match="4 or 8"):
        quant.rtn(w, 3, 16)
    with pytest.raises(ConfigError, match="width 16 not supported: choose 4 or 8"):
        AttackConfig(quant_bits=[16]).validate()
    with pytest.raises(ConfigError, match="widths 2, 3 not"):
        AttackConfig(quant_bits=[2, 4, 3]).validate()
    with pytest.raises(ConfigError, match="no quantization bit width given"):
        AttackConfig(quant_bits=[]).validate()


def test_quantized_weights_are_restored_bit_for_bit(adapter: HFAdapter) -> None:
    before = weights_hash(adapter)
    names = sorted(quant.linear_weights(adapter.model))[:3]
    with quant.quantized(adapter, names, 4, 16):
        assert weights_hash(adapter) != before
    assert weights_hash(adapter) == before
    assert not any(n.endswith("lm_head") for n in quant.linear_weights(adapter.model))


def test_changed_linears_are_found_by_their_bytes(model: Path) -> None:
    a = load_adapter(model)
    digests = quant.weight_digests(a)
    name = sorted(quant.linear_weights(a.model))[5]
    with torch.no_grad():
        quant.linear_weights(a.model)[name].weight.mul_(1.01)
    assert quant.changed_linears(digests, a) == [name]


def test_quant_attack_reports_each_width_and_scope(adapter: HFAdapter, suite: Suite) -> None:
    before = weights_hash(adapter)
    changed = sorted(quant.linear_weights(adapter.model))[:2]
    out = run_attacks(adapter, suite, ["quant"], FAST, changed=changed)["quant"]
    assert weights_hash(adapter) == before
    assert out["linears_changed"] == 2 and out["linears"] > 2 and out["group_size"] == 16
    for g in ("forget", "forget_test", "retain"):
        for key in (f"{g}_clean", f"{g}_int8_all", f"{g}_int4_all", f"{g}_int4_changed", f"{g}_int8_changed"):
            assert 0.0 <= out[key] <= 1.0, key
        assert out[f"n_{g}"] <= 6
    no_base = run_attacks(adapter, suite, ["quant"], FAST)["quant"]
    assert "forget_int4_changed" not in no_base and no_base["linears_changed"] is None
    assert no_base["forget_int4_all"] == out["forget_int4_all"]  # deterministic


# ---- membership inference and forget quality -------------------------------------------------------------
def test_answer_loss_is_the_models_own_likelihood(adapter: HFAdapter, suite: Suite) -> None:
    """The per-item loss is the answer's mean negative log-likelihood, as the training loss sees it."""
    from unsee.audit.attacks import image_mcq
    from unsee.data import prompts
    from unsee.data.collate import image_of
    from unsee.models import Turn

    items = image_mcq(suite, "forget")[:3]
    scores = mia.answer_scores(adapter, items, 0.2)
    for ex, loss in zip(items, scores["loss"], strict=True):
        turn = Turn(image_of(ex), prompts.qa_prompt(ex.question), mia.answer_of(ex))
        batch = adapter.training_batch([turn])
        with torch.no_grad():
            total = float(adapter.answer_logprobs(batch)[0])
        n = int((batch["labels"] != -100).sum())
        assert loss == pytest.approx(-total / n, rel=1e-4)
    assert all(math.isfinite(v) for v in scores["mink_pp"] + scores["zlib"])


def test_mia_against_itself_leaks_nothing(adapter: HFAdapter, suite: Suite) -> None:
    own = mia.mia(adapter, suite, FAST)
    for s in mia.SCORES:
        assert 0.0 <= own[f"auc_{s}"] <= 1.0
    assert own["n_forget"] == 6 and own["n_holdout"] == 6
    rel = mia.relative(own, own)
    assert rel["privleak_loss"] == 0.0 and rel["forget_quality"] == 1.0 and rel["ks_truth_ratio"] == 0.0


def test_mia_scores_and_truth_ratio_as_their_definitions_say(adapter: HFAdapter, suite: Suite) -> None:
    """zlib: the mean loss (log-perplexity) over the answer's zlib bytes; the truth ratio: the wrong options'
    mean per-token log-likelihood (a geometric mean of their probabilities) against the right one's."""
    import zlib

    from unsee.audit.attacks import image_mcq
    from unsee.eval.evaluator import option_logprobs

    items = image_mcq(suite, "forget")[:3]
    scores = mia.answer_scores(adapter, items, 0.2)
    for ex, loss, z in zip(items, scores["loss"], scores["zlib"], strict=True):
        assert z == pytest.approx(loss / len(zlib.compress(mia.answer_of(ex).encode())), rel=1e-12)
    for ex, lps, ratio in zip(items, option_logprobs(adapter, items), mia.truth_ratios(adapter, items), strict=True):
        per_token = [lp / len(adapter.text_ids(adapter.answer_text(o))) for lp, o in zip(lps, ex.options,
                                                                                         strict=True)]
        wrong = [v for i, v in enumerate(per_token) if i != ex.correct]
        assert ratio == pytest.approx(sum(wrong) / len(wrong) - per_token[ex.correct], abs=1e-6)


def test_privleak_is_taken_from_the_aucs_before_they_are_rounded() -> None:
    members, others = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0.3, 0.6, 0.5]
    mine = {"per_item": {"forget": {s: members for s in mia.SCORES} | {"truth_ratio": members},
                         "holdout": {s: others for s in mia.SCORES}}}
    ref = {"per_item": {"forget": {s: others for s in mia.SCORES} | {"truth_ratio": others},
                        "holdout": {s: members for s in mia.SCORES}}}
    a = metrics.auc(mia.member_score("loss", members), mia.member_score("loss", others))
    r = metrics.auc(mia.member_score("loss", others), mia.member_score("loss", members))
    assert mia.relative(mine, ref)["privleak_loss"] == round((a - r) / r, 4)


def test_several_draws_of_the_reference_read_as_one() -> None:
    """Each figure the mean of the draws, each draw's own kept; PrivLeak against the mean of their AUCs, and
    forget quality against their items pooled, not against the first draw's alone."""
    mine_items, first, second = [0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8], [0.15, 0.25, 0.35, 0.45]
    holdout = [0.3, 0.5, 0.9]

    def figures(items: list[float], ag: float) -> dict[str, Any]:
        per_item = {"forget": {s: items for s in mia.SCORES} | {"truth_ratio": items},
                    "holdout": {s: holdout for s in mia.SCORES}}
        return {"ag": ag, "auc_loss": 0.5, "n_forget": 4, "holdout": "h", "per_item": per_item}

    draws = [figures(first, 16.0), figures(second, 4.0)]
    ref = reference_of_draws(draws)
    assert ref["ag"] == 10.0 and ref["n_draws"] == 2 and [d["ag"] for d in ref["draws"]] == [16.0, 4.0]
    assert ref["n_forget"] == 4 and "holdout" not in ref["draws"][0]  # numbers only; a name is no mean
    assert ref["per_item"] == [d["per_item"] for d in draws]
    assert reference_of_draws(draws[:1]) == draws[0]  # one draw is the reference as it was
    found = mia.relative(figures(mine_items, 0.0), ref)
    assert found["forget_quality"] == float(f"{metrics.ks_2samp(mine_items, first + second)[1]:.6g}")
    assert found["forget_quality"] != mia.relative(figures(mine_items, 0.0), draws[0])["forget_quality"]
    # beside it, the p-value against each draw alone: the pooled items are no independent sample
    assert found["forget_quality_per_draw"] == [mia.relative(figures(mine_items, 0.0), d)["forget_quality"]
                                                for d in draws]
    assert found["forget_quality_per_draw"][0] != found["forget_quality_per_draw"][1]
    assert "forget_quality_per_draw" not in mia.relative(figures(mine_items, 0.0), draws[0])
    a, r1, r2 = (metrics.auc(mia.member_score("loss", x), mia.member_score("loss", holdout))
                 for x in (mine_items, first, second))
    assert found["privleak_loss"] == round((a - (r1 + r2) / 2) / ((r1 + r2) / 2), 4)
    # the checks read the mean, and carry each draw's figure for the report
    check = reference_checks({"relearn": {"ag": 14.0, "reference": {k: v for k, v in ref.items()
                                                                     if k != "per_item"}}})["relearn_ag"]
    assert check["reference"] == 10.0 and check["reference_draws"] == [16.0, 4.0] and check["pass"] is True
    assert "reference_draws" not in reference_checks({"relearn": {"ag": 1.0, "reference": {"ag": 0.0}}})["relearn_ag"]
    # the p-value against each draw alone goes beside the pooled one that is judged, as a mean over seeds too
    fq = reference_checks({"mia": found})["forget_quality"]
    assert fq["per_draw"] == found["forget_quality_per_draw"] and fq["value"] == found["forget_quality"]
    seeds = mean_attacks([{"mia": {"forget_quality": 0.1, "forget_quality_per_draw": [0.2, 0.04]}},
                          {"mia": {"forget_quality": 0.3, "forget_quality_per_draw": [0.4, 0.02]}}])
    assert reference_checks(seeds)["forget_quality"]["per_draw"] == pytest.approx([0.3, 0.03])
    card = model_card({"method": "m", "model": "m", "benchmark": "builtin", "forget_split": "forget_10",
                       "request": 1, "seed": 0, "config": {}, "metrics": {}, "attacks": seeds,
                       "cost": {"wall_s": 1.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                                "optimizer_state_bytes": 0}},
                      None, base_model="b", base_hash="h", forgotten=["p1"], audits=None)
    assert "| forget_quality | 0.200 (each draw alone: 0.3, 0.03) | \u2014 | >= 0.05 | yes |" in card
    assert "per_draw" not in reference_checks({"mia": draws[0] | {"forget_quality": 0.5}})["forget_quality"]


def test_mia_holdout_must_not_overlap_the_forget_set(adapter: HFAdapter, suite: Suite) -> None:
    with pytest.raises(DataError, match="overlaps the forget set"):
        mia.mia(adapter, suite, AttackConfig(mia_holdout="forget_test"))
    with pytest.raises(DataError, match="never saw"):
        mia.mia(adapter, suite, AttackConfig(mia_holdout="no_such_group"))


# ---- the reference beside every figure -------------------------------------------------------------------
def test_attack_sets_the_reference_beside_each_figure_and_caches_it(model: Path, reference: Path, world: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "a.json"
    cache = tmp_path / "cache"
    opts = ["quant_bits=[4]", "quant_group=16", "quant_max_items=4", "mia_max_items=4"]  # the world's Holdout_Set
    found = {}
    for kind in ("quant", "mia", "probe"):
        found.update(api.attack(kind, model, world, out, forget="forget_5", reference=reference, cache_dir=cache,
                                overrides=[*opts, "probe_steps=10"]))
    for kind in ("quant", "mia", "probe"):
        assert "reference" in found[kind] and "per_item" not in found[kind]
    assert found["probe"]["reference"]["forget_acc"] is not None
    assert found["quant"]["reference"]["forget_int4_all"] is not None
    m = found["mia"]
    assert m["privleak_loss"] == pytest.approx(round((m["auc_loss"] - m["reference"]["auc_loss"])
                                                     / m["reference"]["auc_loss"], 4), abs=1e-4)
    assert 0.0 <= m["forget_quality"] <= 1.0 and m["holdout"] == "holdout" and m["n_holdout"] == 4
    assert load_results(out)["runs"][0]["attacks"]["mia"]["reference"] == m["reference"]
    # the reference is attacked once: a second audit reads its figures from the cache
    real = unlearning.load_adapter
    monkeypatch.setattr(unlearning, "load_adapter",
                        lambda p, **k: pytest.fail("reference loaded again") if Path(p) == reference else real(p, **k))
    again = api.attack("mia", model, world, tmp_path / "b.json", forget="forget_5", reference=reference,
                       cache_dir=cache, overrides=[*opts, "probe_steps=10"])
    assert again["mia"]["reference"] == m["reference"]
    # a model attacked in bf16 sets the reference beside it in bf16: neither fp32 nor its fp32 figures
    loaded: list[tuple[Path, object]] = []
    monkeypatch.setattr(unlearning, "load_adapter",
                        lambda p, **k: loaded.append((Path(p), k.get("dtype"))) or real(p, **k))
    api.attack("mia", model, world, tmp_path / "c.json", forget="forget_5", reference=reference, cache_dir=cache,
               overrides=opts, dtype="bf16")
    assert loaded == [(reference, torch.bfloat16)]
    # the precision a reference loads at without one is fp32's: one cache entry, whoever asks
    cfg = unlearning.audit_config(opts)
    keys = {unlearning.ReferenceAudits(reference, api.load_suite(world, "forget_5"), cfg, cache, dtype=d).key
            for d in (None, "fp32", torch.float32)}
    assert len(keys) == 1
    # figures an earlier definition of a score made are not set beside this one's: the code is in the key
    from unsee.audit import attacks
    from unsee.data import prompts
    from unsee.engine import trainer

    # the code the attacks run is in it: their steps, the relearning's training, the scoring turns
    assert {attacks.linf_ascent.__module__, trainer.__name__, prompts.qa_prompt.__module__,
            mia.__name__} <= set(unlearning.audit_code())
    # and what those import, where a change lands as often: the relearning's loss and optimiser, the gradient
    # clipping, the probe's per-block features, each architecture's scoring
    assert {"unsee.methods.base", "unsee.engine.prepare", "unsee.engine.gradients", "unsee.models.blocks",
            "unsee.models.qwen_vl", "unsee.models.llava"} <= set(unlearning.audit_code())
    monkeypatch.setattr(unlearning, "source_fingerprint", lambda *modules: "other code")
    assert unlearning.ReferenceAudits(reference, api.load_suite(world, "forget_5"), cfg, cache).key not in keys


def test_attack_beside_several_draws_of_the_reference(model: Path, reference: Path, second_draw: Path, world: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--reference A --reference B`: each draw attacked as it alone would be (and cached alike), the figures
    beside the model's their mean, the report and card say so; the same weights twice are refused."""
    cache = tmp_path / "cache"
    opts = ["--audit-set", "mia_max_items=4", "--audit-set", "probe_steps=10"]
    base = ["--model", str(model), "--data", str(world), "--forget", "forget_5", "--cache-dir", str(cache), *opts]
    alone = [api.attack("probe", model, world, tmp_path / f"alone{i}.json", forget="forget_5", reference=r,
                        cache_dir=cache, overrides=["mia_max_items=4", "probe_steps=10"])["probe"]["reference"]
             for i, r in enumerate((reference, second_draw))]
    assert main(["attack", "probe", *base, "--reference", str(reference), "--reference", str(second_draw),
                 "--out", str(tmp_path / "both.json")]) == 0
    capsys.readouterr()
    ref = load_results(tmp_path / "both.json")["runs"][0]["attacks"]["probe"]["reference"]
    assert ref["n_draws"] == 2 and [d["forget_acc"] for d in ref["draws"]] == [a["forget_acc"] for a in alone]
    assert ref["forget_acc"] == pytest.approx((alone[0]["forget_acc"] + alone[1]["forget_acc"]) / 2)
    api.report(tmp_path / "both.json", tmp_path / "rep")
    assert "(mean of 2 draws, " in (tmp_path / "rep" / "report.md").read_text()
    # the same weights under another name are one draw, not two
    copy = shutil.copytree(reference, tmp_path / "same")
    assert main(["attack", "probe", *base, "--reference", str(reference), "--reference", str(copy),
                 "--out", str(tmp_path / "twice.json")]) == 2
    assert "hold the same weights" in capsys.readouterr().err and not (tmp_path / "twice.json").exists()
    with pytest.raises(ConfigError, match="each reference is a model directory, not None"):
        unlearning.find_reference([reference, None], model, world, "forget_5")


def test_attacks_that_need_a_reference_refuse_without_one(model: Path, world: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    for module in (api, unlearning):
        monkeypatch.setattr(module, "load_adapter", lambda *a, **k: pytest.fail("a model was loaded"))
    base = ["--model", str(model), "--data", str(world), "--forget", "forget_5"]
    assert main(["attack", "mia", *base, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "unsee retrain" in err and len(err.strip().splitlines()) == 1
    assert main(["attack", "quant", *base, "--out", str(tmp_path / "x.json"), "quant_bits=[3]"]) == 2
    assert "4 or 8" in capsys.readouterr().err
    # spelt as on `unsee unlearn --audit`, the option is the same attack option
    assert main(["attack", "quant", *base, "--out", str(tmp_path / "x.json"), "--audit-set", "quant_bits=[3]"]) == 2
    assert "4 or 8" in capsys.readouterr().err
    assert main(["attack", "mia", *base, "--reference", str(model), "--out", str(tmp_path / "x.json"),
                 "mia_holdout=forget_10"]) == 2
    assert "overlaps the forget set" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_reference_given_by_hand_must_be_the_one_without_the_forget_split(
        model: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """One that `unsee retrain` made for another split is refused before any model loads; one made elsewhere
    is used, and the run says that nothing vouches for it."""
    for module in (api, unlearning):
        monkeypatch.setattr(module, "load_adapter", lambda *a, **k: pytest.fail("a model was loaded"))
    other = Path(shutil.copytree(model, tmp_path / "ref"))  # a model: a broken one is refused before this
    (other / "unsee_retrained.json").write_text(json.dumps({"forget": "forget_10"}))
    base = ["--model", str(model), "--data", str(world), "--forget", "forget_5", "--reference", str(other)]
    assert main(["attack", "mia", *base, "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "retrained without forget_10's photos, and this run forgets forget_5" in err
    assert not (tmp_path / "x.json").exists()
    assert unlearning.find_reference(other, model, world, "forget_10") == other  # its own split: taken
    (other / "unsee_retrained.json").unlink()
    assert unlearning.find_reference(other, model, world, "forget_5") == other
    assert "nothing says it never saw forget_5's photos" in capsys.readouterr().err


def test_a_reference_retrained_on_another_world_is_refused(model: Path, world: Path, tmp_path: Path) -> None:
    """Its split has the same name, but its forget people are others: its figures would be another world's."""
    from unsee.finetune import world_fingerprint

    other = Path(shutil.copytree(model, tmp_path / "ref"))
    record = {"vanilla": "v", "world": "elsewhere", "world_fingerprint": "0" * 16, "forget": "forget_10"}
    (other / "unsee_retrained.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match="retrained on another world"):
        unlearning.find_reference(other, model, world, "forget_10")
    (other / "unsee_retrained.json").write_text(json.dumps({**record, "world_fingerprint": world_fingerprint(world)}))
    assert unlearning.find_reference(other, model, world, "forget_10") == other


def test_the_4bit_check_over_seeds_is_the_mean_of_each_seeds_worse_rounding() -> None:
    """Each seed is judged on the worse of its two roundings; the mean over seeds of the worse of the two means
    would lie below every seed's own figure, and pass where each seed fails."""
    runs = [{"quant": {"forget_clean": 0.30, "forget_int4_all": 0.40, "forget_int4_changed": 0.30}},
            {"quant": {"forget_clean": 0.30, "forget_int4_all": 0.30, "forget_int4_changed": 0.42}}]
    each = [reference_checks(r)["quant_int4_forget"] for r in runs]
    assert [c["value"] for c in each] == [0.40, 0.42] and not any(c["pass"] for c in each)
    mean = reference_checks(mean_attacks(runs))["quant_int4_forget"]
    assert mean["value"] == pytest.approx(0.41) and mean["pass"] is False  # the worse of the means: 0.36, a pass


def test_reference_checks_and_card_say_which_audits_passed() -> None:

    attacks = {
        "relearn": {"ag": 20.0, "reference": {"ag": 18.9}},
        "pgd": {"forget_attacked": 0.9, "reference": {"forget_attacked": 0.76}},
        "quant": {"forget_clean": 0.30, "forget_int4_all": 0.33, "forget_int4_changed": 0.40,
                  "reference": {"forget_int4_all": 0.5}},
        "mia": {"auc_loss": 0.62, "auc_zlib": 0.6, "auc_mink_pp": 0.55, "forget_quality": 0.2,
                "reference": {"auc_loss": 0.6, "auc_zlib": 0.5, "auc_mink_pp": 0.56}},
    }
    checks = reference_checks(attacks)
    assert checks["relearn_ag"]["pass"] is True and checks["pgd_forget"]["pass"] is False
    assert checks["quant_int4_forget"]["value"] == 0.40 and checks["quant_int4_forget"]["pass"] is False
    assert checks["mia_auc_loss"]["pass"] is True and checks["mia_auc_zlib"]["pass"] is False
    assert checks["forget_quality"]["pass"] is True
    assert reference_checks({"relearn": {"ag": 3.0}})["relearn_ag"]["pass"] is None  # no reference: unjudged
    # the range that passes, as a plot draws it, says the same as each verdict
    assert checks["pgd_forget"]["passing"] == [None, pytest.approx(0.81)]
    assert checks["mia_auc_zlib"]["passing"] == [pytest.approx(0.45), pytest.approx(0.55)]
    assert checks["forget_quality"]["passing"] == [0.05, None]
    for name, c in checks.items():
        low, high = c["passing"]
        inside = (low is None or c["value"] >= low - 1e-9) and (high is None or c["value"] <= high + 1e-9)
        assert c["pass"] == inside, name
    run = {"method": "cvf_ncu", "model": "m", "benchmark": "builtin", "forget_split": "forget_10", "request": 1,
           "seed": 0, "config": {}, "mcq_protocol": "loglik",
           "metrics": {"forget": {"mcq": 0.3, "n": 45, "ci95": [0.2, 0.4]}}, "attacks": attacks,
           "cost": {"wall_s": 1.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                    "optimizer_state_bytes": 0}}
    card = model_card(run, None, base_model="b", base_hash="h", forgotten=["p1"], audits=None)
    assert "Audits beside the retrained reference" in card
    assert "| relearn_ag | 20.000 | 18.900 | <= reference + 5 | yes |" in card
    assert "| pgd_forget | 0.900 | 0.760 | <= reference + 0.05 | no |" in card
    assert "| relearn | ag | 20.000 | 18.900 |" in card
    assert "0.300 [0.20, 0.40]" in card
    # read against several draws of the reference: their mean judges, and the card shows their range
    drawn = {**attacks, "relearn": {"ag": 20.0, "reference": {"ag": 10.0, "n_draws": 2,
                                                               "draws": [{"ag": 16.0}, {"ag": 4.0}]}}}
    card = model_card({**run, "attacks": drawn}, None, base_model="b", base_hash="h", forgotten=["p1"], audits=None)
    assert "judged against the mean of 2 draws of it" in card
    assert "| relearn_ag | 20.000 | 10.000 (mean of 2 draws, 4.000 to 16.000) | <= reference + 5 | no |" in card
    # 4-bit rounding alone, with no reference attacked: judged against the model itself, and said so
    alone = model_card({**run, "attacks": {"quant": {"forget_clean": 0.3, "forget_int4_all": 0.32}}}, None,
                       base_model="b", base_hash="h", forgotten=["p1"], audits=None)
    assert "against the reference" not in alone and "beside the retrained reference" not in alone
    assert "### Audit checks" in alone and "Passed: 1 of 1" in alone


# ---- intervals and seeds ----------------------------------------------------------------------------------
def test_every_mcq_group_carries_its_bootstrap_interval(adapter: HFAdapter, suite: Suite) -> None:
    from unsee.eval.evaluator import evaluate

    figs = evaluate(adapter, suite, groups=("forget", "retain"), generation=False, max_items=8, progress=False)
    for g in ("forget", "retain"):
        low, high = figs[g]["ci95"]
        assert low <= figs[g]["mcq"] <= high
    assert evaluate(adapter, suite, groups=("forget",), generation=False, max_items=8,
                    progress=False)["forget"]["ci95"] == figs["forget"]["ci95"]
    from unsee.eval.results import new_results

    run = api.make_run("vanilla", figs, model="m", suite=suite, forget="forget_15", seed=0)
    validate_results(new_results([run]))
    run["metrics"]["forget"]["ci95"] = [0.1]
    with pytest.raises(ResultsError, match="ci95"):
        validate_results(new_results([run]))


def _run(method: str, seed: int, forget: float, retain: float, ag: float | None = None) -> dict:
    run = {"method": method, "model": "m", "benchmark": "builtin", "forget_split": "forget_10", "request": 1,
           "seed": seed, "config": {}, "mcq_protocol": "loglik",
           "metrics": {"forget": {"mcq": forget, "n": 45, "ci95": [max(forget - 0.1, 0), min(forget + 0.1, 1)]},
                       "retain": {"mcq": retain, "n": 90, "ci95": [retain - 0.05, retain]}},
           "cost": {"wall_s": 1.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                    "optimizer_state_bytes": 0}}
    if ag is not None:
        run["attacks"] = {"relearn": {"ag": ag, "n_seen": 4, "reference": {"ag": 10.0}}}
    return run


def test_seed_summary_plot_and_report_show_the_spread(tmp_path: Path) -> None:
    from unsee.eval.results import new_results, seed_summary, write_results
    from unsee.report import write_report
    from unsee.report.plots import tradeoff_points

    vanilla = _run("vanilla", 0, 0.9, 0.9)
    runs = [_run("ga", 0, 0.3, 0.8, 20.0), _run("ga", 1, 0.4, 0.7, 30.0), _run("npo", 0, 0.5, 0.9)]
    (ga, npo) = seed_summary(runs)
    assert ga["seeds"] == [0, 1] and npo["seeds"] == [0]
    # seed 0 run again (from another results file, other figures) is no third seed, in the table or the plot
    assert seed_summary([*runs, _run("ga", 0, 0.9, 0.9)]) == [ga, npo]
    # the same data named by another path (a run from another folder) is the same seed still
    there = [{**r, "data": {"source": s, "fingerprint": "f0"}} for r, s in ((runs[0], "w"), (runs[1], "w"))]
    again = {**_run("ga", 0, 0.9, 0.9), "data": {"source": "../w", "fingerprint": "f0"}}
    assert [e["seeds"] for e in seed_summary([*there, again])] == [[0, 1]]
    assert tradeoff_points([vanilla, *runs, _run("ga", 0, 0.9, 0.9)], vanilla, "mcq") == tradeoff_points(
        [vanilla, *runs], vanilla, "mcq")
    assert ga["metrics"]["forget"]["mcq"] == pytest.approx({"mean": 0.35, "sd": 0.1 / math.sqrt(2), "min": 0.3,
                                                           "max": 0.4, "n": 2}, abs=1e-12)
    assert "n" not in ga["metrics"]["forget"] and "ci95" not in ga["metrics"]["forget"]
    assert ga["attacks"]["relearn"] == {"ag": pytest.approx({"mean": 25.0, "sd": 10 / math.sqrt(2), "min": 20.0,
                                                             "max": 30.0, "n": 2})}  # n_seen, the reference: not
    pts = {p[0]: p for p in tradeoff_points([vanilla, *runs], vanilla, "mcq")}
    sd = ga["metrics"]["forget"]["mcq"]["sd"]
    assert pts["ga (2 seeds)"][1] == 0.35 and pts["ga (2 seeds)"][3] == (sd, sd)
    assert pts["npo"][3] == pytest.approx((0.1, 0.1))  # one run: its bootstrap interval
    res = new_results([vanilla, *runs])
    res["seeds"] = seed_summary(runs)
    write_results(tmp_path / "r.json", res)
    write_report([tmp_path / "r.json"], tmp_path / "report", overwrite=True)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Over unlearning seeds" in text and "0.350 \u00b1 0.071 [0.300, 0.400]" in text
    assert "0.30 (\u22120.60) [0.20, 0.40]" in text
    assert "| ga | 1 | 0 | relearn | ag 20.00, n_seen 4 | ag 10.00 |" in text
    assert "| ga | 1 | 0 | relearn_ag | 20.000 | 10.000 | <= reference + 5 | no |" in text
    assert (tmp_path / "report" / "tradeoff.png").is_file()


def test_checks_without_a_reference_are_not_headed_as_against_one() -> None:
    """A run attacked with no retrained reference (a removal request) is judged on 4-bit rounding alone, against
    its own figure: the report says so, as the model card does."""
    from unsee.report.tables import render_report

    rounded = {**_run("ga", 0, 0.3, 0.8), "attacks": {"quant": {"forget_clean": 0.3, "forget_int4_all": 0.32}}}
    text = render_report(new_results([_run("vanilla", 0, 0.9, 0.9), rounded]))
    assert "### Checks that need no reference" in text and "Against the retrained reference" not in text
    assert "| ga | 1 | 0 | quant_int4_forget | 0.320 |" in text


def test_seeds_are_pooled_only_where_runs_differ_in_their_seed_alone(tmp_path: Path) -> None:
    """Another learning rate is another method, another evaluation cap another setting: pooled as seeds,
    either would read as noise; and a mean is rounded once, where it is shown."""
    from unsee.report.plots import tradeoff_points
    from unsee.report.tables import render_report

    vanilla = _run("vanilla", 0, 0.9, 0.9)
    slow = [{**_run("ga", s, f, 0.8), "config": {"lr": 1e-5, "seed": s}}
            for s, f in ((0, 5 / 9), (1, 5 / 9), (2, 4 / 9))]
    fast = [{**_run("ga", s, 0.2, 0.7), "config": {"lr": 1e-3, "seed": s}} for s in (0, 1)]
    capped = {**_run("ga", 3, 1.0, 1.0), "config": {"lr": 1e-5, "seed": 3}, "evaluation": {"max_items": 2}}
    entries = seed_summary([*slow, *fast])
    assert [e["seeds"] for e in entries] == [[0, 1, 2], [0, 1]]
    text = render_report(new_results([vanilla, *slow, *fast, capped]))
    rows = [line for line in text.splitlines() if line.startswith("| ga (")]
    assert len(rows) == 2 and "[lr=1e-05]" in rows[0] and "[lr=0.001]" in rows[1]
    assert "| 0,1,2 | 0.519 \u00b1" in rows[0]  # 14/27 = 0.51852, not 0.5185 shown as 0.518
    labels = {p[0]: p for p in tradeoff_points([vanilla, *slow, *fast], vanilla, "mcq")}
    assert set(labels) == {"ga [lr=1e-05] (3 seeds)", "ga [lr=0.001] (2 seeds)"}
    assert labels["ga [lr=0.001] (2 seeds)"][1] == pytest.approx(0.2)
    # one seed run twice (another results file) is one run, with its interval over the items, not two seeds
    again = {p[0]: p for p in tradeoff_points([vanilla, fast[0], dict(fast[0])], vanilla, "mcq")}
    assert list(again) == ["ga"] and again["ga"][3] is not None and again["ga"][3] != (0.0, 0.0)


def test_unlearn_over_seeds_saves_each_and_summarises(model: Path, world: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    folders: list[str] = []  # each seed keeps its training checkpoint apart: one seed's is another run for the next
    models: list[weakref.ref] = []
    real = unlearning.unlearn_adapter

    def spy(method: str, adapter: Any, *a: Any, **k: Any) -> Any:
        gc.collect()  # an earlier seed's model is gone before this one trains: it would count in this one's memory
        assert [m() for m in models] == [None] * len(models)
        models.append(weakref.ref(adapter))
        seen.append(k["seed"])
        folders.append([o for o in k["overrides"] if o.startswith("checkpoint_dir=")][-1])
        return real(method, adapter, *a, **k)

    monkeypatch.setattr(unlearning, "unlearn_adapter", spy)
    out = api.unlearn("ga", model, world, tmp_path / "ga", forget="forget_15", seeds=2, seed=3,
                      overrides=["max_steps=1", "progress=false", f"checkpoint_dir={tmp_path / 'ck'}"],
                      evaluate_after=False)
    res = load_results(out / "results.json")
    assert seen == [3, 4] and [r["seed"] for r in res["runs"]] == [3, 4]
    assert folders == [f"checkpoint_dir={tmp_path / 'ck' / 'seed-3'}", f"checkpoint_dir={tmp_path / 'ck' / 'seed-4'}"]
    assert res["seeds"][0]["seeds"] == [3, 4]
    for s in (3, 4):
        assert (out / f"seed-{s}" / "model" / "config.json").is_file()
        assert json.loads((out / f"seed-{s}" / "run.json").read_text())["seed"] == s
    with pytest.raises(ConfigError, match="seeds"):
        api.unlearn("ga", model, world, tmp_path / "bad", seeds=0)
    assert not (tmp_path / "bad").exists()


def test_unlearn_audits_beside_several_draws_of_the_reference(model: Path, reference: Path, second_draw: Path,
                                                              world: Path, tmp_path: Path) -> None:
    """`unsee unlearn --audit --reference A --reference B`: the audits read the two draws as one, and the card
    says so; a broken draw among them is refused before the unlearning trains."""
    opts = ["relearn_steps=1", "pgd_steps=1", "max_items=2", "probe_steps=10", "quant_max_items=4", "quant_bits=[4]",
            "mia_max_items=4"]
    out = api.unlearn("ga", model, world, tmp_path / "ga", forget="forget_5",
                      overrides=["max_steps=1", "progress=false"], evaluate_after=False, audit=True,
                      audit_overrides=opts, reference=[reference, second_draw], cache_dir=tmp_path / "cache")
    run = load_results(out / "results.json")["runs"][-1]
    assert run["attacks"]["pgd"]["reference"]["n_draws"] == 2 and len(run["attacks"]["mia"]["reference"]["draws"]) == 2
    assert "judged against the mean of 2 draws of it" in (out / "model" / "README.md").read_text()
    bad = Path(shutil.copytree(model, tmp_path / "bad"))
    (bad / "config.json").write_text("{not json")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(api, "unlearn_and_save", lambda *a, **k: pytest.fail("the unlearning trained first"))
        with pytest.raises(ModelError, match=str(bad)):
            api.unlearn("ga", model, world, tmp_path / "u", forget="forget_5", audit=True,
                        reference=[reference, bad])
    assert not (tmp_path / "u").exists()


def test_seeds_and_reference_options_on_the_command_line(model: Path, world: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unlearn", "--method", "ga", "--model", str(model), "--data", str(world), "--out",
                 str(tmp_path / "u"), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err and not (tmp_path / "u").exists()
    assert main(["unlearn", "--method", "ga", "--model", str(model), "--data", str(world), "--out",
                 str(tmp_path / "u"), "--audit", "--reference", str(tmp_path / "nowhere")]) == 2
    assert "not a model directory" in capsys.readouterr().err and not (tmp_path / "u").exists()
    # a reference whose weights or config are broken is refused before the unlearning trains, not after it
    for name, broken in (("model.safetensors", b"\x00" * 16), ("config.json", b"{not json")):
        bad = Path(shutil.copytree(model, tmp_path / f"bad-{name}"))
        (bad / name).write_bytes(broken)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(api, "unlearn_and_save", lambda *a, **k: pytest.fail("the unlearning trained first"))
            assert main(["unlearn", "--method", "ga", "--model", str(model), "--data", str(world), "--out",
                         str(tmp_path / "u"), "--audit", "--reference", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err, err

