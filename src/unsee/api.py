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
    api.tune("cvf_ncu", "vanilla", "w", "picked", on="val_forget_10", exclude=["forget_10"])
    api.unlearn("cvf_ncu", "vanilla", "w", "out", config="picked/cvf_ncu.yaml")
    api.evaluate("out/model", "w", "out/eval.json")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsee import finetune as _finetune
from unsee import retrain as _retrain
from unsee.attacked import add_attacks, attacked_run, check_attacked_run
from unsee.audit.attacks import ATTACKS
from unsee.audit.quant import changed_linears, saved_dtype, weight_digests
from unsee.bench_recipe import check_world_recipe
from unsee.config import ConfigError, check_seed, check_seeds
from unsee.data import world as _world
from unsee.data.collate import qa_turns
from unsee.data.detect import benchmark_of, resolve
from unsee.data.request import is_request_file
from unsee.data.request_example import write_world_request
from unsee.demo import run_demo
from unsee.engine.distributed import is_main_process, launch_timeout
from unsee.errors import DataError, OutputExistsError
from unsee.eval.results import load_results, new_results, samples_path, seed_summary, strip_samples, write_results
from unsee.finetune_bench import finetune_benchmark, retrain_benchmark
from unsee.forget import forget as run_forget
from unsee.forget import request_files
from unsee.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    check_not_input,
    check_output_dir,
    check_output_file,
    check_writable,
    results_file,
)
from unsee.methods import method_class
from unsee.methods.eraser.method import SteeringArtifact
from unsee.models import load_adapter, model_fingerprint
from unsee.models import shapes as _shapes
from unsee.models import tiny as _tiny
from unsee.provenance import CostMeter
from unsee.report import REPORT_FILES, model_card, print_results, write_report
from unsee.report.card import unlearned_by
from unsee.resume import Progress, photos_before, run_parts, train_share
from unsee.runs import (
    add_requests,
    check_disjoint,
    check_forget,
    check_images,
    check_launch,
    check_neutral,
    check_room,
    check_run_name,
    checkpoints_until_landed,
    detect_benchmark,
    eval_options,
    evaluate_adapter,
    evaluation,
    jsonable,
    load_suite,
    local_inputs,
    make_run,
    method_configs,
    model_name,
    names_needed_by,
    request_names,
    request_overrides,
    run_seed,
    save_checkpoint,
    save_model,
    seed_overrides,
    training_turns,
    unlearn_adapter,
    with_all_costs,
    with_override,
)
from unsee.tune import tune
from unsee.unlearning import (
    CachedDraws,
    ReferenceAudits,
    ReferenceDraws,
    References,
    attach_holdout,
    audit_adapter,
    audit_config,
    check_audit_options,
    find_reference,
    unlearn_and_save,
)

if TYPE_CHECKING:
    from unsee.data.schema import Suite

# The commands, then the steps they are made of, so that a script can run one step on its own.
__all__ = [
    "attack", "build_world", "continual", "demo", "evaluate", "finetune", "forget", "init_model", "init_shaped",
    "print_results", "report", "retrain", "tune", "unlearn",
    "CachedDraws", "ReferenceAudits", "ReferenceDraws", "attach_holdout", "audit_adapter", "check_forget",
    "check_images", "check_neutral", "detect_benchmark", "eval_options", "evaluate_adapter", "evaluation",
    "find_reference", "load_suite", "make_run", "method_configs", "model_name", "save_checkpoint", "training_turns",
    "unlearn_adapter", "unlearn_and_save",
]


# ---- commands that build inputs --------------------------------------------------------------
# Each checks its output before any work: not an input, not inside or around one, writable.
def build_world(out: str | Path, *, config: Any = "default", overwrite: bool = False, example: bool = True,
                **kw: Any) -> Path:
    """``unsee world``: the built-in benchmark (:func:`unsee.data.world.build_world`) and, with ``example``,
    a removal request made of its ``forget_10`` people (or its first forget split's) in ``out/request/``
    (:func:`unsee.data.request_example.write_world_request`)."""
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(config))
    return _world.build_world(out, config=config, overwrite=overwrite, **kw,
                              then=(lambda root: write_world_request(root, root / "request")) if example else None)


def init_model(arch: str, out: str | Path, *, world: str | Path | None = None, overwrite: bool = False,
               **kw: Any) -> Path:
    """``unsee model init --arch``: a tiny model from the real HF classes (:func:`unsee.models.tiny.init_model`)."""
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(world))
    return _tiny.init_model(arch, out, world=world, overwrite=overwrite, **kw)


