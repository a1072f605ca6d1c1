"""``unsee demo``: the whole story on a laptop CPU, offline.

A world is built, a tiny model learns it (cached), a removal request is honoured by each
chosen method, and every model is measured the same way. The outputs are what a person
reads: a table, a trade-off plot, example answers before and after, and a model card on
every checkpoint. The demo prints what the methods truly achieve; it asserts nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from unsee.audit.attacks import ATTACKS
from unsee.config import check_seeds, load_config, opt, read_config_file, to_dict
from unsee.data.world import cached_world
from unsee.engine.distributed import is_main_process, wait_for_everyone
from unsee.errors import ConfigError, did_you_mean
from unsee.eval.evaluator import answers
from unsee.eval.results import new_results, seed_summary, write_results
from unsee.finetune import (
    VANILLA_FILE,
    FinetuneConfig,
    cache_root,
    finetune,
    train_once,
    vanilla_stages,
    world_fingerprint,
)
from unsee.io import atomic_dir, atomic_write_text, check_output_dir, content_hash
from unsee.methods import ALL, method_class
from unsee.models import load_adapter
from unsee.models.tiny import cached_init, check_arch
from unsee.report import print_results, write_report
from unsee.runs import (
    DEMO_FILE,
    check_forget,
    eval_options,
    evaluation,
    load_suite,
    make_run,
    method_configs,
    unlearn_adapter,
)
from unsee.unlearning import audit_config, find_reference, unlearn_and_save

console = Console()


@dataclass
class DemoConfig:
    world: str = opt("default", "world config: a file or a shipped name (quick, default)")
    world_overrides: list[str] = opt([], "key=value overrides of the world config")
    recipe: str = opt("default", "finetune recipe: a file or a shipped name (quick, default)")
    recipe_overrides: list[str] = opt([], "key=value overrides of the recipe")
    forget: str = opt("forget_10", "the removal request")
    method_overrides: dict = opt({}, "method -> list of key=value overrides")
    max_gen_items: int = opt(24, "cloze/generation items per group in the evaluation (0: all)")
    max_items: int = opt(0, "MCQ items per group (0: all)")
    attacks: list[str] = opt(["relearn"], "robustness audits run after unlearning (relearn, pgd, shift, probe, quant, "
                        "mia)")
    audit_methods: list[str] = opt(["cvf_ncu"], "the methods whose results are audited (all: every method)")
    attack_overrides: list[str] = opt([], "key=value overrides of the audits' AttackConfig")

    def validate(self) -> None:
        """Read when the config loads, before the world and the vanilla model are built: a misspelt attack
        stopped the demo only after the first method's run, and a misspelt method here was read as none."""
        if unknown := sorted(set(self.attacks) - set(ATTACKS)):
            raise ConfigError(f"attacks: unknown attack(s) {unknown}{did_you_mean(unknown, ATTACKS)}; "
                              f"choose from {', '.join(ATTACKS)}")
        for key, named, extra in (("audit_methods", self.audit_methods, {"all"}),
                                  ("method_overrides", list(self.method_overrides), set())):
            if unknown := sorted(set(named) - set(ALL) - extra):
                raise ConfigError(f"{key}: unknown method(s) {unknown}{did_you_mean(unknown, ALL)}; "
                                  f"choose from {', '.join(sorted(ALL))}")
        for key, given in (("world_overrides", self.world_overrides), ("recipe_overrides", self.recipe_overrides)):
            if any(o.partition("=")[0].strip() == "seed" for o in given):
                raise ConfigError(f"{key}: the demo's --seed sets the world's and the recipe's seed; give it there")


def prepare_init(cfg: DemoConfig, arch: str, seed: int, cache: Path) -> tuple[Path, Path, str]:
    """World, untrained tiny model (what stage 1 starts from) and the world's content hash; the
    two directories are built once and reused from the cache."""

    def build() -> tuple[Path, Path, str]:
        world = cached_world(cache, cfg.world, cfg.world_overrides, seed,
                             on_build=lambda p: console.print(f"[bold]1/4[/] building the world → {p}"))
        wfp = world_fingerprint(world)
        return world, cached_init(cache, arch, world, seed, wfp), wfp

    # under `accelerate launch` the first process builds them and the others then find them cached
    built = build() if is_main_process() else None
    wait_for_everyone()
    return built or build()


