"""The Python API. Every ``unsee`` subcommand is a thin wrapper over one function here.

    from unsee import api
    api.build_world("w", config="quick")
    api.init_model("tiny-llava", "m0", world="w")
    api.finetune("m0", "w", "vanilla", config="quick")
    api.retrain("vanilla", "w", "retrained", forget="forget_10")
    api.unlearn("cvf_ncu", "vanilla", "w", "out")
    api.evaluate("out/model", "w", "out/eval.json")
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unsee.config import ConfigError, load_config, parse_overrides, read_config_file, to_dict
from unsee.data.collate import qa_turns
from unsee.data.schema import Suite
from unsee.data.world import build_world
from unsee.errors import DataError, ModelError, OutputExistsError
from unsee.finetune import finetune
from unsee.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir
from unsee.models import load_adapter
from unsee.models.base import HFAdapter, Turn
from unsee.models.shapes import init_shaped
from unsee.models.tiny import init_model
from unsee.retrain import retrain

__all__ = ["attack", "audit_adapter", "build_world", "detect_benchmark", "evaluate", "finetune", "init_model",
           "init_shaped", "load_suite", "print_results", "report", "retrain", "unlearn"]


# ---- data ----------------------------------------------------------------------------------
def detect_benchmark(data: str | Path) -> str:
    """Which loader reads ``data``: the built-in world, MLLMU-Bench, CLEAR or UMU-bench."""
    p = Path(data)
    if (p / "world.json").exists():
        return "builtin"
    if (p / "Full_Set").is_dir() or (p / "ft_Data").is_dir():
        return "mllmu"
    if any(p.glob("forget0*")) or (p / "real_faces").is_dir():
        return "clear"
    if (p / "forget_10").is_dir() or (p / "forget_5").is_dir():
        return "umu"
    raise DataError(f"cannot tell which benchmark {data} holds (no world.json, Full_Set, forgetNN or forget_X)")


def load_suite(data: str | Path, forget: str | Sequence[str] = "forget_10", **kw: Any) -> Suite:
    from unsee.data import load_benchmark

    return load_benchmark(detect_benchmark(data), data, forget, **kw)


def check_forget(suite: Suite) -> None:
    """The guards that stop a run before it touches anything."""
    if not suite.forget_entities or not suite.groups.get("train_forget"):
        raise DataError(f"the forget set of {suite.name!r} is empty: nothing to unlearn")
    overlap = set(suite.forget_entities) & set(suite.retain_entities)
    if overlap:
        raise DataError(f"the forget set overlaps the retain set on {sorted(overlap)[:5]}; they must be disjoint")


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

    if method == "eraser":
        from unsee.methods.eraser import EraserConfig

        cls, mcls = None, EraserConfig
    else:
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
    if cls is not None:
        tvals.setdefault("scope", cls.default_scope)
    return (load_config(TrainConfig, tvals), load_config(mcls, {k: v for k, v in values.items() if k in mkeys}),
            cls)


# ---- evaluation ----------------------------------------------------------------------------
def evaluate_adapter(adapter: HFAdapter, suite: Suite, *, steering: str | Path | None = None,
                     **kw: Any) -> dict[str, Any]:
    from unsee.eval.evaluator import evaluate as run_eval

    if steering is None:
        return run_eval(adapter, suite, **kw)
    from unsee.methods.eraser import Steering, steer

    st = Steering.load(steering)
    st.check_compatible(adapter)
    with steer(adapter, st):
        return run_eval(adapter, suite, **kw)


def make_run(method: str, metrics: dict, *, model: str, suite: Suite, forget: str, seed: int,
             config: dict | None = None, cost: dict | None = None, request: int = 1, **extra: Any) -> dict:
    return {
        "method": method, "model": model, "benchmark": suite.info.get("benchmark", suite.name),
        "forget_split": forget, "request": request, "seed": seed, "config": config or {},
        "mcq_protocol": "loglik", "metrics": metrics,
        "cost": cost or {"wall_s": 0.0, "peak_rss_bytes": 0, "peak_gpu_bytes": None, "trainable_params": 0,
                         "optimizer_state_bytes": 0},
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
             allow_pickle: bool = False, max_items: int | None = None, dtype: str | None = None) -> dict:
    """``unsee eval``: every metric group, written as a results file."""
    from unsee.eval.results import CostMeter, new_results, write_results

    out = Path(out)
    if out.exists() and not overwrite:
        check_output_dir(out, overwrite=False)
    suite = load_suite(data, forget, seed=seed)
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    with CostMeter() as meter:
        metrics = evaluate_adapter(adapter, suite, steering=steering, max_items=max_items)
    meter.record_model(None)
    run = make_run(method, metrics, model=model_name(model), suite=suite, forget=forget, seed=seed,
                   cost=meter.cost(), steering=str(steering) if steering else None)
    if run["steering"] is None:
        run.pop("steering")
    res = new_results([run])
    write_results(out, res, overwrite=overwrite)
    return res


def print_results(res: dict) -> None:
    from rich.console import Console

    from unsee.report import terminal_table

    Console().print(terminal_table(res))


def report(results: Sequence[str | Path], out: str | Path, *, overwrite: bool = False) -> Path:
    from unsee.report import write_report

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
                    seed: int = 0, forgotten_images: Sequence[Any] = ()) -> tuple[Any, dict]:
    """Run a training method in place on ``adapter``; return (train result, the resolved config)."""
    from unsee.engine.trainer import train

    check_forget(suite)
    tcfg, mcfg, cls = method_configs(method, config, overrides)
    tcfg.seed = seed
    if forgotten_images and hasattr(mcfg, "forgotten_images"):
        mcfg.forgotten_images = list(forgotten_images)
    res = train(cls(mcfg), adapter, suite, training_turns(suite), tcfg, desc=method)
    resolved = {**to_dict(tcfg), **{k: v for k, v in to_dict(mcfg).items() if k != "forgotten_images"}}
    return res, resolved


def is_main_process() -> bool:
    """True outside a multi-process launch, and in its first process."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def unlearn(method: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
            requests: str | Sequence[str] | None = None, config: Any = None, overrides: Any = (), seed: int = 0,
            overwrite: bool = False, allow_pickle: bool = False, audit: bool = False,
            audit_overrides: Any = (), evaluate_after: bool = True, dtype: str | None = None, seeds: int = 1,
            reference: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """``unsee unlearn``: a checkpoint (or a steering file, for ``eraser``), ``run.json`` and a model card.

    With ``requests`` the method runs continually, one request after another, and
    ``results.json`` holds one run per request. With ``seeds`` N > 1 the method runs N times
    from the same model, with unlearning seeds ``seed`` .. ``seed + N - 1``: each result goes to
    ``out/seed-K/``, and ``results.json`` holds every run and their mean, sd, min and max.
    With ``audit`` the retrained reference (``reference``, or the one ``unsee retrain`` cached
    for ``model``) is attacked beside the result, once however many seeds run.
    """
    from unsee.eval.results import new_results, seed_summary, write_results

    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    method_configs(method, config, overrides)  # reject unknown methods and options before any work
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    reqs = _requests(requests)
    if reqs:
        if seeds > 1:
            raise ConfigError("--seeds runs one request several times; it cannot be combined with --requests")
        return continual(method, model, data, out, reqs, config=config, overrides=overrides, seed=seed,
                         overwrite=overwrite, allow_pickle=allow_pickle, dtype=dtype)
    suite = load_suite(data, forget, seed=seed)
    check_forget(suite)
    ref = find_reference(reference, model, data, forget, cache_dir) if audit else None
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    if not is_main_process():
        # Under `accelerate launch` every process trains its share; the first alone evaluates and writes.
        if method != "eraser":
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
                                      evaluate_after=evaluate_after, audit=audit, audit_overrides=audit_overrides,
                                      audit_seed=seed, data=data, reference=ref, cache_dir=cache_dir)
            runs.append(run)
            atomic_write_json(where / "run.json", run)
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
                     audit_seed: int | None = None, data: str | Path | None = None,
                     reference: str | Path | ReferenceAudits | None = None,
                     cache_dir: str | Path | None = None) -> tuple[dict, Path | None]:
    """Honour one removal request on a loaded model and record it: the run and the artefact a user ships.

    ``unsee unlearn`` and the demo both go through here, so that a run's cost, metrics,
    checkpoint and model card mean the same thing wherever they were produced. Training
    methods change ``adapter`` in place and save it (LoRA merged) with its card to
    ``model_dir``; ``eraser`` leaves the weights alone and writes its steering file to
    ``steering_dir``. The cost covers the unlearning only, not the evaluation.

    With ``audit`` the result is attacked (:mod:`unsee.eval.attacks`) before it is saved, and
    the run and the model card carry the ``attacks``; the probe's baseline is a visual-only
    copy taken before unlearning, the quantization attack's "changed" weights those whose bytes
    the method moved. The audits use ``audit_seed`` (default: ``seed``), so that runs over
    several unlearning seeds are attacked alike, and set every figure beside the retrained
    ``reference``'s when there is one.

    Returns the run (as in results.json) and the steering file (None for training methods).
    """
    from unsee.engine.trainer import frozen_copy
    from unsee.eval.results import CostMeter
    from unsee.report import model_card

    kinds = list(audit_kinds) if audit_kinds else None
    before = frozen_copy(adapter, visual_only=True) if audit else None
    digests = None
    if audit and (kinds is None or "quant" in kinds):
        from unsee.eval.quant import weight_digests

        digests = weight_digests(adapter)

    steering: Path | None = None
    info: dict[str, Any] = {}
    trainable = opt_bytes = 0
    with CostMeter() as meter:
        if method == "eraser":
            from unsee.methods.eraser import run_eraser

            _, ecfg, _ = method_configs(method, config, overrides)
            steering = run_eraser(adapter, suite, steering_dir, ecfg, seed=seed)
            resolved = to_dict(ecfg)
        else:
            res, resolved = unlearn_adapter(method, adapter, suite, config=config, overrides=overrides, seed=seed)
            info, trainable, opt_bytes = res.info, res.trainable_params, res.optimizer_state_bytes
    meter.record_model(None)
    cost = {**meter.cost(), "trainable_params": trainable, "optimizer_state_bytes": opt_bytes}
    metrics = evaluate_adapter(adapter, suite, steering=steering, **(eval_kw or {})) if evaluate_after else {}
    run = make_run(method, metrics, model=model, suite=suite, forget=forget, seed=seed, config=resolved, cost=cost,
                   info=_jsonable(info))
    if audit:
        changed = None
        if digests is not None:
            from unsee.eval.quant import changed_linears

            changed = changed_linears(digests, adapter)
        run["attacks"] = audit_adapter(adapter, suite, kinds=kinds, steering=steering, vanilla=before,
                                       seed=seed if audit_seed is None else audit_seed, overrides=audit_overrides,
                                       strict=False, changed=changed, reference=reference, data=data,
                                       cache_dir=cache_dir)
    if steering is None:
        _save_model(adapter, model_dir)
        card = model_card(run, vanilla, base_model=base_model, base_hash=base_hash,
                          forgotten=list(suite.forget_entities), audits=None)
        atomic_write_text(model_dir / "README.md", card)
    return run, steering


