"""Removal requests from one's own photos: the file format, its checks, ``unsee forget`` and its evidence."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import launch_command, stopping_at
from PIL import Image

from unsee import api, methods
from unsee import forget as forget_module
from unsee.cli import main
from unsee.data.mllmu import load_mllmu
from unsee.data.request import (
    MIN_RETAIN_PHOTOS,
    RequestError,
    load_request,
    load_request_suite,
    request_schema,
    request_suite,
)
from unsee.data.request_example import write_world_request
from unsee.engine.checkpoint import has_checkpoint
from unsee.engine.trainer import unique_images
from unsee.errors import ConfigError, DataError
from unsee.eval.results import load_results, load_samples, new_results, validate_results
from unsee.forget import hashed, names_needed_by
from unsee.io import OWNED
from unsee.report.card import card_source
from unsee.resume import partial_dir

FAST = ["max_steps=2"]
FAST_AUDIT = ["relearn_steps=2", "pgd_steps=1", "probe_steps=5", "probe_blocks=false", "max_items=4"]


@pytest.fixture(scope="module")
def example(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world's forget_10 as a request file, with its photos as PNG files."""
    return write_world_request(world, tmp_path_factory.mktemp("request") / "req", forget="forget_10")


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _strip(tmp: Path) -> Path:
    """A 2x600 photo: Qwen2-VL's processor refuses it, so the request must, before a model loads."""
    path = tmp / "strip.png"
    Image.new("RGB", (2, 600), "grey").save(path)
    return path


def _write(path: Path, body: dict) -> Path:
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def _good(tmp: Path) -> dict:
    """A valid request: one person to forget, three retained people with four photos each."""
    for i in range(2):
        _png(tmp / "a" / f"{i}.png", i)
    for p in range(3):
        for i in range(4):
            _png(tmp / f"r{p}" / f"{i}.png", 100 + 10 * p + i)
    _png(tmp / "held" / "a.png", 99)
    return {"forget": [{"name": ["Ann Example", "A. Example"], "photos": ["a"], "held_out": "held/a.png",
                        "qa": [{"question": "Where does Ann Example work?", "answer": "Acme",
                                "wrong": ["Initech", "Globex"]}]}],
            "retain": [{"name": f"Retained {p}", "photos": f"r{p}"} for p in range(3)]}


# ---------------------------------------------------------------------------- the format
def test_schema_ships_with_the_package() -> None:
    schema = request_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"version", "forget", "retain", "neutral", "general", "distractors"}


def test_a_valid_request_builds_every_group(tmp_path: Path) -> None:
    req = load_request(_write(tmp_path / "r.yaml", _good(tmp_path)))
    assert [p.name for p in req.forget] == ["Ann Example"] and req.forget[0].names[1] == "A. Example"
    assert req.forget[0].photos[0].path == tmp_path / "a" / "0.png"  # relative to the file
    suite = request_suite(req)
    mcq = [e for e in suite.groups["forget"] if e.task == "mcq"]
    assert len(mcq) == 2 and all(e.answer == "Ann Example" and len(e.options) == 4 for e in mcq)
    assert all(set(e.options) <= {"Ann Example", "Retained 0", "Retained 1", "Retained 2"} for e in mcq)
    assert [e.task for e in suite.groups["forget_test"]] == ["mcq", "cloze", "gen"]
    assert {e.task for e in suite.groups["text_forget"]} == {"mcq", "gen"}
    assert len(suite.groups["train_retain"]) == 12 and suite.forget_entities == ("Ann Example",)
    # no neutral photos: blurred copies of the forget photos stand in, never the photos themselves
    assert suite.info["neutral"] == "blurred forget photos"
    assert len(suite.groups["neutral"]) == 2
    assert not {e.image for e in suite.groups["neutral"]} & {e.image for e in suite.groups["train_forget"]}


def test_json_requests_read_the_same(tmp_path: Path) -> None:
    body = _good(tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(body))
    assert [p.name for p in load_request(tmp_path / "r.json").retain] == ["Retained 0", "Retained 1", "Retained 2"]


