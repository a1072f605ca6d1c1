"""Benchmark loaders on fixture folders written in the published hub schemas."""

from __future__ import annotations

import collections
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fixtures_bench as fb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unsee.data import load_benchmark
from unsee.data.clear import CAPTION_QUESTIONS, load_clear, with_true_answer
from unsee.data.mllmu import load_ft_data, load_mllmu
from unsee.data.parquet import IMAGE, Source, gold_option, list_of, value, write_parquet_config
from unsee.data.schema import MAX_SIDE, Example, Suite
from unsee.data.umu import load_umu
from unsee.errors import DataError

EVAL_GROUPS = ("forget", "text_forget", "retain", "text_retain", "forget_test", "known", "general")


@pytest.fixture(scope="module")
def mllmu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.write_mllmu(tmp_path_factory.mktemp("mllmu"))


@pytest.fixture(scope="module")
def world_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.write_mllmu(tmp_path_factory.mktemp("world"), ft_ids=True, world_extras=True)


@pytest.fixture(scope="module")
def clear_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.write_clear(tmp_path_factory.mktemp("clear"))


@pytest.fixture(scope="module")
def umu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fb.write_umu(tmp_path_factory.mktemp("umu"))


def copy_of(root: Path, tmp_path: Path) -> Path:
    """A private copy for tests that break a file."""
    return Path(shutil.copytree(root, tmp_path / "copy"))


def all_examples(suite: Suite) -> list[Example]:
    return [e for group in suite.groups.values() for e in group]


def assert_uids_unique(suite: Suite) -> None:
    counts = collections.Counter(e.uid for e in all_examples(suite))
    assert [u for u, c in counts.items() if c > 1] == []


def assert_images_split(suite: Suite) -> None:
    """Image groups hold only image questions, text groups none."""
    for name in ("forget", "retain", "forget_test", "known"):
        assert all(e.has_image for e in suite.groups[name]), name
    for name in ("text_forget", "text_retain"):
        assert not any(e.has_image for e in suite.groups[name]), name


# --------------------------------------------------------------------------- writer


ROUND_TRIP_FEATURES: dict[str, Any] = {
    "image": IMAGE,
    "ID": value("string"),
    "n": value("int64"),
    "images": list_of(IMAGE),
    "task": {"items": list_of({"Question": value("string"), "Options": {"A": value("string")}})},
    "names": list_of(value("string")),
}


def round_trip_rows() -> list[dict[str, Any]]:
    return [
        {
            "image": {"bytes": fb.png(1), "path": "a.png"},
            "ID": "1",
            "n": 3,
            "images": [{"bytes": fb.png(2), "path": None}, {"bytes": fb.png(3), "path": "c.png"}],
            "task": {"items": [{"Question": "q?", "Options": {"A": "x"}}]},
            "names": ["a", "b"],
        },
        {"image": None, "ID": "2", "n": None, "images": [], "task": {"items": []}, "names": []},
    ]


def test_writer_round_trip(tmp_path: Path) -> None:
    paths = write_parquet_config(tmp_path, "cfg", round_trip_rows(), ROUND_TRIP_FEATURES)
    assert paths == [tmp_path / "cfg" / "train-00000-of-00001.parquet"]
    table = pq.read_table(paths[0])
    assert table.to_pylist() == round_trip_rows()
    assert table.schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    meta = json.loads(table.schema.metadata[b"huggingface"])
    assert meta == {"info": {"features": ROUND_TRIP_FEATURES}}
    wanted = {"image": "image", "images": "images", "names": "string_list"}
    assert [r.row for r in Source(tmp_path).read("cfg", wanted, all_columns=True)] == round_trip_rows()
    assert [sorted(r.row) for r in Source(tmp_path).read("cfg", wanted)] == [sorted(wanted)] * 2


def test_writer_features_load_in_datasets(tmp_path: Path) -> None:
    """The schema metadata is what ``datasets`` reads: Image columns come back as Image features."""
    datasets = pytest.importorskip("datasets")
    write_parquet_config(tmp_path, "cfg", round_trip_rows(), ROUND_TRIP_FEATURES)
    feats = datasets.Features.from_arrow_schema(pq.read_schema(tmp_path / "cfg" / "train-00000-of-00001.parquet"))
    assert isinstance(feats["image"], datasets.Image)
    assert isinstance(feats["images"].feature, datasets.Image)
    assert feats.to_dict() == ROUND_TRIP_FEATURES
    assert write_parquet_config(tmp_path, "viaf", round_trip_rows(), feats)  # datasets.Features accepted


def test_writer_is_deterministic_and_drops_stale_shards(tmp_path: Path) -> None:
    rows = round_trip_rows() * 3
    a = write_parquet_config(tmp_path / "a", "cfg", rows, ROUND_TRIP_FEATURES, shards=2)
    b = write_parquet_config(tmp_path / "b", "cfg", rows, ROUND_TRIP_FEATURES, shards=2)
    assert [p.name for p in a] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    write_parquet_config(tmp_path / "a", "cfg", rows, ROUND_TRIP_FEATURES)
    assert sorted(p.name for p in (tmp_path / "a" / "cfg").iterdir()) == ["train-00000-of-00001.parquet"]


def test_writer_rejects_unknown_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="extra"):
        write_parquet_config(tmp_path, "cfg", [{"ID": "1", "extra": 1}], {"ID": value("string")})


# --------------------------------------------------------------------------- MLLMU-Bench


