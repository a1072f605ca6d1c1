"""The ``unsee`` command line: a thin layer over the Python API, one subcommand per function.

Every subcommand parses its options, calls the function of the same name in
:mod:`unsee.api`, and turns an :class:`~unsee.errors.UnseeError` into a one-line message
and exit code 2 (no traceback for a user's mistake).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from unsee import __version__
from unsee.errors import UnseeError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace existing results in the output")


def _world(a: argparse.Namespace) -> None:
    from unsee import api

    out = api.build_world(a.out, seed=a.seed, config=a.config, overrides=a.overrides, overwrite=a.overwrite)
    print(f"world written to {out}")


def _model_init(a: argparse.Namespace) -> None:
    from unsee import api

    out = api.init_model(a.arch, a.out, world=a.world, seed=a.seed, overwrite=a.overwrite)
    print(f"{a.arch} written to {out}")


def _finetune(a: argparse.Namespace) -> None:
    from unsee import api

    out = api.finetune(a.model, a.data, a.out, config=a.config, overrides=a.overrides, seed=a.seed,
                       overwrite=a.overwrite, cache_dir=a.cache_dir)
    print(f"vanilla model written to {out}")


def _unlearn(a: argparse.Namespace) -> None:
    from unsee import api

    out = api.unlearn(
        a.method, a.model, a.data, a.out, forget=a.forget, requests=a.requests, config=a.config,
        overrides=a.overrides, seed=a.seed, overwrite=a.overwrite, allow_pickle=a.allow_pickle,
        audit=a.audit,
    )
    print(f"unlearned output written to {out}")


def _eval(a: argparse.Namespace) -> None:
    from unsee import api

    res = api.evaluate(a.model, a.data, a.out, forget=a.forget, steering=a.steering, overwrite=a.overwrite,
                       method=a.method, seed=a.seed, allow_pickle=a.allow_pickle, max_items=a.max_items)
    api.print_results(res)


def _report(a: argparse.Namespace) -> None:
    from unsee import api

    out = api.report(a.results, a.out, overwrite=a.overwrite)
    print(f"report written to {out}")


def _demo(a: argparse.Namespace) -> None:
    from unsee import api

    api.demo(a.out, methods=a.methods, quick=a.quick, arch=a.arch, seed=a.seed, overwrite=a.overwrite,
             cache_dir=a.cache_dir, config=a.config, audit=not a.no_audit)


def _attack(a: argparse.Namespace) -> None:
    from unsee import api

    res = api.attack(a.kind, a.model, a.data, a.out, forget=a.forget, vanilla=a.vanilla, seed=a.seed,
                     overrides=a.overrides, overwrite=a.overwrite)
    print(res)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unsee", description="Make a multimodal LLM forget what it recognises "
                                "of a person from images, and prove it.")
    p.add_argument("--version", action="version", version=f"unsee {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    w = sub.add_parser("world", help="write the built-in benchmark (MLLMU-Bench layout)")
    w.add_argument("--out", required=True)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--config", default="default", help="a YAML/JSON file or a shipped name: quick, default")
    w.add_argument("overrides", nargs="*", metavar="key=value")
    _add_common(w)
    w.set_defaults(func=_world)

    m = sub.add_parser("model", help="model utilities")
    msub = m.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    mi = msub.add_parser("init", help="build an offline tiny model from the real HF classes")
    mi.add_argument("--arch", required=True, help="tiny-llava, tiny-qwen2-vl or tiny-qwen2.5-vl")
    mi.add_argument("--out", required=True)
    mi.add_argument("--world", default=None, help="train the tokenizer on this world's text")
    mi.add_argument("--seed", type=int, default=0)
    _add_common(mi)
    mi.set_defaults(func=_model_init)

    f = sub.add_parser("finetune", help="teach a tiny model the built-in world (the vanilla model)")
    f.add_argument("--model", required=True)
    f.add_argument("--data", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--config", default="default", help="recipe file or shipped name: quick, default")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--cache-dir", default=None, help="stage cache (default: ~/.cache/unsee)")
    f.add_argument("overrides", nargs="*", metavar="key=value")
    _add_common(f)
    f.set_defaults(func=_finetune)

    u = sub.add_parser("unlearn", help="run an unlearning method")
    u.add_argument("--method", required=True)
    u.add_argument("--model", required=True)
    u.add_argument("--data", required=True)
    u.add_argument("--out", required=True)
    u.add_argument("--forget", default="forget_10")
    u.add_argument("--requests", default=None, help="continual: forget_r1,forget_r2,... or a file listing them")
    u.add_argument("--config", default=None)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--allow-pickle", action="store_true", help="allow loading pickle (.bin) weights")
    u.add_argument("--audit", action="store_true", help="run the robustness audits on the result")
    u.add_argument("overrides", nargs="*", metavar="key=value")
    _add_common(u)
    u.set_defaults(func=_unlearn)

    e = sub.add_parser("eval", help="evaluate a model on a benchmark")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--forget", default="forget_10")
    e.add_argument("--steering", default=None, help="apply an MLLMEraser steering file")
    e.add_argument("--method", default="vanilla", help="the name this run is reported under")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-items", type=int, default=None, help="cap each group (for quick checks)")
    e.add_argument("--allow-pickle", action="store_true")
    _add_common(e)
    e.set_defaults(func=_eval)

    r = sub.add_parser("report", help="report.md and tradeoff.png from results files")
    r.add_argument("results", nargs="+")
    r.add_argument("--out", required=True)
    _add_common(r)
    r.set_defaults(func=_report)

    d = sub.add_parser("demo", help="the whole story, end to end, offline")
    d.add_argument("--out", required=True)
    d.add_argument("--methods", default="cvf_ncu,graddiff", help="comma list, or all")
    d.add_argument("--quick", action="store_true", help="the quick world and recipe")
    d.add_argument("--arch", default="tiny-llava")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--config", default=None, help="demo config file (overrides quick/default)")
    d.add_argument("--cache-dir", default=None)
    d.add_argument("--no-audit", action="store_true")
    _add_common(d)
    d.set_defaults(func=_demo)

    at = sub.add_parser("attack", help="robustness audits on an unlearned model")
    at.add_argument("kind", choices=["relearn", "pgd", "probe", "shift"])
    at.add_argument("--model", required=True)
    at.add_argument("--data", required=True)
    at.add_argument("--out", required=True)
    at.add_argument("--forget", default="forget_10")
    at.add_argument("--vanilla", default=None, help="the model before unlearning (for the probe's baseline)")
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("overrides", nargs="*", metavar="key=value")
    _add_common(at)
    at.set_defaults(func=_attack)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    func: Callable[[argparse.Namespace], None] | None = getattr(args, "func", None)
    if func is None:
        p.print_help()
        return 0
    try:
        func(args)
    except UnseeError as e:
        print(f"unsee: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unsee: interrupted; finished stages are cached, run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
