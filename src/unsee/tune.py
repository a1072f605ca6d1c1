"""``unsee tune``: pick a method's setting on a validation request of other people, on the model to unlearn.

A setting that forgets well on one vanilla model can stop short, or forget too much, on another
trained from the same recipe; and a setting chosen on the people it is then reported on flatters
every method. So the pick is made on the model itself, on a request of people other than the one
to answer, and that request never informs it: its people are refused in the validation request
and left out of the retained people the pick is judged on.

Each setting of the grid runs from the same model, once per seed, and is scored by the unlearning
score against the model's own figures on the validation request. The best mean score is the pick
(ties: the first in the grid's order, which starts with the configured setting; a setting whose
training diverged on a seed ranks below every one that ran whole); it is written as
a config file that ``unsee unlearn --config`` and ``unsee forget --config`` take as it is.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from unsee.audit.verdicts import audit_figures, mean_attacks, reference_checks
from unsee.bars import bar
from unsee.config import SHIPPED, ConfigError, check_seeds, config_values, parse_overrides, to_dict
from unsee.data.collate import qa_turns
from unsee.data.parquet import Source
from unsee.data.request import SUFFIXES, is_request_file
from unsee.data.schema import Suite
from unsee.engine.distributed import is_main_process
from unsee.errors import DataError, TrainingError, UnseeError
from unsee.eval.metrics import unlearning_score
from unsee.eval.results import new_results, write_results
from unsee.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir
from unsee.methods import method_class
from unsee.models import load_adapter
from unsee.models.base import Adapter
from unsee.provenance import environment
from unsee.report import write_report
from unsee.resume import Progress, run_parts
from unsee.runs import (
    check_forget,
    check_images,
    check_launch,
    check_neutral,
    detect_benchmark,
    eval_options,
    evaluation,
    jsonable,
    load_suite,
    local_inputs,
    make_run,
    method_configs,
    model_name,
    names_needed_by,
    run_seed,
    unlearn_adapter,
)
from unsee.unlearning import (
    References,
    check_audit_options,
    find_reference,
    reference_option,
    reference_record,
    unlearn_and_save,
)

TUNE_FILE = "tune.json"
LR_SCALES = (1.0, 0.3, 3.0)  # the configured rate first: a tie keeps it
FIGURES = ("forget", "forget_test", "retain", "text_forget", "known", "general")


def grid_points(method: str, config: Any, overrides: Sequence[str], grid: Sequence[str]) -> list[list[str]]:
    """The settings to try, as override lists: every combination of ``grid``'s ``KEY=V1,V2,...`` entries, in
    their order. Without a grid, a training method's learning rate at 0.3 and 3 times the configured one."""
    if not grid:
        if not method_class(method).trains_weights:
            raise ConfigError(f"{method} trains no weights, so it has no learning rate to tune: give the values to "
                              "try with --grid KEY=V1,V2 (e.g. --grid alpha=2,4,8)")
        lr = method_configs(method, config, overrides)[0].lr
        return [[] if s == 1.0 else [f"lr={lr * s:.3g}"] for s in LR_SCALES]
    axes: dict[str, list[str]] = {}
    for entry in grid:
        key, eq, values = entry.partition("=")
        key = key.strip()
        tried = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not tried:
            raise ConfigError(f"--grid {entry!r}: give KEY=V1,V2,... (e.g. lr=1e-4,3e-4)")
        if key in axes:
            raise ConfigError(f"--grid names {key} twice; list every value in one entry: {key}=V1,V2,...")
        if key in parse_overrides(list(overrides)):
            raise ConfigError(f"{key} is both set ({key}=...) and tuned (--grid {key}=...): drop one")
        if len(set(tried)) < len(tried):
            raise ConfigError(f"--grid {entry!r} lists a value twice")
        axes[key] = tried
    return [[f"{k}={v}" for k, v in zip(axes, combo, strict=True)] for combo in itertools.product(*axes.values())]


def pick_config(method: str, config: Any, overrides: Sequence[str], point: Sequence[str]) -> dict[str, Any]:
    """The pick as a self-contained config: every key the config (with what it extends), the overrides and
    the grid set, at the value the run resolved, so that it means the same if a shipped config changes."""
    source = SHIPPED / "unlearn" / f"{method}.yaml" if config is None else config
    keys = set(config_values(source, "unlearn") if config is not None or source.exists() else {})
    keys |= set(parse_overrides([*overrides, *point]))
    resolved = _resolved(method, config, [*overrides, *point])
    return json.loads(json.dumps({k: resolved[k] for k in sorted(keys) if k in resolved}))


