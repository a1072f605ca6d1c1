"""results.json: its schema, reading, writing and merging.

results.json is the public contract between a run and everything after it (the report,
plots, users' scripts), so it is checked by a JSON Schema on every write and every read:
a file that loads is a file the report can trust. The schema is docs/results-format.md's, exactly, and
is extended only by *optional* keys (``attacks``, ``notes``, ``environment``...).
The environment and cost it records come from :mod:`unsee.provenance`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from unsee import __version__
from unsee.engine.trainer import UNKEYED
from unsee.errors import OutputExistsError, UnseeError
from unsee.eval.metrics import spread
from unsee.io import atomic_write_json, atomic_write_text, json_default, writer_tag
from unsee.provenance import environment

SCHEMA_VERSION = 1
MCQ_PROTOCOLS = ("loglik", "letter", "option_string")
PROTOCOLS = ("loglik", "official")
# A run may carry its item records under this key until it is written; they go to samples.jsonl.
SAMPLES_KEY = "_samples"

_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}

METRIC_GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Figures for one group of items; accuracies are fractions, n the item count.",
    "required": ["n"],
    "properties": {"mcq": _FRACTION, "cloze": _FRACTION, "rougeL": _FRACTION, "bleu": _FRACTION, "n": _COUNT,
                   "ci95": {"type": "array", "items": _FRACTION, "minItems": 2, "maxItems": 2},
                   "ci95_people": {"type": "array", "items": _FRACTION, "minItems": 2, "maxItems": 2},
                   "people": {"type": "object", "additionalProperties": _FRACTION,
                              "description": "a forget group's MCQ accuracy per person"}},
    "additionalProperties": {"type": "number"},
}

COST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["wall_s", "peak_rss_bytes", "peak_gpu_bytes", "trainable_params", "optimizer_state_bytes"],
    "properties": {
        "wall_s": {"type": "number", "minimum": 0},
        "peak_rss_bytes": _COUNT,
        "peak_gpu_bytes": {"type": ["integer", "null"], "minimum": 0},
        "trainable_params": _COUNT,
        "optimizer_state_bytes": _COUNT,
        "resumed_s": {"type": "number", "minimum": 0,
                      "description": "of wall_s, the seconds a run stopped and resumed from its checkpoint had "
                                     "trained before it stopped (up to that checkpoint); absent when it never stopped"},
        "measured_after": {"type": "integer", "minimum": 1,
                           "description": "how many runs the same process measured before this one; their freed "
                                          "but resident heap counts in peak_rss_bytes, so it does not compare with "
                                          "a run measured in a process of its own. Absent for the first"},
        "covers": {"enum": ["unlearning", "evaluation", "nothing"],
                   "description": "what was measured: the unlearning (the default); for a model only evaluated "
                                  "(unsee eval), the evaluation; for a run that measured no cost (the vanilla row "
                                  "of a run, a run an attack made), nothing. No report reads the last two as a "
                                  "method's cost"},
    },
}

_TEXT = {"type": "string", "minLength": 1}
_FINGERPRINT = {"type": "string", "pattern": "^[0-9a-f]{16}$"}

DATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Where the benchmark came from: the folder or hub id given, the folder read, the hub "
                   "revision asked for and the commit it resolved to, and a hash of the data files (of a "
                   "removal request: its file and every photo it reads).",
    "required": ["source", "path", "fingerprint"],
    "properties": {
        "source": _TEXT,
        "path": _TEXT,
        "revision": {"type": "string"},
        "commit": {"type": "string"},
        "fingerprint": _FINGERPRINT,
        "seed": {"type": "integer", "description": "The seed the items were drawn with (held-out views, option "
                 "positions) where it is not 0: another seed scores other items."},
        "neutral": {
            "type": "object",
            "description": "The never-taught people's photos given with --neutral: their folder, how many, a hash "
                           "of their bytes, and what they replaced.",
            "required": ["path", "images", "fingerprint"],
            "properties": {
                "path": _TEXT,
                "images": {"type": "integer", "minimum": 1},
                "fingerprint": _FINGERPRINT,
                "replaces": {"type": "string"},
            },
        },
    },
}

EVALUATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "How the metrics were obtained: the protocol, the item caps, the reply budget per task, "
                   "and the rule behind each figure of each group.",
    "required": ["protocol", "scoring"],
    "properties": {
        "protocol": {"enum": list(PROTOCOLS)},
        "max_items": {"type": ["integer", "null"], "minimum": 1},
        "max_gen_items": {"type": ["integer", "null"], "minimum": 0},  # 0: no cloze or generation scored
        "max_new_tokens": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "scoring": {"type": "object", "additionalProperties": {"type": "object",
                                                                "additionalProperties": {"type": "string"}}},
        "dtype": {"type": "string", "description": "the precision of the weights scored (torch's name)"},
    },
}

SAMPLES_FILE = "samples.jsonl"
SAMPLES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The samples.jsonl written beside this file, so that a reader can check the two belong together.",
    "required": ["file", "lines", "sha256"],
    "properties": {"file": {"type": "string"}, "lines": _COUNT, "sha256": {"type": "string"}},
}

RUN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "method",
        "model",
        "benchmark",
        "forget_split",
        "request",
        "seed",
        "config",
        "mcq_protocol",
        "metrics",
        "cost",
    ],
    "properties": {
        "method": {"type": "string", "minLength": 1},
        "model": {"type": "string", "minLength": 1},
        "benchmark": {"type": "string", "minLength": 1},
        "forget_split": {"type": "string"},
        "request": {"type": "integer", "minimum": 1},
        "seed": {"type": "integer"},
        "config": {"type": "object"},
        "mcq_protocol": {"enum": list(MCQ_PROTOCOLS)},
        "metrics": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z][A-Za-z0-9_.-]*$"},
            "additionalProperties": METRIC_GROUP_SCHEMA,
        },
        "cost": COST_SCHEMA,
        "attacks": {"type": "object", "additionalProperties": {"type": "object"}},
        "notes": {"type": "string"},
        "history": {
            "type": "array",
            "description": "training curve: the loss and each loss term every log_every steps (and the last)",
            "items": {"type": "object", "required": ["step", "loss"],
                      "properties": {"step": {"type": "integer", "minimum": 1}},
                      "additionalProperties": {"type": "number"}},
        },
        "data": DATA_SCHEMA,
        "retain_without": {"type": "array", "items": {"type": "string"},
                           "description": "A continual run's requests: its retain group leaves out every one's "
                                          "people, so it is read against runs whose retain group does the same."},
        "protocol": {"enum": list(PROTOCOLS)},
        "evaluation": EVALUATION_SCHEMA,
    },
}

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://unsee.invalid/results.schema.json",
    "title": "unsee results.json",
    "type": "object",
    "required": ["schema_version", "unsee_version", "git_hash", "created", "runs"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "unsee_version": {"type": "string", "minLength": 1},
        "git_hash": {"type": ["string", "null"]},
        "created": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}"},
        "environment": {"type": "object"},
        "samples": SAMPLES_SCHEMA,
        "runs": {"type": "array", "items": RUN_SCHEMA},
        "seeds": {"type": "array", "items": {"type": "object", "required": ["method", "seeds", "metrics"]}},
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(RESULTS_SCHEMA)


class ResultsError(UnseeError):
    """A results file is missing, unreadable, truncated or does not follow the schema."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_results(runs: Iterable[Mapping[str, Any]], *, env: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A results.json object around ``runs``, stamped with version, git hash, time and environment."""
    env = dict(environment() if env is None else env)
    return {
        "schema_version": SCHEMA_VERSION,
        "unsee_version": env.get("unsee_version") or __version__,
        "git_hash": env.get("git_hash"),
        "created": _now(),
        "environment": env,
        "runs": [dict(r) for r in runs],
    }