def test_a_request_file_without_its_suffix_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every other command tells a request from a benchmark by its suffix, the guard of its photos as inputs
    among them: read here without one, its photo folders could be an --overwrite output."""
    path = tmp_path / "request.txt"
    path.write_text(yaml.safe_dump(_good(tmp_path), sort_keys=False))
    with pytest.raises(DataError, match=r"request\.txt must be named \.yaml, \.yml or \.json"):
        load_request(path)
    (tmp_path / "a" / OWNED).write_text("")  # the photos in a folder unsee wrote (unsee world's request/, say)
    assert main(["forget", "--model", str(tmp_path / "m"), "--request", str(path), "--out", str(tmp_path / "a"),
                 "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be named .yaml" in err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [OWNED, "0.png", "1.png"]


def test_one_id_for_two_people_across_requests_is_refused(tmp_path: Path) -> None:
    """Results, the evidence page and the card know a person by the id: two requests made from one template
    would put one person's name on the other's photos."""
    first = _good(tmp_path)
    first["forget"][0]["id"] = "subject"
    second = {**first, "forget": [{**first["forget"][0], "name": "Bo Other", "qa": []}]}
    files = [_write(tmp_path / "one.yaml", first), _write(tmp_path / "two.yaml", second)]
    with pytest.raises(RequestError, match=r"has the id 'subject', which .*one\.yaml gives 'Ann Example'"):
        api.forget(tmp_path / "no-model", None, tmp_path / "out", requests=files, audit=False)
    assert not (tmp_path / "out").exists()


def test_a_key_given_twice_is_refused_not_read_as_its_last(tmp_path: Path) -> None:
    """A second ``forget:`` would silently replace the first: the people it names would be kept."""
    _good(tmp_path)
    text = (yaml.safe_dump(_good(tmp_path), sort_keys=False)
            + "forget:\n- name: Someone Else\n  photos: [a]\n")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=r"'forget' is given twice \(lines 1 and \d+\)") as e:
        load_request(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    (tmp_path / "r.json").write_text('{"forget": [], "retain": [], "forget": []}')
    with pytest.raises(DataError, match="given twice"):
        load_request(tmp_path / "r.json")


def test_a_world_request_trains_on_exactly_the_split_photos(world: Path, example: Path) -> None:
    """The example is the split in a user's layout: the same images, in the same order, per stream."""
    split = api.training_turns(load_mllmu(world, "forget_10"))
    mine = api.training_turns(request_suite(load_request(example)))
    for stream in ("forget", "retain", "neutral", "general"):
        a = [t.image.tobytes() for t in unique_images(split[stream])]
        b = [t.image.tobytes() for t in unique_images(mine[stream])]
        assert a and a == b, stream
    info = json.loads((world / "world.json").read_text())
    assert list(request_suite(load_request(example)).forget_entities) == info["splits"]["forget_10"]


# ---------------------------------------------------------------------------- bad input
def _problems(path: Path, **kw: object) -> list[str]:
    with pytest.raises(RequestError) as info:
        load_request(path, **kw)
    return info.value.problems


@pytest.mark.parametrize(("change", "expected"), [
    (lambda b, t: b["forget"][0].update(photos=["a", "missing.png"]), r"photo .*missing\.png does not exist"),
    (lambda b, t: b["forget"][0].update(photos=[str(_garbage(t))]),
     r"cannot read photo .*broken\.png: no image format Pillow reads"),
    (lambda b, t: b["forget"][0].update(photos=[str(_float_tiff(t))]), r"cannot read photo .*depth\.tif: floating"),
    (lambda b, t: (t / "a" / "gone.png").symlink_to(t / "nowhere.png"), r"cannot read photo .*a/gone\.png"),
    # a link named outright, to itself or to nothing, is a link that leads nowhere, not a missing name
    (lambda b, t: b["forget"][0].update(photos=[str(_link(t / "loop", t / "loop"))]), r"loop is a link that leads"),
    (lambda b, t: b["forget"][0].update(photos=[str(_link(t / "gone", t / "nowhere"))]), r"gone is a link that"),
    (lambda b, t: b["forget"][0].update(photos=[str(_strip(t))]), r"cannot read photo .*strip\.png: a 2x600 image"),
    (lambda b, t: b["retain"].append({"name": "Ann Example", "photos": "r0/0.png"}), r"in both forget and retain"),
    # the same name, its accent written as one character in forget and combining in retain, and its space doubled
    (lambda b, t: (b["forget"][0].update(name="Ren\u00e9e Example"),
                   b["retain"].append({"name": "Rene\u0301e  Example", "photos": "r0/0.png"})),
     r"in both forget and retain"),
    (lambda b, t: b["retain"].append({"name": "retained 1", "photos": str(_png(t / "x.png", 7))}),
     r"duplicate name 'Retained 1'.*retain\[3\]"),
    (lambda b, t: b.update(retain=b["retain"][:2]), rf"too few retained photos: 8; at least {MIN_RETAIN_PHOTOS}"),
    (lambda b, t: b.update(forget=[]), r"the forget list is empty"),
    (lambda b, t: b["forget"][0].update(held_out="a/1.png"), r"held-out photo .*a/1\.png .* same file as training"),
    (lambda b, t: b["retain"][0].update(held_out="held/a.png"),
     r"held-out photo .*held/a\.png \(retain\[0\].*same image as .*held out for forget\[0\]"),
    # one image listed three times (a file, the same through another path, and a copy) is one photo
    (lambda b, t: b["retain"][2].update(photos=["r2/0.png", "r2/../r2/0.png", str(_copy(t / "r2" / "0.png"))]),
     rf"too few retained photos: 9; at least {MIN_RETAIN_PHOTOS}"),
    (lambda b, t: b["forget"][0].update(nickname="x"), r"unknown key 'nickname' at forget\[0\]"),
    (lambda b, t: b.update(extra=1), r"unknown key 'extra' at the top level"),
])
def test_each_problem_is_named(tmp_path: Path, change, expected: str) -> None:  # noqa: ANN001
    body = _good(tmp_path)
    change(body, tmp_path)
    problems = _problems(_write(tmp_path / "r.yaml", body))
    assert any(re.search(expected, p) for p in problems), problems


