"""The ``unsee`` command line: a thin layer over the Python API, one subcommand per function.

Every subcommand parses its options, calls the function of the same name in
:mod:`unsee.api`, and turns an :class:`~unsee.errors.UnseeError` into a one-line message
and exit code 2 (no traceback for a user's mistake).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from types import ModuleType

from unsee import __version__, numerics
from unsee.cli_process import Parser, Stopped, expand_home, one_line, plain_text_where_asked, seed_type, stop_on_term
from unsee.config import describe
from unsee.errors import ConfigError, UnseeError


def _lazy(module: str = "unsee.api") -> ModuleType:
    """``module`` (the API and what it loads: torch, transformers), imported when a command runs, not when the
    command line is read: help, ``--version`` and a mistyped option then answer at once, not seconds later.

    tqdm parses its ``TQDM_*`` variables when it is imported (by the API and by transformers): one it
    cannot read (``TQDM_MININTERVAL=fast``) raised a bare ValueError that named no variable."""
    try:
        return importlib.import_module(module)
    except ValueError as e:
        given = ", ".join(f"{k}={v!r}" for k, v in sorted(os.environ.items()) if k.startswith("TQDM_"))
        if not given:
            raise
        raise ConfigError(f"tqdm cannot read the progress-bar settings of the environment ({given}): {e}") from e


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("overrides", nargs="*", default=[], metavar="key=value",  # optional: never "required"
                   help=f"config options to change, e.g. {example}")


def _command(sub: argparse._SubParsersAction, name: str, help: str, func: Callable[[argparse.Namespace], None], *,
             required: Sequence[str] = (), seed: bool = True, overrides: str = "",
             overwrite: str = "replace an output that unsee wrote (never a folder of other files)"
             ) -> argparse.ArgumentParser:
    """A subcommand with the options most of them share, so that they are spelt the same everywhere.

    ``required`` names ``--X PATH`` options that must be given; ``seed`` adds ``--seed N``;
    ``overrides``, an example of them, the trailing ``key=value`` config overrides. Every command
    takes ``--overwrite`` (``overwrite``: what it replaces) and runs ``func``. Where a config sets a
    seed, ``--seed`` replaces it, and without ``--seed`` the config's own is used (so a ``seed=N``
    override is never ignored).
    """
    p = sub.add_parser(name, help=help)
    for option in required:
        p.add_argument(f"--{option}", required=True)
    if seed and overrides:
        p.add_argument("--seed", type=seed_type, default=None,
                       help="the seed (default: the config's seed, 0 unless set)")
    elif seed:
        p.add_argument("--seed", type=seed_type, default=0)
    if overrides:
        _add_overrides(p, overrides)
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    p.set_defaults(func=func)
    return p


def _load_options(p: argparse.ArgumentParser) -> None:
    """How a model is loaded: the same two options wherever a command reads a checkpoint."""
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="load the weights in this dtype")


def _data_options(p: argparse.ArgumentParser) -> None:
    """Where a benchmark comes from: the same two options wherever a command reads ``--data``."""
    p.add_argument("--revision", default=None, help="with a hub dataset id: the branch, tag or commit to read")
    p.add_argument("--benchmark", default=None, choices=["builtin", "mllmu", "clear", "umu"],
                   help="which benchmark --data holds (default: detected from its configs and columns)")


def _eval_options(p: argparse.ArgumentParser, *, caps: bool = True) -> None:
    """How a model is scored: the same options on every command that evaluates."""
    p.add_argument("--protocol", default="loglik", choices=["loglik", "official"],
                   help="loglik: MCQ by the likeliest option text (unsee's reading); official: the benchmark's "
                        "own prompts, decoding, answer extraction and metrics")
    if caps:
        p.add_argument("--max-items", type=int, default=None,
                       help="score at most N items of each task in each group (default: all)")
        p.add_argument("--max-new-tokens", type=int, default=None,
                       help="reply budget of every task (default: the benchmark's own)")


def _seeds_option(p: argparse.ArgumentParser) -> None:
    """Several unlearning seeds, so that a figure comes with its spread."""
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="run N unlearning seeds (--seed .. --seed+N-1) and report their mean, sd, min and max")


def _audit_set_option(p: argparse.ArgumentParser) -> None:
    """The audits' own options: spelt the same on every command that audits."""
    p.add_argument("--audit-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the audits (repeatable), e.g. --audit-set relearn_steps=50")


