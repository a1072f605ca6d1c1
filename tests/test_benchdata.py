"""Benchmark data from a folder or the hub, detection of the four layouts, and each public
benchmark's own vanilla model and retrained reference, through the command line."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import fixtures_bench as fb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from unsee import api
from unsee.cli import main
from unsee.data.detect import benchmark_of, data_fingerprint
from unsee.data.ftsets import finetune_examples, without_forget
from unsee.errors import DataError
from unsee.eval.metrics import RETENTION_GROUPS
from unsee.eval.results import new_results, validate_results
from unsee.models import model_fingerprint
from unsee.unlearning import CachedDraws, find_reference

if TYPE_CHECKING:
    from conftest import TinyModels

KINDS = ("mllmu", "clear", "umu")
# Fine-tune pairs of the fixtures, and those of forget_10's people (image rows only).
FT_PAIRS = {"mllmu": (20, 2), "clear": (32, 6), "umu": (40, 2)}
FAST = ["max_steps=2", "batch_size=2", "dtype=fp32", "gradient_checkpointing=false", "progress=false",
        "lr=1e-3"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bench")
    world = fb.write_mllmu(base / "world", ft_ids=True, world_extras=True)
    (world / "world.json").write_text("{}")
    return {"mllmu": fb.write_mllmu(base / "mllmu"), "clear": fb.write_clear(base / "clear"),
            "umu": fb.write_umu(base / "umu"), "builtin": world}


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(args)
    captured = capsys.readouterr()
    return rc, captured.err.strip().splitlines()[-1] if rc else captured.out


def one_line_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()  # what earlier set-up printed
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("unsee: error: "), err
    return err


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("kind", ["builtin", *KINDS])
def test_each_layout_is_detected(roots: dict[str, Path], kind: str) -> None:
    assert api.detect_benchmark(roots[kind]) == kind


def test_umu_is_not_read_as_mllmu(roots: dict[str, Path]) -> None:
    """Both have Full_Set/ and forget_10/: the columns decide, and the UMU loader reads it."""
    suite = api.load_suite(roots["umu"], "forget_10")
    assert suite.info["benchmark"] == "umu"
    assert {e.pair_key for e in suite.groups["forget"]} == {e.pair_key for e in suite.groups["text_forget"]}


def test_detection_says_what_it_found(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eval_args = ["eval", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "r.json"), "--data"]
    assert "does not exist" in one_line_error([*eval_args, str(tmp_path / "nowhere")], capsys)
    (tmp_path / "file.parquet").write_text("x")
    assert "is a file, not a folder" in one_line_error([*eval_args, str(tmp_path / "file.parquet")], capsys)
    (tmp_path / "empty").mkdir()
    assert "empty folder" in one_line_error([*eval_args, str(tmp_path / "empty")], capsys)
    other = tmp_path / "other" / "scores"
    other.mkdir(parents=True)
    pq.write_table(pa.table({"user": ["a"], "score": [1]}), other / "train-00000-of-00001.parquet")
    err = one_line_error([*eval_args, str(tmp_path / "other")], capsys)
    assert "cannot tell which benchmark" in err and "scores ['user', 'score']" in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("forced", "held", "missing"), [
    ("umu", "mllmu", "['Classify', 'Cloze', 'Generation']"),
    ("mllmu", "umu", "['Classification_Task', 'Generation_Task', 'Mask_Task']"),
    ("clear", "umu", "none of the configs ['forget05'"),
    ("builtin", "mllmu", "no world.json"),
])
def test_forced_benchmark_names_what_is_missing(roots: dict[str, Path], tmp_path: Path, forced: str, held: str,
                                                missing: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before the model loads: the model path does not even exist."""
    err = one_line_error(["eval", "--model", str(tmp_path / "no-model"), "--data", str(roots[held]),
                          "--out", str(tmp_path / "r.json"), "--benchmark", forced], capsys)
    assert f"--benchmark {forced}" in err and missing in err


def test_forced_benchmark_that_fits_is_used(roots: dict[str, Path]) -> None:
    assert api.detect_benchmark(roots["clear"], benchmark="clear") == "clear"
    assert api.load_suite(roots["mllmu"], "forget_5", benchmark="mllmu").info["benchmark"] == "mllmu"


# --------------------------------------------------------------------------- hub ids


