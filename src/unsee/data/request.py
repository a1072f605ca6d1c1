"""A removal request from the user's own photos, as a :class:`~unsee.data.schema.Suite`.

Most users of unsee hold a deployed model and a request ("this person must no longer be
recognised"), not a benchmark split. A request file (``docs/requests.md``, the schema in
``request.schema.json`` beside this module) names the people to forget and to keep, with
their photos; this module checks it whole (every problem at once, before any model is
loaded) and builds from it the training streams the methods read and the evaluation groups
the evaluator and the audits read, under the same group names as the benchmarks.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from PIL import Image, ImageFilter

from unsee.config import read_yaml
from unsee.data.people import NAME_STATEMENTS, NAME_TEST_QUESTIONS, NAME_TRAIN_QUESTIONS
from unsee.data.schema import IMAGE_ERRORS, Example, Suite, rgb, why_unreadable
from unsee.errors import ConfigError, DataError
from unsee.io import home_path

SCHEMA_PATH = Path(__file__).with_name("request.schema.json")
SUFFIXES = (".yaml", ".yml", ".json")
# The retain loss and NCU's null space are estimated from the retained photos; with fewer
# than this many a method has next to nothing to hold the rest of the model in place.
MIN_RETAIN_PHOTOS = 10
N_OPTIONS = 4  # who-is-this MCQ: the true name and up to three distractors
IMAGE, TEXT = "Image_Textual", "Pure_Text"


class RequestError(DataError):
    """Everything wrong with a request file, one problem a line."""

    def __init__(self, path: str | Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"{path}: {n} problem{'s' * (n != 1)}:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class Photo:
    path: Path
    data: bytes = field(repr=False)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class RequestPerson:
    """One person of a request; ``names[0]`` is the name the model uses (empty: unnamed)."""

    role: str
    index: int
    names: tuple[str, ...]
    id: str
    photos: list[Photo]
    held_out: list[Photo]
    qa: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return self.names[0] if self.names else ""

    @property
    def where(self) -> str:
        return f"{self.role}[{self.index}]" + (f" ({self.name})" if self.name else "")


@dataclass
class Request:
    path: Path
    forget: list[RequestPerson]
    retain: list[RequestPerson]
    neutral: list[Photo]
    general: list[Photo]
    distractors: list[str]

    @property
    def label(self) -> str:
        """The name results files give this request (their ``forget_split``)."""
        return self.path.stem

    def people(self) -> list[RequestPerson]:
        return self.forget + self.retain


def is_request_file(path: str | Path) -> bool:
    """A YAML or JSON file (benchmarks are folders or hub ids)."""
    p = Path(path)
    return p.suffix.lower() in SUFFIXES and p.is_file()


def named_paths(path: str | Path) -> list[Path]:
    """Every photo and folder a request file names, resolved as :func:`load_request` resolves them.

    They are inputs as much as the file: an output placed over them would delete the photos
    the run reads. Read without opening a photo; a file that does not parse names nothing here
    (:func:`load_request` reports it).
    """
    path = Path(path)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return []
    if not isinstance(raw, dict):
        return []
    specs: list[Any] = [raw.get("neutral"), raw.get("general")]
    for role in ("forget", "retain"):
        people = raw.get(role) if isinstance(raw.get(role), list) else []
        specs += [p.get(k) for p in people if isinstance(p, dict) for k in ("photos", "held_out")]
    base = path.resolve().parent
    return [p for spec in specs for p in _spec_paths(spec, base)]


def _spec_paths(spec: Any, base: Path) -> list[Path]:
    """The files and folders a ``photos`` entry (one path or a list) names, relative ones from ``base``."""
    items = [spec] if isinstance(spec, str) else (spec if isinstance(spec, list) else [])
    paths = [home_path(item) for item in items if isinstance(item, str)]
    return [p if p.is_absolute() else base / p for p in paths]


def request_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _key_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the top level"


def _schema_problems(raw: Any) -> list[str]:
    schema = request_schema()
    problems = []
    validator = jsonschema.Draft202012Validator(schema)
    for err in sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _key_path(err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = sorted(err.schema.get("properties", {}))
            for key in sorted(set(err.instance) - set(known)):
                problems.append(f"unknown key {key!r} at {where} (known keys: {', '.join(known)})")
        elif err.validator == "required":
            problems.append(f"{where}: {err.message}")
        else:
            problems.append(f"{where}: {err.message}")
    return problems


class _Reader:
    """Reads photos once each, relative to the request's folder, and collects what is wrong."""

    def __init__(self, base: Path, problems: list[str]) -> None:
        self.base = base
        self.problems = problems
        self.cache: dict[Path, Photo | None] = {}
        self.exts = {e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}

    def photos(self, spec: Any, where: str) -> list[Photo]:
        out: list[Photo] = []
        for p in _spec_paths(spec, self.base):
            if p.is_dir():
                # a broken link named like a photo is read, and reported, not passed over
                files = sorted(f for f in p.iterdir() if f.suffix.lower() in self.exts and not f.is_dir())
                if not files:
                    self.problems.append(f"{where}: folder {p} holds no image Pillow can read")
                out += [ph for f in files if (ph := self.read(f, where)) is not None]
            elif not p.exists():  # a link to itself or to nothing names a file, so say which it is
                what = "is a link that leads to no file (a loop, or a missing target)" if p.is_symlink() else \
                    "does not exist"
                self.problems.append(f"{where}: photo {p} {what}")
            elif (ph := self.read(p, where)) is not None:
                out.append(ph)
        return out

    def read(self, path: Path, where: str) -> Photo | None:
        if path not in self.cache:
            try:
                data = path.read_bytes()
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    rgb(img)  # a pixel format no model can take is refused here, with the rest
                self.cache[path] = Photo(path, data)
            except IMAGE_ERRORS as e:
                self.problems.append(f"{where}: cannot read photo {path}: {why_unreadable(e)}")
                self.cache[path] = None
        return self.cache[path]