def _link(path: Path, to: Path) -> Path:
    path.symlink_to(to)
    return path


def _copy(photo: Path) -> Path:
    shutil.copy(photo, photo.with_name("copy.png"))
    return photo.with_name("copy.png")


def _float_tiff(tmp: Path) -> Path:
    """A depth map, not a photo: floating-point pixels."""
    Image.fromarray(np.random.default_rng(0).random((16, 16), dtype=np.float32)).save(tmp / "depth.tif")
    return tmp / "depth.tif"


def _garbage(tmp: Path) -> Path:
    (tmp / "broken.png").write_bytes(b"not an image at all")
    return tmp / "broken.png"


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    body = _good(tmp_path)
    body["forget"][0]["photos"] = ["a", "gone.png"]
    body["forget"][0]["held_out"] = "a/0.png"
    body["retain"] = body["retain"][:1] + [{"name": "Ann Example", "photos": "r1"}]
    body["colour"] = "blue"
    with pytest.raises(RequestError) as info:
        load_request(_write(tmp_path / "r.yaml", body))
    text = str(info.value)
    for needle in ("gone.png", "same file as training", "in both forget and retain", "too few retained photos",
                   "unknown key 'colour'"):
        assert needle in text
    assert text.startswith(f"{tmp_path / 'r.yaml'}: 5 problems")


def test_unnamed_retained_people_need_a_visual_method(tmp_path: Path) -> None:
    body = _good(tmp_path)
    del body["retain"][2]["name"]
    path = _write(tmp_path / "r.yaml", body)
    load_request(path, names_needed_by=names_needed_by("cvf_ncu"))  # CVF reads the retained photos only
    problems = _problems(path, names_needed_by=names_needed_by("graddiff"))
    assert any("retain[2] has no name" in p and "'graddiff'" in p for p in problems)
    # an output-level retain term reads the answers too: the config, not the method's class, decides
    problems = _problems(path, names_needed_by=names_needed_by("cvf_ncu", None, ["lambda_o=1"]))
    assert any("retain[2] has no name" in p and "'cvf_ncu'" in p and "lambda_o=0" in p for p in problems)
    assert names_needed_by("vkd") is None
    others = [m for m in methods.ALL if m not in ("cvf_ncu", "cvf_only", "vkd")]
    assert "eraser" in others and [names_needed_by(m) for m in others] == others  # they read answers