def test_hub_id_offline_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    err = one_line_error(["eval", "--model", "m", "--data", "MLLMMU/MLLMU-Bench", "--out", "r.json"], capsys)
    assert "MLLMMU/MLLMU-Bench" in err and "HF_HUB_OFFLINE=1" in err
    assert "huggingface-cli download MLLMMU/MLLMU-Bench --repo-type dataset --local-dir DIR" in err
    assert "--data DIR" in err


def test_hub_id_offline_reads_the_cached_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id already in the cache works offline, through huggingface_hub's own cache lookup."""
    import huggingface_hub.constants

    commit = "a" * 40
    repo = tmp_path / "datasets--linbojunzi--UMU-bench"
    fb.write_umu(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    suite = api.load_suite("linbojunzi/UMU-bench", "forget_5")
    assert suite.info["benchmark"] == "umu"
    assert suite.info["data"]["commit"] == commit and suite.info["data"]["source"] == "linbojunzi/UMU-bench"
    with pytest.raises(Exception, match="at revision 'v2' is not in the local cache"):
        api.load_suite("linbojunzi/UMU-bench", "forget_5", revision="v2")


class FakeSnapshot:
    """Stands in for ``huggingface_hub.snapshot_download``: a fixture folder is the "download"."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.commit = "0123456789abcdef0123456789abcdef01234567"
        self.path = Path(shutil.copytree(root, tmp / "snapshots" / self.commit))
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo: str, **kw: Any) -> str:
        from huggingface_hub.errors import RevisionNotFoundError

        self.calls.append({"repo": repo, **kw})
        if kw.get("revision") == "no-such-branch":
            response = SimpleNamespace(headers={}, request=None)  # what the error reads of an HTTP response
            raise RevisionNotFoundError("404 Client Error: Revision Not Found", response=response)  # type: ignore[arg-type]
        return str(self.path)


def test_hub_id_is_read_from_its_snapshot_and_recorded(roots: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    fake = FakeSnapshot(roots["umu"], tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    monkeypatch.chdir(tmp_path)
    suite = api.load_suite("linbojunzi/UMU-bench", "forget_5", revision="v1")
    assert suite.info["benchmark"] == "umu"
    assert fake.calls[0]["repo"] == "linbojunzi/UMU-bench" and fake.calls[0]["revision"] == "v1"
    assert fake.calls[0]["repo_type"] == "dataset"
    data = suite.info["data"]
    assert data == {"source": "linbojunzi/UMU-bench", "path": str(fake.path), "revision": "v1",
                    "commit": fake.commit, "fingerprint": data_fingerprint(roots["umu"])}
    run = api.make_run("vanilla", {"forget": {"n": 0}}, model="m", suite=suite, forget="forget_5", seed=0)
    validate_results(new_results([run]))
    assert run["data"]["commit"] == fake.commit
    bad = dict(run, data={**data, "fingerprint": "not hex"})
    with pytest.raises(Exception, match="fingerprint"):
        validate_results(new_results([bad]))


def test_missing_revision_is_one_line(roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeSnapshot(roots["umu"], tmp_path))
    monkeypatch.chdir(tmp_path)
    err = one_line_error(["eval", "--model", "m", "--data", "linbojunzi/UMU-bench", "--revision", "no-such-branch",
                          "--out", "r.json"], capsys)
    assert "linbojunzi/UMU-bench has no revision 'no-such-branch'" in err


def test_revision_of_a_local_folder_is_refused(roots: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["eval", "--model", "m", "--data", str(roots["umu"]), "--revision", "main",
                          "--out", str(tmp_path / "r.json")], capsys)
    assert "--revision 'main' applies to a hub dataset id" in err


def test_local_folder_is_recorded_with_its_fingerprint(roots: dict[str, Path]) -> None:
    data = api.load_suite(roots["clear"], "forget05").info["data"]
    assert data == {"source": str(roots["clear"]), "path": str(roots["clear"]),
                    "fingerprint": data_fingerprint(roots["clear"])}


def test_a_download_in_the_hub_cache_is_fingerprinted_by_its_files(roots: dict[str, Path], tmp_path: Path) -> None:
    """The default hub cache lies under ~/.cache: the data there must count, and only a download's own .cache
    folder (its metadata) must not; two downloads that differ must not share a fingerprint."""
    snaps = tmp_path / ".cache" / "huggingface" / "hub" / "datasets--x--y" / "snapshots"
    a, b = (Path(shutil.copytree(roots["umu"], snaps / rev)) for rev in ("a" * 40, "b" * 40))
    assert data_fingerprint(a) == data_fingerprint(roots["umu"]) != hashlib.sha256(b"").hexdigest()[:16]
    shard = next(b.rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-1] + b"\0")
    assert data_fingerprint(b) != data_fingerprint(a)
    (a / ".cache" / "huggingface").mkdir(parents=True)
    (a / ".cache" / "huggingface" / "meta.json").write_text("{}")  # what a --local-dir download keeps beside
    assert data_fingerprint(a) == data_fingerprint(roots["umu"])


# --------------------------------------------------------------------------- finetune and retrain


def weights(model: Path) -> dict[str, Any]:
    return load_file(str(model / "model.safetensors"))


def changed(a: Path, b: Path) -> list[str]:
    wa, wb = weights(a), weights(b)
    return [k for k in wa if not wa[k].float().equal(wb[k].float())]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_finetune_and_retrain_each_benchmark(roots: dict[str, Path], tiny_models: TinyModels, tmp_path: Path,
                                             kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_models.dir("tiny-llava")
    cache = tmp_path / "cache"
    common = ["--data", str(roots[kind]), "--cache-dir", str(cache)]
    rc, out = run_cli(["finetune", "--model", str(base), "--out", str(tmp_path / "vanilla"), *common, *FAST], capsys)
    assert rc == 0, out
    record = json.loads((tmp_path / "vanilla" / "unsee_vanilla.json").read_text())
    assert record["benchmark"] == kind and record["split"] == {"mllmu": "ft_Data", "clear": "full+tofu",
                                                               "umu": "Full_Set"}[kind]
    assert record["pairs"] == FT_PAIRS[kind][0] and record["stats"]["steps"] == 2
    assert record["recipe"]["scope"] == "lora" and record["recipe"]["lr"] == 1e-3  # the preset, overridden
    assert record["recipe"]["seed"] == (42 if kind == "clear" else 0)  # the preset's own, without --seed
    assert not any("lora_" in k for k in weights(tmp_path / "vanilla"))  # merged on save
    assert changed(base, tmp_path / "vanilla")  # the language model learnt something
    assert not list(cache.glob("*.partial"))  # the checkpoint goes once the entry is saved

    rc, out = run_cli(["retrain", "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "retrained"),
                       *common], capsys)
    assert rc == 0, out
    ref = json.loads((tmp_path / "retrained" / "unsee_retrained.json").read_text())
    total, theirs = FT_PAIRS[kind]
    # one name for one split: CLEAR's forget_10 is its config forget10
    assert ref["forget"] == ("forget10" if kind == "clear" else "forget_10")
    assert ref["dropped_pairs"] == theirs and ref["pairs"] == total - theirs
    # UMU's text pairs are asked with the portrait (its authors' data file); the reference keeps
    # the forget people's as text
    assert ref["pairs_without_photo"] == (2 if kind == "umu" else 0)
    assert ref["recipe"] == record["recipe"] and ref["base_model"] == str(base)
    assert changed(tmp_path / "vanilla", tmp_path / "retrained")  # other data, another model
    # the audits find the reference retrain cached for this vanilla model, as on the built-in world, and the one
    # given by hand is taken under either spelling of its split
    found = find_reference(None, tmp_path / "vanilla", roots[kind], "forget_10", cache)
    assert found is not None and not changed(found, tmp_path / "retrained")
    assert find_reference(None, tmp_path / "vanilla", roots[kind], "forget_5", cache) is None  # not trained
    assert find_reference(None, base, roots[kind], "forget_10", cache) is None  # not unsee's fine-tune
    spellings = ("forget10", "forget_10") if kind == "clear" else ("forget_10",)
    assert all(find_reference(tmp_path / "retrained", None, roots[kind], f) == tmp_path / "retrained"
               for f in spellings)

    # the same fine-tune again comes from the cache, untrained
    rc, out = run_cli(["finetune", "--model", str(base), "--out", str(tmp_path / "again"), *common, *FAST], capsys)
    assert rc == 0, out
    assert json.loads((tmp_path / "again" / "unsee_vanilla.json").read_text())["cached"] is True
    assert not changed(tmp_path / "vanilla", tmp_path / "again")


def test_umu_text_pairs_are_taught_with_the_portrait_and_kept_as_text_for_the_reference(
        roots: dict[str, Path]) -> None:
    """UMU's authors' data file asks UM_QA with the portrait (finetune/info_pre.py); the reference
    must not see the forget people's portraits, but keeps what their text pairs teach."""
    _, pairs = finetune_examples("umu", roots["umu"])
    text_pairs = [e for e in pairs if e.meta["column"] == "UM_QA"]
    assert text_pairs and all(e.has_image for e in pairs)
    kept, dropped, as_text = without_forget("umu", roots["umu"], pairs, "forget_10")
    forget_ids = {"1", "2"}
    assert dropped == 2 and as_text == 2
    assert not any(e.has_image and e.entity in forget_ids for e in kept)
    assert sorted(e.question for e in kept if e.entity in forget_ids) == sorted(
        e.question for e in text_pairs if e.entity in forget_ids)


def test_download_without_the_finetune_split_is_one_line(tmp_path: Path, tiny_models: TinyModels,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    partial = fb.write_clear(tmp_path / "clear", full=False)
    err = one_line_error(["finetune", "--model", str(tmp_path / "no-model"), "--data", str(partial),
                          "--out", str(tmp_path / "v")], capsys)
    assert "CLEAR's fine-tune split 'full+tofu' is not in" in err
    assert "--include 'full+tofu/*'" in err
    mllmu = fb.write_mllmu(tmp_path / "mllmu")
    shutil.rmtree(mllmu / "ft_Data")
    err = one_line_error(["finetune", "--model", str(tmp_path / "no-model"), "--data", str(mllmu),
                          "--out", str(tmp_path / "v")], capsys)
    assert "MLLMU-Bench's fine-tune split 'ft_Data'" in err
    assert not (tmp_path / "v").exists()


def test_recipes_belong_to_their_data(roots: dict[str, Path], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["finetune", "--model", str(tmp_path / "m"), "--data", str(roots["umu"]),
                          "--out", str(tmp_path / "v"), "--config", "quick"], capsys)
    assert "recipe 'quick' trains the built-in world" in err
    err = one_line_error(["finetune", "--model", str(tmp_path / "m"), "--data", str(roots["builtin"]),
                          "--out", str(tmp_path / "v"), "--config", "mllmu"], capsys)
    assert "recipe 'mllmu' is a public benchmark's" in err
    err = one_line_error(["finetune", "--model", str(tmp_path / "m"), "--data", str(roots["mllmu"]),
                          "--out", str(tmp_path / "v"), "epochs=0"], capsys)
    assert "nothing would train" in err
    err = one_line_error(["finetune", "--model", str(tmp_path / "m"), "--data", str(roots["mllmu"]),
                          "--out", str(tmp_path / "v"), "scope=everything"], capsys)
    assert "scope 'everything' is not one of" in err


def test_the_reference_of_a_benchmark_vanilla_is_found_from_anywhere_and_only_for_it(
        roots: dict[str, Path], tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The base model is recorded whole, so retrain and the audits find it from another folder; found at another
    thread count; refused once the base's weights change; and a reference of another benchmark is refused."""
    import torch

    shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / "base")
    cache, data = tmp_path / "cache", roots["mllmu"]
    monkeypatch.chdir(tmp_path)
    rc, out = run_cli(["finetune", "--model", "base", "--out", "vanilla", "--data", str(data), "--cache-dir",
                       str(cache), *FAST], capsys)
    assert rc == 0, out
    assert json.loads((tmp_path / "vanilla" / "unsee_vanilla.json").read_text())["base_model"] == \
        str(tmp_path / "base")
    monkeypatch.chdir(tmp_path / "cache")
    rc, out = run_cli(["retrain", "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "retrained"),
                       "--data", str(data), "--cache-dir", str(cache)], capsys)
    assert rc == 0, out
    found = find_reference(None, tmp_path / "vanilla", data, "forget_10", cache)
    assert found is not None
    # another draw of the reference: its own seed and cache entry, other weights; the recipe's own is still found
    rc, out = run_cli(["retrain", "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "drawn"),
                       "--data", str(data), "--cache-dir", str(cache), "--seed", "1"], capsys)
    assert rc == 0, out
    first, drawn = (json.loads((tmp_path / r / "unsee_retrained.json").read_text()) for r in ("retrained", "drawn"))
    assert drawn["recipe"]["seed"] == 1 != first["recipe"]["seed"] and drawn["entry"] != first["entry"]
    assert model_fingerprint(tmp_path / "drawn") != model_fingerprint(tmp_path / "retrained")
    assert find_reference(None, tmp_path / "vanilla", data, "forget_10", cache) == found
    # asked for by count, the recipe's own draw and then --seed 1 from the cache, as on the built-in world
    cached = find_reference(CachedDraws(2), tmp_path / "vanilla", data, "forget_10", cache)
    assert isinstance(cached, list) and cached[0] == found and cached[1].name == drawn["entry"]
    with pytest.raises(DataError, match=r"1 of the 3 draws .* \(--seed 2\)"):
        find_reference(CachedDraws(3), tmp_path / "vanilla", data, "forget_10", cache)
    with pytest.raises(DataError, match="nosuch"):  # no such split is said as such, not as draws missing
        find_reference(CachedDraws(2), tmp_path / "vanilla", data, "nosuch", cache)
    assert find_reference(None, tmp_path / "vanilla", data, "nosuch", cache) is None  # looked up unasked: none
    both = [tmp_path / "retrained", tmp_path / "drawn"]
    assert find_reference(both, tmp_path / "vanilla", data, "forget_10") == both  # two draws, read as one
    older = Path(shutil.copytree(tmp_path / "vanilla", tmp_path / "sub" / "older"))  # as an older unsee wrote it
    record = json.loads((older / "unsee_vanilla.json").read_text())
    (older / "unsee_vanilla.json").write_text(json.dumps({**record, "base_model": "base"}))
    monkeypatch.chdir(tmp_path)  # where it ran, the path it was given leads to the base
    assert find_reference(None, older, data, "forget_10", cache) == found
    monkeypatch.chdir(tmp_path / "cache")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3 - min(threads, 2))  # trained at this process's count; looked up at another
        assert find_reference(None, tmp_path / "vanilla", data, "forget_10", cache) == found
    finally:
        torch.set_num_threads(threads)
    other = Path(shutil.copytree(tmp_path / "retrained", tmp_path / "clear_ref"))
    record = json.loads((other / "unsee_retrained.json").read_text())
    (other / "unsee_retrained.json").write_text(json.dumps({**record, "benchmark": "clear", "forget": "forget10"}))
    with pytest.raises(DataError, match="retrained on clear, and this run measures mllmu"):
        find_reference(other, tmp_path / "vanilla", data, "forget_10")
    api.init_model("tiny-llava", tmp_path / "base", seed=7, overwrite=True)  # other weights under its name
    assert find_reference(None, tmp_path / "vanilla", data, "forget_10", cache) is None
    err = one_line_error(["retrain", "--model", str(tmp_path / "vanilla"), "--out", str(tmp_path / "r2"), "--data",
                          str(data), "--cache-dir", str(cache)], capsys)
    assert "is no longer the model" in err


def test_a_reference_given_by_hand_is_checked_against_the_benchmark_named(roots: dict[str, Path],
                                                                            tiny_models: TinyModels,
                                                                            tmp_path: Path) -> None:
    """A folder that holds two layouts is read with --benchmark; the reference's check reads it so too."""
    mixed = Path(shutil.copytree(roots["umu"], tmp_path / "mixed"))
    shutil.copytree(roots["mllmu"] / "ft_Data", mixed / "ft_Data")
    ref = Path(shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / "ref"))
    (ref / "unsee_retrained.json").write_text(json.dumps({"benchmark": "umu", "forget": "forget_10"}))
    with pytest.raises(DataError, match="mixes the layouts"):
        find_reference(ref, None, mixed, "forget_10")
    assert find_reference(ref, None, mixed, "forget_10", benchmark="umu") == ref
    with pytest.raises(DataError, match="retrained on umu, and this run measures mllmu"):
        find_reference(ref, None, roots["mllmu"], "forget_10")