def init_shaped(shape: str, out: str | Path, *, overwrite: bool = False, **kw: Any) -> Path:
    """``unsee model init --shape``: a hub checkpoint's structure with random weights."""
    check_output_dir(out, overwrite=overwrite)
    return _shapes.init_shaped(shape, out, overwrite=overwrite, **kw)


def finetune(model: str | Path, data: Any, out: str | Path, *, config: str | Path | dict | None = None,
             overrides: Any = (), seed: int | None = None, overwrite: bool = False,
             cache_dir: str | Path | None = None, benchmark: str | None = None, revision: str | None = None) -> Path:
    """``unsee finetune``: the vanilla model. On the built-in world, its staged recipe
    (:mod:`unsee.finetune`, config ``default`` or ``quick``); on MLLMU-Bench, CLEAR or UMU-bench,
    the benchmark's own recipe (:mod:`unsee.finetune_bench`, config ``mllmu``, ``clear`` or ``umu``;
    by default the detected benchmark's)."""
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(model, data, config),
                     writes=[_finetune.cache_root(cache_dir)])
    ref = resolve(data, revision)
    kind = benchmark_of(ref.path, benchmark)
    if kind == "builtin":
        check_world_recipe(config)
        return _finetune.finetune(model, ref.path, out, config="default" if config is None else config,
                                  overrides=overrides, seed=seed, overwrite=overwrite, cache_dir=cache_dir)
    return finetune_benchmark(model, ref, kind, out, config=config, overrides=overrides, seed=seed,
                              overwrite=overwrite, cache_dir=cache_dir)


def retrain(vanilla: str | Path, data: Any, out: str | Path, *, forget: str = "forget_10", overwrite: bool = False,
            cache_dir: str | Path | None = None, benchmark: str | None = None, revision: str | None = None,
            seed: int | None = None) -> Path:
    """``unsee retrain``: the vanilla model's fine-tune again without ``forget``'s photos, on any benchmark;
    ``seed`` (default: the recipe's) draws it anew, a second reference to read the first against."""
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(vanilla, data),
                     writes=[_finetune.cache_root(cache_dir)])
    ref = resolve(data, revision)
    kind = benchmark_of(ref.path, benchmark)
    given: dict[str, Any] = {"forget": forget, "overwrite": overwrite, "cache_dir": cache_dir, "seed": seed}
    if kind == "builtin":
        return _retrain.retrain(vanilla, ref.path, out, **given)
    return retrain_benchmark(vanilla, ref, kind, out, **given)


def evaluate(model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
             steering: str | Path | None = None, overwrite: bool = False, method: str | None = None, seed: int = 0,
             allow_pickle: bool = False, max_items: int | None = None, dtype: str | None = None,
             benchmark: str | None = None, revision: str | None = None, protocol: str = "loglik",
             max_new_tokens: int | None = None) -> dict:
    """``unsee eval``: every metric group, written as a results file with samples.jsonl beside it.

    ``protocol`` is ``loglik`` or ``official`` (the benchmark's own scoring); every item is
    scored unless ``max_items`` caps each task of each group; replies get the benchmark's
    own ``max_new_tokens`` unless it is given. The run is named ``method``; by default ``vanilla``,
    ``eraser`` with a steering file, or the method on an unlearned checkpoint's card: neither may
    read as the baseline of a report. Its cost is the evaluation's, marked so (``covers``).
    """
    out = results_file(out)
    method = method or ("eraser" if steering is not None else unlearned_by(model) or "vanilla")
    check_run_name(method, steering)
    inputs = local_inputs(model, data, steering)
    check_output_file(out, overwrite=overwrite, inputs=inputs)  # before its samples' name is taken from it
    check_output_file(samples_path(out), overwrite=overwrite, inputs=inputs)
    eval_kw = eval_options(protocol=protocol, max_items=max_items, max_new_tokens=max_new_tokens)
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision)
    check_forget(suite)
    check_images(suite)
    launch_timeout()  # refused before the model loads, not at the first collective
    if suite.info.get("benchmark") == "request":
        forget = Path(data).stem
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    with CostMeter() as meter:
        found = evaluation(adapter, suite, steering=steering, **eval_kw)
    meter.record_model(None)
    run = make_run(method, found, model=model_name(model), suite=suite, forget=forget, seed=seed,
                   cost={**meter.cost(), "covers": "evaluation"}, model_hash=adapter.fingerprint(), steering=steering)
    write_results(out, new_results([run]), overwrite=overwrite)
    return load_results(out)  # as written: with the record of its samples.jsonl, which load_samples checks


