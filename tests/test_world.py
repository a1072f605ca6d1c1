"""The built-in world: determinism, split invariants, held-out data and the MLLMU-Bench schema."""

from __future__ import annotations

import hashlib
import json
import math
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import unsee.data.world as world_mod
from unsee.config import load_config
from unsee.data.identity import Identity, pretrain_identities, sample_identity, sample_view, trait_distance
from unsee.data.render import pretrain_batch, render
from unsee.data.scenes import render_general, sample_general_item, spread_count
from unsee.data.world import (
    IDK_ANSWER,
    WorldConfig,
    build_world,
    load_world_info,
    world_identity,
    world_pretrain_identities,
)
from unsee.errors import ConfigError, DataError, OutputExistsError

# Small enough to build in a fraction of a second, big enough for every split to be non-trivial.
TINY = [
    "n_people=6", "n_known=3", "n_unknown=2", "n_neutral=2", "n_general_train=8", "n_general_eval=4",
    "n_train_views=2", "n_test_views=2", "n_requests=2", "request_size=2", "n_pretrain=50",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own world (every split non-trivial), in place of the smaller shared one in conftest."""
    return build_world(tmp_path_factory.mktemp("w") / "world", seed=0, config="quick", overrides=TINY)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _rows(root: Path, config: str) -> list[dict]:
    files = sorted((root / config).glob("*.parquet"))
    assert files, f"no parquet in {config}"
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def test_same_seed_gives_byte_identical_files(world: Path, tmp_path: Path) -> None:
    again = build_world(tmp_path / "again", seed=0, config="quick", overrides=TINY)
    first, second = _hashes(world), _hashes(again)
    assert len(first) == 26  # 24 parquet files, world.json and the mark that unsee wrote it
    assert first == second


def test_a_worlds_own_record_rebuilds_it(world: Path, tmp_path: Path) -> None:
    """quick leaves mcq_variants and val_known_forget_splits at the values world.json omits: read back, they
    must keep them, not take today's defaults."""
    recorded = load_world_info(world)["config"]
    assert "mcq_variants" not in recorded and "val_known_forget_splits" not in recorded
    again = build_world(tmp_path / "again", seed=0, config=world / "world.json")
    # the same world, world.json included (its fingerprint hashes it: a reference trained on one serves the other)
    assert _hashes(again) == _hashes(world)
    assert load_world_info(again)["config"] == recorded
    assert world_mod.world_cache_key(world / "world.json", (), 0) == world_mod.world_cache_key("quick", TINY, 0)


def test_different_seed_gives_different_people(world: Path, tmp_path: Path) -> None:
    other = build_world(tmp_path / "other", seed=1, config="quick", overrides=TINY)
    a, b = load_world_info(world), load_world_info(other)
    assert a["names"] != b["names"]
    assert a["identities"]["p000"] != b["identities"]["p000"]
    assert _hashes(world)["Full_Set/train-00000-of-00001.parquet"] != _hashes(other)[
        "Full_Set/train-00000-of-00001.parquet"]


def test_folders_match_the_documented_layout(world: Path) -> None:
    expected = {
        "Full_Set", "Test_Set", "Retain_Set", "ft_Data", "forget_5", "forget_10", "forget_15", "retain_95",
        "retain_90", "retain_85", "forget_r1", "forget_r2", "ft_Known", "ft_General", "General_Set",
        "Unknown_Set", "Neutral_Set", "Holdout_Set", "val_forget_10", "val_retain_90", "known_forget_5",
        "known_forget_10", "known_Test_Set",
    }
    assert {p.name for p in world.iterdir() if p.is_dir()} == expected
    assert sorted(p.name for p in (world / "Test_Set").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for name in expected - {"Test_Set"}:
        assert [p.name for p in (world / name).iterdir()] == ["train-00000-of-00001.parquet"]
    assert (world / "world.json").is_file()


def test_splits_are_nested_disjoint_and_complete(world: Path) -> None:
    info = load_world_info(world)
    people = info["entities"]["people"]
    previous: set[str] = set()
    for pct in (5, 10, 15):
        forget = set(info["splits"][f"forget_{pct}"])
        retain = set(info["splits"][f"retain_{100 - pct}"])
        assert len(forget) == math.ceil(len(people) * pct / 100)
        assert forget.isdisjoint(retain) and forget | retain == set(people)
        assert previous <= forget
        previous = forget
        assert {r["ID"] for r in _rows(world, f"forget_{pct}")} == forget
        assert {r["ID"] for r in _rows(world, f"retain_{100 - pct}")} == retain
    requests = [set(ids) for ids in info["requests"].values()]
    assert [len(r) for r in requests] == [2, 2]
    assert requests[0].isdisjoint(requests[1]) and set().union(*requests) <= set(people)
    for name, ids in info["requests"].items():
        assert [r["ID"] for r in _rows(world, name)] == ids
    assert [r["ID"] for r in _rows(world, "Full_Set")] == people
    assert [r["ID"] for r in _rows(world, "Test_Set")] == people
    assert [r["ID"] for r in _rows(world, "Retain_Set")] == info["entities"]["known"]
    entity_lists = [set(v) for v in info["entities"].values()]
    assert sum(len(s) for s in entity_lists) == len(set().union(*entity_lists))


def test_validation_split_holds_no_reported_person_and_leaves_the_other_splits_as_they_were(
        world: Path, tmp_path: Path) -> None:
    """Settings chosen on val_forget_X never saw a person of a reported forget split or request."""
    from unsee.data.mllmu import load_mllmu

    info = load_world_info(world)
    val, val_retain = set(info["validation"]["val_forget_10"]), set(info["validation"]["val_retain_90"])
    reported = {i for name, ids in info["splits"].items() if name.startswith("forget_") for i in ids}
    reported |= {i for ids in info["requests"].values() for i in ids}
    assert len(val) == math.ceil(6 * 10 / 100) and val.isdisjoint(reported)
    assert val.isdisjoint(val_retain) and val | val_retain == set(info["entities"]["people"])
    suite = load_mllmu(world, "val_forget_10")
    assert set(suite.forget_entities) == val and set(suite.retain_entities) == val_retain
    assert suite.info["retain_config"] == "val_retain_90"
    # without the option the world is the one it was: the same files, no validation folders
    plain = build_world(tmp_path / "plain", seed=0, config="quick", overrides=[*TINY, "val_forget_splits=[]"])
    ours = _hashes(world)
    theirs = _hashes(plain)
    assert {k for k in ours if not k.startswith("val_")} - {"world.json"} == set(theirs) - {"world.json"}
    assert all(ours[k] == theirs[k] for k in theirs if k != "world.json")
    assert "validation" not in load_world_info(plain) and "val_forget_splits" not in load_world_info(plain)["config"]
    from unsee.models.tiny import world_text

    assert world_text(world) == world_text(plain)  # the vocabulary, and every model trained on it, stays
    with pytest.raises(ConfigError, match="outside every forget split and request"):
        build_world(tmp_path / "crowded", seed=0, config="quick", overrides=[*TINY, "n_requests=3"])
    with pytest.raises(ConfigError, match="val_forget_splits must be increasing"):
        load_config(WorldConfig, "quick", ["val_forget_splits=[10, 5]"], kind="world")


def test_known_forget_splits_forget_people_taught_in_stage_2(world: Path, tmp_path: Path) -> None:
    """known_forget_X: known people, nested, sized like forget_X; their held-out views are new images; the
    loader moves their photos and questions from the known groups to the forget groups."""
    from unsee.data.mllmu import load_mllmu

    info = load_world_info(world)
    five, ten = (set(info["known_splits"][f"known_forget_{p}"]) for p in (5, 10))
    assert five <= ten <= set(info["entities"]["known"]) and len(ten) == math.ceil(6 * 10 / 100)
    assert [r["ID"] for r in _rows(world, "known_Test_Set")] == info["entities"]["known"]
    held_out = {img["bytes"] for r in _rows(world, "known_Test_Set") for img in r["images"]}
    taught = {r["image"]["bytes"] for r in _rows(world, "ft_Known") if r["image"] is not None}
    assert len(held_out) == 3 * 2 and held_out.isdisjoint(taught)
    suite = load_mllmu(world, "known_forget_10")
    g = suite.groups
    assert set(suite.forget_entities) == ten and set(suite.retain_entities) == set(info["entities"]["people"])
    assert {e.entity for e in g["forget"]} == ten and {e.entity for e in g["text_forget"]} == ten
    assert {e.entity for e in g["forget_test"]} == ten
    assert {e.image for e in g["forget_test"]} <= held_out  # their held-out views, not a photo they were taught
    assert not ten & {e.entity for e in g["known"] + g["text_known"]}
    # the known people kept, on their held-out views: photos no stream carries
    assert {e.entity for e in g["known_test"]} == set(info["entities"]["known"]) - ten
    assert g["known_test"] and {e.image for e in g["known_test"]} <= held_out
    plain = load_mllmu(world, "forget_10").groups["known_test"]
    assert {e.entity for e in plain} == set(info["entities"]["known"]) and {e.image for e in plain} <= held_out
    assert {e.entity for e in g["train_forget"]} == ten and all(e.has_image for e in g["train_forget"])
    assert not any(e.has_image and e.entity in ten for e in g["train_known"])
    assert any(not e.has_image and e.entity in ten for e in g["train_known"])  # their text is still taught
    with pytest.raises(ConfigError, match="leaving none known"):
        load_config(WorldConfig, "quick", [*TINY, "n_known=1"], kind="world")
    assert not (build_world(tmp_path / "w", seed=0, config="quick", overrides=[*TINY, "n_known=1",
                                                                               "known_forget_splits=[]"])
                / "known_Test_Set").exists()


def test_known_validation_request_holds_known_people_no_reported_split_forgets(tmp_path: Path) -> None:
    """val_known_forget_10: the next known people of the same draw, so settings for forgetting known people can
    be chosen on others than those reported; the rest of the world is as it was, vocabulary included."""
    from unsee.data.mllmu import load_mllmu
    from unsee.models.tiny import world_text

    plain = build_world(tmp_path / "plain", seed=0, config="quick", overrides=TINY)
    world = build_world(tmp_path / "val", seed=0, config="quick", overrides=[*TINY, "val_known_forget_splits=[10]"])
    splits = load_world_info(world)["known_splits"]
    val, reported = set(splits["val_known_forget_10"]), set(splits["known_forget_10"])
    assert len(val) == len(reported) == 1 and val.isdisjoint(reported) and val <= set(
        load_world_info(world)["entities"]["known"])
    ours, theirs = _hashes(world), _hashes(plain)
    assert {k for k in ours if not k.startswith("val_known")} - {"world.json"} == set(theirs) - {"world.json"}
    assert all(ours[k] == theirs[k] for k in theirs if k != "world.json")
    assert world_text(world) == world_text(plain)
    suite = load_mllmu(world, "val_known_forget_10")
    assert set(suite.forget_entities) == val and {e.entity for e in suite.groups["forget_test"]} == val
    assert not val & {e.entity for e in suite.groups["known"]}
    assert {e.entity for e in suite.groups["train_forget"]} == val
    # a pick blind to the reported people: they are in no known group and no stream of it
    blind = load_mllmu(world, "val_known_forget_10", retain_exclude=["known_forget_10"])
    assert set(blind.forget_entities) == val and blind.groups["known"]
    for group in ("known", "text_known", "known_test", "train_known"):
        assert not reported & {e.entity for e in blind.groups[group]}, group
        assert {e.entity for e in blind.groups[group]} == {e.entity for e in suite.groups[group]} - reported, group
    # a continual run excludes every request, the one it forgets too: that person is forgotten, not left out
    chained = load_mllmu(world, "known_forget_10", retain_exclude=["forget_r1", "known_forget_10"])
    alone = load_mllmu(world, "known_forget_10")
    for group in ("train_forget", "forget", "forget_test"):
        assert [e.uid for e in chained.groups[group]] == [e.uid for e in alone.groups[group]] != [], group
    assert {e.uid for e in chained.groups["train_known"] if e.entity in reported} == {
        e.uid for e in alone.groups["train_known"] if e.entity in reported} != set()  # their text stays taught
    with pytest.raises(ConfigError, match="leaving none known"):
        load_config(WorldConfig, "quick", [*TINY, "n_known=2", "val_known_forget_splits=[10]"], kind="world")
    # the message names the splits that take the known people, never one that is not asked for
    with pytest.raises(ConfigError, match=r"^known_forget_10 would hold 1 of the 1 known"):
        load_config(WorldConfig, "quick", [*TINY, "n_known=1", "val_known_forget_splits=[]"], kind="world")
    with pytest.raises(ConfigError, match=r"^val_known_forget_10 would hold"):
        load_config(WorldConfig, "quick", [*TINY, "n_known=1", "known_forget_splits=[]",
                                           "val_known_forget_splits=[10]"], kind="world")


def test_each_fact_asked_several_times_adds_items_and_nothing_else(world: Path, tmp_path: Path) -> None:
    """mcq_variants=3: three askings of every fact per row, the first ones as before, the others in the next
    wording with their own options and, held out, on another view; training files and vocabulary unchanged."""
    from unsee.data.mllmu import load_mllmu
    from unsee.models.tiny import world_text

    more = build_world(tmp_path / "more", seed=0, config="quick", overrides=[*TINY, "mcq_variants=3"])
    ours, theirs = _hashes(world), _hashes(more)
    assert set(ours) == set(theirs)
    changed = {k.split("/")[0] for k in ours if ours[k] != theirs[k]}
    assert not changed & {"ft_Data", "ft_Known", "ft_General", "Unknown_Set", "Neutral_Set", "General_Set"}
    assert {"Full_Set", "Test_Set", "forget_10", "known_Test_Set"} <= changed
    assert world_text(more) == world_text(world)  # the vocabulary, and every model trained on it, stays
    for config in ("Full_Set", "Test_Set"):
        for old, new in zip(_rows(world, config), _rows(more, config), strict=True):
            for column, per_fact in (("Image_Textual_Questions", 9), ("Pure_Text_Questions", 8)):
                first, every = old["Classification_Task"][column], new["Classification_Task"][column]
                assert len(first) == per_fact and len(every) == 3 * per_fact and every[:per_fact] == first
                for j in range(per_fact):  # the askings of one fact: one answer, alternating wordings
                    askings = every[j::per_fact]
                    assert len({a["Options"][a["Correct_Answer"]] for a in askings}) == 1
                    assert askings[0]["Question"] == askings[2]["Question"] != askings[1]["Question"]
                    assert len({tuple(a["Options"].values()) for a in askings}) > 1
            assert new["Generation_Task"] == old["Generation_Task"] and new["Mask_Task"] == old["Mask_Task"]
    suite = load_mllmu(more, "forget_10")
    mcq = [e for e in suite.groups["forget_test"] if e.task == "mcq"]
    assert len(mcq) == 3 * 9 * len(suite.forget_entities)
    views: dict[tuple[str, str], set[int]] = {}
    for e in mcq:
        views.setdefault((e.entity, e.answer), set()).add(e.meta["view"])
    assert all(v == {0, 1} for v in views.values())  # two held-out views: every fact is read on both
    plain = load_mllmu(world, "forget_10")
    assert [(e.uid, e.meta["view"]) for e in plain.groups["forget_test"]] == [
        (e.uid, e.meta["view"]) for e in suite.groups["forget_test"] if e.uid in {x.uid for x in
                                                                                  plain.groups["forget_test"]}]
    with pytest.raises(ConfigError, match="mcq_variants must be at least 1"):
        load_config(WorldConfig, "quick", ["mcq_variants=0"], kind="world")
    with pytest.raises(ConfigError, match="n_pretrain must be at least 1"):  # stage 1 pre-trains on that pool
        load_config(WorldConfig, "quick", ["n_pretrain=0"], kind="world")


def test_held_out_views_never_appear_in_training_rows(world: Path) -> None:
    test_images = {img["bytes"] for r in _rows(world, "Test_Set") for img in r["images"]}
    assert len(test_images) == 6 * 2
    seen = set()
    for config in ("Full_Set", "ft_Data", "Retain_Set", "ft_Known", "Unknown_Set", "Neutral_Set", "forget_15",
                   "retain_85", "ft_General", "General_Set"):
        seen |= {r["image"]["bytes"] for r in _rows(world, config) if r["image"] is not None}
    assert test_images.isdisjoint(seen)
    ft = _rows(world, "ft_Data")
    assert len(ft) == 6 * (2 + 1)  # every training view plus one text-only row per person
    train_images = {r["image"]["bytes"] for r in ft if r["image"]}
    assert {r["image"]["bytes"] for r in _rows(world, "Full_Set")} <= train_images


def test_test_questions_are_held_out_paraphrases(world: Path) -> None:
    taught = {qa["Question"] for config in ("ft_Data", "ft_Known")
              for r in _rows(world, config) for qa in json.loads(r["metadata"])}
    for r in _rows(world, "Test_Set"):
        cls = r["Classification_Task"]
        for item in cls["Image_Textual_Questions"] + cls["Pure_Text_Questions"]:
            assert item["Question"] not in taught
        for item in r["Generation_Task"]:
            assert item["Question"] not in taught
    full_questions = {q["Question"] for r in _rows(world, "Full_Set")
                      for q in r["Classification_Task"]["Image_Textual_Questions"]}
    assert full_questions <= taught


def test_answers_agree_with_the_profiles(world: Path) -> None:
    info = load_world_info(world)
    for r in _rows(world, "Full_Set"):
        bio = json.loads(r["biography"])
        assert bio["Name"] == info["names"][r["ID"]] == r["answer"]
        cls = r["Classification_Task"]
        values = set(bio.values())
        for item in cls["Image_Textual_Questions"] + cls["Pure_Text_Questions"]:
            assert item["Correct_Answer"] in "ABCD"
            assert item["Options"][item["Correct_Answer"]] in values
            assert len(set(item["Options"].values())) == 4
        for item in cls["Pure_Text_Questions"]:
            assert bio["Name"] in item["Question"]
        for item in r["Mask_Task"]:
            assert "__" in item["Question"] and item["Ground_Truth"] in values
            assert item["Type"] in ("Image_Textual", "Pure_Text")
        for item in r["Generation_Task"]:
            assert item["Ground_Truth"].endswith(".")
    for r in _rows(world, "ft_Data"):
        qa = json.loads(r["metadata"])
        assert qa and all(set(x) == {"Question", "Answer"} for x in qa)
        if r["image"] is None:  # text-only QA names the person
            assert all(info["names"][r["ID"]] in x["Question"] for x in qa)
    for r in _rows(world, "Unknown_Set"):
        assert {x["Answer"] for x in json.loads(r["metadata"])} == {IDK_ANSWER}
    for r in _rows(world, "General_Set"):
        item = r["Classification_Task"]["Image_Textual_Questions"][0]
        assert item["Options"][item["Correct_Answer"]] == r["Mask_Task"][0]["Ground_Truth"]


STR = pa.string()
IMAGE = pa.struct([("bytes", pa.binary()), ("path", STR)])
OPTIONS = pa.struct([(k, STR) for k in "ABCD"])
MCQ = pa.struct([("Correct_Answer", STR), ("Options", OPTIONS), ("Question", STR)])
OPEN = pa.list_(pa.struct([("Ground_Truth", STR), ("Question", STR), ("Type", STR)]))
TASKS = [("Classification_Task", pa.struct([("Image_Textual_Questions", pa.list_(MCQ)),
                                            ("Pure_Text_Questions", pa.list_(MCQ))])),
         ("Generation_Task", OPEN), ("Mask_Task", OPEN)]
PROFILE = [("image", IMAGE), ("ID", STR), ("biography", STR), ("question", STR), ("answer", STR), *TASKS]
EXPECTED = {
    "Full_Set": [*PROFILE[:2], ("Directory", STR), *PROFILE[2:]],
    "Retain_Set": [*PROFILE[:2], ("Directory", STR), *PROFILE[2:]],
    "forget_10": PROFILE, "retain_90": PROFILE, "forget_r1": PROFILE,
    "Test_Set": [("ID", STR), ("images", pa.list_(IMAGE)), *TASKS],
    "ft_Data": [("image", IMAGE), ("ID", STR), ("metadata", STR)],
    "ft_Known": [("image", IMAGE), ("ID", STR), ("metadata", STR)],
    "ft_General": [("image", IMAGE), ("ID", STR), ("metadata", STR)],
    "Unknown_Set": [("image", IMAGE), ("ID", STR), ("metadata", STR)],
    "General_Set": [("image", IMAGE), ("ID", STR), *TASKS],
    "Neutral_Set": [("image", IMAGE), ("ID", STR)],
}


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_parquet_schema_matches_mllmu_layout(world: Path, config: str) -> None:
    for f in sorted((world / config).glob("*.parquet")):
        schema = pq.read_schema(f)
        got = [(field.name, field.type) for field in schema]
        assert [n for n, _ in got] == [n for n, _ in EXPECTED[config]]
        for (name, t), (_, want) in zip(got, EXPECTED[config], strict=True):
            assert t.equals(want), f"{config}.{name}: {t} != {want}"
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
        if "image" in features:
            assert features["image"] == {"_type": "Image"}


def test_refuses_a_non_empty_directory_and_leaves_it_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        build_world(out, config="quick", overrides=TINY)
    with pytest.raises(OutputExistsError):  # overwrite never replaces something that is not a world
        build_world(out, config="quick", overrides=TINY, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary leftovers


def test_overwrite_replaces_a_previous_world(tmp_path: Path) -> None:
    out = build_world(tmp_path / "w", seed=3, config="quick", overrides=TINY)
    build_world(out, seed=4, config="quick", overrides=TINY, overwrite=True)
    assert load_world_info(out)["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_render_is_deterministic_and_identities_differ() -> None:
    rng = np.random.default_rng(0)
    a, b = sample_identity(rng), sample_identity(rng)
    while trait_distance(a, b) < 3:
        b = sample_identity(rng)
    view = sample_view(rng)
    img = render(a, view)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert render(a, view).tobytes() == img.tobytes()
    diff = np.abs(np.asarray(img, np.int16) - np.asarray(render(b, view), np.int16)).mean()
    assert diff > 3
    assert render(a, sample_view(rng, hard=True)).tobytes() != img.tobytes()
    assert render(a, view, size=32).size == (32, 32)


def test_general_items_are_answerable() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        item = sample_general_item(rng)
        assert len(item.options) == 4 and len(set(item.options)) == 4
        assert item.answer in item.options and "__" in item.cloze
        assert render_general(item).size == (64, 64)


def test_general_training_scenes_teach_every_question_they_answer(world: Path) -> None:
    rows = _rows(world, "ft_General")
    assert rows
    for r in rows:
        qa = json.loads(r["metadata"])
        asked = [q["Question"] for q in qa]
        assert len(asked) == len(set(asked)) >= 3  # colour, shape and count at least
        answers = dict(zip(asked, (q["Answer"] for q in qa), strict=True))
        assert answers["How many objects are in this image?"] in {"1", "2", "3", "4"}
    rng = np.random.default_rng(3)
    for _ in range(50):
        it = sample_general_item(rng)
        qa = it.training_qa()
        assert (qa[0]["Question"], qa[0]["Answer"]) == (it.question, it.answer)  # its own question first
        assert any(q["Answer"] == it.colour for q in qa) and any(q["Answer"] == it.shape for q in qa)
        assert (len(qa) == 4) == (it.kind == "position")


def test_training_scenes_spread_count_and_keep_their_question() -> None:
    rng, spread_rng = np.random.default_rng(5), np.random.default_rng(6)
    items = [sample_general_item(rng) for _ in range(400)]
    spread = [spread_count(it, spread_rng) for it in items]
    counts = Counter(s.count for s in spread)
    assert set(counts) == {1, 2, 3, 4} and counts[1] < 0.5 * len(spread)  # 0.81 of the scenes, unspread
    for it, s in zip(items, spread, strict=True):
        assert (s.kind, s.question, s.options, s.correct, s.colour, s.shape) == \
            (it.kind, it.question, it.options, it.correct, it.colour, it.shape)
        assert len(s.centres) == s.count
        if it.kind in ("count", "position"):
            assert s == it  # their count or their single edge object is what they ask about
    assert sum(s.count > 1 for s in spread if s.kind == "shape") > 50
    assert Counter(it.count for it in items)[1] > 0.75 * len(items)


def test_pretrain_pool_never_holds_world_people(world: Path) -> None:
    info = load_world_info(world)
    pool = world_pretrain_identities(info)
    assert pool == pretrain_identities(50, 0) and len(pool) == 50
    for entity in info["identities"]:
        ident = world_identity(info, entity)
        assert isinstance(ident, Identity)
        assert min(trait_distance(ident, p) for p in pool) >= info["config"]["min_trait_distance"]
    images, labels = pretrain_batch(pool, np.random.default_rng(0), 4, 32)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.max() < len(pool)


def test_held_out_people_are_never_trained_on(world: Path, tmp_path: Path) -> None:
    """Holdout_Set: people with profiles and questions that no training stream and no split holds;
    a world without them is byte for byte the world of before."""
    from unsee.data.mllmu import load_mllmu

    info = load_world_info(world)
    held = set(info["entities"]["holdout"])
    assert len(held) == 4
    suite = load_mllmu(world, "forget_10")
    assert {e.entity for e in suite.groups["holdout"]} == held
    assert any(e.task == "mcq" and e.has_image for e in suite.groups["holdout"])
    trained = {e.entity for g, items in suite.groups.items() if g.startswith("train") for e in items}
    assert not held & trained
    assert not held & (set(suite.forget_entities) | set(suite.retain_entities))
    assert not held & {i for ids in [*info["splits"].values(), *info["requests"].values()] for i in ids}
    assert not {info["names"].get(i) for i in held} - {None}  # their names are not among the taught names
    from unsee.models.tiny import world_text

    theirs = {t for t in world_text(world / "Holdout_Set") if '"Name"' in t}  # their biographies
    assert len(theirs) == 4 and not theirs & set(world_text(world))  # the tokenizer's corpus leaves them out
    none = build_world(tmp_path / "none", seed=0, config="quick", overrides=[*TINY, "n_holdout=0"])
    assert not (none / "Holdout_Set").exists() and "n_holdout" not in load_world_info(none)["config"]
    same = {k: v for k, v in _hashes(world).items() if not k.startswith(("Holdout_Set", "world.json"))}
    assert {k: v for k, v in _hashes(none).items() if k != "world.json"} == same


def test_configs_and_validation() -> None:
    quick = load_config(WorldConfig, "quick", kind="world")
    default = load_config(WorldConfig, "default", kind="world")
    assert (quick.n_people, default.n_people) == (12, 50)
    assert default == WorldConfig()  # the shipped default and the dataclass agree
    with pytest.raises(ConfigError):
        load_config(WorldConfig, "quick", ["n_requests=7"], kind="world")
    with pytest.raises(ConfigError):
        load_config(WorldConfig, "quick", ["forget_splits=15,5"], kind="world")
    with pytest.raises(ConfigError):
        load_config(WorldConfig, "quick", ["n_peple=3"], kind="world")


def test_load_world_info_names_a_missing_world(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="world.json"):
        load_world_info(tmp_path)


def test_world_cache_key_follows_config_seed_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    key = world_mod.world_cache_key("quick", [], 0)
    assert key == world_mod.world_cache_key("quick", [], 0)
    assert key != world_mod.world_cache_key("quick", ["n_people=10"], 0)
    assert key != world_mod.world_cache_key("quick", [], 1)
    assert key != world_mod.world_cache_key("default", [], 0)
    monkeypatch.setattr(world_mod, "WORLD_VERSION", world_mod.WORLD_VERSION + 1)
    assert world_mod.world_cache_key("quick", [], 0) != key


# What this module's tiny world holds, pinned beside the WORLD_VERSION it was pinned at. Its text (every
# question, answer, id and world.json but the package version) is pinned everywhere; its images only on
# x86-64, where it was pinned, since another CPU's float kernels may move an anti-aliased pixel.
WORLD_PIN = {
    "version": 2,
    "text": "944a9013ddb96c00",
    "images": "22c563f7c12e8a7b",
}


def _world_digests(root: Path) -> tuple[str, str]:
    text, images = hashlib.sha256(), hashlib.sha256()
    info = {k: v for k, v in json.loads((root / "world.json").read_text()).items() if k != "unsee_version"}
    text.update(json.dumps(info, sort_keys=True).encode())

    def walk(value: object) -> None:
        if isinstance(value, bytes):
            images.update(value)
        elif isinstance(value, dict):
            for k in sorted(value):
                text.update(str(k).encode())
                walk(value[k])
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            text.update(repr(value).encode())

    for f in sorted(root.rglob("*.parquet")):
        text.update(f.relative_to(root).as_posix().encode())
        walk(pq.read_table(f).to_pylist())
    return text.hexdigest()[:16], images.hexdigest()[:16]


def test_world_content_is_pinned_with_its_version(world: Path) -> None:
    from unsee.data.world import WORLD_VERSION

    text, images = _world_digests(world)
    changed = text != WORLD_PIN["text"] or (platform.machine() == "x86_64" and images != WORLD_PIN["images"])
    if WORLD_PIN["version"] == WORLD_VERSION:
        assert not changed, (f"the world's content changed (text {text}, images {images}): bump WORLD_VERSION in "
                             "unsee/data/world.py so that cached worlds are rebuilt, and re-pin WORLD_PIN")
    else:
        assert changed, "WORLD_VERSION was bumped but the world is unchanged; re-pin WORLD_PIN with the new version"


def test_code_fingerprint_ignores_docstrings_but_not_strings_that_run() -> None:
    import textwrap

    from unsee.io import code_fingerprint

    plain = "def f(x):\n    return x + 1\n"
    documented = 'def f(x):\n    """Adds one."""\n    # why\n    return x + 1\n'
    assert code_fingerprint(plain) == code_fingerprint(documented) == code_fingerprint(textwrap.indent(plain, "    "))
    assert code_fingerprint(plain) != code_fingerprint(plain.replace("1", "2"))
    assert code_fingerprint('MODE = "cosine"\n') != code_fingerprint('MODE = "linear"\n')