def _reference_options(p: argparse.ArgumentParser) -> None:
    """Where the retrained reference the audits are read against comes from."""
    given = p.add_mutually_exclusive_group()
    given.add_argument("--reference", action="append", default=None, metavar="DIR", help="the retrained reference "
                       "(unsee retrain's output) to attack beside the model; repeat it for several draws (unsee "
                       "retrain --seed N), read as one; default: the one unsee retrain cached for the base model")
    given.add_argument("--reference-draws", type=int, default=None, metavar="N", help="the first N draws of the "
                       "reference unsee retrain cached for the base model (its seed S, then S+1 ..), read as one")
    p.add_argument("--cache-dir", default=None, help="the stage cache (default: ~/.cache/unsee)")


def _world(a: argparse.Namespace) -> None:
    out = _lazy().build_world(a.out, seed=a.seed, config=a.config, overrides=a.overrides, overwrite=a.overwrite,
                           example=not a.no_example)
    example = "" if a.no_example else f"; an example removal request: {out}/request/request.yaml"
    print(f"world written to {out}{example}")


def _model_init(a: argparse.Namespace) -> None:
    if a.arch is not None and a.full_size:
        raise ConfigError("--full-size builds a --shape model at its real sizes; a tiny --arch model has one size")
    if a.arch is None:
        if a.world is not None:  # a hub shape tests structure and cost: its small tokenizer is trained on no world
            raise ConfigError("--world trains a tiny model's tokenizer (--arch); a --shape model, built to test "
                              "structure and cost, has a small local tokenizer of its own")
        out = _lazy().init_shaped(a.shape, a.out, tiny=not a.full_size, seed=a.seed, overwrite=a.overwrite)
        print(f"{a.shape} ({'full size' if a.full_size else 'tiny'}, random weights) written to {out}")
    else:
        out = _lazy().init_model(a.arch, a.out, world=a.world, seed=a.seed, overwrite=a.overwrite)
        print(f"{a.arch} written to {out}")


def _say(message: str) -> None:
    """What a command wrote: once, by the first process of a launch (the others only trained)."""
    if _first_of_launch():
        print(message)


def _finetune(a: argparse.Namespace) -> None:
    out = _lazy().finetune(a.model, a.data, a.out, config=a.config, overrides=a.overrides, seed=a.seed,
                        overwrite=a.overwrite, cache_dir=a.cache_dir, benchmark=a.benchmark, revision=a.revision)
    _say(f"vanilla model written to {out}")


def _retrain(a: argparse.Namespace) -> None:
    out = _lazy().retrain(a.model, a.data, a.out, forget=a.forget, overwrite=a.overwrite, cache_dir=a.cache_dir,
                       benchmark=a.benchmark, revision=a.revision, seed=a.seed)
    _say(f"retrained reference (without {a.forget}'s photos) written to {out}")


def _unlearn(a: argparse.Namespace) -> None:
    out = _lazy().unlearn(
        a.method, a.model, a.data, a.out, forget=a.forget, requests=a.requests, config=a.config,
        overrides=a.overrides, seed=a.seed, overwrite=a.overwrite, allow_pickle=a.allow_pickle,
        audit=a.audit, audit_overrides=a.audit_set, dtype=a.dtype, report_to=a.report_to or "",
        benchmark=a.benchmark, revision=a.revision,
        protocol=a.protocol, max_items=a.max_items, max_new_tokens=a.max_new_tokens,
        seeds=a.seeds, reference=a.reference, cache_dir=a.cache_dir, neutral=a.neutral,
    )
    _say(f"unlearned output written to {out}")