def one_form(text: str) -> str:
    """A name as it is compared, hashed and scored: Unicode's composed form (NFC) with its spaces collapsed.
    "José" typed as an e and a combining accent (as some editors and file systems write it) is the same
    person as the "José" of one character: the two read alike, yet were two people, in forget and retain
    at once, and one of them never found in a model's answer."""
    return unicodedata.normalize("NFC", " ".join(text.split()))


def _names(raw: Any) -> tuple[str, ...]:
    given = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return tuple(n for n in (one_form(x) for x in given if isinstance(x, str)) if n)


def _distinct(photos: list[Photo]) -> list[Photo]:
    first: dict[str, Photo] = {}
    for ph in photos:
        first.setdefault(ph.digest, ph)
    return list(first.values())


def _person(raw: Any, role: str, i: int, reader: _Reader) -> RequestPerson:
    raw = raw if isinstance(raw, dict) else {}
    names = _names(raw.get("name"))
    person = RequestPerson(role, i, names, str(raw.get("id") or (names[0] if names else f"{role}{i}")), [], [], [])
    # one image listed twice (a folder and a file in it, say) is one photo: it neither counts twice towards
    # the retained minimum nor is asked twice
    person.photos = _distinct(reader.photos(raw.get("photos"), f"{person.where}.photos"))
    person.held_out = _distinct(reader.photos(raw.get("held_out", []), f"{person.where}.held_out"))
    qa = raw.get("qa") if isinstance(raw.get("qa"), list) else []
    person.qa = [q for q in qa if isinstance(q, dict) and isinstance(q.get("question"), str)
                 and isinstance(q.get("answer"), str)]
    return person


