"""What the method benchmarks share: the cached vanilla model, one evaluation protocol, targets.

Every benchmark evaluates with the same settings (log-likelihood MCQ, generation off unless
asked, the same item caps), so their numbers can be put side by side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, cast

import torch

from unsee import api
from unsee.config import SEEDS, check_seed
from unsee.data.schema import Suite
from unsee.demo import DemoConfig, prepare_vanilla
from unsee.errors import ConfigError, DataError
from unsee.eval.metrics import spread as value_spread
from unsee.eval.metrics import unlearning_score
from unsee.finetune import cache_root
from unsee.io import atomic_write_json
from unsee.methods import ALL as ALL  # the registry's names: the benchmarks' --methods defaults
from unsee.methods import TRAINING as TRAINING
from unsee.methods.artifact import Artifact, load_result
from unsee.models import HFAdapter, load_adapter
from unsee.models.tiny import ARCHS
from unsee.runs import load_suite

# Every scratch folder of a benchmark process lives under one directory that is removed when the
# process exits, so that a sweep of hundreds of runs leaves nothing behind in the temp folder.
_SCRATCH = tempfile.TemporaryDirectory(prefix="unsee-bench-")


def method_option(text: str) -> tuple[str, str]:
    """An argparse type for --method-set: ``METHOD:KEY=VALUE``, the method one of the registry's."""
    method, _, option = text.partition(":")
    if method not in ALL or "=" not in option:
        raise argparse.ArgumentTypeError(f"{text!r}: expected METHOD:KEY=VALUE with METHOD one of {', '.join(ALL)}")
    return method, option