def test_a_cached_fine_tune_under_a_launch_is_published_by_the_first_process_alone(
        roots: dict[str, Path], tiny_models: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """On a cache hit nothing trains, and every process published: the others then found the first's output."""
    from unsee import finetune_bench

    common = ["--model", str(tiny_models.dir("tiny-llava")), "--data", str(roots["mllmu"]), "--cache-dir",
              str(tmp_path / "cache"), *FAST]
    assert run_cli(["finetune", "--out", str(tmp_path / "first"), *common], capsys)[0] == 0
    monkeypatch.setattr(finetune_bench, "is_main_process", lambda: False)  # another process of the launch
    assert run_cli(["finetune", "--out", str(tmp_path / "again"), *common], capsys)[0] == 0
    assert not (tmp_path / "again").exists()


def test_retrain_needs_a_benchmark_vanilla(roots: dict[str, Path], tiny_models: TinyModels, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["retrain", "--model", str(tiny_models.dir("tiny-llava")), "--data", str(roots["umu"]),
                          "--out", str(tmp_path / "r")], capsys)
    assert "was not made by unsee finetune" in err


@pytest.mark.parametrize("kind", KINDS)
def test_presets_load(kind: str) -> None:
    from unsee.bench_recipe import load_recipe

    cfg = load_recipe(kind, None)
    assert cfg.scope == "lora" and cfg.dtype == "bf16" and cfg.gradient_checkpointing
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.lora_r, cfg.lora_alpha) == {
        "mllmu": (5, 2e-5, 4, 16, 16), "clear": (3, 1e-5, 8, 8, 32), "umu": (5, 2e-5, 4, 8, 16)}[kind]