def load_request(path: str | Path, *, names_needed_by: str | None = None) -> Request:
    """Read and check a request file; every problem is reported at once in one :class:`RequestError`.

    ``method`` adds the checks that depend on it (names of retained people are needed when
    the language model trains). Nothing is written and no model is touched.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES and path.is_file():
        # every other command tells a request from a benchmark by its suffix: one without would be read as a
        # request here and as something else there (its photos unguarded as inputs, say)
        raise DataError(f"request file {path} must be named .yaml, .yml or .json")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"), f"cannot read request file {path}")  # JSON too
    except FileNotFoundError as e:
        raise DataError(f"request file {path} does not exist") from e
    except ConfigError as e:
        raise DataError(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read request file {path}: {e}") from e
    if not isinstance(raw, dict):
        raise RequestError(path, ["the file must hold a mapping with 'forget' and 'retain' lists"])
    problems = _schema_problems(raw)
    reader = _Reader(path.resolve().parent, problems)
    lists = {role: raw.get(role) if isinstance(raw.get(role), list) else [] for role in ("forget", "retain")}
    req = Request(
        path=path,
        forget=[_person(p, "forget", i, reader) for i, p in enumerate(lists["forget"])],
        retain=[_person(p, "retain", i, reader) for i, p in enumerate(lists["retain"])],
        neutral=reader.photos(raw.get("neutral", []), "neutral"),
        general=reader.photos(raw.get("general", []), "general"),
        distractors=list(_names(raw.get("distractors", []))),
    )
    problems += request_problems(req, names_needed_by=names_needed_by, forget_given="forget" in raw)
    if problems:
        raise RequestError(path, list(dict.fromkeys(problems)))
    return req


def request_problems(req: Request, *, names_needed_by: str | None = None, forget_given: bool = True) -> list[str]:
    """The checks beyond the schema: people, names and photos that cannot make a sound run."""
    problems = []
    if forget_given and not req.forget:
        problems.append("the forget list is empty: name at least one person to forget")
    for p in req.people():
        if not p.photos:
            problems.append(f"{p.where} has no photos to train on")
    by_name: dict[str, list[RequestPerson]] = {}
    for p in req.people():
        for n in dict.fromkeys(n.casefold() for n in p.names):
            by_name.setdefault(n, []).append(p)
    for key, people in by_name.items():
        shown = next(n for n in people[0].names if n.casefold() == key)
        roles = {p.role for p in people}
        if roles == {"forget", "retain"}:
            problems.append(f"{shown!r} is in both forget and retain ({', '.join(p.where for p in people)})")
        elif len(people) > 1:
            problems.append(f"duplicate name {shown!r}: {', '.join(p.where for p in people)}")
    ids: dict[str, list[RequestPerson]] = {}
    for p in req.people():
        ids.setdefault(p.id, []).append(p)
    for pid, people in ids.items():
        if len(people) > 1 and len({n.casefold() for p in people for n in p.names[:1]}) > 1:
            problems.append(f"duplicate id {pid!r}: {', '.join(p.where for p in people)}")
    n_retain = sum(len(p.photos) for p in req.retain)
    if n_retain < MIN_RETAIN_PHOTOS:
        problems.append(f"too few retained photos: {n_retain}; at least {MIN_RETAIN_PHOTOS} are needed, since the "
                        "methods hold the rest of the model in place with them")
    owner: dict[str, tuple[str, Path]] = {}
    for who, photos in [*((p.where, p.photos) for p in req.people()), ("neutral", req.neutral),
                        ("general", req.general)]:
        for ph in photos:
            first = owner.setdefault(ph.digest, (who, ph.path))
            if first[0] != who:
                problems.append(f"photo {ph.path} ({who}) is the same image as {first[1]} ({first[0]})")
    held: dict[str, tuple[str, Path]] = {}
    for p in req.people():
        for ph in p.held_out:
            if ph.digest in owner:
                who, src = owner[ph.digest]
                problems.append(f"held-out photo {ph.path} of {p.where} is the same file as training photo {src} "
                                f"({who}): it would not test anything")
            first = held.setdefault(ph.digest, (p.where, ph.path))
            if first[0] != p.where:
                problems.append(f"held-out photo {ph.path} ({p.where}) is the same image as {first[1]}, held out "
                                f"for {first[0]}")
    names = {n.casefold() for p in req.people() for n in p.names[:1]} | {n.casefold() for n in req.distractors}
    if req.forget and len(names) < 2:
        problems.append("the who-is-this questions need at least two names: add named retained people or "
                        "'distractors'")
    if names_needed_by is not None:
        for p in req.retain:
            if not p.name:
                problems.append(f"{p.where} has no name, and method {names_needed_by!r}, as configured, reads the "
                                "'who is this?' answers about retained people; name every retained person, or use "
                                "vkd, or cvf_ncu without the output-level retain term (lambda_o=0)")
    return problems


def check_sequence(requests: Sequence[Request]) -> None:
    """A continual run: no later request may retain (or forget again) someone an earlier one forgot, by a name
    or by a photo (the same image under another name would train the forgotten face back)."""
    problems = []
    gone: dict[str, str] = {}
    gone_photos: dict[str, tuple[str, str]] = {}  # digest -> (who, file)
    ids: dict[str, tuple[str, str]] = {}  # id -> (name, file): results and evidence know a person by the id
    for req in requests:
        for p in req.people():
            for n in p.names:
                if n.casefold() in gone:
                    problems.append(f"{req.path}: {p.where} was already forgotten by {gone[n.casefold()]}")
            name, first = ids.setdefault(p.id, (p.name, str(req.path)))
            if name.casefold() != p.name.casefold():
                problems.append(f"{req.path}: {p.where} has the id {p.id!r}, which {first} gives {name!r}; "
                                "give each person an id of their own")
        for who, photos in [*((p.where, [*p.photos, *p.held_out]) for p in req.people()),
                            ("neutral", req.neutral), ("general", req.general)]:
            for ph in photos:
                if ph.digest in gone_photos:
                    whom, where = gone_photos[ph.digest]
                    problems.append(f"{req.path}: photo {ph.path} ({who}) is a photo of {whom}, whom {where} "
                                    "forgot")
        for p in req.forget:
            gone.update({n.casefold(): str(req.path) for n in p.names})
            gone_photos.update({ph.digest: (p.where, str(req.path)) for ph in [*p.photos, *p.held_out]})
    if problems:
        raise RequestError(requests[-1].path, problems)


# ---------------------------------------------------------------------------- the suite
def _who_items(p: RequestPerson, photos: Sequence[Photo], split: str, pool: Sequence[str],
               rng: np.random.Generator) -> list[Example]:
    """'Who is this?' on each photo: MCQ among names, the name as a fill-in, and an open answer."""
    k = 0 if split == "train" else 1
    questions = NAME_TRAIN_QUESTIONS if split == "train" else NAME_TEST_QUESTIONS
    others = [n for n in pool if n.casefold() not in {a.casefold() for a in p.names}]
    out = []
    for i, ph in enumerate(photos):
        q = questions[i % len(questions)]
        wrong = [others[j] for j in rng.choice(len(others), size=min(N_OPTIONS - 1, len(others)), replace=False)]
        correct = int(rng.integers(len(wrong) + 1))
        options = (*wrong[:correct], p.name, *wrong[correct:])
        meta = {"type": IMAGE, "photo": str(ph.path), "role": p.role, "split": split, "aliases": list(p.names)}
        base = f"request/{p.id}/{split}{i}"
        out += [
            Example(f"{base}/mcq", p.id, q, p.name, "mcq", ph.data, options, correct, source=str(ph.path), meta=meta),
            Example(f"{base}/cloze", p.id, NAME_STATEMENTS[k].format(v="__"), p.name, "cloze", ph.data,
                    source=str(ph.path), meta=meta),
            Example(f"{base}/gen", p.id, q, NAME_STATEMENTS[k].format(v=p.name), "gen", ph.data,
                    source=str(ph.path), meta=meta),
        ]
    return out


def _text_items(p: RequestPerson, rng: np.random.Generator) -> list[Example]:
    out = []
    for i, q in enumerate(p.qa):
        meta = {"type": TEXT, "role": p.role}
        src = f"{p.where}.qa[{i}]"
        wrong = [w for w in q.get("wrong", []) if w != q["answer"]][: N_OPTIONS - 1]
        if wrong:
            correct = int(rng.integers(len(wrong) + 1))
            options = (*wrong[:correct], q["answer"], *wrong[correct:])
            out.append(Example(f"request/{p.id}/qa{i}/mcq", p.id, q["question"], q["answer"], "mcq", None, options,
                               correct, source=src, meta=meta))
        out.append(Example(f"request/{p.id}/qa{i}/gen", p.id, q["question"], q["answer"], "gen", source=src,
                           meta=meta))
    return out


def _training(p: RequestPerson) -> list[Example]:
    """'Who is this?' → the name on each training photo; an unnamed person's photos carry no text."""
    return [Example(f"request/{p.id}/train{i}/qa", p.id, NAME_TRAIN_QUESTIONS[i % 2] if p.name else "", p.name,
                    "qa", ph.data, source=str(ph.path), meta={"type": IMAGE, "photo": str(ph.path)})
            for i, ph in enumerate(p.photos)]


