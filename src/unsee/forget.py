"""``unsee forget``: honour a removal request made of the user's own photos, and hand over the evidence.

The engineer who receives "this person must no longer be recognised" holds a model, some
photos and names, not a benchmark split. This recipe checks the request whole before any
model loads, runs the method on the streams built from it, measures the model before and
after on the request's own questions, runs the audits, and writes what a person reads:
``report.md``, ``evidence.html`` (each held-out photo with the answers before and after),
``results.json`` and a checkpoint (or steering file) whose model card lists the request.
Several request files run one after another: a continual run.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from unsee.data.collate import qa_turns
from unsee.data.request import Request, RequestError, check_sequence, load_request, named_paths, request_suite
from unsee.data.schema import METRIC_GROUPS, Example, Suite
from unsee.engine.distributed import is_main_process
from unsee.errors import ConfigError, DataError
from unsee.eval.evaluator import answers
from unsee.eval.results import new_results, write_results
from unsee.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir, content_hash
from unsee.models import load_adapter
from unsee.report.card import model_card
from unsee.report.evidence import Shown, write_evidence
from unsee.resume import Progress, photos_before, run_parts, train_share
from unsee.runs import (
    add_requests,
    check_forget,
    check_images,
    check_launch,
    check_room,
    checkpoints_until_landed,
    evaluation,
    jsonable,
    make_run,
    method_configs,
    model_name,
    names_needed_by,
    request_overrides,
    run_seed,
    save_checkpoint,
    with_all_costs,
)
from unsee.unlearning import check_audit_options, unlearn_and_save


def request_files(request: str | Path | Sequence[str | Path] | None = None,
                  requests: str | Path | Sequence[str | Path] | None = None) -> list[Path]:
    """``--request FILE`` or ``--requests A,B,...`` (in order), never both."""
    if (request is None) == (requests is None):
        raise ConfigError("give one request file (--request FILE) or several in order (--requests A,B,...)")
    given = request if requests is None else (requests.split(",") if isinstance(requests, str) else requests)
    items = [given] if isinstance(given, str | os.PathLike) else list(given or [])
    files = [Path(str(f).strip()) for f in items if str(f).strip()]
    if not files:
        raise ConfigError("no request file given")
    return files


def load_requests(files: Sequence[Path], method: str, config: Any = None, overrides: Any = ()) -> list[Request]:
    """Every file checked, and every problem of every file reported in one error."""
    found: list[Request] = []
    problems: list[str] = []
    for f in files:
        try:
            found.append(load_request(f, names_needed_by=names_needed_by(method, config, overrides)))
        except RequestError as e:
            problems += [f"{f}: {p}" for p in e.problems] if len(files) > 1 else e.problems
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise RequestError(files[0] if len(files) == 1 else ", ".join(map(str, files)), problems)
    check_sequence(found)
    return found


def hashed(name: str, salt: str) -> str:
    """The card's stand-in for a hidden name: the requester, who keeps the salt, can check it."""
    return "sha256:" + hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()[:16]


def _shown_items(suites: Sequence[Suite], n_retained: int, seed: int) -> list[Example]:
    """Each held-out photo of every request's forget people, once (a person given none: their training
    photos, person by person); and a seeded sample of the last request's retained people (their held-out
    photos, else their first training photo)."""
    items = []
    for s in suites:
        held = [e for e in s.groups["forget_test"] if e.task == "mcq"]
        with_held = {e.entity for e in held}
        items += held + [e for e in s.groups["forget"] if e.task == "mcq" and e.entity not in with_held]
    suite = suites[-1]
    retained = sorted({e.entity for e in suite.groups["retain"]})
    rng = np.random.default_rng([seed, 34])
    pick = [retained[i] for i in sorted(rng.choice(len(retained), size=min(n_retained, len(retained)),
                                                   replace=False))] if retained else []
    for who in pick:
        test = [e for e in suite.groups["retain_test"] if e.entity == who and e.task == "mcq"]
        train = [e for e in suite.groups["retain"] if e.entity == who and e.task == "mcq"]
        items += test or train[:1]
    return items