def _tune(a: argparse.Namespace) -> None:
    out = _lazy().tune(a.method, a.model, a.data, a.out, on=a.on, grid=a.grid, exclude=_names(a.exclude),
                    config=a.config, overrides=a.overrides, seed=a.seed, seeds=a.seeds, overwrite=a.overwrite,
                    allow_pickle=a.allow_pickle, dtype=a.dtype, benchmark=a.benchmark, revision=a.revision,
                    protocol=a.protocol, max_items=a.max_items, max_new_tokens=a.max_new_tokens, neutral=a.neutral,
                    attacks=_names(a.attacks), audit_overrides=a.audit_set, reference=a.reference,
                    cache_dir=a.cache_dir)
    if _first_of_launch():  # the other processes of a launch only trained
        print(_lazy("unsee.tune").summary(json.loads((out / "tune.json").read_text())))
        print(f"the pick and every setting's figures written to {out}; unlearn with --config "
              f"{out / (a.method + '.yaml')}")


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def _forget(a: argparse.Namespace) -> None:
    out = _lazy().forget(a.model, a.request, a.out, requests=a.requests, method=a.method, config=a.config,
                      overrides=a.overrides, seed=a.seed, overwrite=a.overwrite, audit=not a.no_audit,
                      audit_overrides=a.audit_set, hide_names=a.hide_names, allow_pickle=a.allow_pickle,
                      dtype=a.dtype)
    _say(f"unlearned model and evidence written to {out} (report.md, evidence.html)")


def _eval(a: argparse.Namespace) -> None:
    res = _lazy().evaluate(a.model, a.data, a.out, forget=a.forget, steering=a.steering, overwrite=a.overwrite,
                        method=a.method, seed=a.seed, allow_pickle=a.allow_pickle, max_items=a.max_items,
                        dtype=a.dtype, benchmark=a.benchmark, revision=a.revision, protocol=a.protocol,
                        max_new_tokens=a.max_new_tokens)
    try:
        _lazy().print_results(res)
    except KeyboardInterrupt as e:  # the results are written before they are shown
        e.add_note(f"the results are written to {a.out}")
        raise


def _report(a: argparse.Namespace) -> None:
    out = _lazy().report(a.results, a.out, overwrite=a.overwrite)
    print(f"report written to {out}")


def _demo(a: argparse.Namespace) -> None:
    _lazy().demo(a.out, methods=a.methods, quick=a.quick, arch=a.arch, seed=a.seed, overwrite=a.overwrite,
              cache_dir=a.cache_dir, config=a.config, audit=not a.no_audit, protocol=a.protocol, seeds=a.seeds)


def _attack(a: argparse.Namespace) -> None:
    res = _lazy().attack(a.kind, a.model, a.data, a.out, forget=a.forget, vanilla=a.vanilla, steering=a.steering,
                      method=a.method, seed=a.seed, overrides=[*a.overrides, *a.audit_set], overwrite=a.overwrite,
                      allow_pickle=a.allow_pickle, dtype=a.dtype, benchmark=a.benchmark, revision=a.revision,
                      reference=a.reference, cache_dir=a.cache_dir)
    print(json.dumps(res, indent=2))


def method_options(method: str) -> str:
    """The options of ``method`` and those every training method shares, with the values a run starts from.

    What ``unsee unlearn --method X --help`` adds to the help: a method's keys differ from one
    method to the next, so argparse alone cannot list them.
    """
    import dataclasses

    tcfg, mcfg, cls = _lazy().method_configs(method, None, ())
    own = describe(type(mcfg), dataclasses.asdict(mcfg)) or "  (none)"
    text = (f"options of {method} (key=value; 'shipped': the value of its shipped config, which a run without "
            f"--config starts from):\n{own}\n\ntraining options every training method shares (the eraser, which "
            f"trains nothing, takes only the bookkeeping ones: progress, report_to, logging_dir and the checkpoint "
            f"folders, which it has no use for):\n"
            f"{describe(type(tcfg), dataclasses.asdict(tcfg), {'scope': getattr(cls, 'default_scope', 'full')})}")
    return _wrapped(text)


def _wrapped(text: str) -> str:
    """Help lines cut at 100 columns, each option's continuation indented under it."""
    return "\n".join(textwrap.fill(line, 100, subsequent_indent="      ") if line else line
                     for line in text.splitlines())