def prepare_vanilla(cfg: DemoConfig, arch: str, seed: int, cache: Path) -> tuple[Path, Path]:
    """World, tiny model and vanilla model, each built once and reused from the cache.

    The vanilla model's entry is keyed on its last stage's key (:func:`unsee.finetune.vanilla_stages`),
    so it is trained again exactly when a stage would be."""

    world, init, wfp = prepare_init(cfg, arch, seed, cache)
    recipe_cfg = load_config(FinetuneConfig, cfg.recipe, cfg.recipe_overrides, kind="finetune")
    recipe = to_dict(recipe_cfg)
    recipe_cfg.seed = seed
    stage3 = vanilla_stages(init, world, recipe_cfg, cache).stage3
    vanilla = cache / f"vanilla-{arch}-{content_hash(wfp, recipe, seed, stage3.name)}"

    def teach() -> None:  # every process of a launch trains it, the first writes it
        console.print("[bold]2/4[/] teaching the tiny model the world (cached after the first run)")
        finetune(init, world, vanilla, config=cfg.recipe, overrides=cfg.recipe_overrides, seed=seed,
                 overwrite=True, cache_dir=cache)

    if not train_once(vanilla, teach, done=lambda p: (p / VANILLA_FILE).exists()):
        console.print(f"[bold]2/4[/] vanilla model from the cache: {vanilla}")
    return world, vanilla


def run_demo(out: str | Path, *, methods: str | list[str] = "cvf_ncu,graddiff", quick: bool = False,
             arch: str = "tiny-llava", seed: int = 0, overwrite: bool = False, cache_dir: str | Path | None = None,
             config: str | Path | dict | None = None, audit: bool = True, protocol: str = "loglik",
             seeds: int = 1) -> Path:
    """The demo; every model is scored under ``protocol`` (``loglik`` or ``official``). With ``seeds``
    N > 1 every method runs with unlearning seeds ``seed`` .. ``seed + N - 1`` (the world, the vanilla
    model and the audits keep ``seed``), and the report gives their spread. Audits set each figure
    beside the retrained reference's when ``unsee retrain`` has cached one."""

    out = Path(out)
    check_output_dir(out, overwrite=overwrite)
    eval_kw: dict[str, Any] = eval_options(protocol=protocol)
    base = {"world": "quick", "recipe": "quick"} if quick else {}
    if isinstance(config, dict):
        base.update(config)
        cfg = load_config(DemoConfig, base)
    elif config is not None:
        cfg = load_config(DemoConfig, {**base, **read_config_file(config, "demo")})
    else:
        cfg = load_config(DemoConfig, base)
    names = list(ALL) if methods == "all" else (methods.split(",") if isinstance(methods, str) else list(methods))
    for m in dict.fromkeys([*names, *cfg.method_overrides]):  # an override of a method not run is read too
        method_configs(m, None, cfg.method_overrides.get(m, []))
    check_seeds(seed, seeds)
    audit_config(cfg.attack_overrides)  # before the world and the vanilla model are built, audited or not
    check_arch(arch)
    load_config(FinetuneConfig, cfg.recipe, cfg.recipe_overrides, kind="finetune")
    cache = cache_root(cache_dir)
    world, vanilla = prepare_vanilla(cfg, arch, seed, cache)
    reference = find_reference(None, vanilla, world, cfg.forget, cache) if audit else None
    suite = load_suite(world, cfg.forget, seed=seed)
    check_forget(suite)
    eval_kw.update(max_gen_items=cfg.max_gen_items or None, max_items=cfg.max_items or None)
    if not is_main_process():
        # Under `accelerate launch` every process trains its share of each method; the first alone
        # evaluates, audits and writes (as `unsee unlearn` does).
        for m in names:
            if method_class(m).trains_weights:
                for s in range(seed, seed + seeds):
                    unlearn_adapter(m, load_adapter(vanilla), suite, overrides=cfg.method_overrides.get(m, []), seed=s)
        return out

    with atomic_dir(out, overwrite=overwrite) as tmp:
        console.print("[bold]3/4[/] measuring the vanilla model")
        base_adapter = load_adapter(vanilla)
        v_metrics = evaluation(base_adapter, suite, **eval_kw)
        runs = [make_run("vanilla", v_metrics, model=arch, suite=suite, forget=cfg.forget, seed=seed)]
        shown = _example_items(suite)
        before = _answers(base_adapter, shown)
        after: dict[str, list[str]] = {}
        for m in names:
            for s in range(seed, seed + seeds):
                console.print(f"[bold]4/4[/] unlearning with [cyan]{m}[/]" + (f", seed {s}" if seeds > 1 else ""))
                where = tmp / m if seeds == 1 else tmp / m / f"seed-{s}"
                adapter = load_adapter(vanilla)
                run, artifact = unlearn_and_save(
                    m, adapter, suite, steering_dir=where, model_dir=where, model=arch, base_model=str(vanilla),
                    base_hash=base_adapter.fingerprint(), forget=cfg.forget, seed=s,
                    overrides=cfg.method_overrides.get(m, []), vanilla=runs[0], eval_kw=eval_kw,
                    audit=audit and bool(cfg.attacks) and (m in cfg.audit_methods or "all" in cfg.audit_methods),
                    audit_overrides=cfg.attack_overrides, audit_kinds=cfg.attacks, audit_seed=seed, data=world,
                    reference=reference, cache_dir=cache)
                runs.append(run)
                if s == seed:
                    after[m] = _answers(adapter, shown, artifact)
        results = new_results(runs)
        if seeds > 1:
            results["seeds"] = seed_summary(runs)
        write_results(tmp / "results.json", results)
        write_report([tmp / "results.json"], tmp, overwrite=True)
        _write_examples(tmp, shown, before, after, forgotten=set(suite.forget_entities))
        (tmp / DEMO_FILE).write_text(json.dumps({"config": to_dict(cfg), "arch": arch, "seed": seed, "seeds": seeds,
                                                   "reference": None if reference is None else str(reference),
                                                   "world": str(world), "vanilla": str(vanilla)}, indent=2))
    print_results(results, console)
    console.print(f"report: {out / 'report.md'}  plot: {out / 'tradeoff.png'}  examples: {out / 'examples.md'}")
    return out