def report(results: str | Path | Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    results = [results_file(r, in_folder=True) for r in ([results] if isinstance(results, str | Path) else results)]
    for name in REPORT_FILES:  # the report may sit beside its results files, never replace one
        check_not_input(Path(out) / name, local_inputs(*results))
    check_writable(Path(out) / "report.md")
    write_report(results, out, overwrite=overwrite)
    return Path(out)


# ---- unlearning ----------------------------------------------------------------------------
def unlearn(method: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
            requests: str | Path | Sequence[str] | None = None, config: Any = None, overrides: Any = (),
            seed: int | None = None, overwrite: bool = False, allow_pickle: bool = False, audit: bool = False,
            audit_overrides: Any = (), evaluate_after: bool = True, dtype: str | None = None,
            report_to: str = "", benchmark: str | None = None, revision: str | None = None,
            protocol: str = "loglik", max_items: int | None = None, max_new_tokens: int | None = None,
            seeds: int = 1, reference: References | None = None,
            cache_dir: str | Path | None = None, neutral: str | Path | None = None) -> Path:
    """``unsee unlearn``: a checkpoint (or, for a method that trains no weights such as ``eraser``, its
    steering file), ``run.json`` and a model card.

    With ``requests`` the method runs continually, one request after another, and
    ``results.json`` holds one run per request. ``report_to`` streams the training losses to
    Accelerate trackers (``tensorboard``, ``wandb``), which write under ``out/logs``. The
    result is scored under ``protocol`` (see :func:`evaluate`); the item records go to
    ``samples.jsonl``. With ``seeds`` N > 1 the method runs N times from the same model, with
    unlearning seeds ``seed`` .. ``seed + N - 1``: each result goes to ``out/seed-K/``, and
    ``results.json`` holds every run and their mean, sd, min and max. With ``audit`` the
    retrained reference (``reference``, or several draws of it; by default the one ``unsee retrain`` cached for
    ``model``) is attacked beside the result, once however many seeds run. ``neutral`` is a folder of photos of
    never-taught people for the methods that read them (``cvf_ncu``, ``cvf_only``, ``vkd``, the
    eraser's ``erasure=neutral``) on a benchmark that ships none; on the built-in world it replaces
    the world's own, and results.json's ``data`` records it.
    """

    out = Path(out)
    request_file = requests if isinstance(requests, str | Path) and Path(requests).is_file() else None
    check_output_dir(out, overwrite=overwrite, writes=[_finetune.cache_root(cache_dir)],
                     inputs=local_inputs(model, data, None if isinstance(config, Mapping) else config, request_file,
                                   neutral, reference))
    if report_to:
        overrides = with_override(overrides, "report_to", report_to)
    # reject unknown methods, options, launches and dtypes before any work
    check_launch(method, config, overrides, dtype=dtype, audit=audit, inputs=local_inputs(model, data, neutral))
    reqs = request_names(requests)
    check_audit_options(audit, audit_overrides, reference=None if reqs else reference)  # requests: refused below
    seed = run_seed(seed, method, config, overrides)
    check_seeds(seed, seeds)
    eval_kw = eval_options(protocol=protocol, max_items=max_items, max_new_tokens=max_new_tokens)
    if reqs and is_request_file(data):
        raise ConfigError("several request files run one after another with `unsee forget --requests A,B,...`")
    if reqs:
        if seeds > 1:
            raise ConfigError("--seeds runs one request several times; it cannot be combined with --requests")
        if audit or reference is not None:  # nothing would audit it: say so rather than write no attacks
            raise ConfigError("--requests runs no audits; attack the continual model afterwards with `unsee attack "
                              "all --model OUT/model --data DATA --forget LAST_REQUEST --out OUT`")
        return continual(method, model, data, out, reqs, config=config, overrides=overrides, seed=seed,
                         overwrite=overwrite, allow_pickle=allow_pickle, dtype=dtype, benchmark=benchmark,
                         revision=revision, eval_kw=eval_kw, neutral=neutral)
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision, neutral=neutral,
                       names_needed_by=names_needed_by(method, config, overrides))
    if suite.info.get("benchmark") == "request":
        forget = Path(data).stem
    check_forget(suite)
    check_neutral(suite, method, config, overrides)
    check_images(suite)
    ref = find_reference(reference, model, data, forget, cache_dir, revision, benchmark, allow_pickle) \
        if audit else None
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    check_room(out, adapter, method, copies=seeds)  # in every process: none trains for a save that cannot land
    if not is_main_process():
        # Under `accelerate launch` every process trains its share; the first alone evaluates and writes.
        if method_class(method).trains_weights:  # a test-time method has nothing to train
            for s in range(seed, seed + seeds):
                adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype) if adapter is None else adapter
                unlearn_adapter(method, adapter, suite, config=config,
                                overrides=seed_overrides(method, config, overrides, s, seeds), seed=s)
                adapter = None  # gone before the next seed loads: one model in memory at a time
        return out
    base_hash = adapter.fingerprint()
    with checkpoints_until_landed(method, config) as hold, atomic_dir(out, overwrite=overwrite) as tmp:
        runs = []
        for s in range(seed, seed + seeds):
            where = tmp if seeds == 1 else tmp / f"seed-{s}"
            adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype) if adapter is None else adapter
            run = unlearn_and_save(method, adapter, suite, steering_dir=where, model_dir=where / "model",
                                   model=model_name(model), base_model=str(model), base_hash=base_hash, forget=forget,
                                   seed=s, config=config,
                                   overrides=hold(seed_overrides(method, config, overrides, s, seeds)),
                                   evaluate_after=evaluate_after, eval_kw=eval_kw, audit=audit,
                                   audit_overrides=audit_overrides, audit_seed=seed, data=data, reference=ref,
                                   cache_dir=cache_dir, allow_pickle=allow_pickle)[0]
            adapter = None  # this seed's model (and its artifact) gone before the next loads
            runs.append(run)
            atomic_write_json(where / "run.json", strip_samples(run))
        spread = {"seeds": seed_summary(runs)} if seeds > 1 else {}
        write_results(tmp / "results.json", {**new_results(runs), **spread})
    return out