def attack_options() -> str:
    """What ``unsee attack --help`` ends with: every option of the audits, with its default."""
    return _wrapped(f"options of the attacks (key=value):\n{describe(_lazy('unsee.audit.common').AttackConfig)}")


def _asks_help(argv: Sequence[str], *commands: str) -> bool:
    """Whether the command line asks for the help of one of ``commands``."""
    return bool(argv) and argv[0] in commands and bool({"-h", "--help"} & set(argv))


def _asked_method(argv: Sequence[str]) -> str | None:
    """The ``--method`` of an ``unlearn``, ``forget`` or ``tune`` command line that asks for help."""
    if not _asks_help(argv, "unlearn", "forget", "tune"):
        return None
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return None


METHOD_HELP = "unsee unlearn --method NAME --help lists the options of the method NAME."


def parser(method_help: str | None = None, attack_help: str | None = None) -> argparse.ArgumentParser:
    """The command line; ``method_help`` (a method's options) ends the help of unlearn and forget, and
    ``attack_help`` (:func:`attack_options`) that of attack."""
    p = Parser(prog="unsee", description="Make a multimodal LLM forget what it recognises of a person from images, "
               "and prove it.")
    p.add_argument("--version", action="version", version=f"unsee {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = _command(sub, "world", "write the built-in benchmark (MLLMU-Bench layout)", _world, required=["out"],
                 overrides="n_people=40")
    w.add_argument("--config", default="default", help="a YAML/JSON file or a shipped name: quick, default")
    w.add_argument("--no-example", action="store_true", help="do not write the example removal request (DIR/request/)")

    m = sub.add_parser("model", help="model utilities")
    msub = m.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)  # `unsee model` alone: usage
    mi = _command(msub, "init", "build an offline tiny model from the real HF classes", _model_init)
    which = mi.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", help="tiny-llava, tiny-qwen2-vl or tiny-qwen2.5-vl")
    which.add_argument("--shape", help="a hub checkpoint's exact structure with random weights: llava-1.5-7b, "
                       "llava-1.5-13b, qwen2-vl-7b, qwen2.5-vl-7b (tiny widths unless --full-size)")
    mi.add_argument("--full-size", action="store_true", help="with --shape: the real sizes (7B: ~14 GB in bf16)")
    mi.add_argument("--out", required=True)
    mi.add_argument("--world", default=None, help="train the tokenizer on this world's text")

    f = _command(sub, "finetune", "the vanilla model: a model taught the benchmark's fictitious people", _finetune,
                 required=["model", "data", "out"], overrides="batch_size=8")
    f.add_argument("--config", default=None, help="recipe file or shipped name: default, quick (built-in world); "
                   "mllmu, clear, umu (public benchmarks; default: the detected benchmark's own)")
    _data_options(f)
    f.add_argument("--cache-dir", default=None, help="stage cache (default: ~/.cache/unsee)")

    rt = _command(sub, "retrain", "the vanilla model's fine-tune again without the forget people's photos: "
                  "the reference an unlearned model is judged against", _retrain,
                  required=["model", "data", "out"], seed=False)
    rt.add_argument("--forget", default="forget_10")
    rt.add_argument("--seed", type=seed_type, default=None,
                    help="draw the retrained stages with this seed (default: the vanilla model's): a second "
                    "reference, to see how far never having seen the photos moves with the draw alone")
    _data_options(rt)
    rt.add_argument("--cache-dir", default=None, help="the stage cache unsee finetune used (default: ~/.cache/unsee)")

    u = _command(sub, "unlearn", "run an unlearning method", _unlearn, required=["method", "model", "data", "out"],
                 overrides="lr=1e-4")
    u.add_argument("--forget", default="forget_10", help="the forget split (ignored when --data is a request file)")
    u.add_argument("--requests", default=None,
                   help="continual: forget_r1,forget_r2,... or a file listing them; finished requests wait in "
                   "OUT.partial, and the same command goes on after a failure")
    u.add_argument("--config", default=None)
    _load_options(u)
    _data_options(u)
    u.add_argument("--neutral", default=None, metavar="DIR",
                   help="photos of never-taught people (a folder, searched recursively) for cvf_ncu, cvf_only, vkd "
                   "and the eraser on a benchmark that ships none; on the built-in world they replace its own")
    _eval_options(u)
    u.add_argument("--audit", action="store_true", help="run the robustness audits on the result")
    _audit_set_option(u)
    _seeds_option(u)
    _reference_options(u)
    u.add_argument("--report-to", default=None, metavar="TRACKER",
                   help="also send the training losses to tensorboard or wandb (comma-separated; logs in OUT/logs)")
    u.epilog = method_help or METHOD_HELP
    u.formatter_class = argparse.RawDescriptionHelpFormatter

    t = _command(sub, "tune", "pick a method's setting on a validation request of other people", _tune,
                 required=["method", "model", "data", "out"], overrides="lr=1e-4")
    t.add_argument("--on", default=None, metavar="SPLIT", help="the validation request: a split of people other "
                   "than the request to answer (the built-in world's val_forget_10); none when --data is a request")
    t.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values to try (repeatable: every combination); default: lr at 1, 0.3 and 3 times the rate")
    t.add_argument("--exclude", default=None, metavar="SPLIT,...", help="the requests the pick is for (splits or "
                   "request files): their people must not be in --on, and leave its retained people")
    t.add_argument("--config", default=None)
    _load_options(t)
    _data_options(t)
    t.add_argument("--neutral", default=None, metavar="DIR", help="photos of never-taught people, as for unlearn")
    _eval_options(t)
    _seeds_option(t)
    t.add_argument("--attacks", default=None, metavar="KIND,...", help="audits run on every run (relearn, pgd, "
                   "probe, shift, quant, mia), their figures beside each setting's score; a setting whose audits "
                   "fail (against the reference, where there is one) ranks below those whose audits hold")
    _audit_set_option(t)
    _reference_options(t)
    t.epilog = method_help or METHOD_HELP.replace("unlearn", "tune")
    t.formatter_class = argparse.RawDescriptionHelpFormatter

    fg = _command(sub, "forget", "honour a removal request made of your own photos, with the evidence", _forget,
                  required=["model", "out"], overrides="lr=1e-4")
    which_req = fg.add_mutually_exclusive_group(required=True)
    which_req.add_argument("--request", help="the request file (YAML or JSON; docs/requests.md)")
    which_req.add_argument("--requests", help="several request files, run in this order (continual): A,B,...; finished "
                           "requests wait in OUT.partial, and the same command goes on after a failure")
    fg.add_argument("--method", default="cvf_ncu")
    fg.add_argument("--config", default=None)
    fg.add_argument("--hide-names", action="store_true",
                    help="the model card lists salted hashes of the names; the salt goes to OUT/names-salt.txt")
    fg.add_argument("--no-audit", action="store_true", help="skip the robustness audits")
    _audit_set_option(fg)
    _load_options(fg)
    fg.epilog = method_help or METHOD_HELP.replace("unlearn", "forget")
    fg.formatter_class = argparse.RawDescriptionHelpFormatter

    e = _command(sub, "eval", "evaluate a model on a benchmark", _eval, required=["model", "data", "out"],
                 overwrite="replace the file at --out, whoever wrote it")
    e.add_argument("--forget", default="forget_10")
    e.add_argument("--steering", default=None, help="apply an MLLMEraser steering file")
    e.add_argument("--method", default=None,
                   help="the name this run is reported under (default: vanilla; eraser with --steering; "
                        "on an unlearned checkpoint, the method its model card names)")
    _eval_options(e)
    _load_options(e)
    _data_options(e)

    r = _command(sub, "report", "report.md and tradeoff.png from results files", _report, required=["out"],
                 seed=False, overwrite="write over report.md and the plots in --out, whatever else it holds")
    r.add_argument("results", nargs="+", help="results.json files, or the folders unsee commands wrote them into")

    d = _command(sub, "demo", "the whole story, end to end, offline", _demo, required=["out"])
    d.add_argument("--methods", default="cvf_ncu,graddiff", help="comma list, or all")
    d.add_argument("--quick", action="store_true", help="the quick world and recipe")
    d.add_argument("--arch", default="tiny-llava")
    d.add_argument("--config", default=None, help="demo config file (overrides quick/default)")
    d.add_argument("--cache-dir", default=None)
    d.add_argument("--no-audit", action="store_true")
    _eval_options(d, caps=False)
    _seeds_option(d)

    at = _command(sub, "attack", "robustness audits on an unlearned model; figures go into a results.json",
                  _attack, required=["model", "data", "out"])
    at.add_argument("kind", choices=["relearn", "pgd", "probe", "shift", "quant", "mia", "all"])
    _add_overrides(at, "relearn_steps=20 pgd_steps=10")  # after the kind: positionals match in the order added
    _audit_set_option(at)  # the spelling of unlearn --audit, so the same options carry from one to the other
    at.epilog = attack_help or "unsee attack --help lists the options of the attacks."
    at.formatter_class = argparse.RawDescriptionHelpFormatter
    at.add_argument("--forget", default=None,
                    help="the forget split (default: the run's own when --out holds one, else forget_10; none "
                    "with a request file, which is its own)")
    at.add_argument("--vanilla", default=None, help="the model before unlearning (for the probe's baseline)")
    at.add_argument("--steering", default=None, help="attack the model with this MLLMEraser steering file on")
    at.add_argument("--method", default="attacked", help="the run's name when --out is a new file")
    _reference_options(at)
    _load_options(at)
    _data_options(at)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plain_text_where_asked()
    try:
        numerics.check()
        method = _asked_method(argv)
        p = parser(method_options(method) if method else None, attack_options() if _asks_help(argv, "attack") else None)
    except UnseeError as e:
        print(f"unsee: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    # key=value overrides may also come after options (``unsee attack pgd --model M pgd_steps=5``),
    # where argparse no longer matches positionals
    args, extra = p.parse_known_args(argv)
    expand_home(args)
    if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace], None] | None = getattr(args, "func", None)
    if func is None:
        p.print_help()
        return 0
    if args.command in ALONE and not _first_of_launch():
        return 0
    stopping = stop_on_term()
    try:
        if getattr(args, "reference_draws", None) is not None:  # asked for by count: found in the cache
            args.reference = _lazy("unsee.unlearning").CachedDraws(args.reference_draws)
        func(args)
    except UnseeError as e:
        print(f"unsee: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        # the notes of the work that was stopped say what it keeps; without any, the command's own line
        kept = [n.rstrip(".") for n in getattr(e, "__notes__", [])] or [INTERRUPTED.get(args.command, NOTHING_WRITTEN)]
        how = f"stopped ({signal.Signals(e.signum).name})" if isinstance(e, Stopped) else "interrupted"
        print(f"unsee: {how}; {'; '.join(kept)}", file=sys.stderr)
        return 128 + e.signum if isinstance(e, Stopped) else 130
    except BrokenPipeError:  # the reader of the output went away (`| head`): no traceback over its own output
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + getattr(signal, "SIGPIPE", 13)  # what a shell reports for a writer the pipe stopped
    finally:
        if stopping is not None:
            signal.signal(signal.SIGTERM, stopping)
    return 0


# Commands with nothing to share out under `accelerate launch`: the first process does the whole
# work, and the others would only repeat it and race it to the same output.
ALONE = frozenset({"world", "model", "eval", "report", "attack"})


def _first_of_launch() -> bool:
    """True outside a multi-process launch (read from the environment: no process group) and in its first process."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or _lazy("unsee.engine.distributed").is_main_process()


# What an interrupted command leaves behind. Outputs land only when a command completes
# (unsee.io.atomic_dir); the training stages of the vanilla model and the reference are cached
# as they finish, and the stage in progress keeps its last checkpoint in the cache.
NOTHING_WRITTEN = "nothing was written (outputs appear only when a command completes)"
STAGES_KEPT = ("nothing was written to --out; the training stages that finished are kept in the stage cache, "
               "and the same command continues from them")
INTERRUPTED = {"finetune": STAGES_KEPT, "retrain": STAGES_KEPT, "demo": STAGES_KEPT}


if __name__ == "__main__":
    sys.exit(main())
