"""The Python API. Every ``unsee`` subcommand is a thin wrapper over one function here.

    from unsee import api
    api.build_world("w", config="quick")
    api.init_model("tiny-llava", "m0", world="w")
    api.finetune("m0", "w", "vanilla", config="quick")
    api.retrain("vanilla", "w", "retrained", forget="forget_10")
    api.forget("vanilla", "w/request/request.yaml", "forgotten")
    # a public benchmark, from the hub: its own vanilla model and retrained reference
    api.finetune("llava-hf/llava-1.5-7b-hf", "MLLMMU/MLLMU-Bench", "mllmu-vanilla", config="mllmu")
    api.retrain("mllmu-vanilla", "MLLMMU/MLLMU-Bench", "mllmu-retrained", forget="forget_5")
    api.unlearn("cvf_ncu", "vanilla", "w", "out")
    api.evaluate("out/model", "w", "out/eval.json")
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsee import finetune as _finetune
from unsee import retrain as _retrain
from unsee.config import ConfigError, load_config, parse_overrides, read_config_file, to_dict
from unsee.data import world as _world
from unsee.data.collate import image_of, qa_turns
from unsee.data.request import is_request_file, load_request_suite
from unsee.data.schema import Suite
from unsee.errors import DataError, ModelError, OutputExistsError
from unsee.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_not_input,
    check_output_dir,
    check_output_file,
    check_writable,
)
from unsee.models import load_adapter
from unsee.models import shapes as _shapes
from unsee.models import tiny as _tiny
from unsee.models.base import HFAdapter, Turn

if TYPE_CHECKING:
    from unsee.eval.evaluator import Evaluation
    from unsee.methods.artifact import Artifact

__all__ = ["attack", "audit_adapter", "build_world", "detect_benchmark", "evaluate", "finetune", "forget", "init_model",
           "init_shaped", "load_suite", "print_results", "report", "retrain", "unlearn"]


# ---- data ----------------------------------------------------------------------------------
def detect_benchmark(data: Any, benchmark: str | None = None, revision: str | None = None) -> str:
    """Which loader reads ``data``: ``builtin``, ``mllmu``, ``clear`` or ``umu`` (``request`` for a
    removal request file).

    ``data`` is a folder or a hub dataset id (downloaded at ``revision``). ``benchmark`` forces
    the answer after checking that the folder has that benchmark's configs and columns.
    """
    from unsee.data.detect import benchmark_of, local_path

    if isinstance(data, str | Path) and is_request_file(data):
        return "request"
    return benchmark_of(local_path(data, revision)[0], benchmark)


def load_suite(data: Any, forget: str | Sequence[str] = "forget_10", *, benchmark: str | None = None,
               revision: str | None = None, **kw: Any) -> Suite:
    """A benchmark from a folder, a hub id or a resolved :class:`~unsee.data.detect.DataRef`, as a Suite;
    or a removal request file (docs/requests.md), whose ``forget`` is then ignored.

    ``suite.info["data"]`` says where it came from (results.json's ``data``).
    """
    from unsee.data import load_benchmark
    from unsee.data.detect import benchmark_of, resolve
    from unsee.forget import names_needed_by

    if isinstance(data, str | Path) and is_request_file(data):
        return load_request_suite(data, seed=kw.get("seed", 0), names_needed_by=names_needed_by(kw.get("method")))
    kw.pop("method", None)
    ref = resolve(data, revision)
    suite = load_benchmark(benchmark_of(ref.path, benchmark), ref.path, forget, **kw)
    suite.info["data"] = ref.record()
    return suite


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


def _local(*paths: Any) -> list[Any]:
    """The inputs among ``paths`` that an output must not overlap (files and folders; None skipped)."""
    return [p for p in paths if isinstance(p, str | Path)]


# ---- commands that build inputs --------------------------------------------------------------
# Each checks its output before any work: not an input, not inside or around one, writable.
def build_world(out: str | Path, *, config: Any = "default", overwrite: bool = False, example: bool = True,
                **kw: Any) -> Path:
    """``unsee world``: the built-in benchmark (:func:`unsee.data.world.build_world`) and, with ``example``,
    a removal request made of its ``forget_10`` people in ``out/request/``
    (:func:`unsee.data.request_example.write_world_request`)."""
    from unsee.data.request_example import write_world_request

    check_output_dir(out, overwrite=overwrite, inputs=_local(config))
    path = _world.build_world(out, config=config, overwrite=overwrite, **kw)
    if example:
        write_world_request(path, path / "request", overwrite=True)
    return path


def init_model(arch: str, out: str | Path, *, world: str | Path | None = None, overwrite: bool = False,
               **kw: Any) -> Path:
    """``unsee model init --arch``: a tiny model from the real HF classes (:func:`unsee.models.tiny.init_model`)."""
    check_output_dir(out, overwrite=overwrite, inputs=_local(world))
    return _tiny.init_model(arch, out, world=world, overwrite=overwrite, **kw)


def init_shaped(shape: str, out: str | Path, *, overwrite: bool = False, **kw: Any) -> Path:
    """``unsee model init --shape``: a hub checkpoint's structure with random weights."""
    check_output_dir(out, overwrite=overwrite)
    return _shapes.init_shaped(shape, out, overwrite=overwrite, **kw)


def finetune(model: str | Path, data: Any, out: str | Path, *, config: str | Path | dict | None = None,
             overrides: Any = (), seed: int | None = None, overwrite: bool = False,
             cache_dir: str | Path | None = None, benchmark: str | None = None,
             revision: str | None = None) -> Path:
    """``unsee finetune``: the vanilla model. On the built-in world, its staged recipe
    (:mod:`unsee.finetune`, config ``default`` or ``quick``); on MLLMU-Bench, CLEAR or UMU-bench,
    the benchmark's own recipe (:mod:`unsee.finetune_bench`, config ``mllmu``, ``clear`` or ``umu``;
    by default the detected benchmark's)."""
    from unsee.data.detect import benchmark_of, resolve

    check_output_dir(out, overwrite=overwrite, inputs=_local(model, data, config))
    ref = resolve(data, revision)
    kind = benchmark_of(ref.path, benchmark)
    if kind == "builtin":
        from unsee.finetune_bench import RECIPES

        if config in RECIPES:
            raise ConfigError(f"recipe {config!r} is a public benchmark's; the built-in world uses default or quick")
        return _finetune.finetune(model, ref.path, out, config="default" if config is None else config,
                                  overrides=overrides, seed=seed, overwrite=overwrite, cache_dir=cache_dir)
    from unsee.finetune_bench import finetune_benchmark

    return finetune_benchmark(model, ref, kind, out, config=config, overrides=overrides, seed=seed,
                              overwrite=overwrite, cache_dir=cache_dir)


def retrain(vanilla: str | Path, data: Any, out: str | Path, *, forget: str = "forget_10", overwrite: bool = False,
            cache_dir: str | Path | None = None, benchmark: str | None = None, revision: str | None = None) -> Path:
    """``unsee retrain``: the vanilla model's fine-tune again without ``forget``'s photos, on any benchmark."""
    from unsee.data.detect import benchmark_of, resolve

    check_output_dir(out, overwrite=overwrite, inputs=_local(vanilla, data))
    ref = resolve(data, revision)
    kind = benchmark_of(ref.path, benchmark)
    if kind == "builtin":
        return _retrain.retrain(vanilla, ref.path, out, forget=forget, overwrite=overwrite, cache_dir=cache_dir)
    from unsee.finetune_bench import retrain_benchmark

    return retrain_benchmark(vanilla, ref, kind, out, forget=forget, overwrite=overwrite, cache_dir=cache_dir)


def training_turns(suite: Suite) -> dict[str, list[Turn]]:
    """The streams a method may ask for, built from the suite's training groups."""
    g = suite.groups
    return {
        "forget": qa_turns(g.get("train_forget", [])),
        "retain": qa_turns(g.get("train_retain", [])),
        "text": qa_turns(g.get("train_text", [])),
        "general": qa_turns(g.get("train_general", [])),
        "neutral": qa_turns([e for e in g.get("neutral", []) if e.has_image]),
    }


# ---- configs -------------------------------------------------------------------------------
def method_configs(method: str, config: str | Path | Mapping[str, Any] | None,
                   overrides: Sequence[str] | Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """Split one config (file + overrides) between the engine's and the method's options.

    A key belongs to :class:`TrainConfig` or to the method's own config; a key in neither
    is an error that names it.
    """
    from unsee.engine.trainer import TrainConfig
    from unsee.methods import method_class

    cls = method_class(method)
    mcls = cls.Config
    values: dict[str, Any] = {}
    shipped = Path(__file__).parent / "configs" / "unlearn" / f"{method}.yaml"
    if config is None and shipped.exists():
        values = read_config_file(shipped, "unlearn")
    elif isinstance(config, Mapping):
        values = dict(config)
    elif config is not None:
        values = read_config_file(config, "unlearn")
    values.update(dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides))
    tkeys = {f.name for f in dataclasses.fields(TrainConfig)}
    mkeys = {f.name for f in dataclasses.fields(mcls)}
    unknown = sorted(set(values) - tkeys - mkeys)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {method!r}; engine options: {sorted(tkeys)}; "
                          f"method options: {sorted(mkeys)}")
    tvals = {k: v for k, v in values.items() if k in tkeys}
    if cls.trains_weights:
        tvals.setdefault("scope", cls.default_scope)
    return (load_config(TrainConfig, tvals), load_config(mcls, {k: v for k, v in values.items() if k in mkeys}),
            cls)