def _answers(adapter: Any, items: Sequence[Example], artifact: Any = None) -> list[str]:
    """What the model says, as deployed: with the unlearning's artifact applied."""
    with nullcontext() if artifact is None else artifact.applied(adapter):
        return answers(adapter, items)


def forget(model: str | Path, request: str | Path | Sequence[str | Path] | None, out: str | Path, *,
           requests: str | Sequence[str | Path] | None = None, method: str = "cvf_ncu", config: Any = None,
           overrides: Any = (), seed: int | None = None, overwrite: bool = False, audit: bool = True,
           audit_kinds: Sequence[str] | None = None, audit_overrides: Any = (), hide_names: bool = False,
           salt: str | None = None, retained_shown: int = 4, max_gen_items: int | None = 24,
           allow_pickle: bool = False, dtype: str | None = None) -> Path:
    """``unsee forget``: the request(s) honoured on ``model``, with the evidence, in ``out``.

    Nothing is written and no model is loaded until every request file has been checked.
    """

    start = time.perf_counter()
    out = Path(out)
    files = request_files(request, requests)
    check_output_dir(out, overwrite=overwrite)
    _, _, cls = method_configs(method, config, overrides)  # unknown methods and options, before any work
    seed = run_seed(seed, method, config, overrides)
    check_launch(method, config, overrides, dtype=dtype, audit=audit,
                 inputs=[model, *files, *(p for f in files for p in named_paths(f))])
    check_audit_options(audit, audit_overrides, audit_kinds)
    if not cls.trains_weights and len(files) > 1:
        raise ConfigError(f"continual unlearning needs a training method; {method} builds one steering file per "
                          "request")
    reqs = load_requests(files, method, config, overrides)
    suites = [request_suite(r, seed=seed) for r in reqs]
    for s in suites:
        check_forget(s)
        check_images(s)  # every photo decodes: checked by the request already, cheap to confirm
    label = "+".join(r.label for r in reqs)
    prints = [s.info["data"]["fingerprint"] for s in suites]
    if len(suites) > 1:  # one continual run, read against one vanilla run: its runs share one data record
        chain = {"source": label, "path": ",".join(s.info["data"]["path"] for s in suites),
                 "fingerprint": content_hash(*prints), **({"seed": seed} if seed else {})}
        for s in suites:
            s.info["data"] = chain
    eval_kw = {"groups": METRIC_GROUPS, "max_gen_items": max_gen_items}
    scored = {**eval_kw, "progress": method_configs(method, config, overrides)[0].progress}  # as the run's own bars

    progress, turns = None, {}
    if len(reqs) > 1:  # a continual run keeps its finished requests until it lands
        turns = {str(r.path): qa_turns(s.group("train_forget")) for r, s in zip(reqs, suites, strict=True)}
        progress = Progress.open(out, run_parts(
            method, config, overrides, seed=seed, model=model, revision=None, dtype=dtype, forget=turns,
            eval=eval_kw, audit=[audit, audit_kinds, audit_overrides],
            # every photo a request reads, the people kept and the never-taught ones too, not only those forgotten
            requests_data=prints))

    if not is_main_process():  # under `accelerate launch`: the first process alone evaluates, audits and writes
        if cls.trains_weights:
            done = progress.done if progress is not None else 0
            adapter = (progress.load(model, allow_pickle=allow_pickle, dtype=dtype) if progress is not None
                       else load_adapter(model, allow_pickle=allow_pickle, dtype=dtype))
            check_room(out, adapter, method, copies=1 if progress is None else 2)  # as the first process does
            train_share(method, adapter, enumerate(suites[done:], done + 1), len(suites), progress, turns,
                        arch=model_name(model), config=config, overrides=overrides, seed=seed)
        return out
    adapter = load_adapter(model, allow_pickle=allow_pickle, dtype=dtype)
    check_room(out, adapter, method, copies=1 if progress is None else 2)
    name, base_hash = model_name(model), adapter.fingerprint()
    measured = suites[-1]  # the suite the final run is measured on; every request's forget group beside it
    vanilla = make_run("vanilla", evaluation(adapter, measured, **scored), model=name, suite=measured, forget=label,
                       seed=seed, request=len(suites))
    if len(suites) > 1:
        add_requests(vanilla, adapter, suites, **scored)
    shown = _shown_items(suites, retained_shown, seed)
    before = _answers(adapter, shown, None)
    runs: list[dict] = [vanilla]
    if progress is not None and progress.done:
        del adapter  # one model in memory at a time
        adapter = progress.load(model, allow_pickle=allow_pickle, dtype=dtype)
        runs = list(progress.runs)
    with checkpoints_until_landed(method, config) as hold, atomic_dir(out, overwrite=overwrite) as tmp:
        artifact: Any = None
        for i, (req, suite) in enumerate(zip(reqs, suites, strict=True), 1):
            if progress is not None and i <= progress.done:
                continue
            last = i == len(reqs)
            with nullcontext() if progress is None else progress.request(i, len(reqs), str(req.path), out):
                run, artifact = unlearn_and_save(
                    method, adapter, suite, steering_dir=tmp, model_dir=tmp / "model", model=name,
                    base_model=str(model), base_hash=base_hash, forget=label, seed=seed, config=config,
                    overrides=hold(request_overrides(method, config, overrides, i, len(reqs))), vanilla=vanilla,
                    eval_kw=eval_kw, audit=audit and last, audit_overrides=audit_overrides, audit_kinds=audit_kinds,
                    forgotten_images=photos_before(turns, i), save=False)
                run["request"] = i
                run["request_file"] = str(req.path)
                if len(suites) > 1:
                    add_requests(run, adapter, suites[:i], artifact=artifact, **scored)
                runs.append(run)
                if progress is not None and not last:
                    progress.save(i, adapter, name, jsonable(runs))
        final = runs[-1]
        unlearning = with_all_costs(runs)["cost"]  # every request's, the resumed ones' too
        after = _answers(adapter, shown, artifact)
        names = [p.name for r in reqs for p in r.forget]
        salt = salt or (secrets.token_hex(16) if hide_names else None)
        card_request = {"files": [f.name for f in files], "hidden": hide_names,
                        "people": [hashed(n, salt) for n in names] if hide_names and salt else names}
        if cls.trains_weights:  # a test-time method's file is already in place
            save_checkpoint(artifact, tmp / "model", model_card(
                {**final, "cost": unlearning}, vanilla, base_model=str(model), base_hash=base_hash,
                forgotten=[e for s in suites for e in s.forget_entities], audits=None, request=card_request))
        if hide_names:
            atomic_write_text(tmp / "names-salt.txt", f"{salt}\n")
        results = new_results(runs)
        write_results(tmp / "results.json", results)
        who = {k: v for s in suites for k, v in s.info["names"].items()}
        cards = [Shown(role=str(e.meta.get("role", "forget")), name=who.get(e.entity, e.entity), question=e.question,
                       photo=e.image or b"", source=e.source, before=b, after=a,
                       aliases=tuple(e.meta.get("aliases", ())), held_out=e.meta.get("split") != "train")
                 for e, b, a in zip(shown, before, after, strict=True)]
        cost = {"total_wall_s": round(time.perf_counter() - start, 2), "unlearning": unlearning}  # both files
        write_evidence(tmp, shown=cards, results=results, run=final, vanilla=vanilla,
                       request={"files": [str(f) for f in files], "names": names}, cost=cost)
        each = [{"request": r["request_file"], **r["cost"]} for r in runs[1:]]  # each request's own unlearning
        atomic_write_json(tmp / "forget.json", {"requests": [str(f) for f in files], "method": method, "seed": seed,
                                                "model": str(model), "cost": {**cost, "per_request": each}})
    if progress is not None:
        progress.remove()
    return out
