"""What ``unsee attack`` adds to an existing output: which of its runs the attacked model is, whether the
figures may be set beside that run (the same model, split, data and draw), and the writing of them under a
lock, with the run's card and run.json, when attacks on one output run side by side."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unsee.data.request import SUFFIXES, is_request_file
from unsee.data.schema import Suite
from unsee.errors import DataError, OutputExistsError
from unsee.eval.results import load_results, seed_summary, write_results
from unsee.io import atomic_write_json
from unsee.methods.eraser import STEERING_FILE
from unsee.models.base import model_fingerprint
from unsee.report import write_report
from unsee.report.card import refresh_card
from unsee.report.evidence import refresh_evidence
from unsee.report.tables import setting_of, vanilla_for
from unsee.runs import DEMO_FILE, request_runs, with_all_costs


def add_attacks(out: Path, index: int, home: Path, found: Mapping[str, Any], card: Path | None = None,
                attacked: Mapping[str, Any] | None = None, overwrite: bool = False) -> bool:
    """Add ``found`` to run ``index`` of the results file ``out`` (and to its run.json), and write the
    model card ``card`` (the attacked checkpoint's README.md) again with them: a card that keeps the
    audits of its training only would say the model was never attacked. True where the card was
    written again.

    The file is read again under a lock, not taken from before the attack: attacks on one
    output often run side by side (PGD in one terminal, the probe in another), and writing
    back what was read at the start would drop the figures the other wrote meanwhile. ``attacked``
    is the run as it was checked before the attack: a run replaced meanwhile (``unlearn --overwrite``
    of the same output) measured another model, and takes none of these figures. Without ``overwrite``,
    an attack of the same kind that landed meanwhile keeps its figures, and these are kept in a file
    beside ``out`` (checked before the attack, only the first of two started together was refused).
    """
    from filelock import FileLock

    with FileLock(out.with_name(f".{out.name}.lock")):
        results = load_results(out)
        if attacked is not None and (index >= len(results["runs"]) or _but_attacks(results["runs"][index])
                                     != _but_attacks(attacked)):
            raise DataError(f"{out} was written again while the attack ran, and its run is another model's now; "
                            "nothing was added: attack it again")
        run = results["runs"][index]
        if not overwrite and (done := sorted(set(found) & set(run.get("attacks", {})))):
            fd, kept = tempfile.mkstemp(prefix=f"{out.stem}.attacks-", suffix=".json", dir=out.parent)
            os.close(fd)  # a name of its own, written as every output is
            atomic_write_json(kept, dict(found))
            raise OutputExistsError(f"another attack recorded {done} in {out} while this one ran; nothing was "
                                    f"added, and this attack's figures are kept in {kept} (pass --overwrite to "
                                    "record them instead)")
        run["attacks"] = {**run.get("attacks", {}), **found}
        if "seeds" in results:  # the spread over the seeds takes in the new figures
            results["seeds"] = seed_summary(results["runs"])
        write_results(out, results, overwrite=True, keep_samples=True)  # attacks change no item
        vanilla = vanilla_for([r for r in results["runs"] if setting_of(r) == setting_of(run)])
        _refresh_reports(out, results, run, vanilla)
        if run["cost"].get("covers") in ("evaluation", "nothing"):  # a run beside an output: not its run or card
            return False
        if (home / "run.json").is_file() and (len(results["runs"]) == 1 or home != out.parent):
            atomic_write_json(home / "run.json", run)
        if card is None or not card.is_file():
            return False
        # the last request of a continual run: its card states the cost of every request, as when it was written.
        # Other seeds' runs, or other methods', each of request 1, are no chain of requests.
        own = (run["method"], run.get("seed"))
        chain = [r for r in request_runs(results["runs"]) if (r["method"], r.get("seed")) == own]
        continual = len(chain) > 1 and chain[-1] is run and [r["request"] for r in chain] == [*range(1, len(chain) + 1)]
        shown = with_all_costs(chain) if continual else run
        return refresh_card(card, shown, vanilla)


def _refresh_reports(out: Path, results: Mapping[str, Any], run: Mapping[str, Any],
                     vanilla: Mapping[str, Any] | None) -> None:
    """The reports beside the results file say what it holds now: a demo's report and plots, a removal
    request's evidence (:func:`unsee.report.evidence.refresh_evidence`)."""
    folder = out.parent
    if not (folder / "report.md").is_file() or out.name != "results.json":
        return
    if (folder / DEMO_FILE).is_file():
        write_report([out], folder, overwrite=True)
    elif (folder / "evidence.html").is_file():
        refresh_evidence(folder, results, run, vanilla)


def _on_requests(run: Mapping[str, Any]) -> bool:
    """Whether a run is a continual one on several request files (its data names them all, resolved and joined
    by commas): a folder with a comma in its name (``Smith, J/request.yaml``) holds one request."""
    parts = str((run.get("data") or {}).get("path", "")).split(",")
    return len(parts) > 1 and all(Path(p).suffix.lower() in SUFFIXES for p in parts)


def _continual_refusal(out: Path, run: Mapping[str, Any]) -> DataError:
    return DataError(f"{out} records a continual run on the requests {run.get('forget_split')}, which one request "
                     "cannot stand for: its audits run with it (unsee forget without --no-audit); to attack its "
                     "model on one request, write the attack to a new file (--out OTHER.json)")


def attacked_run(results: Mapping[str, Any], out: Path, model: str | Path, steering: str | Path | None,
                 data: Any = None) -> tuple[int, Path]:
    """Which run of an existing results file an attack's figures belong to, and that run's folder.

    A run over several unlearning seeds keeps each seed's model (or steering file) in
    ``seed-K/``: the figures go to the seed whose files are attacked, and any other model is
    refused. Otherwise they go to the last run (a continual run's last request, whose model the
    output holds). A run on a removal request takes figures measured on a request (``data``) alone.
    """

    index, home = _which_run(results, out, model, steering)
    run = results["runs"][index]
    if data is not None and run.get("benchmark") == "request" and not is_request_file(data):
        if _on_requests(run):
            raise _continual_refusal(out, run)
        raise DataError(f"{out} records a run on the request {run.get('forget_split')}, and {data} is no request "
                        "file; pass the request file it ran on (--data) or write the attack to another --out")
    return index, home


def _which_run(results: Mapping[str, Any], out: Path, model: str | Path,
               steering: str | Path | None) -> tuple[int, Path]:
    """The run whose folder holds the attacked model (or steering file), and that folder: an unlearning seed's
    (``seed-K/``) or, in a demo's output, a method's (``METHOD/``, ``METHOD/seed-K/``) or the vanilla model it
    names. An output of one model (``unsee unlearn``, ``unsee forget``) gives them to its last run; one of
    several refuses any other model, whose figures would be filed under a run that never measured it."""
    attacked = Path(steering if steering is not None else model).resolve()
    demo = out.parent / DEMO_FILE
    vanilla = _demo_vanilla(demo)
    found: dict[Path, list[int]] = {}
    for i, run in enumerate(results["runs"]):
        seed = f"seed-{run.get('seed')}"
        homes = [out.parent / run["method"] / seed, out.parent / run["method"], out.parent / seed]
        if run["method"] == "vanilla" and vanilla is not None:
            homes.append(vanilla)
        for home in homes:
            if home.is_dir() and home.resolve() in (attacked, *attacked.parents):
                found.setdefault(home, []).append(i)
    if found:
        home = max(found, key=lambda h: len(h.resolve().parts))  # the closest: a seed's folder inside its method's
        if len(found[home]) == 1:  # the vanilla model's folder is the cache's, where an attack writes nothing
            return found[home][0], out.parent if home == vanilla else home
    elif "seeds" not in results and not demo.is_file():
        return len(results["runs"]) - 1, out.parent
    n = len(results["runs"])
    what, layout = ((f"a demo's {n} runs", f"{out.parent}/METHOD" + ("/seed-K" if "seeds" in results else ""))
                    if demo.is_file() else (f"the runs of {n} unlearning seeds", f"{out.parent}/seed-K/model"))
    raise DataError(f"{out} holds {what}, and {attacked} is not the model of one of them; attack one run's model "
                    f"(--model {layout}, or its steering file), whose run gets the figures")


def _demo_vanilla(demo: Path) -> Path | None:
    """The vanilla model (in the cache) that a demo's ``demo.json`` names; None without one that reads."""
    try:
        named = json.loads(demo.read_text()).get("vanilla") if demo.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return Path(named) if isinstance(named, str) and named else None


def _but_attacks(run: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "attacks"}


def check_attacked_run(run: Mapping[str, Any], out: Path, home: Path, model: str | Path, data: str | Path,
                       forget: str, suite: Suite, steering: str | Path | None = None) -> None:
    """Refuse to add figures to ``run`` that measure another model, split or dataset than it did,
    or a steering method's base model without its steering file.

    Such figures land beside the run's own metrics and read as its; a run written before these
    fields were recorded is not checked on them.
    """

    request = suite.info.get("benchmark") == "request"
    split = Path(data).stem if request else suite.info.get("split_name", forget)
    recorded = run.get("forget_split")
    if recorded is not None and recorded != split:
        if request and _on_requests(run):
            raise _continual_refusal(out, run)
        advice = ("pass the request file it ran on (--data)" if run.get("benchmark") == "request" else
                  "pass the data it ran on (--data)" if request else
                  "leave out --forget (it defaults to the run's split)")
        raise DataError(f"{out} records a run on {recorded}, and the attack would measure {split}; {advice}"
                        + " or write the attack to another --out")
    then, now = run.get("data", {}).get("fingerprint"), suite.info.get("data", {}).get("fingerprint")
    if then is not None and now is not None and then != now:
        raise DataError(f"{out} records a run on the data at {run['data'].get('path')}, not the data given ({data}: "
                        f"other contents); pass that data or write the attack to another --out")
    then, now = (run.get("data") or {}).get("seed", 0), suite.info.get("data", {}).get("seed", 0)
    if "data" in run and then != now:
        raise DataError(f"{out} records a run whose items were drawn with seed {then}, and the attack's with seed "
                        f"{now} (other held-out views); pass --seed {then} or write the attack to another --out")
    measured = run.get("model_hash")  # what `unsee eval` measured; its output holds no model to compare paths with
    attacked = model_fingerprint(model) if measured is not None and Path(model).is_dir() else measured
    if attacked != measured:
        raise DataError(f"{out} records the run of another model than {model} (weights {measured}, not "
                        f"{attacked}); attack the model it measured, or write to another --out")
    own = home / "model"
    if own.is_dir() and Path(model).exists() and Path(model).resolve() != own.resolve():
        raise DataError(f"{out} records the run of the model in {own}, not {model}; attack that model "
                        f"(--model {own}) or write the attack to another --out")
    steered = home / STEERING_FILE
    if steered.is_file() and (steering is None or Path(steering).resolve() != steered.resolve()):
        raise DataError(f"{out} records the run of the steering file {steered}; attack the model with it on "
                        f"(--steering {steered}), as it is deployed, or write the attack to another --out")
    recorded = run.get("steering")  # `unsee eval --steering`: the file is named in the run, not kept beside it
    if not steered.is_file() and not _same_file(recorded, steering):
        said = f"the steering file {recorded}" if recorded else "the model without a steering file"
        raise DataError(f"{out} records the run of {said}; attack "
                        + (f"with --steering {recorded}" if recorded else "it without --steering")
                        + ", as it was measured, or write the attack to another --out")


def _same_file(a: str | Path | None, b: str | Path | None) -> bool:
    """Both none, or the same steering: the same bytes where both files are there, else the same path."""
    if a is None or b is None:
        return a is None and b is None
    a, b = Path(a), Path(b)
    if a.is_file() and b.is_file():
        return a.resolve() == b.resolve() or a.read_bytes() == b.read_bytes()
    return a.resolve() == b.resolve()
