"""The steps every command is made of: load and check a benchmark, configure a method, unlearn,
evaluate, record the run and save what a user ships.

``unsee unlearn``, ``forget``, the demo and the benchmarks all go through these, so that a run's
cost, metrics, checkpoint and model card mean the same thing wherever they were produced.
:mod:`unsee.api` is the public face that strings them into commands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from unsee.config import ConfigError, check_seed, config_values, load_config, parse_overrides, to_dict
from unsee.data import load_benchmark
from unsee.data.collate import image_of, qa_turns
from unsee.data.detect import benchmark_of, local_path, resolve
from unsee.data.neutral import attach_neutral
from unsee.data.request import SUFFIXES, is_request_file, load_request_suite, named_paths
from unsee.data.schema import Suite
from unsee.engine import distributed
from unsee.engine.checkpoint import has_checkpoint, remove_checkpoint
from unsee.engine.prepare import merge_lora
from unsee.engine.trainer import STEPLESS, TrainConfig
from unsee.errors import DataError, did_you_mean
from unsee.eval.evaluator import Evaluation, run_evaluation
from unsee.eval.protocols import check_protocol
from unsee.eval.results import SAMPLES_KEY
from unsee.io import atomic_write_text, check_not_input, check_space
from unsee.methods import method_class
from unsee.methods.artifact import Artifact, Trained, WeightsArtifact
from unsee.methods.eraser import SteeringArtifact
from unsee.models.base import Adapter, Turn
from unsee.provenance import combined_cost

# What a demo's output records beside its results: its config, the world and the vanilla model it measured.
DEMO_FILE = "demo.json"


def names_needed_by(method: str | None, config: Any = None, overrides: Any = ()) -> str | None:
    """``method`` when, as configured, its loss reads answers about retained people, who then need names; None
    when it reads their photos alone (CVF reads answers only under ``lambda_o``: the config decides)."""
    return method if method is not None and configured(method, config, overrides).uses_language else None


def configured(method: str, config: Any = None, overrides: Any = ()) -> Any:
    """The method as its config and overrides set it up, to ask it what it reads before any model loads."""
    _, mcfg, cls = method_configs(method, config, overrides)
    return cls(mcfg)


# ---- data ----------------------------------------------------------------------------------
def local_inputs(*paths: Any) -> list[Any]:
    """The inputs among ``paths`` that an output must not overlap (files and folders; None and config
    mappings skipped; a list, such as several draws of the reference, counts each), with the photos and folders a
    request file among them names."""
    local = [q for p in paths for q in (p if isinstance(p, list | tuple) else [p]) if isinstance(q, str | Path)]
    return local + [named for p in local if is_request_file(p) for named in named_paths(p)]


def detect_benchmark(data: Any, benchmark: str | None = None, revision: str | None = None) -> str:
    """Which loader reads ``data``: ``builtin``, ``mllmu``, ``clear`` or ``umu`` (``request`` for a
    removal request file).

    ``data`` is a folder or a hub dataset id (downloaded at ``revision``). ``benchmark`` forces
    the answer after checking that the folder has that benchmark's configs and columns.
    """
    if isinstance(data, str | Path) and is_request_file(data):
        return "request"
    return benchmark_of(local_path(data, revision)[0], benchmark)


def load_suite(data: Any, forget: str | Sequence[str] = "forget_10", *, benchmark: str | None = None,
               revision: str | None = None, neutral: str | Path | None = None, names_needed_by: str | None = None,
               **kw: Any) -> Suite:
    """A benchmark from a folder, a hub id or a resolved :class:`~unsee.data.detect.DataRef`, as a Suite;
    or a removal request file (docs/requests.md), whose ``forget`` is then ignored.

    ``suite.info["data"]`` says where it came from (results.json's ``data``). ``neutral``, a folder of
    photos of never-taught people, becomes the ``neutral`` group (:func:`~unsee.data.neutral.attach_neutral`:
    it replaces the built-in world's own, and the data record names it); a request lists its own, and
    refuses unnamed retained people when ``names_needed_by`` names a method (:func:`names_needed_by`).
    """
    check_seed(kw.get("seed", 0))
    if isinstance(data, str | Path) and is_request_file(data):
        if neutral is not None:
            raise ConfigError("a removal request lists its own never-taught photos (its neutral: list); "
                              "--neutral applies to a benchmark")
        return load_request_suite(data, seed=kw.get("seed", 0), names_needed_by=names_needed_by)
    if files := [f for f in ([forget] if isinstance(forget, str) else forget) if Path(f).suffix.lower() in SUFFIXES]:
        raise ConfigError(f"{files[0]} names a file where a split of {data} is asked for (forget_10, say): a "
                          "removal request file is the data itself (--data FILE, or unsee forget --request FILE)")
    ref = resolve(data, revision)
    suite = load_benchmark(benchmark_of(ref.path, benchmark), ref.path, forget, **kw)
    suite.info["data"] = {**ref.record(), **({"seed": kw["seed"]} if kw.get("seed") else {})}
    return suite if neutral is None else attach_neutral(suite, neutral)


def needs_neutral(method: str, config: Any = None, overrides: Any = ()) -> bool:
    """Whether ``method``, as configured, reads photos of never-taught people (the method says so itself)."""
    return configured(method, config, overrides).needs_neutral() != ""


def check_neutral(suite: Suite, method: str, config: Any = None, overrides: Any = ()) -> None:
    """Stop a method that needs never-taught people on a benchmark that has none, before any model loads."""
    if any(e.has_image for e in suite.groups.get("neutral", [])):
        return
    instead = configured(method, config, overrides).needs_neutral()
    if instead == "":
        return
    other = f", or {instead}" if instead else ""
    raise DataError(f"{method} needs photos of never-taught people, and {suite.info.get('benchmark', suite.name)} "
                    f"ships none: pass --neutral DIR (a folder of photos of people absent from the benchmark){other}")


def check_forget(suite: Suite) -> None:
    """The guards that stop a run before it touches anything: ``unlearn``, ``eval`` and ``attack`` share them."""
    if not suite.forget_entities or not suite.groups.get("train_forget"):
        raise DataError(f"the forget set of {suite.name!r} is empty: nothing to unlearn or to measure")
    overlap = set(suite.forget_entities) & set(suite.retain_entities)
    if overlap:
        raise DataError(f"the forget set overlaps the retain set on {sorted(overlap)[:5]}; they must be disjoint")


def check_images(suite: Suite) -> int:
    """Decode every image of every group now, so that a corrupt file stops the run before
    training rather than after it. Decoded images are cached (:func:`image_of`), so the run
    reads them again for free. Returns how many examples hold an image."""
    n = 0
    for items in suite.groups.values():
        for e in items:
            if e.has_image:
                image_of(e)
                n += 1
    return n


def training_turns(suite: Suite) -> dict[str, list[Turn]]:
    """The streams a method may ask for, built from the suite's training groups."""
    g = suite.groups
    return {
        "forget": qa_turns(g.get("train_forget", [])),
        "retain": qa_turns(g.get("train_retain", [])),
        "text": qa_turns(g.get("train_text", [])),
        "general": qa_turns(g.get("train_general", [])),
        "known": qa_turns([e for e in g.get("train_known", []) if e.has_image]),
        "neutral": qa_turns([e for e in g.get("neutral", []) if e.has_image]),
    }


# ---- configs -------------------------------------------------------------------------------
def method_configs(method: str, config: str | Path | Mapping[str, Any] | None,
                   overrides: Sequence[str] | Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """Split one config (file + overrides) between the engine's and the method's options.

    A key belongs to :class:`TrainConfig` or to the method's own config; a key in neither
    is an error that names it.
    """

    cls = method_class(method)
    mcls = cls.Config
    shipped = Path(__file__).parent / "configs" / "unlearn" / f"{method}.yaml"
    values = config_values(shipped if config is None and shipped.exists() else config, "unlearn")
    given = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    values.update(given)
    tkeys = {f.name for f in dataclasses.fields(TrainConfig)}
    mkeys = {f.name for f in dataclasses.fields(mcls)}
    unknown = sorted(set(values) - tkeys - mkeys)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {method!r}{did_you_mean(unknown, tkeys | mkeys)}; "
                          f"engine options: {sorted(tkeys)}; method options: {sorted(mkeys)}")
    # a test-time method's own option of an engine option's name (the eraser's batch_size) is its own
    tvals = {k: v for k, v in values.items() if k in tkeys and (cls.trains_weights or k not in mkeys)}
    if cls.trains_weights:
        tvals.setdefault("scope", cls.default_scope)
    elif unread := sorted(set(tvals) - set(STEPLESS)):  # a test-time method trains nothing: they would be no-ops
        raise ConfigError(f"{method} trains no weights: the training option(s) {unread} do not apply to it")
    tcfg, mcfg = load_config(TrainConfig, tvals), load_config(mcls, {k: v for k, v in values.items() if k in mkeys})
    if hasattr(mcfg, "check_train"):  # method options that depend on the engine's
        mcfg.check_train(tcfg)
    if hasattr(mcfg, "check_given"):  # options given that the config as set would not read
        mcfg.check_given(set(given))
    return tcfg, mcfg, cls


# ---- evaluation ----------------------------------------------------------------------------
def check_run_name(method: str, steering: Any) -> None:
    """A model run with a steering file is not the vanilla model: figures named so would be read as the base's."""
    if method == "vanilla" and steering is not None:
        raise ConfigError("a model with a steering file is not the vanilla model: name its run with --method "
                          "(eval's default: eraser)")


def deployed_artifact(artifact: Artifact | None, steering: str | Path | None) -> Artifact | None:
    """The artifact a model runs with: the one given, else the steering file at ``steering``, else none."""
    if artifact is not None or steering is None:
        return artifact

    return SteeringArtifact.load(steering)


def evaluation(adapter: Adapter, suite: Suite, *, steering: str | Path | None = None,
               artifact: Artifact | None = None, **kw: Any) -> Evaluation:
    """Score a loaded model as deployed (with its ``artifact``, or the steering file at ``steering``);
    figures and item records."""
    from contextlib import nullcontext

    artifact = deployed_artifact(artifact, steering)
    distributed.on_accelerator(adapter)
    with nullcontext() if artifact is None else artifact.applied(adapter):
        return run_evaluation(adapter, suite, **kw)


def add_requests(run: dict, adapter: Adapter, suites: Iterable[Suite], *, artifact: Artifact | None = None,
                 **kw: Any) -> dict:
    """``run`` (scored with its item records) with each request's forget group measured again, as
    ``forget_r1``, ``forget_r2``, ...

    A continual run's figures for every request so far, the current one included, so that a
    forgotten request that comes back shows, and a vanilla run has the same groups to be read against.
    """
    for j, suite in enumerate(suites, 1):
        again = evaluation(adapter, suite, artifact=artifact, **{**kw, "groups": ("forget",), "generation": False})
        run["metrics"][f"forget_r{j}"] = again.metrics["forget"]
        run["evaluation"]["scoring"][f"forget_r{j}"] = again.scoring["forget"]
        run[SAMPLES_KEY] += [{**r, "group": f"forget_r{j}"} for r in again.samples]
    return run


def evaluate_adapter(adapter: Adapter, suite: Suite, *, steering: str | Path | None = None,
                     artifact: Artifact | None = None, **kw: Any) -> dict[str, Any]:
    """The figures of :func:`evaluation` alone."""
    return evaluation(adapter, suite, steering=steering, artifact=artifact, **kw).metrics


def make_run(method: str, metrics: dict | Evaluation, *, model: str, suite: Suite, forget: str, seed: int,
             config: dict | None = None, cost: dict | None = None, request: int = 1,
             steering: str | Path | None = None, **extra: Any) -> dict:
    """A results.json run. Given an :class:`Evaluation`, the run also names its protocol and
    scoring rules and carries the item records that go to samples.jsonl when it is written.
    ``steering``: the steering file it ran with, recorded whole (an attack on the run compares it)."""

    scored: dict[str, Any] = {}
    if isinstance(metrics, Evaluation):
        ev = metrics
        metrics = ev.metrics
        scored = {"mcq_protocol": ev.mcq_protocol, "protocol": ev.protocol, "evaluation": ev.record(),
                  SAMPLES_KEY: ev.samples}
    return {
        "method": method, "model": model, "benchmark": suite.info.get("benchmark", suite.name),
        "forget_split": suite.info.get("split_name", forget), "request": request, "seed": seed, "config": config or {},
        "mcq_protocol": "loglik", "metrics": metrics,
        **({"data": suite.info["data"]} if "data" in suite.info else {}),
        "cost": cost or {"wall_s": 0.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                         "optimizer_state_bytes": 0, "covers": "nothing"},
        **scored,
        **({"steering": str(Path(steering).resolve())} if steering else {}),
        **extra,
    }


def model_name(path: str | Path) -> str:
    f = Path(path) / "unsee.json"
    if f.exists():
        return json.loads(f.read_text()).get("arch", Path(path).name)
    cfg = Path(path) / "config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("_name_or_path") or json.loads(cfg.read_text()).get("model_type", "")
    return str(path)


def eval_options(*, protocol: str = "loglik", max_items: int | None = None,
                 max_new_tokens: int | None = None) -> dict[str, Any]:
    """The evaluation options a command takes, checked before any data or model is loaded."""

    check_protocol(protocol)
    if max_items is not None and max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return {"protocol": protocol, "max_items": max_items, "max_new_tokens": max_new_tokens}


def run_seed(seed: int | None, method: str, config: Any = None, overrides: Any = ()) -> int:
    """The unlearning seed: ``--seed`` when given, else the ``seed`` the method's config (or an override) sets."""
    return check_seed(seed) if seed is not None else method_configs(method, config, overrides)[0].seed


def unlearn_adapter(method: str, adapter: Adapter, suite: Suite, *, config: Any = None, overrides: Any = (),
                    seed: int = 0, forgotten_images: Sequence[Any] = (),
                    logging_dir: str | Path | None = None) -> tuple[Any, dict]:
    """Run a training method in place on ``adapter``, LoRA merged (what is scored is then what ships, whatever
    the precision); return (train result, the resolved config). ``logging_dir``: for trackers without one."""
    check_forget(suite)
    tcfg, mcfg, cls = method_configs(method, config, overrides)
    tcfg.seed = check_seed(seed)
    tcfg.bf16 = tcfg.bf16 or distributed.launch_mixed_precision() == "bf16"  # the engine autocasts by it: recorded
    if forgotten_images and hasattr(mcfg, "forgotten_images"):
        mcfg.forgotten_images = list(forgotten_images)
    resolved = {**to_dict(tcfg), **{k: v for k, v in to_dict(mcfg).items() if k != "forgotten_images"}}
    if logging_dir is not None and not tcfg.logging_dir:
        tcfg.logging_dir = str(logging_dir)
    on_eval = course_figures(adapter, suite) if tcfg.eval_every else None
    weights = Trained(cls(mcfg), training_turns(suite), desc=method, on_eval=on_eval).unlearn(adapter, suite, tcfg)
    merge_lora(adapter)
    return weights.result, resolved


def course_figures(adapter: Adapter, suite: Suite) -> Callable[[int], dict[str, float]]:
    """What ``eval_every`` records in the run's ``info.evals`` as training goes: the forget and retain MCQ
    accuracy (log-likelihood, every item), so that the course of a run can be read beside its end."""

    def figures(step: int) -> dict[str, float]:
        found = run_evaluation(adapter, suite, groups=("forget", "retain"), generation=False, progress=False)
        return {g: float(f["mcq"]) for g, f in found.metrics.items() if "mcq" in f}

    return figures


def with_override(overrides: Any, key: str, value: Any) -> Any:
    """``overrides`` (``key=value`` strings or a mapping) with one more."""
    if isinstance(overrides, Mapping):
        return {**overrides, key: value}
    return [*([overrides] if isinstance(overrides, str) else overrides), f"{key}={value}"]


def request_runs(runs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The runs of a continual run's requests, in order, without its vanilla run."""
    return [r for r in runs if r.get("request") and r["method"] != "vanilla"]


def with_all_costs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last request's run of a continual run with the cost of all its requests: what its model card states."""
    requests = request_runs(runs)
    return {**requests[-1], "cost": combined_cost([r["cost"] for r in requests])}


def _checkpoint_in(method: str, config: Any, overrides: Any, name: str) -> Any:
    """The overrides with the training checkpoint (if any is kept) in ``checkpoint_dir/name``."""
    folder = method_configs(method, config, overrides)[0].checkpoint_dir
    return with_override(overrides, "checkpoint_dir", str(Path(folder) / name)) if folder else overrides


def seed_overrides(method: str, config: Any, overrides: Any, seed: int, seeds: int) -> Any:
    """The overrides of one of ``seeds`` unlearning seeds: each keeps its training checkpoint in
    ``checkpoint_dir/seed-K``, since the checkpoint one seed leaves belongs to another run for the next."""
    return overrides if seeds < 2 else _checkpoint_in(method, config, overrides, f"seed-{seed}")


def request_overrides(method: str, config: Any, overrides: Any, request: int, requests: int) -> Any:
    """The overrides of request ``request`` of a continual run: as with seeds, each keeps its training
    checkpoint in ``checkpoint_dir/request-K``, since the one a request leaves (``keep_checkpoint``) belongs to
    another run for the next."""
    return overrides if requests < 2 else _checkpoint_in(method, config, overrides, f"request-{request}")


@contextlib.contextmanager
def checkpoints_until_landed(method: str, config: Any) -> Iterator[Callable[[Any], Any]]:
    """Each training checkpoint of a run kept until its output has landed, then removed (unless the user keeps
    it, ``keep_checkpoint``). The engine removes it when training ends, and a stop in the evaluation, the audits
    or the save after it (the longer part, on a benchmark) lost the training: the rerun trained from step 0.
    Yields what turns one run's overrides into ones that keep its checkpoint; wrap it around ``atomic_dir``."""
    held: list[Path] = []

    def hold(overrides: Any) -> Any:
        tcfg = method_configs(method, config, overrides)[0]
        if not tcfg.checkpoint_dir or tcfg.keep_checkpoint:
            return overrides
        held.append(Path(tcfg.checkpoint_dir))
        return with_override(overrides, "keep_checkpoint", True)

    try:
        yield hold
    except KeyboardInterrupt as e:  # stopped after training too: the stop says what it keeps
        said = " ".join(getattr(e, "__notes__", []))
        for folder in held:
            if has_checkpoint(folder) and str(folder) not in said:
                e.add_note(f"the checkpoint in {folder} is kept: the same command resumes from it")
        raise
    for folder in held:  # reached only once the output is in place
        remove_checkpoint(folder)


def check_disjoint(requests: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Continual requests (each split with its people) forget other people each: a request naming someone forgotten
    before would train against itself (its photos held forgotten, in the null space) and be reported as new."""
    names = [r for r, _ in requests]
    if twice := sorted({r for r in names if names.count(r) > 1}):
        raise ConfigError(f"continual requests must differ; {', '.join(twice)} appears more than once")
    first: dict[str, str] = {}
    again = []
    for req, people in requests:
        again += [f"{req} forgets {p}, whom {first[p]} forgets already" for p in people if p in first]
        first.update({p: req for p in people if p not in first})
    if again:
        raise ConfigError(f"continual requests must forget other people each: {'; '.join(again)}")


def request_names(requests: str | Path | Sequence[str] | None) -> list[str]:
    """``--requests``: a comma list of splits, a file listing one a line (``#`` comments), or a list."""
    if requests is None:
        return []
    if isinstance(requests, str | os.PathLike):  # a file listing them, or (a string) the names themselves
        p = Path(requests)
        if p.is_file():
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        elif isinstance(requests, str):
            names = [r.strip() for r in requests.split(",") if r.strip()]
        else:
            raise ConfigError(f"--requests {requests} is no file listing requests")
    else:
        names = list(requests)
    if not names:  # given but empty: run as one request on --forget, it would not be what was asked
        raise ConfigError(f"--requests {requests!r} names no request; give forget_r1,forget_r2,... or a file "
                          "listing them, one a line")
    return names


def check_launch(method: str, config: Any = None, overrides: Any = (), *, dtype: str | None = None,
                 audit: bool = False, inputs: Sequence[Any] = ()) -> None:
    """Refuse a launch (FSDP, DeepSpeed, mixed precision) or a weight dtype the engine would not
    honour, before any work. ``audit``: the relearning audit trains too. ``inputs``: the paths the
    run reads, where its training checkpoints (``checkpoint_dir``) must not go."""

    tcfg, mcfg, cls = method_configs(method, config, overrides)
    if tcfg.checkpoint_dir:
        check_not_input(tcfg.checkpoint_dir, inputs)
    distributed.check_launch(*((cls(mcfg), tcfg.batch_size) if cls.trains_weights else ()))
    if dtype == "fp16" and (cls.trains_weights or audit):
        refuse_fp16(method if cls.trains_weights else "the relearning audit")


def refuse_fp16(what: str) -> None:
    raise ConfigError(f"{what} cannot train fp16 weights (that would need loss scaling); load them with "
                      "--dtype bf16 or fp32 (fp16 is for evaluation and the test-time eraser)")


def check_room(out: str | Path, adapter: Adapter, method: str, copies: int = 1) -> None:
    """Room on ``out``'s disk for ``copies`` of the trained model, checked once the model is loaded
    and before it trains (a test-time method writes a small file and is not checked)."""
    if method_class(method).trains_weights:
        size = adapter.model.get_memory_footprint(return_buffers=False)
        check_space(out, copies * size, "the unlearned model" if copies == 1 else f"{copies} copies of the model")


def save_checkpoint(artifact: Artifact, model_dir: Path, card: str) -> None:
    """A weights artifact as a user ships it: the checkpoint and its model card beside it."""
    artifact.save(model_dir)
    atomic_write_text(model_dir / "README.md", card)


def save_model(adapter: Adapter, path: Path, arch: str) -> None:
    """A standard checkpoint; a LoRA run is merged so the output loads without peft.

    ``unsee.json`` keeps the name of the architecture it was built from, so that results of
    the unlearned model are reported under the same model as its vanilla run.
    """

    WeightsArtifact(adapter, arch=arch).save(path)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
