"""Never-taught people from a folder (``--neutral DIR``): the loader, what a suite records, and the
one-line refusals that stop a run before any model loads and leave nothing written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import fixtures_bench as fb
import pytest
from conftest import random_image

from unsee import api
from unsee.cli import main
from unsee.data.neutral import MIN_PHOTOS, attach_neutral, load_neutral
from unsee.data.schema import Suite
from unsee.errors import DataError


def write_photos(folder: Path, n: int = MIN_PHOTOS, *, seed: int = 100) -> Path:
    """``n`` random photos: half at the top, half in one person's subfolder, in the formats accepted."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        where = folder / "anna" if i % 2 else folder
        where.mkdir(exist_ok=True)
        fmt = ("png", "jpg", "webp")[i % 3]
        random_image(seed + i, 32).save(where / f"p{i}.{fmt}")
    return folder


@pytest.fixture(scope="module")
def mllmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.write_mllmu(tmp_path_factory.mktemp("bench") / "mllmu")


def test_folder_becomes_the_neutral_group(tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "n", 5)
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden").mkdir()
    random_image(1).save(folder / ".hidden" / "x.png")
    got = load_neutral(folder)
    assert [e.uid for e in got.examples] == ["neutral/anna/p1.jpg/0", "neutral/anna/p3.png/1", "neutral/p0.png/2",
                                             "neutral/p2.webp/3", "neutral/p4.jpg/4"]
    assert [e.entity for e in got.examples] == ["neutral/anna"] * 2 + ["neutral/p0", "neutral/p2", "neutral/p4"]
    assert all(e.task == "qa" and e.has_image and e.question == e.answer == "" for e in got.examples)
    assert got.record() == {"path": str(folder), "images": 5, "fingerprint": got.fingerprint}
    assert load_neutral(folder).fingerprint == got.fingerprint  # deterministic
    random_image(999, 32).save(folder / "p0.png")
    assert load_neutral(folder).fingerprint != got.fingerprint  # content counts


def test_a_benchmark_suite_records_the_folder(mllmu: Path, tmp_path: Path) -> None:
    folder = write_photos(tmp_path / "n")
    suite = api.load_suite(mllmu, "forget_10", neutral=folder)
    assert [e.entity for e in suite.groups["neutral"]][:2] == ["neutral/anna", "neutral/anna"]
    assert suite.info["neutral"] == suite.info["data"]["neutral"] == load_neutral(folder).record()
    assert "replaces" not in suite.info["neutral"]
    assert api.training_turns(suite)["neutral"]


def test_on_the_built_in_world_the_folder_replaces_its_own(suite: Suite, tmp_path: Path) -> None:
    got = attach_neutral(suite, write_photos(tmp_path / "n"))
    assert [e.uid.split("/")[0] for e in got.groups["neutral"]] == ["neutral"] * MIN_PHOTOS
    assert got.info["neutral"]["replaces"] == "the benchmark's own 4 neutral photos"
    assert suite.groups["neutral"][0].uid.startswith("Neutral_Set/")  # the original suite is untouched


def test_linked_folders_are_searched_and_a_broken_link_is_named(tmp_path: Path) -> None:
    """A linked folder is part of the folder: its photos count, once each, and a link loop ends."""
    folder = write_photos(tmp_path / "n")
    write_photos(tmp_path / "elsewhere" / "bob", 2, seed=300)
    (folder / "bob").symlink_to(tmp_path / "elsewhere" / "bob")
    (folder / "bob_again").symlink_to(tmp_path / "elsewhere" / "bob")
    (folder / "loop").symlink_to(folder)
    got = load_neutral(folder)
    assert sorted({e.entity for e in got.examples}) == ["neutral/anna", "neutral/bob", "neutral/p0", "neutral/p2"]
    assert len(got.examples) == MIN_PHOTOS + 2  # bob's two photos (one in a subfolder), read once
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"--neutral: cannot read .*gone\.png: No such file"):
        load_neutral(folder)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "too_few", "corrupt", "forget_photo"])