def _example_items(suite: Any) -> list[Any]:
    """Three 'who is this?' images of a forgotten person and three of a retained one."""
    picked = []
    for group, entities in (("forget", suite.forget_entities), ("retain", suite.retain_entities)):
        ent = sorted(entities)[0] if entities else None
        items = [e for e in suite.groups.get(group, []) if e.entity == ent and e.has_image and e.task == "mcq"]
        test = [e for e in suite.groups.get(f"{group}_test", []) if e.entity == ent and e.has_image
                and e.task == "mcq"]
        picked += (items[:1] + test[:2] + items[1:])[:3]
    return picked


def _answers(adapter: Any, items: list, artifact: Any = None) -> list[str]:
    """What the model says, as deployed: with the unlearning's artifact applied."""
    from contextlib import nullcontext

    with nullcontext() if artifact is None else artifact.applied(adapter):
        return answers(adapter, items)


def _write_examples(out: Path, items: list, before: list[str], after: dict[str, list[str]], *,
                    forgotten: set[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# What the model says, before and after", "",
             "| image | person | question | truth | vanilla | " + " | ".join(after) + " |",
             "|---|---|---|---|---|" + "---|" * len(after)]
    for i, e in enumerate(items):
        lines.append(f"| {i + 1} | {e.entity} | {e.question} | {e.answer} | {before[i]} | "
                     + " | ".join(after[m][i] for m in after) + " |")
    atomic_write_text(out / "examples.md", "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, max(1, len(items)), figsize=(3 * max(1, len(items)), 3.6))
    axes = axes if hasattr(axes, "__len__") else [axes]
    for ax, e, b, i in zip(axes, items, before, range(len(items)), strict=False):
        ax.imshow(e.pil_image())
        ax.axis("off")
        txt = f"{e.entity} ({'forget' if e.entity in forgotten else 'retain'})\ntruth: {e.answer}\nbefore: {b}"
        for m in after:
            txt += f"\n{m}: {after[m][i]}"
        ax.set_title(txt, fontsize=7, loc="left")
    fig.tight_layout()
    tmp = out / ".examples.png.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(out / "examples.png")