# ---- evaluation ----------------------------------------------------------------------------
def deployed_artifact(artifact: Artifact | None, steering: str | Path | None) -> Artifact | None:
    """The artifact a model runs with: the one given, else the steering file at ``steering``, else none."""
    if artifact is not None or steering is None:
        return artifact
    from unsee.methods.artifact import SteeringArtifact

    return SteeringArtifact.load(steering)


def evaluation(adapter: HFAdapter, suite: Suite, *, steering: str | Path | None = None,
               artifact: Artifact | None = None, **kw: Any) -> Evaluation:
    """Score a loaded model as deployed (with its ``artifact``, or the steering file at ``steering``);
    figures and item records."""
    from contextlib import nullcontext

    from unsee.eval.evaluator import run_evaluation

    artifact = deployed_artifact(artifact, steering)
    with nullcontext() if artifact is None else artifact.applied(adapter):
        return run_evaluation(adapter, suite, **kw)


def evaluate_adapter(adapter: HFAdapter, suite: Suite, *, steering: str | Path | None = None,
                     artifact: Artifact | None = None, **kw: Any) -> dict[str, Any]:
    """The figures of :func:`evaluation` alone."""
    return evaluation(adapter, suite, steering=steering, artifact=artifact, **kw).metrics


def make_run(method: str, metrics: dict | Evaluation, *, model: str, suite: Suite, forget: str, seed: int,
             config: dict | None = None, cost: dict | None = None, request: int = 1, **extra: Any) -> dict:
    """A results.json run. Given an :class:`Evaluation`, the run also names its protocol and
    scoring rules and carries the item records that go to samples.jsonl when it is written."""
    from unsee.eval.evaluator import Evaluation
    from unsee.eval.results import SAMPLES_KEY

    scored: dict[str, Any] = {}
    if isinstance(metrics, Evaluation):
        ev = metrics
        metrics = ev.metrics
        scored = {"mcq_protocol": ev.mcq_protocol, "protocol": ev.protocol, "evaluation": ev.record(),
                  SAMPLES_KEY: ev.samples}
    return {
        "method": method, "model": model, "benchmark": suite.info.get("benchmark", suite.name),
        "forget_split": forget, "request": request, "seed": seed, "config": config or {},
        "mcq_protocol": "loglik", "metrics": metrics,
        **({"data": suite.info["data"]} if "data" in suite.info else {}),
        "cost": cost or {"wall_s": 0.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                         "optimizer_state_bytes": 0},
        **scored,
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


def evaluate(model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
             steering: str | Path | None = None, overwrite: bool = False, method: str = "vanilla", seed: int = 0,
             allow_pickle: bool = False, max_items: int | None = None, dtype: str | None = None,
             benchmark: str | None = None, revision: str | None = None, protocol: str = "loglik",
             max_new_tokens: int | None = None) -> dict:
    """``unsee eval``: every metric group, written as a results file with samples.jsonl beside it.

    ``protocol`` is ``loglik`` or ``official`` (the benchmark's own scoring); every item is
    scored unless ``max_items`` caps each task of each group; replies get the benchmark's
    own ``max_new_tokens`` unless it is given.
    """
    from unsee.eval.results import new_results, strip_samples_all, write_results
    from unsee.provenance import CostMeter

    out = Path(out)
    check_output_file(out, overwrite=overwrite, inputs=_local(model, data, steering))
    eval_kw = eval_options(protocol=protocol, max_items=max_items, max_new_tokens=max_new_tokens)
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision)
    check_forget(suite)
    check_images(suite)
    if suite.info.get("benchmark") == "request":
        forget = Path(data).stem
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    with CostMeter() as meter:
        found = evaluation(adapter, suite, steering=steering, **eval_kw)
    meter.record_model(None)
    run = make_run(method, found, model=model_name(model), suite=suite, forget=forget, seed=seed,
                   cost=meter.cost(), steering=str(steering) if steering else None)
    if run["steering"] is None:
        run.pop("steering")
    res = new_results([run])
    write_results(out, res, overwrite=overwrite)
    return strip_samples_all(res)