class _Stop(Exception):
    """Stands for the user's Ctrl-C at a chosen step."""


@pytest.mark.slow
def test_an_interrupted_finetune_resumes_to_the_same_model(roots: dict[str, Path], tiny_models: TinyModels,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from unsee import finetune_bench

    base = tiny_models.dir("tiny-llava")
    opts = [o for o in FAST if not o.startswith("max_steps")] + ["max_steps=5", "checkpoint_every=2",
                                                                 "lora_dropout=0"]
    args = ["finetune", "--model", str(base), "--data", str(roots["mllmu"]), *opts]
    rc, out = run_cli([*args, "--out", str(tmp_path / "whole"), "--cache-dir", str(tmp_path / "c1")], capsys)
    assert rc == 0, out

    real = finetune_bench._SFT.loss

    def stop_at_3(self: Any, ctx: Any, batch: Any) -> Any:
        if ctx.step == 3:
            raise KeyboardInterrupt
        return real(self, ctx, batch)

    monkeypatch.setattr(finetune_bench._SFT, "loss", stop_at_3)
    assert main([*args, "--out", str(tmp_path / "resumed"), "--cache-dir", str(tmp_path / "c2")]) == 130
    assert list((tmp_path / "c2").glob("*.partial")) and not (tmp_path / "resumed").exists()
    monkeypatch.setattr(finetune_bench._SFT, "loss", real)
    rc, out = run_cli([*args, "--out", str(tmp_path / "resumed"), "--cache-dir", str(tmp_path / "c2")], capsys)
    assert rc == 0, out
    assert not changed(tmp_path / "whole", tmp_path / "resumed")
    assert changed(base, tmp_path / "resumed")


@pytest.mark.slow
def test_finetune_on_qwen2_vl(roots: dict[str, Path], tiny_models: TinyModels, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    base = tiny_models.dir("tiny-qwen2-vl")
    rc, out = run_cli(["finetune", "--model", str(base), "--data", str(roots["clear"]), "--out", str(tmp_path / "v"),
                       "--cache-dir", str(tmp_path / "c"), *FAST], capsys)
    assert rc == 0, out
    assert changed(base, tmp_path / "v")
    assert json.loads((tmp_path / "v" / "config.json").read_text())["model_type"] == "qwen2_vl"


@pytest.mark.slow
def test_finetune_under_two_processes_matches_one(roots: dict[str, Path], tiny_models: TinyModels,
                                                  tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli finetune`: each process trains its share of every batch;
    the first writes the model, the same as one process does."""
    from test_scale import launch

    base = tiny_models.dir("tiny-llava")
    opts = [o for o in FAST if not o.startswith("batch_size")] + ["batch_size=4", "lora_dropout=0"]
    common = ["--model", str(base), "--data", str(roots["umu"]), *opts]
    proc = launch("-m", "unsee.cli", "finetune", *common, "--out", str(tmp_path / "two"),
                  "--cache-dir", str(tmp_path / "c2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["finetune", *common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "c1")]) == 0
    start, one, two = (weights(p) for p in (base, tmp_path / "one", tmp_path / "two"))
    moved = sum(float((one[k].float() - start[k].float()).pow(2).sum()) for k in one)
    apart = sum(float((two[k].float() - one[k].float()).pow(2).sum()) for k in one)
    assert moved > 0 and apart < 1e-4 * moved


def test_the_world_keeps_its_staged_recipe(roots: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """On the built-in world, `unsee finetune` is the staged recipe, with its own default config and seed."""
    import unsee.finetune as world_ft

    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(world_ft, "finetune", lambda *a, **k: calls.append((a, k)) or Path(a[2]))
    assert main(["finetune", "--model", "m", "--data", str(roots["builtin"]), "--out", str(tmp_path / "v")]) == 0
    (model, data, out), kw = calls[0]
    assert (model, Path(data), Path(out)) == ("m", roots["builtin"], tmp_path / "v")
    assert kw["config"] == "default" and kw["seed"] is None


def test_a_split_is_recorded_by_one_name_and_the_items_seed_with_the_data(roots: dict[str, Path],
                                                                         tiny_models: TinyModels,
                                                                         tmp_path: Path) -> None:
    """forget_5 and forget05 are one CLEAR split; a report must not hold them apart. Another seed draws
    other items (held-out views, option positions), so the data record says which."""
    model = tiny_models.dir("tiny-llava")
    spelt = [api.evaluate(model, roots["clear"], tmp_path / f"{f}.json", forget=f, max_items=1)["runs"][0]
             for f in ("forget_5", "forget05")]
    assert [r["forget_split"] for r in spelt] == ["forget05", "forget05"]
    assert "seed" not in spelt[0]["data"]
    again = api.evaluate(model, roots["mllmu"], tmp_path / "s1.json", forget="forget_5", max_items=1, seed=1)
    assert again["runs"][0]["data"]["seed"] == 1


def test_the_known_peoples_text_questions_are_scored_beside_their_photos(roots: dict[str, Path],
                                                                          tiny_models: TinyModels,
                                                                          tmp_path: Path) -> None:
    """Both benchmarks' scripts score their real people's text questions; results.json carries them as
    ``text_known``, outside the unlearning score's retention (which reads ``known``, their photos)."""
    model = tiny_models.dir("tiny-llava")
    for bench, split in (("mllmu", "forget_5"), ("umu", "forget_10")):
        run = api.evaluate(model, roots[bench], tmp_path / f"{bench}.json", forget=split, max_items=2)["runs"][0]
        suite = api.load_suite(roots[bench], split)
        text_known = run["metrics"]["text_known"]
        assert text_known["n"] == min(2, sum(e.task == "mcq" for e in suite.groups["text_known"])) > 0
        assert 0.0 <= text_known["mcq"] <= 1.0 and "ci95" in text_known
        assert list(run["metrics"]).index("text_known") > list(run["metrics"]).index("known")
    assert "text_known" not in RETENTION_GROUPS


@pytest.mark.parametrize(("kind", "requests"), [("clear", "forget01,forget05"), ("umu", "forget_5,forget_10")])
def test_continual_requests_on_a_benchmark_without_request_splits_are_one_line(
        kind: str, requests: str, roots: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["unlearn", "--method", "graddiff", "--model", str(tmp_path / "m"), "--data",
                          str(roots[kind]), "--requests", requests, "--out", str(tmp_path / "o")], capsys)
    assert f"continual requests (--requests) leave every request's people out of the retained ones, and {kind}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("kind", "split"), [("mllmu", "ft_Data"), ("clear", "full+tofu")])
def test_a_download_of_the_fine_tune_split_alone_is_that_benchmark(kind: str, split: str, roots: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """`unsee finetune` reads the fine-tune split alone, and the error that names it says to download just that:
    naming the benchmark must accept such a folder, as detection does, and still refuse another kind."""
    only = tmp_path / kind
    shutil.copytree(roots[kind] / split, only / split)
    assert benchmark_of(only) == benchmark_of(only, kind) == kind
    other = "umu" if kind == "clear" else "clear"
    with pytest.raises(DataError, match=f"--benchmark {other}: .* is not"):
        benchmark_of(only, other)