@pytest.mark.parametrize("pct", sorted(fb.MLLMU_FORGET))
def test_mllmu_every_split(mllmu_root: Path, pct: int) -> None:
    n = fb.MLLMU_FORGET[pct]
    suite = load_mllmu(mllmu_root, f"forget_{pct}")
    people = [str(i) for i in range(1, fb.MLLMU_PEOPLE + 1)]
    assert suite.forget_entities == tuple(people[:n])
    assert suite.retain_entities == tuple(people[n:])
    assert suite.info["retain_config"] == f"retain_{100 - pct}"
    assert suite.info["loader"] == "mllmu"
    g = suite.groups
    # per person: 2 image MCQ + 1 image gen + 1 image cloze; 1 text MCQ + 1 text gen + 1 text cloze
    assert (len(g["forget"]), len(g["text_forget"]), len(g["forget_test"])) == (4 * n, 3 * n, 4 * n)
    assert len(g["retain"]) == 4 * (fb.MLLMU_PEOPLE - n)
    assert len(g["known"]) == 4 * 3 and len(g["text_known"]) == 3 * 3
    assert g["general"] == [] and g["neutral"] == [] and g["unknown"] == []
    assert collections.Counter(e.task for e in g["forget"]) == {"mcq": 2 * n, "gen": n, "cloze": n}
    assert {e.entity for e in g["forget_test"]} == set(people[:n])
    assert_images_split(suite)
    assert_uids_unique(suite)


def test_mllmu_items_and_image_bytes(mllmu_root: Path) -> None:
    suite = load_mllmu(mllmu_root, "forget_5")
    mcq = suite.groups["forget"][0]
    assert mcq.task == "mcq" and mcq.entity == "1" and mcq.meta["type"] == "Image_Textual"
    assert mcq.options == ("Paris", "Town1", "Lima", "Oslo") and mcq.correct == 1 and mcq.answer == "Town1"
    assert mcq.image == fb.png(1)
    assert mcq.source == str(mllmu_root / "forget_5" / "train-00000-of-00001.parquet")
    assert mcq.uid == "forget_5/1/mcq_image/0"
    cloze = next(e for e in suite.groups["forget"] if e.task == "cloze")
    assert cloze.question == "The person in the image was born in __." and cloze.answer == "Town1"
    text = suite.groups["text_forget"]
    assert {e.meta["type"] for e in text} == {"Pure_Text"} and all(e.image is None for e in text)
    for e in suite.groups["retain"]:
        assert e.image == fb.png(int(e.entity))
    assert suite.groups["retain"][0].pil_image().size == (8, 8)


def test_mllmu_test_set_two_shards(mllmu_root: Path) -> None:
    shards = sorted(p.name for p in (mllmu_root / "Test_Set").iterdir())
    assert shards == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    suite = load_mllmu(mllmu_root, ["Full_Set"])  # every person is a forget target here
    test = suite.groups["forget_test"]
    assert {e.entity for e in test} == {str(i) for i in range(1, fb.MLLMU_PEOPLE + 1)}
    assert {Path(e.source).name for e in test} == set(shards)
    assert all(e.question.startswith("(paraphrased)") for e in test)


def test_mllmu_celebrities_sharing_an_id_with_a_forget_person_stay_known(mllmu_root: Path, tmp_path: Path) -> None:
    """Retain_Set's IDs are the celebrities' own: one equal to a fictitious forget person's is another person."""
    root = copy_of(mllmu_root, tmp_path)
    path = root / "Retain_Set" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("ID"), "ID", pa.array(["1", "k1", "k2"])), path)
    suite = load_mllmu(root, "forget_5")  # forgets person "1"
    assert {e.entity for e in suite.groups["known"]} == {"1", "k1", "k2"}
    assert {e.entity for e in suite.groups["forget"]} == {"1"}


def test_mllmu_test_set_of_other_ids_is_one_line(mllmu_root: Path, tmp_path: Path) -> None:
    """A Test_Set whose IDs match no forget person would leave forget_test silently empty."""
    root = copy_of(mllmu_root, tmp_path)
    for path in sorted((root / "Test_Set").iterdir()):
        table = pq.read_table(path)
        ids = pa.array([f"p{i}" for i in table.column("ID").to_pylist()])
        pq.write_table(table.set_column(table.schema.get_field_index("ID"), "ID", ids), path)
    with pytest.raises(DataError, match=r"Test_Set .* holds none of the forget people .*\['1'\].*'p"):
        load_mllmu(root, "forget_5")


def test_mllmu_test_images_are_deterministic_and_use_every_view(mllmu_root: Path) -> None:
    def views(seed: int) -> list[tuple[str, int]]:
        return [(e.uid, e.meta["view"]) for e in load_mllmu(mllmu_root, "forget_15", seed=seed).groups["forget_test"]]

    assert views(0) == views(0)
    assert any(views(0) != views(s) for s in (1, 2, 3))
    suite = load_mllmu(mllmu_root, "forget_15", seed=0)
    by_person: dict[str, set[int]] = collections.defaultdict(set)
    for e in suite.groups["forget_test"]:
        assert e.image == fb.png(fb.mllmu_test_image_key(e.entity, e.meta["view"]))
        by_person[e.entity].add(e.meta["view"])
    assert all(v == set(range(fb.TEST_VIEWS)) for v in by_person.values())