def _images(photos: Sequence[Photo], tag: str) -> list[Example]:
    return [Example(f"request/{tag}/{i}", f"{tag}{i}", "", "", "qa", ph.data, source=str(ph.path),
                    meta={"type": IMAGE, "photo": str(ph.path)}) for i, ph in enumerate(photos)]


def blurred(photos: Sequence[Photo]) -> list[Photo]:
    """Stand-ins for neutral photos: each forget photo under a blur wide enough to hide who it is."""
    out = []
    for ph in photos:
        img = rgb(Image.open(io.BytesIO(ph.data)))
        img = img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 8))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(Photo(ph.path.with_name(f"{ph.path.stem}-blurred.png"), buf.getvalue()))
    return out


def request_suite(req: Request, *, seed: int = 0) -> Suite:
    """The groups of a request, named as in the benchmarks so that every method, the evaluator and
    the audits read them unchanged.

    Evaluation: ``forget`` / ``forget_test`` (training / held-out photos of the forget people),
    ``retain`` / ``retain_test`` (named retained people), ``text_forget`` / ``text_retain``
    (their QA pairs). Training: ``train_forget``, ``train_retain``, ``train_text``,
    ``train_general`` and ``neutral``; without neutral photos, blurred copies of the forget
    photos take their place.
    """
    rng = np.random.default_rng([seed, 33])
    pool = list(dict.fromkeys([p.name for p in req.people() if p.name] + req.distractors))
    g: dict[str, list[Example]] = {k: [] for k in ("forget", "forget_test", "retain", "retain_test", "text_forget",
                                                   "text_retain", "train_forget", "train_retain", "train_text")}
    for p in req.people():
        side = "forget" if p.role == "forget" else "retain"
        if p.name:
            g[side] += _who_items(p, p.photos, "train", pool, rng)
            g[f"{side}_test"] += _who_items(p, p.held_out, "test", pool, rng)
        g[f"text_{side}"] += _text_items(p, rng)
        g[f"train_{side}"] += _training(p)
        g["train_text"] += [Example(f"request/{p.id}/qa{i}", p.id, q["question"], q["answer"], "qa",
                                    source=f"{p.where}.qa[{i}]", meta={"type": TEXT}) for i, q in enumerate(p.qa)]
    neutral = req.neutral or blurred([ph for p in req.forget for ph in p.photos])
    g["neutral"] = _images(neutral, "neutral")
    g["train_general"] = _images(req.general, "general")
    g["train_known"], g["unknown"] = [], []
    info = {"benchmark": "request", "loader": "request", "request": str(req.path), "seed": seed,
            "names": {p.id: p.name for p in req.people()},
            "neutral": "photos" if req.neutral else "blurred forget photos",
            "data": {"source": str(req.path), "path": str(req.path.resolve()),
                     "fingerprint": request_fingerprint(req), **({"seed": seed} if seed else {})}}
    return Suite(name="request", groups=g, forget_entities=tuple(p.id for p in req.forget),
                 retain_entities=tuple(p.id for p in req.retain), info=info)


def request_fingerprint(req: Request) -> str:
    """16 hex digits of a SHA-256 over the request's file and every photo it reads, in order.

    Requests are all named after their file (``request.yaml`` from ``unsee world``), so this is what
    tells two of them apart in a report: runs on different people must never share a baseline.
    """
    h = hashlib.sha256(req.path.read_bytes())
    photos = [*(ph for p in req.people() for ph in (*p.photos, *p.held_out)), *req.neutral, *req.general]
    for ph in photos:
        h.update(bytes.fromhex(ph.digest))
    return h.hexdigest()[:16]


def load_request_suite(path: str | Path, *, seed: int = 0, names_needed_by: str | None = None) -> Suite:
    return request_suite(load_request(path, names_needed_by=names_needed_by), seed=seed)