def eval_options(*, protocol: str = "loglik", max_items: int | None = None,
                 max_new_tokens: int | None = None) -> dict[str, Any]:
    """The evaluation options a command takes, checked before any data or model is loaded."""
    from unsee.eval.protocols import check_protocol

    check_protocol(protocol)
    if max_items is not None and max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    return {"protocol": protocol, "max_items": max_items, "max_new_tokens": max_new_tokens}


def print_results(res: dict) -> None:
    from rich.console import Console

    from unsee.report import terminal_table

    Console().print(terminal_table(res))


def report(results: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    from unsee.report import REPORT_FILES, write_report

    for name in REPORT_FILES:  # the report may sit beside its results files, never replace one
        check_not_input(Path(out) / name, _local(*results))
    check_writable(Path(out) / "report.md")
    write_report(results, out, overwrite=overwrite)
    return Path(out)


# ---- unlearning ----------------------------------------------------------------------------
def _requests(requests: str | Sequence[str] | None) -> list[str]:
    if requests is None:
        return []
    if isinstance(requests, str):
        p = Path(requests)
        if p.is_file():
            return [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        return [r for r in requests.split(",") if r]
    return list(requests)


def unlearn_adapter(method: str, adapter: HFAdapter, suite: Suite, *, config: Any = None, overrides: Any = (),
                    seed: int = 0, forgotten_images: Sequence[Any] = (),
                    logging_dir: str | Path | None = None) -> tuple[Any, dict]:
    """Run a training method in place on ``adapter``; return (train result, the resolved config).
    ``logging_dir``: where trackers write when the config names some and no directory."""
    from unsee.methods.artifact import Trained

    check_forget(suite)
    tcfg, mcfg, cls = method_configs(method, config, overrides)
    tcfg.seed = seed
    if forgotten_images and hasattr(mcfg, "forgotten_images"):
        mcfg.forgotten_images = list(forgotten_images)
    resolved = {**to_dict(tcfg), **{k: v for k, v in to_dict(mcfg).items() if k != "forgotten_images"}}
    if logging_dir is not None and not tcfg.logging_dir:
        tcfg.logging_dir = str(logging_dir)
    weights = Trained(cls(mcfg), training_turns(suite), desc=method).unlearn(adapter, suite, tcfg)
    return weights.result, resolved


def with_override(overrides: Any, key: str, value: Any) -> Any:
    """``overrides`` (``key=value`` strings or a mapping) with one more."""
    if isinstance(overrides, Mapping):
        return {**overrides, key: value}
    return [*overrides, f"{key}={value}"]


def check_launch(method: str, config: Any = None, overrides: Any = ()) -> None:
    """Refuse a launch (FSDP, DeepSpeed, mixed precision) the engine would not honour, before any work."""
    from unsee.engine.distributed import check_launch as check

    _, mcfg, cls = method_configs(method, config, overrides)
    check(cls(mcfg) if cls.trains_weights else None)


def is_main_process() -> bool:
    """True outside a multi-process launch, and in its first process."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def unlearn(method: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
            requests: str | Sequence[str] | None = None, config: Any = None, overrides: Any = (), seed: int = 0,
            overwrite: bool = False, allow_pickle: bool = False, audit: bool = False,
            audit_overrides: Any = (), evaluate_after: bool = True, dtype: str | None = None,
            report_to: str = "", benchmark: str | None = None, revision: str | None = None,
            protocol: str = "loglik", max_items: int | None = None, max_new_tokens: int | None = None,
            seeds: int = 1, reference: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """``unsee unlearn``: a checkpoint (or, for a method that trains no weights such as ``eraser``, its
    steering file), ``run.json`` and a model card.

    With ``requests`` the method runs continually, one request after another, and
    ``results.json`` holds one run per request. ``report_to`` streams the training losses to
    Accelerate trackers (``tensorboard``, ``wandb``), which write under ``out/logs``. The
    result is scored under ``protocol`` (see :func:`evaluate`); the item records go to
    ``samples.jsonl``. With ``seeds`` N > 1 the method runs N times from the same model, with
    unlearning seeds ``seed`` .. ``seed + N - 1``: each result goes to ``out/seed-K/``, and
    ``results.json`` holds every run and their mean, sd, min and max. With ``audit`` the
    retrained reference (``reference``, or the one ``unsee retrain`` cached for ``model``) is
    attacked beside the result, once however many seeds run.
    """
    from unsee.eval.results import new_results, seed_summary, strip_samples, write_results
    from unsee.methods import method_class

    out = Path(out)
    request_file = requests if isinstance(requests, str | Path) and Path(requests).is_file() else None
    check_output_dir(out, overwrite=overwrite,
                     inputs=_local(model, data, None if isinstance(config, Mapping) else config, request_file))
    if report_to:
        overrides = with_override(overrides, "report_to", report_to)
    check_launch(method, config, overrides)  # reject unknown methods, options and launches before any work
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    eval_kw = eval_options(protocol=protocol, max_items=max_items, max_new_tokens=max_new_tokens)
    reqs = _requests(requests)
    if reqs and is_request_file(data):
        raise ConfigError("several request files run one after another with `unsee forget --requests A,B,...`")
    if reqs:
        if seeds > 1:
            raise ConfigError("--seeds runs one request several times; it cannot be combined with --requests")
        return continual(method, model, data, out, reqs, config=config, overrides=overrides, seed=seed,
                         overwrite=overwrite, allow_pickle=allow_pickle, dtype=dtype, benchmark=benchmark,
                         revision=revision, eval_kw=eval_kw)
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision, method=method)
    if suite.info.get("benchmark") == "request":
        forget = Path(data).stem
    check_forget(suite)
    check_images(suite)
    ref = find_reference(reference, model, data, forget, cache_dir) if audit else None
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    if not is_main_process():
        # Under `accelerate launch` every process trains its share; the first alone evaluates and writes.
        if method_class(method).trains_weights:  # a test-time method has nothing to train
            for s in range(seed, seed + seeds):
                unlearn_adapter(method, load_adapter(model, allow_pickle=allow_pickle, dtype=dtype) if s > seed
                                else adapter, suite, config=config, overrides=overrides, seed=s)
        return out
    base_hash = adapter.fingerprint()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        runs = []
        for s in range(seed, seed + seeds):
            where = tmp if seeds == 1 else tmp / f"seed-{s}"
            if s > seed:
                adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
            run, _ = unlearn_and_save(method, adapter, suite, steering_dir=where, model_dir=where / "model",
                                      model=model_name(model), base_model=str(model), base_hash=base_hash,
                                      forget=forget, seed=s, config=config, overrides=overrides,
                                      evaluate_after=evaluate_after, eval_kw=eval_kw, audit=audit,
                                      audit_overrides=audit_overrides, audit_seed=seed, data=data, reference=ref,
                                      cache_dir=cache_dir)
            runs.append(run)
            atomic_write_json(where / "run.json", strip_samples(run))
        results = new_results(runs)
        if seeds > 1:
            results["seeds"] = seed_summary(runs)
        write_results(tmp / "results.json", results)
    return out


def unlearn_and_save(method: str, adapter: HFAdapter, suite: Suite, *, steering_dir: Path, model_dir: Path,
                     model: str, base_model: str, base_hash: str, forget: str, seed: int, config: Any = None,
                     overrides: Any = (), vanilla: Mapping[str, Any] | None = None, evaluate_after: bool = True,
                     eval_kw: Mapping[str, Any] | None = None, audit: bool = False,
                     audit_overrides: Any = (), audit_kinds: Sequence[str] | None = None,
                     forgotten_images: Sequence[Any] = (), save: bool = True,
                     audit_seed: int | None = None, data: str | Path | None = None,
                     reference: str | Path | ReferenceAudits | None = None,
                     cache_dir: str | Path | None = None) -> tuple[dict, Artifact]:
    """Honour one removal request on a loaded model and record it: the run and the artefact a user ships.

    ``unsee unlearn`` and the demo both go through here, so that a run's cost, metrics,
    checkpoint and model card mean the same thing wherever they were produced. Training
    methods change ``adapter`` in place and save it (LoRA merged) with its card to
    ``model_dir``; a method that trains no weights (``eraser``) leaves them alone and writes
    its artifact (the steering file) to ``steering_dir`` at once. The cost covers the
    unlearning only, not the evaluation.

    With ``audit`` the result is attacked (:mod:`unsee.eval.attacks`) before it is saved, and
    the run and the model card carry the ``attacks``; the probe's baseline is a visual-only
    copy taken before unlearning, the quantization attack's "changed" weights those whose bytes
    the method moved. The audits use ``audit_seed`` (default: ``seed``), so that runs over
    several unlearning seeds are attacked alike, and set every figure beside the retrained
    ``reference``'s when there is one. ``save=False`` leaves the saving of the weights to the
    caller (:func:`save_checkpoint`; a continual run saves once, after its last request);
    ``forgotten_images`` are the earlier requests'.

    Returns the run (as in results.json) and the artifact, which the evaluation and the audits
    ran with (``with artifact.applied(adapter)``).
    """
    from unsee.engine.trainer import frozen_copy
    from unsee.eval.results import strip_samples
    from unsee.methods import method_class
    from unsee.methods.artifact import WeightsArtifact
    from unsee.provenance import CostMeter
    from unsee.report import model_card

    cls = method_class(method)
    kinds = list(audit_kinds) if audit_kinds else None
    before = frozen_copy(adapter, visual_only=True) if audit else None
    digests = None
    if audit and (kinds is None or "quant" in kinds):
        from unsee.eval.quant import weight_digests

        digests = weight_digests(adapter)

    artifact: Artifact
    with CostMeter() as meter:
        if cls.trains_weights:
            res, resolved = unlearn_adapter(method, adapter, suite, config=config, overrides=overrides, seed=seed,
                                            logging_dir=steering_dir / "logs", forgotten_images=forgotten_images)
            artifact = WeightsArtifact(adapter, arch=model, result=res)
        else:
            _, mcfg, _ = method_configs(method, config, overrides)
            artifact = cls(mcfg).unlearn(adapter, suite, mcfg, seed=seed)
            resolved = to_dict(mcfg)
            artifact.save(steering_dir)  # the whole result: the base model is untouched
    meter.record_model(None)
    cost = {**meter.cost(), "trainable_params": artifact.trainable_params,
            "optimizer_state_bytes": artifact.optimizer_state_bytes}
    metrics: Any = evaluation(adapter, suite, artifact=artifact, **(eval_kw or {})) if evaluate_after else {}
    run = make_run(method, metrics, model=model, suite=suite, forget=forget, seed=seed, config=resolved, cost=cost,
                   info=_jsonable(artifact.info))
    if artifact.history:
        run["history"] = artifact.history
    if audit:
        changed = None
        if digests is not None:
            from unsee.eval.quant import changed_linears

            changed = changed_linears(digests, adapter)
        run["attacks"] = audit_adapter(adapter, suite, kinds=kinds, artifact=artifact, vanilla=before,
                                       seed=seed if audit_seed is None else audit_seed, overrides=audit_overrides,
                                       strict=False, changed=changed, reference=reference, data=data,
                                       cache_dir=cache_dir)
    if cls.trains_weights and save:
        save_checkpoint(artifact, model_dir, model_card(strip_samples(run), vanilla, base_model=base_model,
                                                        base_hash=base_hash, forgotten=list(suite.forget_entities),
                                                        audits=None))
    return run, artifact


def save_checkpoint(artifact: Artifact, model_dir: Path, card: str) -> None:
    """A weights artifact as a user ships it: the checkpoint and its model card beside it."""
    artifact.save(model_dir)
    atomic_write_text(model_dir / "README.md", card)


def _save_model(adapter: HFAdapter, path: Path, arch: str) -> None:
    """A standard checkpoint; a LoRA run is merged so the output loads without peft.

    ``unsee.json`` keeps the name of the architecture it was built from, so that results of
    the unlearned model are reported under the same model as its vanilla run.
    """
    from unsee.methods.artifact import WeightsArtifact

    WeightsArtifact(adapter, arch=arch).save(path)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def continual(method: str, model: str | Path, data: str | Path, out: Path, requests: list[str], *, config: Any,
              overrides: Any, seed: int, overwrite: bool, allow_pickle: bool,
              eval_kw: Mapping[str, Any] | None = None, dtype: str | None = None, benchmark: str | None = None,
              revision: str | None = None) -> Path:
    """Requests one after another; after each, the earlier forget sets are measured again.

    For ``cvf_ncu`` the covariance of the next request also holds the already-forgotten
    targets as the updated model sees them, which keeps them forgotten.
    """
    from unsee.data.detect import resolve
    from unsee.engine.trainer import unique_images
    from unsee.eval.results import new_results, write_results
    from unsee.methods import method_class
    from unsee.provenance import CostMeter

    if not method_class(method).trains_weights:
        raise ConfigError(f"continual unlearning needs a training method; {method} builds one steering file per "
                          "request")

    eval_kw = dict(eval_kw or {})
    data = resolve(data, revision)  # once: every request's split comes from the same files
    for req in requests:  # every request's data is checked before the first one trains
        suite = load_suite(data, req, retain_exclude=requests, seed=seed, benchmark=benchmark)
        check_forget(suite)
        check_images(suite)
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    runs: list[dict] = []
    forgotten: list[Any] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, req in enumerate(requests, 1):
            suite = load_suite(data, req, retain_exclude=requests, seed=seed, benchmark=benchmark)
            with CostMeter() as meter:
                res, resolved = unlearn_adapter(method, adapter, suite, config=config, overrides=overrides,
                                                seed=seed, forgotten_images=forgotten)
            meter.record_model(None)
            found = evaluation(adapter, suite, **eval_kw)
            for j, earlier in enumerate(requests[:i], 1):
                s_j = load_suite(data, earlier, retain_exclude=requests, seed=seed, benchmark=benchmark)
                again = evaluation(adapter, s_j, **{**eval_kw, "groups": ("forget",), "generation": False})
                found.metrics[f"forget_r{j}"] = again.metrics["forget"]
                found.scoring[f"forget_r{j}"] = again.scoring["forget"]
                found.samples += [{**r, "group": f"forget_r{j}"} for r in again.samples]
            # each photo once, however many questions it has (requests are disjoint people)
            forgotten += [t.image for t in unique_images(qa_turns(suite.group("train_forget")))]
            runs.append(make_run(method, found, model=model_name(model), suite=suite, forget=req, seed=seed,
                                 request=i, config=resolved, info=_jsonable(res.info),
                                 cost={**meter.cost(), "trainable_params": res.trainable_params,
                                       "optimizer_state_bytes": res.optimizer_state_bytes}))
            runs[-1]["history"] = res.history
        _save_model(adapter, tmp / "model", model_name(model))
        write_results(tmp / "results.json", new_results(runs))
    return out


NO_REFERENCE = ("{what} is read against the retrained reference, and none was found{where}: build it with "
                "`unsee retrain --model VANILLA --data DATA --out DIR --forget SPLIT` and pass --reference DIR")


def find_reference(reference: str | Path | None, base: str | Path | None, data: str | Path, forget: str,
                   cache_dir: str | Path | None = None) -> Path | None:
    """The retrained reference to audit beside a model: ``reference`` if given, else the one ``unsee retrain``
    left in the stage cache for the base (vanilla) model ``base``, else None. Never trains."""
    if reference is not None:
        path = Path(reference)
        if not (path / "config.json").is_file():
            raise ModelError(f"the reference {path} is not a model directory (no config.json)")
        return path
    if base is None or not (Path(data) / "world.json").is_file():
        return None
    from unsee.retrain import cached_reference

    return cached_reference(base, data, forget, cache_dir)


def attach_holdout(suite: Suite, data: str | Path | None, name: str, seed: int = 0) -> Suite:
    """``suite`` with the membership attack's held-out group: a group it already has, or the image
    questions of split ``name`` of the same benchmark. Overlap with the forget set is refused here,
    before any model is loaded."""
    from unsee.eval.attacks import image_mcq
    from unsee.eval.mia import check_holdout

    if name not in suite.groups and data is not None:
        try:
            other = load_suite(data, name, seed=seed)
        except DataError:
            other = None
        if other is not None:
            items = image_mcq(other, "forget") + image_mcq(other, "forget_test")
            suite = dataclasses.replace(suite, groups={**suite.groups, name: items})
    check_holdout(suite.forget_entities, image_mcq(suite, name), name)
    return suite


class ReferenceAudits:
    """The retrained reference's figures for each attack, computed once and kept.

    The reference does not change between the methods and seeds it is set beside, so its
    figures are cached in memory and, under ``cache_dir``, on disk, keyed on the reference's
    weights, the attack's options and the items (``cache_dir``: the stage cache by default)."""

    def __init__(self, path: str | Path, suite: Suite, cfg: Any, cache_dir: str | Path | None = None) -> None:
        from unsee.io import content_hash
        from unsee.models.base import model_fingerprint

        self.path, self.suite, self.cfg = Path(path), suite, cfg
        from unsee.finetune import default_cache

        self.cache = Path(cache_dir or default_cache()) / "reference-audits"
        uids = {g: [e.uid for e in items] for g, items in sorted(suite.groups.items())}
        self.key = content_hash("reference-audit", model_fingerprint(self.path), to_dict(cfg), uids)
        self._adapter: HFAdapter | None = None
        self._memo: dict[str, dict[str, Any]] = {}

    def __call__(self, kind: str) -> dict[str, Any]:
        from unsee.eval.attacks import run_attacks
        from unsee.io import content_hash

        if kind in self._memo:
            return self._memo[kind]
        file = self.cache / f"{content_hash(self.key, kind)}.json"
        if file.is_file():
            self._memo[kind] = json.loads(file.read_text())
            return self._memo[kind]
        if self._adapter is None:
            self._adapter = load_adapter(self.path)
        figures = run_attacks(self._adapter, self.suite, [kind], self.cfg, strict=False, keep_items=True)[kind]
        self._memo[kind] = figures
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(file, figures)
        return figures


def audit_adapter(adapter: HFAdapter, suite: Suite, *, kinds: Sequence[str] | None = None,
                  steering: str | Path | None = None, artifact: Artifact | None = None,
                  vanilla: HFAdapter | None = None, seed: int = 0,
                  overrides: Any = (), strict: bool = True, changed: Sequence[str] | None = None,
                  reference: str | Path | ReferenceAudits | None = None, data: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The robustness audits on a loaded model as deployed (with its ``artifact``, or the steering file at
    ``steering``), each beside the retrained reference's figure when ``reference`` (a model directory) is given."""
    from unsee.eval.attacks import ATTACKS, AttackConfig, run_attacks

    values = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    cfg = load_config(AttackConfig, {"seed": seed, **values})
    kinds = list(kinds or ATTACKS)
    if "mia" in kinds and data is not None:
        try:
            suite = attach_holdout(suite, data, cfg.mia_holdout, seed)
        except DataError:
            if strict:
                raise
    artifact = deployed_artifact(artifact, steering)
    ref = reference
    if reference is not None and not isinstance(reference, ReferenceAudits):
        ref = ReferenceAudits(reference, suite, cfg, cache_dir)
    return run_attacks(adapter, suite, kinds, cfg, vanilla=vanilla, artifact=artifact, strict=strict, changed=changed,
                       reference=ref)


def attack(kind: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
           vanilla: str | Path | None = None, steering: str | Path | None = None, method: str = "attacked",
           seed: int = 0, overrides: Any = (), overwrite: bool = False, allow_pickle: bool = False,
           dtype: str | None = None, benchmark: str | None = None, revision: str | None = None,
           reference: str | Path | None = None, cache_dir: str | Path | None = None) -> dict:
    """``unsee attack KIND``: attack a model and record the figures in a results.json.

    ``KIND`` is ``relearn``, ``pgd``, ``shift``, ``probe``, ``quant``, ``mia`` or ``all``. If ``out``
    is an existing results.json (the one ``unsee unlearn`` wrote), the attacks are added to its
    last run and everything else is kept; an attack already recorded there is replaced only with
    ``overwrite``. Otherwise a new results.json holds one run named ``method``.

    The retrained reference (``reference``, or the one ``unsee retrain`` cached for ``vanilla``)
    is attacked too, each figure going beside the model's as ``reference``. ``mia`` needs it;
    with ``all`` and no reference, ``mia`` is recorded as skipped. ``quant`` quantizes the linear
    weights that differ from ``vanilla`` as well as all of them.
    """
    from unsee.eval.attacks import ATTACKS, AttackConfig
    from unsee.eval.results import load_results, new_results, write_results

    kinds = list(ATTACKS) if kind == "all" else [kind]
    if any(k not in ATTACKS for k in kinds):
        raise ConfigError(f"unknown attack {kind!r}; choose from {', '.join(ATTACKS)} or all")
    values = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    cfg = load_config(AttackConfig, {"seed": seed, **values})
    cfg.validate()
    out = Path(out)
    if out.is_dir():  # an unlearn output directory
        out = out / "results.json"
    check_not_input(out, _local(model, data, vanilla, steering, reference))
    if out.is_dir():
        check_output_file(out, overwrite=overwrite)
    check_writable(out)
    existing = load_results(out) if out.is_file() else None
    if existing is not None and not existing["runs"]:
        raise DataError(f"{out} holds no runs to add the attacks to")
    if existing is not None and not overwrite:
        done = sorted(set(kinds) & set(existing["runs"][-1].get("attacks", {})))
        if done:
            raise OutputExistsError(f"{out} already records {done}; pass overwrite=True (--overwrite) to redo them")
    ref_path = find_reference(reference, vanilla, data, forget, cache_dir)
    skipped: dict[str, dict[str, Any]] = {}
    if ref_path is None and "mia" in kinds:
        message = NO_REFERENCE.format(what="mia (PrivLeak and forget quality)",
                                      where=f" for {vanilla}" if vanilla else " (no --reference, no --vanilla)")
        if kind != "all":
            raise DataError(message)
        kinds.remove("mia")
        skipped["mia"] = {"skipped": message}
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision)
    check_forget(suite)
    check_images(suite)
    if "mia" in kinds:
        suite = attach_holdout(suite, data, cfg.mia_holdout, seed)
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    before = load_adapter(vanilla, allow_pickle=allow_pickle) if vanilla is not None else None
    changed = None
    if before is not None and "quant" in kinds:
        from unsee.eval.quant import changed_linears, weight_digests

        changed = changed_linears(weight_digests(before), adapter)
    found = audit_adapter(adapter, suite, kinds=kinds, steering=steering, vanilla=before, seed=seed,
                          overrides=values, changed=changed, reference=ref_path, cache_dir=cache_dir)
    found.update(skipped)
    if existing is not None:
        run = existing["runs"][-1]
        run["attacks"] = {**run.get("attacks", {}), **found}
        write_results(out, existing, overwrite=True)
        if (out.parent / "run.json").is_file() and len(existing["runs"]) == 1:
            atomic_write_json(out.parent / "run.json", run)
    else:
        run = make_run(method, {}, model=model_name(model), suite=suite, forget=forget, seed=seed, attacks=found)
        write_results(out, new_results([run]))
    return found


def forget(model: str | Path, request: str | Path | Sequence[str | Path] | None, out: str | Path, *,
           requests: str | Sequence[str | Path] | None = None, overwrite: bool = False, **kw: Any) -> Path:
    """``unsee forget``: a removal request from the user's own photos (:func:`unsee.forget.forget`, whose
    options ``kw`` are: method, config, overrides, seed, audit, audit_kinds, audit_overrides, hide_names,
    salt, retained_shown, max_gen_items, allow_pickle, dtype)."""
    from unsee.forget import forget as run_forget
    from unsee.forget import request_files

    files = request_files(request, requests)
    check_output_dir(out, overwrite=overwrite, inputs=_local(model, *files))
    return run_forget(model, None, out, requests=[str(f) for f in files], overwrite=overwrite, **kw)


def demo(out: str | Path, *, overwrite: bool = False, config: Any = None, cache_dir: str | Path | None = None,
         **kw: Any) -> Path:
    from unsee.demo import run_demo

    check_output_dir(out, overwrite=overwrite, inputs=_local(config))
    return run_demo(out, overwrite=overwrite, config=config, cache_dir=cache_dir, **kw)