def test_mllmu_forget_union_and_retain_fallbacks(world_root: Path) -> None:
    suite = load_mllmu(world_root, ["forget_r1", "forget_r2"], retain_exclude=["forget_10", "20"])
    assert suite.forget_entities == ("12", "13", "14", "15")
    assert suite.info["retain_config"] == "Full_Set"
    assert set(suite.retain_entities) == {str(i) for i in range(3, 20)} - {"12", "13", "14", "15"}
    nested = load_mllmu(world_root, ["forget_5", "forget_10"])  # nested splits: each person once
    assert nested.forget_entities == ("1", "2")
    assert len(nested.groups["forget"]) == 8
    explicit = load_mllmu(world_root, "forget_5", retain="retain_85")
    assert explicit.info["retain_config"] == "retain_85" and len(explicit.retain_entities) == 17
    # people left out of the retained set are left out of a paired or named retain config as well
    paired = load_mllmu(world_root, "forget_5", retain_exclude=["forget_r1", "20"])
    assert paired.info["retain_config"] == "retain_95" and not {"12", "13", "20"} & set(paired.retain_entities)
    assert not {"12", "13"} & {e.entity for e in paired.groups["retain"] + paired.groups["train_retain"]}
    named = load_mllmu(world_root, "forget_5", retain="retain_85", retain_exclude=["forget_r1"])
    assert len(named.retain_entities) == 17 - len({"12", "13"} & set(explicit.retain_entities))
    # a mistyped split is named with the one it is a slip of
    with pytest.raises(DataError, match=r"forget config 'forget10' not found in .* \(did you mean 'forget_10'\?\)$"):
        load_mllmu(world_root, "forget10")
    # a name that is neither a config nor a person would leave nobody out: refused, not read as blind
    with pytest.raises(DataError, match="'99', 'forget_01': neither a split nor a person of .*a continual request"):
        load_mllmu(world_root, "forget_5", retain_exclude=["forget_r1", "forget_01", "99"])


def test_mllmu_training_streams_by_id(world_root: Path) -> None:
    suite = load_mllmu(world_root, "forget_10")
    g = suite.groups
    assert {e.entity for e in g["train_forget"]} == {"1", "2"}
    assert all(e.task == "qa" and e.image == fb.png(int(e.entity)) for e in g["train_forget"])
    assert {e.entity for e in g["train_retain"]} == set(suite.retain_entities)
    assert len(g["train_text"]) == fb.MLLMU_PEOPLE and not any(e.has_image for e in g["train_text"])
    assert [e.entity for e in g["train_known"]] == ["k000", "k001"]
    assert len(g["train_general"]) == 2 and len(g["unknown"]) == 2
    assert [(e.entity, e.question, e.answer) for e in g["neutral"]] == [("n000", "", ""), ("n001", "", "")]
    assert all(e.has_image for e in g["neutral"])
    assert len(g["general"]) == 2 * 7 and g["general"][0].entity == "g000"


def test_mllmu_training_streams_without_ft_ids(mllmu_root: Path) -> None:
    """The hub's ft_Data may lack ID: the forget stream then comes from Generation_Task."""
    suite = load_mllmu(mllmu_root, "forget_10")
    train = suite.groups["train_forget"]
    assert [e.entity for e in train] == ["1", "2"]
    assert all(e.task == "qa" and e.has_image for e in train)
    assert train[0].answer == "This person was born in Town1."
    # ft_Data has no text-only rows: the text stream (mmunlearner's) is the benchmark's Pure_Text questions
    text = suite.groups["train_text"]
    assert text and not any(e.has_image for e in text) and all(e.task == "qa" for e in text)
    assert {e.entity for e in text} == {*suite.forget_entities, *suite.retain_entities}
    assert {e.question for e in text} <= {e.question for g in ("text_forget", "text_retain") for e in suite.groups[g]}


def test_load_ft_data(mllmu_root: Path, world_root: Path) -> None:
    ft = load_ft_data(mllmu_root)
    assert len(ft) == fb.MLLMU_PEOPLE and ft[0].entity == "" and ft[0].image == fb.png(1)
    assert (ft[0].question, ft[0].answer, ft[0].task) == ("Where was this person born?", "Town1", "qa")
    world = load_ft_data(world_root)
    assert len(world) == 2 * fb.MLLMU_PEOPLE and world[-1].entity == "20" and world[-1].image is None


def test_mllmu_missing_column_names_field_and_file(mllmu_root: Path, tmp_path: Path) -> None:
    root = copy_of(mllmu_root, tmp_path)
    rows = pq.read_table(root / "forget_10" / "train-00000-of-00001.parquet").drop_columns(["Mask_Task"])
    pq.write_table(rows, root / "forget_10" / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=r"'Mask_Task'.*forget_10/train-00000-of-00001\.parquet"):
        load_mllmu(root, "forget_10")


def test_mllmu_wrong_type_names_field_and_file(mllmu_root: Path, tmp_path: Path) -> None:
    root = copy_of(mllmu_root, tmp_path)
    path = root / "retain_90" / "train-00000-of-00001.parquet"
    table = pq.read_table(path)
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(["x"] * table.num_rows))
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"'image'.*retain_90/train-00000-of-00001\.parquet.*expected image"):
        load_mllmu(root, "forget_10")