def read_picks(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """``--picks FILE``: the settings an earlier ``unlearn.py`` run picked on its validation request, put before
    ``--method-set``'s options of each method in ``--methods``. Only picks made on held-out people are taken: the
    point is that nothing is chosen on the groups reported. Returns where they came from, for the JSON."""
    try:
        earlier = json.loads(Path(args.picks).read_text())
        selection, arch = earlier["selection"], earlier["arch"]
        picks, held_out, complete = selection["picks"], selection["held_out"], earlier["complete"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        p.error(f"--picks {args.picks}: not a JSON unlearn.py wrote ({type(e).__name__}: {e})")
    if not held_out or not complete:
        p.error(f"--picks {args.picks}: its picks were made on the groups it reports" if not held_out else
                f"--picks {args.picks}: that run did not finish, and some methods have no pick")
    if arch != args.arch:
        p.error(f"--picks {args.picks}: picked for {arch}, and this run is {args.arch}")
    methods = args.methods.split(",")
    if missing := [m for m in methods if m not in picks]:
        p.error(f"--picks {args.picks} has no pick for {', '.join(missing)}")
    # a pick records the earlier run's --train-set too: what this run's own gives already is not said twice
    args.method_set = [*((m, o) for m in methods for o in picks[m] if o not in args.train_set), *args.method_set]
    return {"file": str(args.picks), "world": earlier.get("world"), "seed": earlier.get("seed"),
            "on": selection["on"], "picks": {m: picks[m] for m in methods}}


def method_sets(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``--method-set`` options of a method that ``--methods`` does not run: a typo there would drop them."""
    if unused := sorted({m for m, _ in args.method_set} - set(args.methods.split(","))):
        p.error(f"--method-set names {', '.join(unused)}, which --methods does not run")


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    """Write a benchmark's JSON atomically and say where: what every single-file benchmark ends with."""
    atomic_write_json(path, result)
    print(f"wrote {path}")


def scratch(prefix: str) -> Path:
    """A fresh folder under this process's scratch root (removed at exit)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_SCRATCH.name))


def seed_arg(text: str) -> int:
    """An argparse type for --seed: a seed numpy and torch take, refused at the parser (a benchmark that writes at
    its end would otherwise lose the runs before the one that fails)."""
    try:
        return check_seed(int(text))
    except (ValueError, ConfigError) as e:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r}: a whole number in [0, 2**32)") from e


def _past_last(seed: int, count: int) -> str:
    """What is wrong with ``count`` seeds from ``seed`` when the last is no seed, else ''."""
    return f"--seeds {count} from --seed {seed} runs past the last seed, 2**32 - 1" if seed + count > SEEDS else ""


def check_last_seed(p: argparse.ArgumentParser, seed: int, count: int) -> None:
    """``--seeds N`` from ``--seed``: the last one a seed too, refused before the first runs."""
    if problem := _past_last(seed, count):
        p.error(problem)


def positive_int(text: str) -> int:
    """An argparse type for counts such as --threads: zero or less is refused in one line, not by torch's
    traceback halfway through setup."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def method_names(text: str) -> str:
    """An argparse type for --methods: a comma list of the registry's names. A wrong one is refused at the
    parser, not after the methods before it have run (a benchmark that writes at its end would lose them)."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in ALL]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or [text]}; choose from {', '.join(ALL)}")
    return ",".join(names)


def parser(doc: str, *, methods: str, out: str, retrained: bool = True) -> argparse.ArgumentParser:
    """The options every method benchmark takes: world, recipe, model, evaluation, methods, output; with
    ``retrained``, the option to measure the retrained reference (a benchmark that does not offers none)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--methods", type=method_names, default=methods, help="comma list")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine option for every training method, e.g. max_steps=2 for a smoke run")
    p.add_argument("--out", default=out)
    model_options(p)
    p.add_argument("--max-items", type=int, default=200,
                   help="MCQ items per metric group, evenly spaced over its people (0: all)")
    p.add_argument("--generation", action="store_true", help="also score cloze and generation (slow on CPU)")
    if retrained:
        p.add_argument("--retrained", action="store_true",
                       help="also measure the retrained reference: the vanilla model fine-tuned again without the "
                            "forget people's photos (unsee retrain; trained once, then cached)")
    return p


# Accuracy is not the point of the untrained-model benchmarks: one item of one group, so that
# evaluating costs next to nothing.
ONE_ITEM_EVAL: dict[str, Any] = {"max_items": 1, "generation": False, "progress": False, "groups": ("forget",)}


def untrained_options(p: argparse.ArgumentParser, *, world: str, archs: Sequence[str]) -> None:
    """The options of the benchmarks that start from each architecture's untrained tiny model."""
    p.add_argument("--world", default=world, help="world config: quick or default")
    p.add_argument("--world-set", action="append", default=[], metavar="KEY=VALUE", help="world config override")
    p.add_argument("--archs", default=",".join(archs), help="comma list")
    p.add_argument("--forget", default="forget_10")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an engine option for every method, e.g. max_steps=2 for a smoke run")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--cache-dir", default=None, help="the shared stage cache (default: ~/.cache/unsee)")
    p.add_argument("--threads", type=positive_int, default=2)


def arch_list(p: argparse.ArgumentParser, text: str) -> list[str]:
    """``--archs``, split; an unknown name is refused in one line."""
    archs = text.split(",")
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        p.error(f"unknown architecture(s) {', '.join(unknown)}; choose from {', '.join(ARCHS)}")
    return archs


def suite_or_exit(p: argparse.ArgumentParser, world: Path, forget: str) -> Suite:
    """The world's benchmark for split ``forget``; a split the world lacks is refused in one line."""
    try:
        return load_suite(world, forget)
    except DataError as e:
        p.error(str(e))


def model_options(p: argparse.ArgumentParser) -> None:
    """The options that pick the world and its vanilla model in the shared cache (:func:`vanilla_model`)."""
    p.add_argument("--world", default="default", help="world config: quick or default")
    p.add_argument("--world-set", action="append", default=[], metavar="KEY=VALUE", help="world config override")
    p.add_argument("--recipe", default=None, help="finetune recipe (default: the world's name)")
    p.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    p.add_argument("--arch", default="tiny-llava", choices=ARCHS)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--cache-dir", default=None, help="the shared stage cache (default: ~/.cache/unsee)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="torch threads (1 on a machine busy with other work)")


def attack_list(text: str) -> list[str]:
    """An argparse type for --attacks: a comma list of attacks, or ``none`` for a run that only measures. An
    unknown name is refused at the parser, not after the first model has trained."""
    from unsee.audit.attacks import ATTACKS

    if text.strip().lower() == "none":
        return []
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(ATTACKS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown attack(s) {unknown or [text]}; choose from {', '.join(ATTACKS)}, "
                                         "or none")
    return kinds


def attack_options(p: argparse.ArgumentParser) -> None:
    """The audit options of the benchmarks that attack their models: which attacks, and their settings."""
    from unsee.audit.attacks import ATTACKS

    p.add_argument("--attacks", type=attack_list, default=list(ATTACKS),
                   help="comma list of the attacks to run, or none")
    p.add_argument("--attack-set", action="append", default=[], metavar="KEY=VALUE", help="AttackConfig option")


def vanilla_model(args: argparse.Namespace) -> tuple[Path, Path]:
    """World and vanilla model from the shared stage cache (trained on first use)."""
    torch.set_num_threads(args.threads)
    cfg = DemoConfig(world=args.world, recipe=args.recipe or args.world, world_overrides=args.world_set,
                     recipe_overrides=args.recipe_set)
    return prepare_vanilla(cfg, args.arch, args.seed, cache_root(args.cache_dir))