def _resolved(method: str, config: Any, overrides: Sequence[str]) -> dict[str, Any]:
    """Every training and method option a run with ``overrides`` resolves to, by name."""
    tcfg, mcfg, _ = method_configs(method, config, overrides)
    return {**to_dict(tcfg), **to_dict(mcfg)}


def _figures(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {g: metrics[g]["mcq"] for g in FIGURES if (metrics.get(g) or {}).get("mcq") is not None}


def _excluded_people(data: Any, names: Sequence[str], *, benchmark: str | None, revision: str | None
                     ) -> dict[str, list[str]]:
    """The forget people of each request the pick is for (a split of ``data``, or a request file)."""
    return {name: list(load_suite(name if is_request_file(name) else data, name, benchmark=benchmark,
                                  revision=revision).forget_entities) for name in names}


def _row(point: Sequence[str], runs: Sequence[Mapping[str, Any]], failed: Mapping[tuple[str, int], str],
         vanilla: Mapping[str, Any]) -> dict[str, Any]:
    """One setting's line of tune.json: its runs' scores and figures, a failed seed scoring 0."""
    mine = [r for r in runs if r["tune"]["overrides"] == list(point)]
    scores = [unlearning_score(vanilla, r["metrics"]) for r in mine]
    errors = {s: e for (p, s), e in failed.items() if p == " ".join(point)}
    values = [sc["score"] or 0.0 for sc in scores] + [0.0] * len(errors)
    return {"overrides": list(point), "seeds": [r["seed"] for r in mine], "score": statistics.fmean(values),
            "scores": [sc["score"] for sc in scores], "limiting": [sc["limiting"] for sc in scores],
            "figures": [_figures(r["metrics"]) for r in mine],
            "wall_s": statistics.fmean(r["cost"]["wall_s"] for r in mine) if mine else None,
            **(_audits(mine) if any("attacks" in r for r in mine) else {}),
            **({"failed": {str(s): e for s, e in errors.items()}} if errors else {})}


def _audits(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A setting's audit figures (:func:`audit_figures`) on the means over its seeds, and the verdict of each
    check those means allow (:func:`reference_checks`: against the retrained reference where one was attacked
    beside them, and the 4-bit rounding against the model's own figure before it)."""
    attacks = mean_attacks([r.get("attacks") or {} for r in runs])
    checks = {k: c["pass"] for k, c in reference_checks(attacks).items() if c["pass"] is not None}
    return {"audits": {k: v for k, v in audit_figures(attacks).items() if v is not None}, "checks": checks,
            "audits_hold": all(checks.values())}


def _rank(row: Mapping[str, Any]) -> tuple[bool, bool]:
    """What ranks a setting before its score: every seed ran, then its audits hold."""
    return "failed" not in row, row.get("audits_hold", True)


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The pick: a setting that diverged on any seed ranks below every one that ran, one that fails an audit
    below every one whose audits hold, and then the best mean score wins (the first of equals: max keeps it)."""
    return max(rows, key=lambda r: (*_rank(r), r["score"]))


def lead(rows: Sequence[Mapping[str, Any]], best: Mapping[str, Any]) -> dict[str, Any] | None:
    """How far the pick leads the best of the settings it outranked on score alone (the runner-up), beside
    the standard error of that difference over the seeds: a lead inside it is a tie that the seeds cannot
    break, and the runner-up may well be the better setting on the reported people. None without a
    runner-up."""
    others = [r for r in rows if r is not best and _rank(r) == _rank(best)]
    if not others:
        return None
    second = max(others, key=lambda r: r["score"])
    spread = [[s for s in r["scores"] if s is not None] for r in (best, second)]
    se = (sum(statistics.variance(s) / len(s) for s in spread) ** 0.5) if all(len(s) > 1 for s in spread) else None
    margin = best["score"] - second["score"]
    return {"runner_up": list(second["overrides"]), "margin": margin, "margin_se": se,
            "within_noise": None if se is None else margin <= se}


def _checked_settings(method: str, model: Any, data: Any, on: str | None, exclude: Sequence[str], *,
                      grid: Sequence[str], config: Any, overrides: Sequence[str], dtype: str | None, neutral: Any,
                      attacks: Sequence[str], audit_overrides: Sequence[str], reference: Any) -> list[list[str]]:
    """The grid's settings, every one checked, and the command's other options, before any data or model loads:
    a mistake in the last setting of a long grid is found before the first one trains."""
    request = isinstance(data, str | Path) and is_request_file(data)
    if request and on is not None:
        raise ConfigError("--data is a removal request, which is the validation request itself: drop --on")
    if not request and on is None:
        raise ConfigError("give --on SPLIT: the validation request, of people other than the one to answer "
                          "(the built-in world's val_forget_10, say)")
    if request and (splits := [x for x in exclude if not is_request_file(x)]):
        raise ConfigError(f"--data is a removal request, so --exclude takes the request files the pick is for, "
                          f"not splits ({', '.join(splits)})")
    if missing := [x for x in exclude if Path(x).suffix.lower() in SUFFIXES and not Path(x).is_file()]:
        raise DataError(f"--exclude {', '.join(map(str, missing))}: no such request file")
    if on is not None and on in exclude:
        raise ConfigError(f"--on {on} is also excluded: the validation request must be another request")
    if not attacks and (reference is not None or audit_overrides):  # unlearn's hint (--audit) is not this command's
        given = reference_option(reference) if reference is not None else "--audit-set"
        raise ConfigError(f"{given} is for the audits, and none runs: add --attacks relearn,... (or leave it out)")
    check_audit_options(bool(attacks), audit_overrides, list(attacks), reference=reference)
    points = grid_points(method, config, overrides, grid)
    trains: dict[str, Sequence[str]] = {}  # each setting's resolved config, as what it trains
    for point in points:  # every setting is checked before the first one trains
        check_launch(method, config, [*overrides, *point], dtype=dtype, audit=bool(attacks),
                     inputs=local_inputs(model, data, neutral))
        resolved = _resolved(method, config, [*overrides, *point])
        if method_class(method).trains_weights and resolved["checkpoint_dir"]:
            raise ConfigError("unsee tune runs many short trainings from one model, and a resumable checkpoint "
                              "belongs to one run: drop checkpoint_dir")
        max_steps = resolved["max_steps"]
        inert = ("epochs", "min_steps") if max_steps else ()  # max_steps sets the steps whatever they say
        key = json.dumps({k: v for k, v in resolved.items() if k not in inert}, sort_keys=True, default=str)
        if (twin := trains.setdefault(key, point)) is not point:
            why = f" (max_steps={max_steps} sets the number of steps, whatever epochs and min_steps say)" \
                if set(inert) & {k.partition("=")[0] for k in point} else ""
            raise ConfigError(f"--grid: {' '.join(twin) or 'the configured setting'} and {' '.join(point)} are the "
                              f"same setting{why}; a grid of settings that train alike picks nothing")
    return points


def tune(method: str, model: str | Path, data: str | Path, out: str | Path, *, on: str | None = None,
         grid: Sequence[str] = (), exclude: Sequence[str] = (), config: Any = None, overrides: Sequence[str] = (),
         seed: int | None = None, seeds: int = 1, overwrite: bool = False, allow_pickle: bool = False,
         dtype: str | None = None, benchmark: str | None = None, revision: str | None = None,
         protocol: str = "loglik", max_items: int | None = None, max_new_tokens: int | None = None,
         neutral: str | Path | None = None, attacks: Sequence[str] = (), audit_overrides: Sequence[str] = (),
         reference: References | None = None, cache_dir: str | Path | None = None) -> Path:
    """``unsee tune``: run ``method`` at every setting of ``grid`` on the validation request ``on`` of
    ``data`` (or on ``data`` itself, a removal request file), ``seeds`` seeds each, and write the pick.

    ``exclude`` names the requests the pick is for (splits of ``data``, or request files): their people must
    not be in ``on``, and are left out of its retained people where the benchmark can leave them out.
    Writes ``tune.json`` (every setting's figures and scores, and the pick), ``METHOD.yaml`` (the pick, for
    ``--config``), ``results.json`` with its ``samples.jsonl`` (every run, for ``unsee report``), and
    ``report.md`` with ``tradeoff.png``. ``attacks`` are audits run on every run (``relearn``, say), whose
    figures each row then carries beside its score: the score reads forgetting and retention alone, and a
    setting that scores best may be the one whose forgetting a few steps of training bring back. The
    retrained reference (``reference``, or several draws of it; by default the one ``unsee retrain`` cached for
    ``model`` without the validation people's photos) is attacked beside them, and a setting whose audits fail
    on the means over its seeds ranks below every setting whose audits hold.
    """
    out = Path(out)
    overrides = list(overrides)
    exclude = list(exclude)
    requests = [x for x in exclude if is_request_file(x)]  # the others are splits' names, not paths
    check_output_dir(out, overwrite=overwrite, inputs=local_inputs(model, data, config, neutral, *requests))
    points = _checked_settings(method, model, data, on, exclude, grid=grid, config=config, overrides=overrides,
                               dtype=dtype, neutral=neutral, attacks=attacks, audit_overrides=audit_overrides,
                               reference=reference)
    request = isinstance(data, str | Path) and is_request_file(data)
    seed = run_seed(seed, method, config, overrides)
    check_seeds(seed, seeds)
    # the pick reads the MCQ alone: generation (cloze, open answers), the slow part on a CPU, would decide nothing
    eval_kw = {**eval_options(protocol=protocol, max_items=max_items, max_new_tokens=max_new_tokens),
               "generation": False}
    excluded = _excluded_people(data, exclude, benchmark=benchmark, revision=revision)
    split_names = [x for x in exclude if x not in requests]
    left_out = bool(exclude) and not request and benchmark_excludes(data, benchmark, revision)
    needs_names = next(filter(None, (names_needed_by(method, config, [*overrides, *p]) for p in points)), None)

    def validation(leave_out: list[str]) -> Suite:
        return load_suite(data, on or "", seed=seed, benchmark=benchmark, revision=revision, neutral=neutral,
                          names_needed_by=needs_names, **({"retain_exclude": leave_out} if leave_out else {}))

    suite = validation(split_names if left_out else [])
    # a request file's people are no split's: those the validation request retains are left out by name
    if left_out and (seen := sorted({p for r in requests for p in excluded[r]} & set(suite.retain_entities))):
        suite = validation([*split_names, *seen])
    on = on or Path(data).stem
    for name, people in excluded.items():
        if shared := sorted(set(people) & set(suite.forget_entities)):
            raise DataError(f"the validation request {on} and {name} share {', '.join(shared[:5])}: a setting "
                            f"picked on the people it is reported on is not a validation pick")
    check_forget(suite)
    for point in points:
        check_neutral(suite, method, config, [*overrides, *point])
    check_images(suite)
    twin = None if request else _validation_twin(data, on)
    if twin and is_main_process():
        print(f"unsee: note: {on} is a reported request, and {twin} the validation request of other people beside "
              f"it; a pick made on {on} is made on the people it then forgets, and flatters its figures there: tune "
              f"on {twin}, with --exclude {on}", file=sys.stderr)
    base = None if request else model  # a request file has no cached reference: only one given by hand
    ref = find_reference(reference, base, data, on, cache_dir, revision, benchmark, allow_pickle) if attacks else None
    progress = Progress.open(out, run_parts(
        method, config, overrides, seed=seed, model=model, revision=revision, dtype=dtype,
        forget={on: qa_turns(suite.group("train_forget"))}, data=str(data), eval=eval_kw, benchmark=benchmark,
        neutral=str(neutral), grid=points, seeds=seeds, exclude=excluded, left_out=left_out, attacks=list(attacks),
        audit_overrides=list(audit_overrides), reference=str(reference_record(ref))), kind="tune", items="runs")
    trials = [(point, s) for point in points for s in range(seed, seed + seeds)]
    load_kw = {"allow_pickle": allow_pickle, "dtype": dtype}
    if not is_main_process():
        # Under `accelerate launch` every process trains its share of each run; the first alone evaluates,
        # attacks, scores and writes, and the others wait for it at the next run's first step.
        _train_shares(method, model, suite, trials[len(progress.runs):], config=config, overrides=overrides,
                      load_kw=load_kw)
        return out
    adapter = load_adapter(model, **load_kw)
    v_eval = evaluation(adapter, suite, **eval_kw)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        audit_kw = {"audit": bool(attacks), "audit_kinds": list(attacks), "audit_overrides": list(audit_overrides),
                    "audit_seed": seed, "data": data, "reference": ref, "cache_dir": cache_dir,
                    "allow_pickle": allow_pickle}  # every run attacked alike, whatever its seed
        done = _run_trials(method, model, suite, on, trials, progress, config=config, overrides=overrides,
                           eval_kw=eval_kw, load_kw=load_kw, adapter=adapter,
                           audit_kw=audit_kw)
        runs = [make_run("vanilla", v_eval, model=model_name(model), suite=suite, forget=on, seed=seed),
                *(d["run"] for d in done if "run" in d)]
        failed = {(d["point"], d["seed"]): d["failed"] for d in done if "failed" in d}
        if len(failed) == len(trials):
            raise TrainingError(f"every setting of the grid failed; the first: {next(iter(failed.values()))}")
        rows = [_row(point, runs[1:], failed, v_eval.metrics) for point in points]
        best = best_row(rows)
        config_file = f"{method}.yaml"
        picked = pick_config(method, config, overrides, best["overrides"])
        atomic_write_text(tmp / config_file, f"# unsee tune's pick for {method} on {on} of {data} "
                          f"({', '.join(best['overrides']) or 'the configured setting'}; mean score "
                          f"{best['score']:.4f} over {seeds} seed{'s' * (seeds > 1)})\n"
                          + (f"# picked on the people {on} reports, not on its validation request {twin}\n" if twin
                             else "")
                          + yaml.safe_dump(picked, sort_keys=True))
        write_results(tmp / "results.json", new_results(runs))
        atomic_write_json(tmp / TUNE_FILE, {
            "method": method, "model": str(model), "data": str(data), "on": on, "seed": seed, "seeds": seeds,
            "config": jsonable(config) if isinstance(config, Mapping) else (None if config is None else str(config)),
            "overrides": overrides, "exclude": excluded, "exclude_left_out_of_retain": left_out,
            "validation_twin": twin,
            "reference": reference_record(ref),
            "vanilla": _figures(v_eval.metrics), "rows": rows,
            "pick": {"overrides": best["overrides"], "score": best["score"], "lead": lead(rows, best),
                     "config_file": config_file, "config": picked}, "environment": environment()})
        write_report([tmp / "results.json"], tmp)
    progress.remove()  # once the output has landed
    return out


def _run_trials(method: str, model: str | Path, suite: Suite, on: str, trials: Sequence[tuple[Sequence[str], int]],
                progress: Progress, *, config: Any, overrides: Sequence[str], eval_kw: Mapping[str, Any],
                load_kw: Mapping[str, Any], adapter: Adapter, audit_kw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (setting, seed) from the model as given, each entry its run or why its training failed. The
    runs finished so far wait in ``OUT.partial`` (``progress``): on a real model a grid takes hours, and the
    same command goes on from the first unfinished run after a failure or a kill."""
    done: list[dict[str, Any]] = list(progress.runs)
    base_hash = adapter.fingerprint()
    current: Adapter | None = adapter  # the model as given, until the first run trains it
    with tempfile.TemporaryDirectory(prefix="unsee-tune-") as scratch:
        try:
            for i, (point, s) in enumerate(bar(trials[len(done):], desc=f"tune {method}", unit="run",
                                               initial=len(done), total=len(trials)), len(done)):
                current = load_adapter(model, **load_kw) if current is None else current
                entry: dict[str, Any] = {"point": " ".join(point), "seed": s}
                try:
                    run = unlearn_and_save(method, current, suite, steering_dir=Path(scratch) / str(i),
                                           model_dir=Path(scratch) / str(i) / "model", model=model_name(model),
                                           base_model=str(model), base_hash=base_hash, forget=on, seed=s,
                                           config=config, overrides=[*overrides, *point], eval_kw=eval_kw,
                                           save=False, **audit_kw)[0]
                except TrainingError as e:  # a rate too high for this model diverges: that setting loses
                    entry["failed"] = str(e)
                else:
                    entry["run"] = {**run, "tune": {"overrides": list(point)}}
                current = None  # trained: the next setting starts from the model again
                done.append(entry)
                if len(done) < len(trials):
                    progress.keep(len(done), jsonable(done))
        except BaseException as e:
            if progress.done:
                note = (f"runs 1-{progress.done} of {len(trials)} are kept in {progress.path}, and the same command "
                        f"goes on from run {progress.done + 1}")
                if isinstance(e, UnseeError):
                    raise type(e)(f"{e}; {note}") from e
                e.add_note(note)
            raise
    return done


def _train_shares(method: str, model: str | Path, suite: Suite, trials: Sequence[tuple[Sequence[str], int]], *,
                  config: Any, overrides: Sequence[str], load_kw: Mapping[str, Any]) -> None:
    """What another process of a launch does: its share of the training of every run not done yet, each from
    the model as given, with the same calls as the first process (a test-time method trains nothing)."""
    if not method_class(method).trains_weights:
        return
    for point, s in trials:
        adapter = load_adapter(model, **load_kw)
        # the loss is averaged over the processes before it is checked, so a diverging setting stops in every
        # process at the same step; the first records it, and every process goes on to the next setting
        with contextlib.suppress(TrainingError):
            unlearn_adapter(method, adapter, suite, config=config, overrides=[*overrides, *point], seed=s)
        del adapter  # one model in memory at a time


def summary(result: Mapping[str, Any]) -> str:
    """tune.json as a few lines a person reads: each setting's mean score and figures, the pick marked."""
    groups = [g for g in FIGURES if g in result["vanilla"]]
    audits = list(dict.fromkeys(k for r in result["rows"] for k in r.get("audits", {})))
    width = max(len(_setting(r["overrides"])) for r in result["rows"])
    lines = [f"{'setting':{width}s}  score  " + "  ".join(f"{g:>11s}" for g in [*groups, *audits])]
    lines.append(f"{'(vanilla)':{width}s}  {'':5s}  " + "  ".join(f"{result['vanilla'][g]:11.3f}" for g in groups))
    for row in result["rows"]:
        means = {g: statistics.fmean(f[g] for f in row["figures"]) for g in groups} if row["figures"] else {}
        figures = "  ".join(f"{means[g]:11.3f}" for g in groups) if means else "failed"
        if means and audits:
            figures += "  " + "  ".join(f"{row.get('audits', {}).get(k, float('nan')):11.3f}" for k in audits)
        if means and row.get("checks"):
            figures += f"  audits held {sum(row['checks'].values())}/{len(row['checks'])}"
        if "failed" in row and means:
            figures += f"  ({len(row['failed'])} seed{'s' * (len(row['failed']) > 1)} failed)"
        mark = "  <- pick" if row["overrides"] == result["pick"]["overrides"] else ""
        lines.append(f"{_setting(row['overrides']):{width}s}  {row['score']:.3f}  {figures}{mark}")
    ahead = result["pick"].get("lead")
    if ahead:
        rival = f"the pick leads {_setting(ahead['runner_up'])} by {ahead['margin']:.3f}"
        if ahead["within_noise"]:
            lines.append(f"{rival}, within the standard error of the difference over the seeds "
                         f"({ahead['margin_se']:.3f}): the two are tied here; more --seeds, or the audits, can tell "
                         "them apart")
        elif ahead["within_noise"] is None:
            lines.append(f"{rival} on one seed a setting, which cannot tell a lead from noise: --seeds 3 can")
    return "\n".join(lines)


def _setting(overrides: Sequence[str]) -> str:
    """A grid row's name in the printed table: its overrides, or the configured setting."""
    return " ".join(overrides) or "(configured)"


def _validation_twin(data: Any, on: str) -> str | None:
    """The validation request the benchmark at ``data`` holds beside ``on`` (the built-in world's
    ``val_forget_10`` beside ``forget_10``), if ``on`` is a reported request that has one; looked for in a local
    folder alone, so that a hub dataset is not asked for its configs once more."""
    if on.startswith("val_") or not isinstance(data, str | Path) or (source := Source(data)).path is None:
        return None
    return f"val_{on}" if source.has(f"val_{on}") else None


def benchmark_excludes(data: Any, benchmark: str | None, revision: str | None) -> bool:
    """Whether ``data``'s loader can leave named requests' people out of the retained ones (MLLMU-Bench's
    layout, the built-in world's among them); CLEAR's and UMU-bench's fixed splits cannot."""
    return detect_benchmark(data, benchmark, revision) in ("builtin", "mllmu")