def bad_profile_rows(change: dict[str, Any]) -> list[dict[str, Any]]:
    row = fb._profile("1", 1, directory=False)
    row.update(change)
    return [row]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {
                "Classification_Task": {
                    "Image_Textual_Questions": [
                        {
                            "Correct_Answer": "E",
                            "Options": {"A": "a", "B": "b", "C": "c", "D": "d"},
                            "Question": "q",
                        }
                    ],
                    "Pure_Text_Questions": [],
                }
            },
            "Correct_Answer",
        ),
        (
            {"Generation_Task": [{"Ground_Truth": "x", "Question": "q", "Type": "Video"}]},
            "Generation_Task[0].Type",
        ),
        (
            {"Mask_Task": [{"Ground_Truth": None, "Question": "q", "Type": "Pure_Text"}]},
            "Mask_Task[0].Ground_Truth",
        ),
        ({"ID": None}, "ID"),
        ({"image": {"bytes": None, "path": "somewhere/1.png"}}, "image"),
        ({"image": None}, "image"),
    ],
)
def test_mllmu_bad_values_name_field_and_file(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    write_parquet_config(tmp_path, "forget_10", bad_profile_rows(change), fb.SPLIT_FEATURES)
    write_parquet_config(tmp_path, "retain_90", bad_profile_rows({"ID": "2"}), fb.SPLIT_FEATURES)
    with pytest.raises(DataError) as err:
        load_mllmu(tmp_path, "forget_10")
    assert field in str(err.value) and "forget_10/train-00000-of-00001.parquet" in str(err.value)


def _one_question(answer: str) -> dict[str, Any]:
    options = {"A": "Boston", "B": "Chicago", "C": "Denver", "D": "Austin"}
    mcq = {"Correct_Answer": answer, "Options": options, "Question": "Where was this person born?"}
    return {"Classification_Task": {"Image_Textual_Questions": [mcq], "Pure_Text_Questions": []}}


@pytest.mark.parametrize("answer", ["C", "c.", "(C)", "C) Denver", "C: Denver", "C. Denver", "Denver", " denver "])
def test_mllmu_gold_answer_as_a_letter_or_as_an_option_s_text(tmp_path: Path, answer: str) -> None:
    """A text answer is its option's text, never its first letter ("Denver" is not option D)."""
    write_parquet_config(tmp_path, "forget_10", bad_profile_rows(_one_question(answer)), fb.SPLIT_FEATURES)
    write_parquet_config(tmp_path, "retain_90", bad_profile_rows({"ID": "2"}), fb.SPLIT_FEATURES)
    (item,) = [e for e in load_mllmu(tmp_path, "forget_10").groups["forget"] if e.task == "mcq"]
    assert (item.correct, item.answer) == (2, "Denver")


@pytest.mark.parametrize("answer", ["Seattle", "Dr. Denver", "E", ""])
def test_mllmu_gold_answer_that_names_no_option_is_refused(tmp_path: Path, answer: str) -> None:
    write_parquet_config(tmp_path, "forget_10", bad_profile_rows(_one_question(answer)), fb.SPLIT_FEATURES)
    write_parquet_config(tmp_path, "retain_90", bad_profile_rows({"ID": "2"}), fb.SPLIT_FEATURES)
    with pytest.raises(DataError, match=r"Correct_Answer.*neither an option letter"):
        load_mllmu(tmp_path, "forget_10")


def test_a_gold_answer_read_both_as_a_letter_and_as_another_option_s_text_is_refused() -> None:
    options, letters = ("Boston", "Chicago", "D.C.", "Austin"), list("ABCD")
    with pytest.raises(DataError, match="option D's letter and the text of option C"):
        gold_option("D.C.", options, letters, field="Correct_Answer", source="f")
    assert gold_option("D", options, letters, field="Correct_Answer", source="f") == 3  # a bare letter is one
    assert gold_option("B", ("B", "A"), ["A", "B"], field="Correct_Answer", source="f") == 1


def test_mllmu_a_person_with_two_rows_in_a_config_is_refused(tmp_path: Path) -> None:
    """Both rows' questions would share uids, or the second's be dropped: neither silently."""
    second = fb._profile("1", 2, directory=False)
    write_parquet_config(tmp_path, "forget_10", [*bad_profile_rows({}), second], fb.SPLIT_FEATURES)
    write_parquet_config(tmp_path, "retain_90", bad_profile_rows({"ID": "2"}), fb.SPLIT_FEATURES)
    with pytest.raises(DataError, match=r"ID '1' has two rows in forget_10 .* row 0 and .* row 1"):
        load_mllmu(tmp_path, "forget_10")


def test_options_beyond_the_letters_are_refused_not_cut(tmp_path: Path) -> None:
    """An eleventh option (K) or an eleventh CLEAR name would be dropped, changing the question's chance level."""
    options = {x: f"city {x}" for x in "ABCDEFGHIJK"}
    change = {"Classification_Task": {"Image_Textual_Questions": [
        {"Correct_Answer": "A", "Options": options, "Question": "q"}], "Pure_Text_Questions": []}}
    mcq = {**fb.MCQ_ITEM, "Options": {x: fb.S for x in options}}
    classification = {"Image_Textual_Questions": list_of(mcq), "Pure_Text_Questions": list_of(fb.MCQ_ITEM)}
    features = {**fb.SPLIT_FEATURES, "Classification_Task": classification}
    write_parquet_config(tmp_path, "forget_10", bad_profile_rows(change), features)
    write_parquet_config(tmp_path, "retain_90", bad_profile_rows({"ID": "2"}), fb.SPLIT_FEATURES)
    with pytest.raises(DataError, match=r"Options.*\['K'\].*A to J"):
        load_mllmu(tmp_path, "forget_10")
    with pytest.raises(DataError, match=r"real_faces/0 has 12 wrong options"):
        with_true_answer("True Name", [f"Wrong {i}" for i in range(12)], seed=0, uid="real_faces/0")
    assert len(with_true_answer("True Name", [f"Wrong {i}" for i in range(9)], seed=0, uid="u")[0]) == 10


def test_mllmu_bad_ft_metadata(tmp_path: Path) -> None:
    write_parquet_config(tmp_path, "ft_Data", [{"image": fb.png(1), "metadata": "{not json"}], fb.FT_FEATURES)
    with pytest.raises(DataError, match=r"'metadata'.*ft_Data/train-00000-of-00001\.parquet"):
        load_ft_data(tmp_path)


def test_mllmu_missing_configs(mllmu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forget_99"):
        load_mllmu(mllmu_root, "forget_99")
    root = copy_of(mllmu_root, tmp_path)
    shutil.rmtree(root / "retain_90")
    shutil.rmtree(root / "Full_Set")
    with pytest.raises(DataError, match="Full_Set"):
        load_mllmu(root, "forget_10")
    with pytest.raises(DataError, match="does not exist"):
        load_mllmu(tmp_path / "nowhere")


# --------------------------------------------------------------------------- hub fallback


class FakeHub:
    """Stands in for ``datasets``: serves fixture configs as arrow tables, counting calls."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str, str]] = []

    def load_dataset(self, repo: str, config: str, split: str) -> Any:
        self.calls.append((repo, config, split))
        import datasets
        from datasets.table import InMemoryTable

        files = sorted((self.root / config).glob("train-*.parquet"))
        return datasets.Dataset(InMemoryTable(pa.concat_tables(pq.read_table(f) for f in files)))

    def get_dataset_config_names(self, repo: str) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.is_dir()]


def test_hub_id_goes_through_load_dataset(mllmu_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    hub = FakeHub(mllmu_root)
    monkeypatch.setattr(datasets, "load_dataset", hub.load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_config_names", hub.get_dataset_config_names)
    suite = load_mllmu("MLLMMU/MLLMU-Bench", "forget_10")
    local = load_mllmu(mllmu_root, "forget_10")
    assert ("MLLMMU/MLLMU-Bench", "forget_10", "train") in hub.calls
    assert all(split == "train" for _, _, split in hub.calls)
    assert [(e.uid, e.image, e.answer) for e in suite.groups["forget_test"]] == [
        (e.uid, e.image, e.answer) for e in local.groups["forget_test"]
    ]
    assert suite.groups["forget"][0].source.startswith("hf://datasets/MLLMMU/MLLMU-Bench")


def test_local_folders_never_touch_the_hub(mllmu_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the hub must not be used for a local folder")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setattr(datasets, "get_dataset_config_names", refuse)
    load_mllmu(mllmu_root, "forget_5")
    load_mllmu(str(mllmu_root), "forget_5")
    (tmp_path / "owner").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir()
    with pytest.raises(DataError, match="forget_5"):  # an existing owner/name folder is local
        load_mllmu("owner/name", "forget_5")
    with pytest.raises(DataError, match="does not exist"):
        load_mllmu(tmp_path / "a" / "b" / "c", "forget_5")


def test_hub_errors_become_data_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "get_dataset_config_names", offline)
    with pytest.raises(DataError, match="no network"):
        load_mllmu("MLLMMU/MLLMU-Bench", "forget_10")


# --------------------------------------------------------------------------- CLEAR


@pytest.mark.parametrize("pct", sorted(fb.CLEAR_FORGET))
def test_clear_every_split(clear_root: Path, pct: int) -> None:
    n = fb.CLEAR_FORGET[pct]
    suite = load_clear(clear_root, f"forget{pct:02d}")
    assert suite.forget_entities == tuple(fb.CLEAR_PEOPLE[:n])
    assert suite.retain_entities == tuple(fb.CLEAR_PEOPLE[n:])
    assert suite.info["retain_config"] == f"retain{100 - pct:02d}"
    g = suite.groups
    k = fb.CLEAR_IMAGES_PER_PERSON
    assert collections.Counter(e.task for e in g["forget"]) == {"mcq": n * k, "gen": n * k}
    # the name question on retain_perturbed's people (3 and 4) only, a caption on every retain photo
    assert collections.Counter(e.task for e in g["retain"]) == {"mcq": 2 * k, "gen": k * (len(fb.CLEAR_PEOPLE) - n)}
    assert suite.info["name_questions"] == {"forget": f"forget{pct:02d}_perturbed", "retain": "retain_perturbed"}
    assert len(g["text_forget"]) == 2 * n and len(g["text_retain"]) == 2 * (len(fb.CLEAR_PEOPLE) - n)
    assert len(g["train_forget"]) == n * k and len(g["train_text"]) == 2 * len(fb.CLEAR_PEOPLE)
    assert g["forget_test"] == [] and len(g["known"]) == 3 and len(g["general"]) == 2
    assert_images_split(suite)
    assert_uids_unique(suite)
    for group in EVAL_GROUPS:
        assert group in g


def test_clear_name_question_takes_each_rows_own_wrong_names(tmp_path: Path) -> None:
    """Each row of a _perturbed config carries its own wrong names, as the published evaluations read them;
    the first row of a person must not lend its list to the person's other photos."""
    root = fb.write_clear(tmp_path / "clear")
    rows = fb._perturbed_rows([0, 1])
    for i, r in enumerate(rows):
        r["perturbed_names"] = [f"Row{i}-{j}" for j in range(3)]
    fb.write_parquet_config(root, "forget05_perturbed", rows, fb.PERTURBED)
    names = [e for e in load_clear(root, "forget05").groups["forget"] if e.task == "mcq"]
    assert len(names) == len(rows) > 2
    for i, e in enumerate(names):
        assert sorted(e.options) == sorted([e.entity, *(f"Row{i}-{j}" for j in range(3))]), (i, e.options)


def test_clear_name_question_and_captions(clear_root: Path) -> None:
    suite = load_clear(clear_root, "forget05")
    names = [e for e in suite.groups["forget"] if e.task == "mcq"]
    for e in names:
        person = fb.CLEAR_PEOPLE.index(e.entity)
        assert e.question == "What is the name of the person in the image?"
        assert e.options[e.correct] == e.entity == e.answer
        assert sorted(e.options) == sorted([e.entity, *fb.perturbed_names_of(person)])
    captions = [e for e in suite.groups["forget"] if e.task == "gen"]
    assert [e.answer for e in captions] == [fb.clear_caption(p, k) for p in (0, 1) for k in (0, 1)]
    assert [e.image for e in captions] == [fb.png(fb.clear_image_key(p, k)) for p in (0, 1) for k in (0, 1)]
    # retain_perturbed covers persons 3 and 4 only: the published evaluations ask their names alone,
    # with their perturbed names, as CLEAR's config/mm/eval.yaml and MMUnlearner's CLEAR_eval.sh do
    retain_names = [e for e in suite.groups["retain"] if e.task == "mcq"]
    assert {e.entity for e in retain_names} == set(fb.CLEAR_PEOPLE[3:5])
    for e in retain_names:
        assert e.meta["distractors"] == "perturbed" and e.uid.startswith("retain_perturbed/")
        assert sorted(e.options) == sorted([e.entity, *fb.perturbed_names_of(fb.CLEAR_PEOPLE.index(e.entity))])
    text = suite.groups["text_forget"][0]
    assert text.task == "gen" and text.entity == fb.CLEAR_PEOPLE[0] and text.image is None


def test_clear_caption_questions_are_the_published_ones() -> None:
    """The nine prompts of CLEAR's mm/dataset.py, word for word (one has no full stop)."""
    assert CAPTION_QUESTIONS == (
        "What can you see in this picture?",
        "Tell me about the content of this image",
        "Can you give a description of the image?",
        "What is depicted in the image?",
        "Explain what you observe in the picture.",
        "Describe the image in detail.",
        "What is the main subject of this image?",
        "Can you describe the scene or objects in the image?",
        "What is happening in this image?",
    )


def test_clear_positions_are_seeded(clear_root: Path) -> None:
    def positions(seed: int) -> list[int | None]:
        suite = load_clear(clear_root, "forget10", seed=seed)
        return [e.correct for e in suite.groups["forget"] + suite.groups["known"] if e.task == "mcq"]

    assert positions(0) == positions(0)
    assert positions(0) != positions(1)
    assert len(set(positions(0))) > 1
    options, correct = with_true_answer("yes", ["no", "maybe", "yes", ""], seed=0, uid="u")
    assert options[correct] == "yes" and sorted(options) == ["maybe", "no", "yes"]


def test_clear_real_sets(clear_root: Path) -> None:
    suite = load_clear(clear_root)
    faces = suite.groups["known"]
    assert [e.answer for e in faces] == ["Celebrity 0", "Celebrity 1", "Celebrity 2"]
    assert all(e.question == "What is the name of the person in the image?" for e in faces)
    assert all(sorted(e.options) == ["Celebrity 0", "Celebrity 1", "Celebrity 2"] for e in faces)
    world = suite.groups["general"]
    assert world[0].question == "What colour is object 0?" and world[0].options[world[0].correct] == "red"
    assert world[0].image == fb.png(7000)


@pytest.mark.parametrize("config", ["real_faces", "real_world"])
def test_clear_real_row_without_its_image_is_refused(clear_root: Path, tmp_path: Path, config: str) -> None:
    """Scored without its photo, "the person in the image" would be a text question counted in ``known``."""
    root = copy_of(clear_root, tmp_path)
    path = next((root / config).glob("*.parquet"))
    rows = pq.read_table(path).to_pylist()
    rows[1]["image"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    with pytest.raises(DataError, match=rf"'image' is null in .*{config}.* \(row 1\) of image config '{config}'"):
        load_clear(root)


@pytest.mark.parametrize("unused", [None, ""])
def test_clear_tofu_unused_fields_null_or_empty(tmp_path: Path, unused: str | None) -> None:
    root = fb.write_clear(tmp_path, unused=unused)
    suite = load_clear(root, "forget01")
    assert [e.question for e in suite.groups["text_forget"]] == [
        f"What genre does {fb.CLEAR_PEOPLE[0]} write (q{q})?" for q in (0, 1)
    ]


def test_clear_names_missing_from_some_configs(tmp_path: Path) -> None:
    """First uploads of forget05/retainNN had no ``name``: it is found by caption in data/."""
    root = fb.write_clear(tmp_path, names_everywhere=False, perturbed=False)
    suite = load_clear(root, "forget05")
    assert suite.forget_entities == tuple(fb.CLEAR_PEOPLE[:2])
    assert suite.retain_entities == tuple(fb.CLEAR_PEOPLE[2:])
    assert all(e.meta["distractors"] == "names" for e in suite.groups["forget"] if e.task == "mcq")
    # without retain_perturbed every retain photo is asked, with other people's names
    retain_names = [e for e in suite.groups["retain"] if e.task == "mcq"]
    assert len(retain_names) == fb.CLEAR_IMAGES_PER_PERSON * 6 and suite.info["name_questions"]["retain"] == "retain95"
    assert all(len(e.options) == 4 and len(set(e.options)) == 4 for e in retain_names)
    shutil.rmtree(root / "data")
    with pytest.raises(DataError, match=r"'name'.*forget05/train-00000-of-00001\.parquet"):
        load_clear(root, "forget05")


def test_clear_only_tofu_configs(clear_root: Path, tmp_path: Path) -> None:
    root = copy_of(clear_root, tmp_path)
    shutil.rmtree(root / "forget05")
    suite = load_clear(root, "forget_5")  # the +tofu image rows stand in; forget_5 spells forget05
    assert suite.forget_entities == tuple(fb.CLEAR_PEOPLE[:2])
    assert "forget05+tofu" in suite.info["configs"] and "default" in suite.info["configs"]


def test_clear_bad_inputs(clear_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="forgetNN"):
        load_clear(clear_root, "forget_all")
    root = copy_of(clear_root, tmp_path)
    path = root / "real_faces" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["options"]), path)
    with pytest.raises(DataError, match=r"'options'.*real_faces/train-00000-of-00001\.parquet"):
        load_clear(root)
    tofu = fb._tofu_rows([0], None)
    tofu[-1]["question"] = ""
    write_parquet_config(root, "forget01+tofu", tofu, fb.TOFU)
    with pytest.raises(DataError, match=r"'question'.*forget01\+tofu"):
        load_clear(root, "forget01")


# --------------------------------------------------------------------------- UMU-bench


@pytest.mark.parametrize("pct", sorted(fb.UMU_FORGET))
def test_umu_every_split(umu_root: Path, pct: int) -> None:
    n = fb.UMU_FORGET[pct]
    suite = load_umu(umu_root, f"forget_{pct}")
    assert suite.forget_entities == tuple(str(i) for i in range(1, n + 1))
    assert len(suite.retain_entities) == fb.UMU_PEOPLE - n
    g = suite.groups
    assert collections.Counter(e.task for e in g["forget"]) == {"mcq": 2 * n, "cloze": n, "gen": n}
    assert len(g["text_forget"]) == len(g["forget"]) and len(g["retain"]) == 4 * (fb.UMU_PEOPLE - n)
    assert len(g["known"]) == 8 and suite.info["real_config"] == "real_person"
    assert len(g["train_forget"]) == n and len(g["train_text"]) == fb.UMU_PEOPLE
    assert_images_split(suite)
    assert_uids_unique(suite)


def test_umu_pairs_and_answers(umu_root: Path) -> None:
    suite = load_umu(umu_root, "forget_5")
    multi = {e.pair_key: e for e in suite.groups["forget"]}
    uni = {e.pair_key: e for e in suite.groups["text_forget"]}
    assert set(multi) == set(uni) == {"1/mcq/0", "1/mcq/1", "1/cloze/0", "1/gen/0"}
    for key in multi:
        assert multi[key].uid != uni[key].uid and multi[key].task == uni[key].task
    for e in (multi["1/mcq/0"], multi["1/mcq/1"], uni["1/mcq/0"]):  # "B. Job1" and "B" both read
        assert e.correct == 1 and e.meta["umu_answer_text"] == "Job1" == e.answer
    assert multi["1/cloze/0"].answer == "Job1" and multi["1/cloze/0"].meta["umu_answer"] == "Job1."
    assert multi["1/mcq/0"].image == fb.png(fb.umu_image_key(1)) and uni["1/mcq/0"].image is None
    train = suite.groups["train_forget"][0]
    assert (train.question, train.answer, train.image) == (
        "What does the person in the image do?",
        "Job1",
        fb.png(fb.umu_image_key(1)),
    )


def test_umu_gold_letter_of_both_sides_is_the_text_items(tmp_path: Path) -> None:
    """UMU's eval.py reads the correct option of an image question with its text twin's letter."""
    row = fb.umu_row(1)
    options = {"A": "Teacher", "B": "Engineer", "C": "Chef", "D": "Pilot"}
    row["Classify"] = repr({
        "unimodal": {0: {"question": "What does Person 1 do?", "options": options, "answer": "B. Engineer"}},
        "muitimodal": {0: {"question": "What does this person do?", "options": options, "answer": "A. Teacher"}},
    })
    write_parquet_config(tmp_path, "forget_10", [row], fb.UMU_FEATURES)
    write_parquet_config(tmp_path, "retain_90", [fb.umu_row(2)], fb.UMU_FEATURES)
    suite = load_umu(tmp_path, "forget_10")
    image_side, text_side = (next(e for e in suite.groups[g] if e.task == "mcq") for g in ("forget", "text_forget"))
    assert image_side.answer == text_side.answer == "Engineer"
    assert image_side.options[image_side.correct] == "Engineer"


@pytest.mark.parametrize(("folder", "encoding"), [("Real_Person_Set", "json"), ("real_person", "python")])
def test_umu_real_folder_and_encodings(tmp_path: Path, folder: str, encoding: str) -> None:
    suite = load_umu(fb.write_umu(tmp_path, real_folder=folder, encoding=encoding), "forget_10")
    assert suite.info["real_config"] == folder
    assert {e.entity for e in suite.groups["known"]} == {"600", "601"}
    assert len(suite.groups["forget"]) == 8


def test_umu_training_streams_without_qa_columns(tmp_path: Path) -> None:
    """Without MM_QA/UM_QA the training pairs come from the Generation items."""
    feats = {k: v for k, v in fb.UMU_FEATURES.items() if k not in ("MM_QA", "UM_QA")}

    def rows(people: range) -> list[dict[str, Any]]:
        return [{k: v for k, v in fb.umu_row(p).items() if k in feats} for p in people]

    write_parquet_config(tmp_path, "forget_10", rows(range(1, 3)), feats)
    write_parquet_config(tmp_path, "retain_90", rows(range(3, 5)), feats)
    g = load_umu(tmp_path, "forget_10").groups
    assert [e.answer for e in g["train_forget"]] == [f"the person in the image works as Job{p}." for p in (1, 2)]
    assert all(e.task == "qa" and e.has_image for e in g["train_forget"])
    assert len(g["train_text"]) == 4 and not any(e.has_image for e in g["train_text"])
    assert g["known"] == [] and g["train_known"] == []


def test_umu_retain_from_full_set(umu_root: Path, tmp_path: Path) -> None:
    root = copy_of(umu_root, tmp_path)
    shutil.rmtree(root / "retain_90")
    suite = load_umu(root, "forget_10")
    assert suite.info["retain_config"] == "Full_Set" and len(suite.retain_entities) == fb.UMU_PEOPLE - 2


@pytest.mark.parametrize(
    ("column", "bad", "field"),
    [
        ("Classify", "{'unimodal': {0: ", "Classify"),
        ("Cloze", repr({"unimodal": {}, "multi_modal": {}}), "Cloze.muitimodal"),
        (
            "Classify",
            repr(
                {
                    "unimodal": {0: {"question": "q", "options": {"A": "a", "B": "b"}, "answer": "E"}},
                    "muitimodal": {},
                }
            ),
            "Classify.unimodal.0.answer",
        ),
        (
            "Generation",
            repr({"unimodal": {0: {"question": "q"}}, "muitimodal": {}}),
            "Generation.unimodal.0.answer",
        ),
        ("MM_QA", repr({"question": {0: "q"}, "answer": {}}), "MM_QA.answer.0"),
    ],
)
def test_umu_bad_values_name_field_and_file(tmp_path: Path, column: str, bad: str, field: str) -> None:
    row = fb.umu_row(1)
    row[column] = bad
    write_parquet_config(tmp_path, "forget_10", [row], fb.UMU_FEATURES)
    write_parquet_config(tmp_path, "retain_90", [fb.umu_row(2)], fb.UMU_FEATURES)
    with pytest.raises(DataError) as err:
        load_umu(tmp_path, "forget_10")
    assert field in str(err.value) and "forget_10/train-00000-of-00001.parquet" in str(err.value)


def test_null_images_in_image_configs(tmp_path: Path) -> None:
    row = fb.umu_row(1)
    row["image"] = None
    write_parquet_config(tmp_path / "umu", "forget_10", [row], fb.UMU_FEATURES)
    write_parquet_config(tmp_path / "umu", "retain_90", [fb.umu_row(2)], fb.UMU_FEATURES)
    with pytest.raises(DataError, match=r"'image' is null.*forget_10/train-00000-of-00001\.parquet"):
        load_umu(tmp_path / "umu", "forget_10")
    root = fb.write_clear(tmp_path / "clear", perturbed=False)
    rows = [{"image": None, "caption": "c", "name": fb.CLEAR_PEOPLE[0]}]
    write_parquet_config(root, "forget01", rows, fb.IMAGE_CAPTION)
    with pytest.raises(DataError, match=r"'image' is null.*forget01/train-00000-of-00001\.parquet"):
        load_clear(root, "forget01")


# --------------------------------------------------------------------------- registry


def test_load_benchmark_registry(mllmu_root: Path, clear_root: Path, umu_root: Path) -> None:
    assert load_benchmark("mllmu", mllmu_root, "forget_5").name == "mllmu"
    builtin = load_benchmark("builtin", mllmu_root)
    assert builtin.name == "builtin" and builtin.info["benchmark"] == "builtin"
    assert builtin.info["forget_configs"] == ["forget_10"]
    assert load_benchmark("clear", clear_root, "forget01").forget_entities == (fb.CLEAR_PEOPLE[0],)
    assert load_benchmark("umu", umu_root, "forget_5", seed=3).info["seed"] == 3
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("tofu", mllmu_root)


def _encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_photos_of_every_common_pixel_format_read_as_a_person_sees_them() -> None:
    """16-bit greyscale is scaled, not clipped to white; transparency lies on white, as in the HF processors."""
    grey = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    assert deep.mode == "I;16"

    def read(data: bytes) -> np.ndarray:
        img = Example("x", "p", "", "", "qa", data).pil_image()
        assert img.mode == "RGB"
        return np.asarray(img)

    assert np.array_equal(read(_encoded(deep)), np.stack([grey] * 3, axis=-1))
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # the top half opaque red, the bottom half transparent
    seen = read(_encoded(Image.fromarray(rgba, "RGBA")))
    assert (seen[:8] == [200, 0, 0]).all() and (seen[8:] == 255).all()
    colour = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cmyk = read(_encoded(Image.fromarray(colour).convert("CMYK"), "JPEG"))
    assert np.abs(cmyk.astype(int) - colour).mean() < 40  # a lossy JPEG of the same colours
    upright = np.zeros((8, 16, 3), dtype=np.uint8)
    upright[:, :8] = 255  # white on the left: a landscape photo
    sideways = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # anticlockwise, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn me 90 degrees clockwise to view"
    buf = io.BytesIO()
    sideways.save(buf, format="PNG", exif=exif)
    assert np.array_equal(read(buf.getvalue()), upright)
    keyed = Image.fromarray(colour)
    keyed.info["transparency"] = tuple(int(c) for c in colour[0, 0])  # one colour stands for transparent
    seen = read(_encoded(keyed))
    assert (seen[0, 0] == 255).all() and np.array_equal(seen[1:], colour[1:])
    deep.info["transparency"] = int(grey[0, 0]) * 257
    seen = read(_encoded(deep))
    shown = grey != grey[0, 0]
    assert (seen[0, 0] == 255).all() and np.array_equal(seen[shown], np.stack([grey[shown]] * 3, -1))
    depth = _encoded(Image.fromarray(np.ones((4, 4), dtype=np.float32)), "TIFF")
    with pytest.raises(DataError, match=r"example x \(\): .*floating-point pixels"):
        read(depth)


def test_a_phones_photo_is_kept_at_a_bounded_size_for_the_run() -> None:
    """Every decoded photo is kept for the run: a 6000x4000 phone photo took 72 MB (200 of them, 18 GB) for a
    processor that scales it to 336 px. Its longest side is 2048 now, its shape kept; smaller ones are as they
    were."""
    big = Image.new("RGB", (6000, 4000), (10, 200, 30))
    img = Example("x", "p", "", "", "qa", _encoded(big, "JPEG")).pil_image()
    assert img.size == (MAX_SIDE, round(4000 * MAX_SIDE / 6000))
    assert np.abs(np.asarray(img)[0, 0].astype(int) - [10, 200, 30]).max() < 8
    small = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(Example("x", "p", "", "", "qa", _encoded(small)).pil_image()), np.asarray(small))


def test_a_photo_over_the_pixel_limit_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's guard against decompression bombs raises its own exception, not an ``OSError``."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses over twice this: 16x16 is a bomb
    data = _encoded(Image.new("RGB", (16, 16)))
    with pytest.raises(DataError, match=r"example x \(f.png\): image is corrupt or unreadable: .*exceeds limit"):
        Example("x", "p", "", "", "qa", data, source="f.png").pil_image()
    # bytes in no image format: said in words, not as the in-memory buffer Pillow could not identify
    with pytest.raises(DataError, match=r"unreadable: no image format Pillow reads$"):
        Example("x", "p", "", "", "qa", b"not an image", source="f.png").pil_image()