def _save_model(adapter: HFAdapter, path: Path) -> None:
    """A standard checkpoint; a LoRA run is merged so the output loads without peft."""
    model = adapter.model
    if hasattr(model, "merge_and_unload"):
        adapter.model = model.merge_and_unload()
    adapter.save(path)


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def continual(method: str, model: str | Path, data: str | Path, out: Path, requests: list[str], *, config: Any,
              overrides: Any, seed: int, overwrite: bool, allow_pickle: bool,
              eval_kw: Mapping[str, Any] | None = None, dtype: str | None = None) -> Path:
    """Requests one after another; after each, the earlier forget sets are measured again.

    For ``cvf_ncu`` the covariance of the next request also holds the already-forgotten
    targets as the updated model sees them, which keeps them forgotten.
    """
    from unsee.engine.trainer import unique_images
    from unsee.eval.results import CostMeter, new_results, write_results

    if method == "eraser":
        raise ConfigError("continual unlearning needs a training method; eraser builds one steering file per request")
    eval_kw = dict(eval_kw or {})
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    runs: list[dict] = []
    forgotten: list[Any] = []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i, req in enumerate(requests, 1):
            suite = load_suite(data, req, retain_exclude=requests, seed=seed)
            with CostMeter() as meter:
                res, resolved = unlearn_adapter(method, adapter, suite, config=config, overrides=overrides,
                                                seed=seed, forgotten_images=forgotten)
            meter.record_model(None)
            metrics = evaluate_adapter(adapter, suite, **eval_kw)
            for j, earlier in enumerate(requests[:i], 1):
                s_j = load_suite(data, earlier, retain_exclude=requests, seed=seed)
                metrics[f"forget_r{j}"] = evaluate_adapter(adapter, s_j, **{**eval_kw, "groups": ("forget",),
                                                                            "generation": False})["forget"]
            # each photo once, however many questions it has (requests are disjoint people)
            forgotten += [t.image for t in unique_images(qa_turns(suite.group("train_forget")))]
            runs.append(make_run(method, metrics, model=model_name(model), suite=suite, forget=req, seed=seed,
                                 request=i, config=resolved, info=_jsonable(res.info),
                                 cost={**meter.cost(), "trainable_params": res.trainable_params,
                                       "optimizer_state_bytes": res.optimizer_state_bytes}))
        _save_model(adapter, tmp / "model")
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
                  steering: str | Path | None = None, vanilla: HFAdapter | None = None, seed: int = 0,
                  overrides: Any = (), strict: bool = True, changed: Sequence[str] | None = None,
                  reference: str | Path | ReferenceAudits | None = None, data: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The robustness audits on a loaded model (as deployed: with its steering file, if any), each beside
    the retrained reference's figure when ``reference`` (a model directory) is given."""
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
    st = None
    if steering is not None:
        from unsee.methods.eraser import Steering

        st = Steering.load(steering)
    ref = reference
    if reference is not None and not isinstance(reference, ReferenceAudits):
        ref = ReferenceAudits(reference, suite, cfg, cache_dir)
    return run_attacks(adapter, suite, kinds, cfg, vanilla=vanilla, steering=st, strict=strict, changed=changed,
                       reference=ref)


def attack(kind: str, model: str | Path, data: str | Path, out: str | Path, *, forget: str = "forget_10",
           vanilla: str | Path | None = None, steering: str | Path | None = None, method: str = "attacked",
           seed: int = 0, overrides: Any = (), overwrite: bool = False, allow_pickle: bool = False,
           dtype: str | None = None, reference: str | Path | None = None,
           cache_dir: str | Path | None = None) -> dict:
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
    suite = load_suite(data, forget, seed=seed)
    check_forget(suite)
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


def demo(out: str | Path, **kw: Any) -> Path:
    from unsee.demo import run_demo

    return run_demo(out, **kw)