def continual(method: str, model: str | Path, data: str | Path, out: Path, requests: list[str], *, config: Any,
              overrides: Any, seed: int, overwrite: bool, allow_pickle: bool,
              eval_kw: Mapping[str, Any] | None = None, dtype: str | None = None, benchmark: str | None = None,
              revision: str | None = None, neutral: str | Path | None = None, data_seed: int | None = None) -> Path:
    """Requests one after another; after each, the earlier forget sets are measured again. ``data_seed``
    draws the data (the held-out views asked; ``seed`` unless given), so that seeds compare on one item set.

    For ``cvf_ncu`` the covariance of the next request also holds the already-forgotten
    targets as the updated model sees them, which keeps them forgotten. ``out`` is written
    when the last request is done; until then the finished ones wait in ``OUT.partial``
    (:mod:`unsee.resume`), and the same call goes on from the first request not done.
    """

    if not method_class(method).trains_weights:
        raise ConfigError(f"continual unlearning needs a training method; {method} builds one steering file per "
                          "request")

    eval_kw = dict(eval_kw or {})
    data = resolve(data, revision)  # once: every request's split comes from the same files
    check_seed(seed)
    drawn = seed if data_seed is None else check_seed(data_seed, "data_seed")

    def suite_of(req: str) -> Suite:  # loaded request by request: one request's data in memory at a time
        return load_suite(data, req, retain_exclude=requests, seed=drawn, benchmark=benchmark, neutral=neutral)

    forget, people = {}, []  # each request's training turns (the run's identity, the photos forgotten); people
    for req in requests:  # every request's data is checked before the first one trains
        suite = suite_of(req)
        check_forget(suite)
        check_neutral(suite, method, config, overrides)
        check_images(suite)
        forget[req] = qa_turns(suite.group("train_forget"))
        people.append((req, suite.forget_entities))
    check_disjoint(people)
    check_output_dir(out, overwrite=overwrite)
    progress = Progress.open(out, run_parts(method, config, overrides, seed=seed, model=model, revision=revision,
                                            dtype=dtype, forget=forget, data=str(data), eval=eval_kw,
                                            benchmark=benchmark, neutral=str(neutral), data_seed=drawn))
    adapter = progress.load(model, allow_pickle=allow_pickle, dtype=dtype)
    runs: list[dict] = list(progress.runs)
    check_room(out, adapter, method, copies=2)  # the output, and the progress kept until it lands
    pending = list(enumerate(requests[progress.done:], progress.done + 1))
    if not is_main_process():
        # Under `accelerate launch` every process trains its share; the first alone evaluates and writes
        # (another process's copy of the output would land over it, with no weights in it).
        train_share(method, adapter, ((i, suite_of(req)) for i, req in pending), len(requests), progress, forget,
                    arch=model_name(model), config=config, overrides=overrides, seed=seed)
        return out
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, req in pending:
            with progress.request(i, len(requests), req, out):
                suite = suite_of(req)
                with CostMeter() as meter:
                    res, resolved = unlearn_adapter(
                        method, adapter, suite, config=config, seed=seed, forgotten_images=photos_before(forget, i),
                        overrides=request_overrides(method, config, overrides, i, len(requests)),
                        logging_dir=tmp / "logs")
                    meter.resumed_s = res.resumed_s
                meter.record_model(None)
                scored = {**eval_kw, "progress": bool(resolved["progress"])}
                run = make_run(method, evaluation(adapter, suite, **scored), model=model_name(model), suite=suite,
                               forget=req, seed=seed, request=i, config=resolved, info=jsonable(res.info),
                               retain_without=list(requests),
                               cost={**meter.cost(), "trainable_params": res.trainable_params,
                                     "optimizer_state_bytes": res.optimizer_state_bytes})
                runs.append(add_requests(run, adapter, (suite_of(r) for r in requests[:i]), **scored))
                runs[-1]["history"] = res.history
                if i < len(requests):
                    progress.save(i, adapter, model_name(model), jsonable(runs))
        save_model(adapter, tmp / "model", model_name(model))
        forgotten = [e for r in requests for e in suite_of(r).forget_entities]
        atomic_write_text(tmp / "model" / "README.md", model_card(
            strip_samples(with_all_costs(runs)), None, base_model=str(model), forgotten=forgotten, audits=None,
            base_hash=model_fingerprint(model) if Path(model).is_dir() else str(model)))
        write_results(tmp / "results.json", new_results(runs))
    progress.remove()  # once the output has landed
    return out