# ---------------------------------------------------------------- validation and I/O


def _path_text(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _non_finite(obj: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """Path of the first NaN/inf: JSON cannot hold them and they poison every average."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, Mapping):
        items: Iterable[tuple[Any, Any]] = obj.items()
    elif isinstance(obj, list | tuple):
        items = enumerate(obj)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, (*path, k))
        if found is not None:
            return found
    return None


def validate_results(obj: Any) -> None:
    """Raise :class:`ResultsError` naming the first offending key (``runs[0].metrics.forget.mcq``)."""
    errors = list(_VALIDATOR.iter_errors(obj))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        extra = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ResultsError(f"results invalid at {_path_text(best.absolute_path)}: {best.message}{extra}")
    bad = _non_finite(obj)
    if bad is not None:
        raise ResultsError(f"results invalid at {_path_text(bad)}: NaN or infinity is not allowed")


def load_results(path: str | Path) -> dict[str, Any]:
    """Read and validate a results.json, with an error that says what went wrong and where."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ResultsError(f"{path}: no such results file") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read results file: {e}") from e
    if not text.strip():
        raise ResultsError(f"{path}: results file is empty (was the run interrupted?)")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(
            f"{path}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); "
            "the file may be truncated or hand-edited"
        ) from e
    try:
        validate_results(obj)
    except ResultsError as e:
        raise ResultsError(f"{path}: {e}") from e
    return obj


def samples_path(results_path: str | Path) -> Path:
    """Where the item records of a results file live: ``samples.jsonl`` beside a ``results.json``,
    ``NAME.samples.jsonl`` beside any other ``NAME.json``, so that two results files in one
    folder never share one."""
    p = Path(results_path)
    return p.with_name(SAMPLES_FILE if p.name == "results.json" else f"{p.stem}.{SAMPLES_FILE}")


def sample_lines(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The lines of samples.jsonl: each run's item records, led by the run they belong to."""
    lines = []
    for i, run in enumerate(runs):
        head = {"run": i, "method": run.get("method"), "request": run.get("request"), "seed": run.get("seed"),
                "protocol": run.get("protocol", "loglik")}
        lines += [{**head, **rec} for rec in run.get(SAMPLES_KEY) or []]
    return lines


def strip_samples(run: Mapping[str, Any]) -> dict[str, Any]:
    """A run without its item records: what results.json and run.json hold."""
    return {k: v for k, v in run.items() if k != SAMPLES_KEY}


def write_results(path: str | Path, obj: Mapping[str, Any], *, overwrite: bool = False,
                  keep_samples: bool = False) -> Path:
    """Validate, then write atomically; an existing file is replaced only with ``overwrite``.

    Runs that carry item records (:data:`SAMPLES_KEY`) have them written to samples.jsonl
    beside the file, and results.json records that file's line count and hash. With
    no records at all, an existing samples.jsonl is left as it is (attacks added to a run
    change no item), and a missing one is written empty, so every results.json has one. One the
    results do not record (left by other results) is theirs: refused, or replaced with ``overwrite``;
    ``keep_samples`` leaves it (an attack added to older results, which recorded none).

    The samples are written aside first and put in place once results.json is: a run killed between
    leaves the previous pair, or only a leftover the next write removes, never samples without results.
    """
    path = Path(path)
    if path.is_symlink():  # written where the link leads, the samples beside it
        path = Path(os.path.realpath(path))
    spath = samples_path(path)
    runs = list(obj.get("runs", []))
    carry = any(SAMPLES_KEY in r for r in runs)
    stale = spath.exists() and "samples" not in obj and not keep_samples
    for target in (path, spath) if carry or stale else (path,):  # other results' samples are not replaced either
        if target.exists() and not overwrite:
            raise OutputExistsError(f"{target} already exists; pass --overwrite to replace it")
    obj = {**obj, "runs": [strip_samples(r) for r in runs]}
    plain = json.loads(json.dumps(obj, default=json_default))  # numpy scalars, tuples -> JSON types
    if carry or stale or not spath.exists():
        text = "".join(json.dumps(line, default=json_default, ensure_ascii=False) + "\n"
                       for line in sample_lines(runs))
        plain["samples"] = {"file": spath.name, "lines": text.count("\n"),
                            "sha256": hashlib.sha256(text.encode()).hexdigest()}
        validate_results(plain)
        staged = spath.with_name(f".{spath.name}.{writer_tag()}-staged.tmp")
        atomic_write_text(staged, text)
        try:
            atomic_write_json(path, plain)
            os.replace(staged, spath)
        finally:
            staged.unlink(missing_ok=True)
        return path
    validate_results(plain)
    atomic_write_json(path, plain)
    return path


def load_samples(results_path: str | Path, results: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The item records beside a results file, in order ([] when there are none).

    The file must be the one the results file recorded (its line count and SHA-256): records
    edited, cut short or left by other results would be read as these runs' answers. One the results
    do not record (older results) is not read, with a word on stderr. ``results``: the results file's
    contents where the caller has read them already.
    """
    results_path = Path(results_path)
    spath = samples_path(results_path)
    if not spath.exists():
        return []
    try:
        data = spath.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"cannot read {spath}: {str(e).splitlines()[0]}") from None
    record = (load_results(results_path) if results is None else results).get("samples")
    if record is None:  # results from before the record, or a file left beside them: not read as theirs
        print(f"unsee: {spath} is not recorded by {results_path.name}, so nothing says it holds these runs' "
              "answers; it is not read", file=sys.stderr)
        return []
    if record.get("sha256") != hashlib.sha256(data).hexdigest() or record.get("lines") != text.count("\n"):
        raise ResultsError(f"{spath} is not the file {results_path.name} recorded (its lines or SHA-256 differ: "
                           "edited, cut short or replaced); write the results again")
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ResultsError(f"{spath}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict) or not {"run", "group", "uid"} <= set(item):
            raise ResultsError(f"{spath}, line {n}: an item record needs run, group and uid")
        lines.append(item)
    return lines


def run_key(run: Mapping[str, Any]) -> str:
    """What makes two runs one: every key equal (the same file passed twice)."""
    return json.dumps(run, sort_keys=True, default=str)


def merge_results(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Join the runs of several results files into one object, keeping where each came from.

    Version and git hash are kept when all sources agree, else they are the current
    version and null. Exact duplicate runs (the same file passed twice) are dropped.
    """
    if not paths:
        raise ResultsError("no results files given")
    loaded = [(Path(p), load_results(p)) for p in paths]
    runs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _, obj in loaded:
        for run in obj["runs"]:
            key = run_key(run)
            if key not in seen:
                seen.add(key)
                runs.append(run)
    if len(loaded) == 1:
        merged = dict(loaded[0][1])
        merged["runs"] = runs
        return merged
    versions = {obj["unsee_version"] for _, obj in loaded}
    hashes = {obj["git_hash"] for _, obj in loaded}
    merged = {
        "schema_version": SCHEMA_VERSION,
        "unsee_version": versions.pop() if len(versions) == 1 else __version__,
        "git_hash": hashes.pop() if len(hashes) == 1 else None,
        "created": _now(),
        "sources": [
            {"path": str(p), **{k: o[k] for k in ("created", "unsee_version", "git_hash")}} for p, o in loaded
        ],
        "runs": runs,
    }
    validate_results(merged)
    return merged


# ---------------------------------------------------------------- several unlearning seeds


def _numbers(figures: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in figures.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "n" and not k.startswith("n_")}


def config_key(run: Mapping[str, Any]) -> str:
    """A run's method config as one comparable string, without its seed and the options that change no
    number (progress bars, checkpoint folders: each seed of a run keeps its own)."""
    config = {k: v for k, v in (run.get("config") or {}).items() if k != "seed" and k not in UNKEYED}
    return json.dumps(config, sort_keys=True, default=str)


def _seed_group(run: Mapping[str, Any]) -> tuple:
    """What runs that differ only in their seed share."""
    return run["method"], run["model"], run["benchmark"], run["forget_split"], run["request"], config_key(run)


def one_run_per_seed(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Of runs of one setting (the report's: one data, one evaluation), the first of each method, model,
    benchmark, forget split, request, config and seed, in order: a seed run twice is one draw, and pooling both
    would count it as two. Where the data were named by another path is no matter."""
    seen: set[tuple] = set()
    out = []
    for run in runs:
        key = (*_seed_group(run), run.get("seed", 0))
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def seed_summary(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, min and max of every figure over the runs that differ only in their seed.

    Runs are grouped by method, model, benchmark, forget split, request and method config (runs
    at another learning rate are another method, not another seed); each group's
    metrics (every number of every metric group but the counts) and attack figures (the
    model's own, not the reference's, which does not change with the unlearning seed) are
    summarised, with the seeds they came from. A figure missing from some runs is summarised
    over the runs that have it, and its ``n`` says how many (an audit run on one seed's model
    is no spread over the seeds). The same seed run again (another results file) is no second seed: its first
    run counts.
    """

    by: dict[tuple, list[Mapping[str, Any]]] = {}
    for run in one_run_per_seed(runs):
        by.setdefault(_seed_group(run), []).append(run)
    out = []
    for (method, model, benchmark, split, request, _), group in by.items():
        entry: dict[str, Any] = {"method": method, "model": model, "benchmark": benchmark, "forget_split": split,
                                 "request": request, "seeds": [r["seed"] for r in group], "metrics": {},
                                 "attacks": {}}
        for section in ("metrics", "attacks"):
            values: dict[str, dict[str, list[float]]] = {}
            for run in group:
                for name, figures in (run.get(section) or {}).items():
                    for k, v in _numbers(figures).items():
                        values.setdefault(name, {}).setdefault(k, []).append(v)
            entry[section] = {name: {k: {**spread(v), "n": len(v)} for k, v in figs.items()}
                              for name, figs in values.items()}
        out.append(entry)
    return out