def retrained_model(args: argparse.Namespace, world: Path, vanilla: Path, forget: str, seed: int | None = None) -> Path:
    """The retrained reference of ``vanilla`` for ``forget``, from the stage cache (trained on first use); ``seed``:
    another draw of it (``unsee retrain --seed``)."""
    out = scratch("retrained-") / "model"
    return api.retrain(vanilla, world, out, forget=forget, cache_dir=cache_root(args.cache_dir), seed=seed)


def eval_kw(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_items": args.max_items or None, "generation": args.generation, "progress": False}


def measure(method: str, vanilla: Path, suite: Suite, forget: str, overrides: Sequence[str], seed: int,
            kw: Mapping[str, Any], *, apart: bool = False) -> tuple[dict, HFAdapter, Artifact]:
    """One method at one setting on a fresh copy of the vanilla model, through the same
    ``api.unlearn_and_save`` as ``unsee unlearn``: metrics, cost, resolved config.

    ``apart`` runs it in a fresh process (spawned, at this process's torch threads), so that its
    peak memory is its own: in one long process, the heap that earlier runs left resident counts
    in each later run's peak. The result is then read back from what the run saved.

    Returns the run, the unlearned adapter and the artifact it runs with (``artifact.applied``).
    """
    work = scratch(f"{method}-")
    if apart:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            run = pool.submit(_measure_apart, method, vanilla, suite, forget, list(overrides), seed, dict(kw), work,
                              torch.get_num_threads()).result()
        adapter, artifact = load_result(work, base=vanilla)  # the layout `unsee unlearn` writes
        return run, cast(HFAdapter, adapter), artifact
    return _measure_in(method, vanilla, suite, forget, overrides, seed, kw, work)


def _measure_in(method: str, vanilla: Path, suite: Suite, forget: str, overrides: Sequence[str], seed: int,
                kw: Mapping[str, Any], work: Path) -> tuple[dict, HFAdapter, Artifact]:
    adapter = load_adapter(vanilla)
    run, artifact = api.unlearn_and_save(
        method, adapter, suite, steering_dir=work, model_dir=work / "model",
        model=api.model_name(vanilla), base_model=str(vanilla), base_hash=adapter.fingerprint(), forget=forget,
        seed=seed, overrides=overrides, eval_kw=kw)
    return run, adapter, artifact


def _measure_apart(method: str, vanilla: Path, suite: Suite, forget: str, overrides: list[str], seed: int,
                   kw: dict[str, Any], work: Path, threads: int) -> dict:
    """:func:`measure`'s body in the spawned process: the run alone goes back, the model stays on disk."""
    torch.set_num_threads(threads)
    return _measure_in(method, vanilla, suite, forget, overrides, seed, kw, work)[0]


def score(vanilla_metrics: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    return unlearning_score(vanilla_metrics, run["metrics"])


def mcq(metrics: Mapping[str, Any], group: str) -> float | None:
    fig = metrics.get(group) or {}
    return fig.get("mcq")


def check(value: float | None, op: str, bound: float) -> dict[str, Any]:
    """A target row: the value, the bound and whether it holds (None when unmeasured)."""
    ok = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return {"value": value, "target": f"{op} {round(bound, 4)}", "pass": ok}


def spread(rows: list[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Mean, sd, min and max of each figure over the seeds that have it."""
    out = {}
    for k in rows[0]:
        values = [r[k] for r in rows if r[k] is not None]
        if values:
            out[k] = value_spread(values)
    return out


def seed_list(text: str, base: int) -> list[int]:
    """``--seeds``: a comma list of seeds, or one number N for the N seeds ``base`` .. ``base + N - 1``."""
    try:
        numbers = [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {text}: give a comma list of whole numbers (0,1,2) or how many seeds to run "
                         "(3)") from None
    for n in numbers:
        if not 0 <= n < SEEDS:
            raise SystemExit(f"--seeds {text}: {n} is not a seed; seeds are whole numbers in [0, 2**32)")
    if "," in text:
        if repeated := sorted({n for n in numbers if numbers.count(n) > 1}):
            raise SystemExit(f"--seeds {text}: seed {repeated[0]} is given twice; a seed run again gives the same "
                             "figures, and the spread over seeds would count it as another draw")
        return numbers
    if int(text) < 1:
        raise SystemExit(f"--seeds {text}: a single number is how many seeds to run, from --seed; give 1 or more, "
                         "or a comma list of seeds (0,1,2)")
    if problem := _past_last(base, int(text)):
        raise SystemExit(problem)
    return list(range(base, base + int(text)))