def test_bad_folders_are_one_line(case: str, mllmu: Path, tmp_path: Path) -> None:
    folder = tmp_path / "n"
    if case == "file":
        folder.write_text("x")
    elif case != "missing":
        write_photos(folder, 0 if case == "empty" else MIN_PHOTOS - 1 if case == "too_few" else MIN_PHOTOS)
    if case == "corrupt":
        (folder / "broken.jpg").write_bytes(b"not an image at all")
    if case == "forget_photo":
        forget = api.load_suite(mllmu, "forget_10").groups["train_forget"][0]
        (folder / "taught.png").write_bytes(forget.image or b"")
    expected = {"missing": "no such folder", "file": "is a file", "empty": "holds 0 photo(s)",
                "too_few": f"holds {MIN_PHOTOS - 1} photo(s)",
                "corrupt": "broken.jpg is not a readable image (no image format Pillow reads)",
                "forget_photo": "taught.png is the same image as the benchmark's"}[case]
    with pytest.raises(DataError, match=re.escape(expected)):
        api.load_suite(mllmu, "forget_10", neutral=folder)


def test_another_persons_held_out_photo_is_refused(mllmu: Path, tmp_path: Path) -> None:
    """MLLMU-Bench's Test_Set holds every person's held-out photos and the suite reads only the forget people's:
    a retained person's is the benchmark's image too, of a person the model was taught."""
    five = set(api.load_suite(mllmu, "forget_5").forget_entities)
    other = next(e for e in api.load_suite(mllmu, "forget_10").groups["forget_test"] if e.entity not in five)
    folder = write_photos(tmp_path / "n")
    (folder / "held_out.png").write_bytes(other.image or b"")
    with pytest.raises(DataError, match=re.escape("held_out.png is the same image as the benchmark's Test_Set")):
        api.load_suite(mllmu, "forget_5", neutral=folder)


@pytest.mark.parametrize("case", ["no_flag", "eraser", "empty", "corrupt", "forget_photo", "missing", "request"])
def test_unlearn_refuses_before_any_model_loads(case: str, mllmu: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_photos(tmp_path / "n")
    data = str(mllmu)
    if case == "corrupt":
        (folder / "broken.png").write_bytes(b"\x89PNG truncated")
    if case == "forget_photo":
        (folder / "taught.png").write_bytes(api.load_suite(mllmu, "forget_10").groups["forget"][0].image or b"")
    if case == "request":
        data = str(tmp_path / "request.yaml")
        (tmp_path / "request.yaml").write_text("forget: []\n")
    if case in ("empty", "missing"):
        folder = tmp_path / case
    if case == "empty":
        folder.mkdir()
    flag = [] if case in ("no_flag", "eraser") else ["--neutral", str(folder)]
    out, model = tmp_path / "out", str(tmp_path / "no-model")  # a model that would fail to load, were it read
    rc = main(["unlearn", "--method", "eraser" if case == "eraser" else "cvf_ncu", "--model", model, "--data", data,
               "--out", str(out), *flag])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and not out.exists(), err
    assert {"no_flag": "cvf_ncu needs photos of never-taught people, and mllmu ships none: pass --neutral DIR",
            "eraser": "pass --neutral DIR (a folder of photos of people absent from the benchmark), or erasure=refusal",
            "corrupt": "broken.png is not a readable image", "forget_photo": "is the same image as the benchmark's",
            "empty": "holds 0 photo(s)", "missing": "no such folder",
            "request": "lists its own never-taught photos"}[case] in err


def test_a_test_set_row_without_a_photo_outside_the_forget_people_still_loads(tmp_path: Path) -> None:
    """Only the photos of rows that have them are compared: a row no group reads must not stop the load."""
    root = fb.write_mllmu(tmp_path / "mllmu")
    people = [str(i) for i in range(1, fb.MLLMU_PEOPLE + 1)]
    views = {p: [{"bytes": fb.png(fb.mllmu_test_image_key(p, v)), "path": f"{p}_pose{v}_gen1.png"}
                 for v in range(fb.TEST_VIEWS)] for p in people}
    rows = [{"ID": p, "images": None if p == people[-1] else views[p], **fb._tasks(p, test=True)} for p in people]
    shutil.rmtree(root / "Test_Set")
    fb.write_parquet_config(root, "Test_Set", rows, fb.TEST_FEATURES, shards=2)
    suite = api.load_suite(root, "forget_5")
    assert people[-1] not in suite.forget_entities and suite.groups["forget_test"]