NO_REFERENCE = ("{what} is read against the retrained reference, and none was found{where}: build it with "
                "`unsee retrain --model VANILLA --data DATA --out DIR --forget SPLIT` and pass --reference DIR")


def attack(kind: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str | None = None,
           vanilla: str | Path | None = None, steering: str | Path | None = None, method: str = "attacked",
           seed: int = 0, overrides: Any = (), overwrite: bool = False, allow_pickle: bool = False,
           dtype: str | None = None, benchmark: str | None = None, revision: str | None = None,
           reference: References | None = None, cache_dir: str | Path | None = None) -> dict:
    """``unsee attack KIND``: attack a model and record the figures in a results.json.

    ``KIND`` is ``relearn``, ``pgd``, ``shift``, ``probe``, ``quant``, ``mia`` or ``all``. If ``out``
    is an existing results.json (the one ``unsee unlearn`` wrote), the attacks are added to its
    last run and everything else is kept; an attack already recorded there is replaced only with
    ``overwrite``. The attacks then measure that run's forget split (``forget`` defaults to it)
    on its data and, where the run's output holds its model, that model: figures of anything
    else would read as the run's own. Of a run over several seeds, or a demo's output, the run whose model
    (or steering file) is attacked gets the figures (:func:`unsee.attacked.attacked_run`). Otherwise a
    new results.json holds one run named ``method``, on ``forget`` (``forget_10`` unless given; a request's own).

    The retrained reference (``reference``: a model directory, or several draws of it read as one; by default
    the one ``unsee retrain`` cached for ``vanilla``) is attacked too, each figure going beside the model's as
    ``reference``. ``mia`` alone needs it; with ``all`` and no reference, ``mia`` records its AUCs without
    PrivLeak and forget quality, as ``--audit`` does. ``quant`` quantizes the linear weights that differ from
    ``vanilla`` as well as all of them.
    """

    kinds = list(ATTACKS) if kind == "all" else [kind]
    if any(k not in ATTACKS for k in kinds):
        raise ConfigError(f"unknown attack {kind!r}; choose from {', '.join(ATTACKS)} or all")
    check_run_name(method, steering)
    cfg = audit_config(overrides, seed, dtype=dtype if "relearn" in kinds else None)  # before any model loads
    out = results_file(out, in_folder=True)
    for written, around in ((out, False), (cache_dir, True)):  # the results; the reference audits' cache
        if written is not None:
            check_not_input(written, local_inputs(model, data, vanilla, steering, reference), around=around)
    for written in () if out.is_file() else (out, samples_path(out)):  # a new file: its samples' place too
        check_output_file(written, overwrite=overwrite)
    check_writable(out)
    existing = load_results(out) if out.is_file() else None
    if existing is not None and not existing["runs"]:
        raise DataError(f"{out} holds no runs to add the attacks to")
    index, home = attacked_run(existing, out, model, steering, data) if existing is not None else (-1, out.parent)
    if is_request_file(data):  # a request is its own split, as `eval` and `unlearn` record it
        if forget not in (None, Path(data).stem):
            raise ConfigError(f"--forget names a split of a benchmark, and {data} is a request: its own split")
        forget = Path(data).stem
    elif forget is None:
        forget = existing["runs"][index].get("forget_split", "forget_10") if existing is not None else "forget_10"
    if existing is not None and not overwrite:
        done = sorted(set(kinds) & set(existing["runs"][index].get("attacks", {})))
        if done:
            raise OutputExistsError(f"{out} already records {done}; pass overwrite=True (--overwrite) to redo them")
    ref_path = find_reference(reference, vanilla, data, forget, cache_dir, revision, benchmark, allow_pickle)
    if ref_path is None and kind == "mia":  # its own figures are read against the reference; `all` keeps the AUCs
        raise DataError(NO_REFERENCE.format(what="mia (PrivLeak and forget quality)",
                                            where=f" for {vanilla}" if vanilla else " (no --reference, no --vanilla)"))
    without = existing["runs"][index].get("retain_without", []) if existing is not None else []  # continual
    suite = load_suite(data, forget, seed=seed, benchmark=benchmark, revision=revision,
                       **({"retain_exclude": without} if without else {}))  # the retained people the run kept
    if existing is not None:
        check_attacked_run(existing["runs"][index], out, home, model, data, forget, suite, steering)
    check_forget(suite)
    check_images(suite)
    if "mia" in kinds:
        suite = attach_holdout(suite, data, cfg.mia_holdout, seed)
    launch_timeout()
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    artifact = SteeringArtifact.load(steering) if steering is not None else None
    if artifact is not None:  # every attack, the probe too, reads the model the steering was computed on
        artifact.steering.check_compatible(adapter)
    precision = adapter.dtype  # the changed weights are found by their bytes
    before = load_adapter(vanilla, allow_pickle=allow_pickle, dtype=precision) if vanilla is not None else None
    changed = None
    if before is not None and "quant" in kinds:  # compared at the precision the attacked model was saved in
        stored = saved_dtype(model) if Path(model).is_dir() else None
        changed = changed_linears(weight_digests(before, stored), adapter, stored)
    found = audit_adapter(adapter, suite, kinds=kinds, artifact=artifact, vanilla=before, seed=seed,
                          overrides=overrides, changed=changed, reference=ref_path, cache_dir=cache_dir,
                          allow_pickle=allow_pickle)
    if existing is not None:
        card = (home / "model" if (home / "model").is_dir() else home) / "README.md"  # a demo's: in the run's folder
        add_attacks(out, index, home, found, card if Path(model).resolve() == card.parent.resolve() else None,
                    attacked=existing["runs"][index], overwrite=overwrite)
    else:
        run = make_run(method, {}, model=model_name(model), suite=suite, forget=forget, seed=seed, attacks=found,
                       model_hash=adapter.fingerprint(), steering=steering)  # two models attacked alike: two runs
        write_results(out, new_results([run]), overwrite=overwrite)
    return found


def forget(model: str | Path, request: str | Path | Sequence[str | Path] | None, out: str | Path, *,
           requests: str | Sequence[str | Path] | None = None, overwrite: bool = False, **kw: Any) -> Path:
    """``unsee forget``: a removal request from the user's own photos (:func:`unsee.forget.forget`, whose
    options ``kw`` are: method, config, overrides, seed, audit, audit_kinds, audit_overrides, hide_names,
    salt, retained_shown, max_gen_items, allow_pickle, dtype)."""
    files = request_files(request, requests)
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(model, *files))
    return run_forget(model, None, out, requests=[str(f) for f in files], overwrite=overwrite, **kw)


def demo(out: str | Path, *, overwrite: bool = False, config: Any = None, cache_dir: str | Path | None = None,
         **kw: Any) -> Path:
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(config))
    return run_demo(out, overwrite=overwrite, config=config, cache_dir=cache_dir, **kw)