def test_bad_request_stops_forget_before_any_model_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    body = _good(tmp_path)
    body["forget"] = []
    path = _write(tmp_path / "r.yaml", body)

    def no_load(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("unsee.forget.load_adapter", no_load)
    out = tmp_path / "out"
    assert main(["forget", "--model", str(tmp_path / "nowhere"), "--request", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the forget list is empty" in err and "Traceback" not in err
    assert not out.exists()


# ---------------------------------------------------------------------------- unsee forget
@pytest.fixture(scope="module")
def forgotten(model_dir: Path, example: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("forget") / "out"
    api.forget(model_dir, example, out, overrides=FAST, audit_overrides=FAST_AUDIT, hide_names=True, max_gen_items=2)
    return out


@pytest.mark.slow
def test_forget_writes_the_model_results_and_evidence(forgotten: Path, example: Path, world: Path) -> None:
    for name in ("model/model.safetensors", "model/README.md", "results.json", "report.md", "evidence.html",
                 "evidence/figures.png", "names-salt.txt"):
        assert (forgotten / name).is_file(), name
    runs = load_results(forgotten / "results.json")["runs"]
    assert [r["method"] for r in runs] == ["vanilla", "cvf_ncu"]
    assert runs[1]["benchmark"] == "request" and runs[1]["forget_split"] == "request"
    assert {"forget", "forget_test", "retain", "text_forget", "retain_test"} <= set(runs[1]["metrics"])
    assert {"pgd", "shift", "probe"} <= set(runs[1]["attacks"])
    name = yaml.safe_load(example.read_text())["forget"][0]["name"]
    report = (forgotten / "report.md").read_text()
    assert name in report and "evidence.html" in report and "**Verdict:**" in report


def test_hidden_names_leave_only_salted_hashes_on_the_card(forgotten: Path, example: Path) -> None:
    card = (forgotten / "model" / "README.md").read_text()
    salt = (forgotten / "names-salt.txt").read_text().strip()
    for person in yaml.safe_load(example.read_text())["forget"]:
        assert person["name"] not in card
        assert f"- `{hashed(person['name'], salt)}`" in card
    assert str(Path.home()) not in card and "/tmp" not in card  # no local path names the base model
    # the front matter keeps the people as the body shows them, not the request's entity IDs, which are the
    # names themselves where a request gives no IDs
    source = card_source(card)
    assert source is not None and source["forgotten"] == [] and source["request"]["hidden"] is True
    body = card.split("---\n", 2)[2].lstrip()
    assert body.startswith("**Verdict:**") and "\n" not in body.split("\n\n")[0]


def test_evidence_page_labels_each_photo(forgotten: Path) -> None:
    page = (forgotten / "evidence.html").read_text()
    assert page.count('class="tag forget"') == 1  # the one forget person's one held-out photo
    assert page.count('class="tag retain"') == 4
    assert len(list((forgotten / "evidence").glob("0*.png"))) == 5
    # each row shows its own photo: the file its image names holds the pixels of the photo its title names
    rows = re.findall(r'<img class="photo" src="(evidence/\d+\.png)" alt="[^"]*" title="([^"]*)">', page)
    assert len(rows) == 5 and len({src for src, _ in rows}) == 5
    for src, photo in rows:
        shown = np.asarray(Image.open(forgotten / src).convert("RGB"))
        assert np.array_equal(shown, np.asarray(Image.open(html.unescape(photo)).convert("RGB"))), (src, photo)


def test_the_evidence_says_which_photos_unlearning_read_and_names_whole_words() -> None:
    """Without held-out photos, the photos shown are the training photos, and they say so; an alias is a name
    only as a whole word."""
    from unsee.report.evidence import Shown

    ed = Shown(role="forget", name="Ed Marsh", question="q", photo=b"", source="s", before="", after="",
               aliases=("Ed Marsh", "Ed"))
    assert not ed.names_them("the person has red hair") and not ed.names_them("Edward")
    assert ed.names_them("This is ed.") and ed.names_them("ED MARSH, surely")
    wei = Shown(role="forget", name="\u5f20\u4f1f", question="q", photo=b"", source="s", before="", after="")
    assert wei.names_them("\u8fd9\u662f\u5f20\u4f1f\u3002")  # a script without spaces has no words to keep whole
    # an accent composed in the request and combining in the answer (or the other way) is the same name
    jose = Shown(role="forget", name="Jos\u00e9 Luna", question="q", photo=b"", source="s", before="", after="")
    assert jose.names_them("This is Jose\u0301  Luna.")


def test_training_photos_shown_for_want_of_held_out_ones_are_labelled_so(forgotten: Path, tmp_path: Path) -> None:
    from unsee.report.evidence import Shown, write_evidence

    results = load_results(forgotten / "results.json")
    vanilla, run = results["runs"]
    photo = (forgotten / "evidence" / "000.png").read_bytes()
    shown = [Shown(role="forget", name="Ed", question="q", photo=photo, source="a.png", before="Ed", after="no",
                   held_out=False),
             Shown(role="retain", name="Jo", question="q", photo=photo, source="b.png", before="Jo", after="Jo")]
    write_evidence(tmp_path, shown=shown, results=results, run=run, vanilla=vanilla,
                   request={"files": ["r.yaml"], "names": ["Ed"]}, cost={"total_wall_s": 1.0})
    page = (tmp_path / "evidence.html").read_text()
    assert "every held-out photo (0)" in page and "No held-out photos were given." in page
    assert "the photos unlearning trained on (1)" in page
    report = (tmp_path / "report.md").read_text()
    assert "named in the free answer: 0 of 0 before" in report
    assert "given no held-out photo, named in the free answer: 1 of 1 before, 0 of 1 after" in report


def test_a_person_without_held_out_photos_is_shown_beside_one_with_them() -> None:
    """Held-out photos are chosen person by person: one person's do not hide another's training photos."""
    from unsee.data.schema import Example, Suite
    from unsee.forget import _shown_items

    def item(uid: str, who: str) -> Example:
        return Example(uid=uid, entity=who, question="Who is this?", answer=who, task="mcq", options=[who, "x"],
                       image=f"{uid}.png")

    suite = Suite("r", {"forget": [item("ed-train", "Ed"), item("jo-train", "Jo")],
                        "forget_test": [item("ed-held", "Ed")], "retain": [], "retain_test": []})
    assert [e.uid for e in _shown_items([suite], 0, seed=0)] == ["ed-held", "jo-train"]


def test_an_attack_on_a_request_records_the_request_as_its_split(model_dir: Path, example: Path, world: Path,
                                                                 tmp_path: Path) -> None:
    """As `unsee eval` records it, so that `unsee report` puts the two runs on the same data in one setting."""
    api.attack("shift", model_dir, example, tmp_path / "a.json", overrides=["max_items=2"])
    evaluated = api.evaluate(model_dir, example, tmp_path / "e.json", max_items=2)
    attacked = load_results(tmp_path / "a.json")
    assert attacked["runs"][-1]["forget_split"] == evaluated["runs"][-1]["forget_split"] == example.stem
    # a run on a benchmark's split attacked with a request: pass the data it ran on, not a request file
    on_split = tmp_path / "split.json"
    api.evaluate(model_dir, world, on_split, max_items=2)
    with pytest.raises(DataError, match="pass the data it ran on"):
        api.attack("shift", model_dir, example, on_split, overrides=["max_items=2"])


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


def test_evidence_page_renders_in_a_browser(forgotten: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", (forgotten / "evidence.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the page's script did not run"
    assert loaded.group(1) == loaded.group(2) == "6"  # five photos and the figure
    assert "Removal request:" in dom


@pytest.mark.slow
def test_unlearn_takes_a_request_file(model_dir: Path, example: Path, tmp_path: Path) -> None:
    out = api.unlearn("ga", model_dir, example, tmp_path / "u", overrides=FAST)
    run = load_results(out / "results.json")["runs"][0]
    assert run["benchmark"] == "request" and run["forget_split"] == "request"
    # the retained people's held-out photos are scored as `unsee forget` scores them
    assert run["metrics"]["retain_test"]["n"] > 0 and 0 <= run["metrics"]["retain_test"]["mcq"] <= 1
    assert (out / "model" / "README.md").is_file()


def two_requests(example: Path) -> list[Path]:
    """The example request, then one that forgets the first person the example retained."""
    body = yaml.safe_load(example.read_text())
    first, *rest = body["retain"]
    # the world's neutral faces, unnamed, fill the second request's retain set
    two = {"forget": [first], "retain": [*rest, {"photos": "neutral"}], "distractors": body["distractors"]}
    return [_write(example.parent / "one.yaml", body), _write(example.parent / "two.yaml", two)]


def test_the_audits_a_request_asks_for_are_checked_before_it_unlearns(model_dir: Path, example: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistyped attack name costs nothing, and one name given as a string is not read letter by letter."""
    import unsee.forget as forget_module

    monkeypatch.setattr(forget_module, "unlearn_and_save", lambda *a, **k: pytest.fail("the request was unlearned"))
    for kinds, message in ((["pgdd"], "unknown attack"), ("mia", "a list of attack names, such as \\['mia'\\], not")):
        with pytest.raises(ConfigError, match=message):
            api.forget(model_dir, example, tmp_path / "o", method="graddiff", audit_kinds=kinds, overrides=FAST)
    assert not (tmp_path / "o").exists()


def test_a_later_request_cannot_keep_a_forgotten_face_under_another_name(model_dir: Path, example: Path,
                                                                          tmp_path: Path) -> None:
    """Names are not all a chain checks: the photos an earlier request forgot are refused in a later one."""
    body = yaml.safe_load(example.read_text())
    gone = body["forget"][0]
    first, *rest = body["retain"]
    renamed = {"name": "Someone Else", "photos": gone["photos"]}
    two = {"forget": [first], "retain": [renamed, *rest, {"photos": "neutral"}], "distractors": body["distractors"]}
    files = [_write(example.parent / "one.yaml", body), _write(example.parent / "renamed.yaml", two)]
    with pytest.raises(RequestError, match=r"\(retain\[0\] \(Someone Else\)\) is a photo of forget\[0\]"):
        api.forget(model_dir, None, tmp_path / "bad", requests=files, overrides=FAST, audit=False)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_requests_in_order_are_a_continual_run(model_dir: Path, example: Path, world: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    files = two_requests(example)
    first = yaml.safe_load(example.read_text())["retain"][0]
    with pytest.raises(RequestError, match="already forgotten"):  # reversed, the later one retains the forgotten
        api.forget(model_dir, None, tmp_path / "bad", requests=list(reversed(files)), overrides=FAST, audit=False)
    assert not (tmp_path / "bad").exists()
    # each request keeps its own training checkpoint: the one request 1 leaves is another run's for request 2
    kept = [f"checkpoint_dir={tmp_path / 'ck'}", "checkpoint_every=1", "keep_checkpoint=true"]
    out = api.forget(model_dir, None, tmp_path / "out", requests=files, overrides=[*FAST, *kept], audit=False,
                     max_gen_items=1)
    assert all(has_checkpoint(tmp_path / "ck" / f"request-{i}") for i in (1, 2))
    runs = load_results(out / "results.json")["runs"]
    assert [r["request"] for r in runs] == [2, 1, 2]  # vanilla: measured on the last request's groups
    # the unlearning cost stated is both requests', not the last one's
    record = json.loads((out / "forget.json").read_text())["cost"]
    total = record["unlearning"]
    # the whole command's time: one figure in the record and in the report
    assert f"the whole command {record['total_wall_s']:.1f} s;" in (out / "report.md").read_text()
    assert total["wall_s"] == pytest.approx(runs[1]["cost"]["wall_s"] + runs[2]["cost"]["wall_s"], abs=2e-3)
    assert total["requests"] == 2
    # and each request's own, as results.json has them
    assert [c["wall_s"] for c in record["per_request"]] == [runs[1]["cost"]["wall_s"], runs[2]["cost"]["wall_s"]]
    assert [c["request"] for c in record["per_request"]] == [str(f) for f in files]
    assert all("(all 2 requests)" in (out / f).read_text() for f in ("report.md", "evidence.html", "model/README.md"))
    vanilla, one, two = runs
    # every request's forget group so far, the current one included; the vanilla run has them all, and
    # its own forget group is the last request's: the final run is read against the same people
    assert {k for k in one["metrics"] if k.startswith("forget_r")} == {"forget_r1"}
    assert {k for k in two["metrics"] if k.startswith("forget_r")} == {"forget_r1", "forget_r2"}
    assert {k for k in vanilla["metrics"] if k.startswith("forget_r")} == {"forget_r1", "forget_r2"}
    for run in (vanilla, two):
        assert run["metrics"]["forget"]["mcq"] == run["metrics"]["forget_r2"]["mcq"]
    assert vanilla["evaluation"] is not None and vanilla["protocol"] == two["protocol"]
    assert {r["method"] for r in load_samples(out / "results.json")} == {"vanilla", "cvf_ncu"}
    report = (out / "report.md").read_text()
    assert "No `vanilla` run in this setting" not in report  # read against it
    # request 1's forget, forget_test and retain are other people and photos than vanilla's: no change is
    # shown against them, and no score; its forget_r1 is the same items, and is
    header = next(line for line in report.splitlines() if line.startswith("| method | request |"))
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")]
            for line in report.splitlines() if line.startswith("| cvf_ncu |")}
    cols = [c.strip() for c in header.strip("|").split("|")]
    row1, row2 = rows[("cvf_ncu", "1")], rows[("cvf_ncu", "2")]
    assert "(" not in row1[cols.index("forget")] and "(" in row1[cols.index("forget_r1")]
    assert row1[cols.index("score")] == "\u2014" != row2[cols.index("score")]
    assert "(" in row2[cols.index("forget")] and "(" in row2[cols.index("retain")]
    card = (out / "model" / "README.md").read_text()
    forgotten = [yaml.safe_load(example.read_text())["forget"][0]["name"], first["name"]]
    assert all(n in card for n in forgotten)
    evidence = (out / "evidence.html").read_text()
    assert all(n in evidence for n in forgotten)  # the held-out photos of both requests' people
    # but the run measured the last request's held-out photos alone, and its verdict says so
    assert "on held-out photos of the last request's people" in (out / "report.md").read_text()
    # its model is attacked on one request into a new file; the chain's own results take no figure of one request
    with pytest.raises(DataError, match="continual run on the requests one\\+two"):
        api.attack("shift", out / "model", files[-1], out, overrides=["max_items=2"])
    # nor figures of the world's split, with the same advice: passing one request file would not do either
    with pytest.raises(DataError, match="continual run on the requests one\\+two"):
        api.attack("shift", out / "model", world, out, overrides=["max_items=2"])
    api.attack("shift", out / "model", files[-1], tmp_path / "attacked.json", overrides=["max_items=2"])
    assert "shift" in load_results(tmp_path / "attacked.json")["runs"][-1]["attacks"]

    # stopped at the second request, the first is kept, and the same command goes on from there
    calls: list[Any] = []
    monkeypatch.setattr(forget_module, "unlearn_and_save",
                        stopping_at(forget_module.unlearn_and_save, 2, KeyboardInterrupt(), calls))
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt) as stop:
        api.forget(model_dir, None, again, requests=files, overrides=FAST, audit=False, max_gen_items=1)
    assert any("request 1 is kept in" in n and "goes on from request 2" in n for n in stop.value.__notes__)
    assert not again.exists() and (partial_dir(again) / "state.json").is_file()
    # a request edited meanwhile where no forget photo moved (a retained person less) is another run
    original = files[1].read_text()
    edited = yaml.safe_load(original)
    _write(files[1], {**edited, "retain": edited["retain"][1:]})
    with pytest.raises(ConfigError, match="another continual run"):
        api.forget(model_dir, None, again, requests=files, overrides=FAST, audit=False, max_gen_items=1)
    files[1].write_text(original)
    calls.clear()
    api.forget(model_dir, None, again, requests=files, overrides=FAST, audit=False, max_gen_items=1)
    assert len(calls) == 1 and not partial_dir(again).exists()
    assert [r["metrics"] for r in load_results(again / "results.json")["runs"]] == [r["metrics"] for r in runs]


def test_world_command_writes_the_example(tmp_path: Path) -> None:
    out = api.build_world(tmp_path / "w", config="quick", overrides=["n_people=6", "n_known=2", "n_unknown=2",
                                                                       "n_neutral=4", "n_train_views=2",
                                                                       "n_test_views=1", "n_requests=2",
                                                                       "n_general_train=8", "n_general_eval=4",
                                                                       "n_pretrain=4"])
    req = load_request(out / "request" / "request.yaml")
    assert len(req.forget) == 1 and len(req.retain) == 5
    for ph in req.forget[0].photos + req.neutral + req.general:
        assert ph.path.suffix == ".png" and Image.open(io.BytesIO(ph.data)).format == "PNG"
    # a world without forget_10 takes its first forget split's people, rather than failing once written
    small = ["n_people=8", "n_known=2", "n_unknown=2", "n_neutral=4", "n_train_views=2", "n_test_views=1",
             "n_requests=2", "n_general_train=8", "n_general_eval=4", "n_pretrain=4", "forget_splits=[20, 40]"]
    other = api.build_world(tmp_path / "w2", config="quick", overrides=small)
    first = json.loads((other / "world.json").read_text())["splits"]["forget_20"]
    assert [p.id for p in load_request(other / "request" / "request.yaml").forget] == first
    with pytest.raises(ConfigError, match="seed must be a whole number in"):
        api.build_world(tmp_path / "w3", config="quick", overrides=[*small, "seed=-1"])
    assert not (tmp_path / "w3").exists()


def test_a_world_interrupted_while_its_example_is_written_leaves_nothing(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The example request lands with the world: a world without it would be refused as existing output."""
    def interrupted(world: Path, out: Path) -> None:
        out.mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "write_world_request", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.build_world(tmp_path / "w", config="quick", overrides=["n_people=6", "n_known=2", "n_unknown=2",
                                                                     "n_neutral=4", "n_requests=2", "n_pretrain=4"])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_requests_under_two_processes_are_written_once(model_dir: Path, example: Path, tmp_path: Path) -> None:
    """`accelerate launch -m unsee.cli forget --requests`: the first process alone evaluates, audits (the
    relearning trains in it alone) and writes; the others train their share of each request."""
    files = ",".join(map(str, two_requests(example)))
    opts = [*FAST, "augment=0", "augment_retain=0", *(f"--audit-set={o}" for o in FAST_AUDIT)]  # crops: per process
    cmd, env = launch_command("cpu.yaml", "-m", "unsee.cli", "forget", "--model", str(model_dir), "--requests",
                              files, "--out", str(tmp_path / "two"), *opts)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("written to") == 1  # said once
    assert main(["forget", "--model", str(model_dir), "--requests", files, "--out", str(tmp_path / "one"),
                 *opts]) == 0
    two, one = (load_results(tmp_path / d / "results.json")["runs"] for d in ("two", "one"))
    assert [r["request"] for r in two] == [2, 1, 2] and "relearn" in two[-1]["attacks"]
    assert [r["metrics"] for r in two] == [r["metrics"] for r in one]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no progress, no stray temporary
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()


def test_requests_under_one_file_name_are_other_data_in_a_report(example: Path, tmp_path: Path) -> None:
    """Every request `unsee world` writes is `request.yaml`: the fingerprint of its file and photos is what
    keeps two requests' runs from sharing a vanilla baseline."""
    from unsee.report.tables import setting_of

    other = tmp_path / "other"
    shutil.copytree(example.parent, other)
    photo = sorted((other / "photos").rglob("*.png"))[0]
    with Image.open(photo) as img:
        edited = img.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - c for c in edited.getpixel((0, 0))))
    edited.save(photo)  # one pixel of one photo: another request
    first, again, second = (load_request_suite(p) for p in (example, example, other / example.name))
    assert first.info["data"]["fingerprint"] == again.info["data"]["fingerprint"]
    assert first.info["data"]["fingerprint"] != second.info["data"]["fingerprint"]
    runs = [api.make_run("vanilla", {"forget": {"n": 0}}, model="m", suite=s, forget="request", seed=0)
            for s in (first, second)]
    assert runs[0]["forget_split"] == runs[1]["forget_split"] and setting_of(runs[0]) != setting_of(runs[1])
    validate_results(new_results(runs))


def test_vkd_on_photos_read_as_other_token_grids_is_one_line(example: Path, tiny_models: Any, tmp_path: Path) -> None:
    """Qwen-VL reads a photo of another shape as another number of visual tokens; vkd compares them token by
    token, and says so rather than failing inside a tensor operation."""
    other = tmp_path / "req"
    shutil.copytree(example.parent, other)
    person = yaml.safe_load(example.read_text())["forget"][0]["photos"]
    for photo in sorted((other / person).iterdir()):
        with Image.open(photo) as img:
            img.convert("RGB").resize((img.width * 2, img.height)).save(photo)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="vkd compares visual tokens position by position"):
        api.forget(tiny_models.dir("tiny-qwen2-vl"), other / example.name, out, method="vkd", overrides=FAST,
                   audit=False, max_gen_items=1)
    assert not out.exists()


def test_requests_given_as_a_path_are_read_as_their_string_is(tmp_path: Path) -> None:
    """A notebook passes ``Path`` objects: a file listing continual requests, or one request file."""
    from unsee.runs import request_names

    listing = tmp_path / "requests.txt"
    listing.write_text("# in order\nforget_r1\nforget_r2\n")
    assert request_names(listing) == request_names(str(listing)) == ["forget_r1", "forget_r2"]
    with pytest.raises(ConfigError, match="no file listing requests"):
        request_names(tmp_path / "missing.txt")
    one = tmp_path / "request.yaml"
    assert forget_module.request_files(requests=one) == forget_module.request_files(requests=str(one)) == [one]


def test_an_attack_after_a_request_writes_its_evidence_again(model_dir: Path, example: Path, tmp_path: Path) -> None:
    """``unsee forget --no-audit`` then ``unsee attack``: the report and the evidence page said no audit was run,
    beside a card and results that held one."""
    out = api.forget(model_dir, example, tmp_path / "out", overrides=FAST, audit=False, max_gen_items=1)
    assert "no audits were run" in (out / "report.md").read_text()
    photos = {p.name: p.read_bytes() for p in (out / "evidence").glob("0*.png")}
    api.attack("shift", out / "model", example, out, overrides=["max_items=2"])
    report, page = (out / "report.md").read_text(), (out / "evidence.html").read_text()
    card = (out / "model" / "README.md").read_text()
    said = next(line for line in report.splitlines() if line.startswith("**Verdict:**"))
    assert "no audits were run" not in report and said in card and "the audits run give no recovery figure" in said
    assert "| shift |" in report and "<td>shift</td>" in page and "No audits were run" not in page
    assert {p.name: p.read_bytes() for p in (out / "evidence").glob("0*.png")} == photos  # the photos as written
