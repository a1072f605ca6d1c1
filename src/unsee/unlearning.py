"""Honour one removal request on a loaded model, audit it beside the model that never saw the photos,
and record it.

``unsee unlearn``, ``unsee forget`` and the demo all go through :func:`unlearn_and_save`; the audits
find the retrained reference (:func:`find_reference`), attach the never-trained holdout people
(:func:`attach_holdout`) and attack a result and its reference alike (:func:`audit_adapter`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unsee.audit.attacks import ATTACKS, AttackConfig, image_mcq, run_attacks
from unsee.audit.mia import check_holdout
from unsee.audit.quant import changed_linears, weight_digests
from unsee.audit.verdicts import reference_of_draws
from unsee.bench_recipe import cached_benchmark_draws, cached_benchmark_reference, split_name
from unsee.config import check_seed, load_config, to_dict
from unsee.data.request import is_request_file
from unsee.data.schema import Suite
from unsee.engine.distributed import on_accelerator
from unsee.engine.trainer import frozen_copy
from unsee.errors import ConfigError, DataError, ModelError, OutputError, did_you_mean
from unsee.eval.results import strip_samples
from unsee.finetune import cache_root, default_cache, world_fingerprint
from unsee.io import atomic_write_json, content_hash, imported_modules, source_fingerprint
from unsee.methods import method_class
from unsee.methods.artifact import WeightsArtifact
from unsee.models import REGISTRY, check_model_dir, load_adapter, resolve_dtype
from unsee.models.base import Adapter, model_fingerprint
from unsee.provenance import CostMeter
from unsee.report import model_card
from unsee.retrain import RETRAINED_FILE, cached_draws, cached_reference
from unsee.runs import (
    deployed_artifact,
    detect_benchmark,
    evaluation,
    jsonable,
    load_suite,
    make_run,
    method_configs,
    refuse_fp16,
    save_checkpoint,
    unlearn_adapter,
)

if TYPE_CHECKING:
    from unsee.methods.artifact import Artifact


def unlearn_and_save(method: str, adapter: Adapter, suite: Suite, *, steering_dir: Path, model_dir: Path,
                     model: str, base_model: str, base_hash: str, forget: str, seed: int, config: Any = None,
                     overrides: Any = (), vanilla: Mapping[str, Any] | None = None, evaluate_after: bool = True,
                     eval_kw: Mapping[str, Any] | None = None, audit: bool = False,
                     audit_overrides: Any = (), audit_kinds: Sequence[str] | None = None,
                     forgotten_images: Sequence[Any] = (), save: bool = True,
                     audit_seed: int | None = None, data: str | Path | None = None,
                     reference: str | Path | ReferenceAudits | None = None,
                     cache_dir: str | Path | None = None, allow_pickle: bool = False) -> tuple[dict, Artifact]:
    """Honour one removal request on a loaded model and record it: the run and the artefact a user ships.

    ``unsee unlearn`` and the demo both go through here, so that a run's cost, metrics,
    checkpoint and model card mean the same thing wherever they were produced. Training
    methods change ``adapter`` in place and save it (LoRA merged) with its card to
    ``model_dir``; a method that trains no weights (``eraser``) leaves them alone and writes
    its artifact (the steering file) to ``steering_dir`` at once. The cost covers the
    unlearning only, not the evaluation.

    With ``audit`` the result is attacked (:mod:`unsee.audit.attacks`) before it is saved, and
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

    cls = method_class(method)
    kinds = None if audit_kinds is None else list(audit_kinds)
    audit = audit and kinds != []  # None: every attack; an empty list: none
    before = frozen_copy(adapter, visual_only=True) if audit else None
    digests = None
    if audit and (kinds is None or "quant" in kinds):
        digests = weight_digests(adapter)

    artifact: Artifact
    with CostMeter() as meter:
        if cls.trains_weights:
            res, resolved = unlearn_adapter(method, adapter, suite, config=config, overrides=overrides, seed=seed,
                                            logging_dir=steering_dir / "logs", forgotten_images=forgotten_images)
            meter.resumed_s = res.resumed_s
            artifact = WeightsArtifact(adapter, arch=model, result=res)
        else:
            _, mcfg, _ = method_configs(method, config, overrides)
            artifact = cls(mcfg).unlearn(on_accelerator(adapter), suite, mcfg, seed=seed)
            resolved = to_dict(mcfg)
            artifact.save(steering_dir)  # the whole result: the base model is untouched
    meter.record_model(None)
    cost = {**meter.cost(), "trainable_params": artifact.trainable_params,
            "optimizer_state_bytes": artifact.optimizer_state_bytes}
    eval_kw = {"progress": method_configs(method, config, overrides)[0].progress, **(eval_kw or {})}  # as training's
    metrics: Any = evaluation(adapter, suite, artifact=artifact, **eval_kw) if evaluate_after else {}
    run = make_run(method, metrics, model=model, suite=suite, forget=forget, seed=seed, config=resolved, cost=cost,
                   info=jsonable(artifact.info))
    if artifact.history:
        run["history"] = artifact.history
    if audit:
        changed = None
        if digests is not None:
            changed = changed_linears(digests, adapter)
        run["attacks"] = audit_adapter(adapter, suite, kinds=kinds, artifact=artifact, vanilla=before,
                                       seed=seed if audit_seed is None else audit_seed, overrides=audit_overrides,
                                       strict=False, changed=changed, reference=reference, data=data,
                                       cache_dir=cache_dir, allow_pickle=allow_pickle)
    if cls.trains_weights and save:
        save_checkpoint(artifact, model_dir, model_card(strip_samples(run), vanilla, base_model=base_model,
                                                        base_hash=base_hash, forgotten=list(suite.forget_entities),
                                                        audits=None))
    return run, artifact


@dataclasses.dataclass(frozen=True)
class CachedDraws:
    """The first ``n`` draws of the retrained reference that ``unsee retrain`` cached for the vanilla model, read
    as one: the recipe's own, then ``--seed S+1`` .. ``S+n-1`` (S the recipe's seed). Asked for by count, since
    their cache keys are no names a user knows; a draw that is missing is refused with the command that makes it."""

    n: int

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"the number of draws of the reference is a whole number from 1, not {self.n!r}")


References = str | Path | Sequence[str | Path] | CachedDraws


def find_reference(reference: References | None, base: str | Path | None, data: str | Path, forget: str,
                   cache_dir: str | Path | None = None, revision: str | None = None,
                   benchmark: str | None = None, allow_pickle: bool = False) -> Path | list[Path] | None:
    """The retrained reference to audit beside a model: ``reference`` if given (pickle weights only with
    ``allow_pickle``), else the one ``unsee retrain`` left in the stage cache for the base (vanilla) model
    ``base`` (of the built-in world or of a benchmark), else None. Never trains.

    Several draws of the reference (``unsee retrain --seed``) given together, or the cached ones asked for
    with :class:`CachedDraws`, come back as a list, read as one reference (:class:`ReferenceDraws`); the same
    weights given twice would count one draw twice, and are refused."""
    if isinstance(reference, CachedDraws):
        return _cached_draws(reference.n, base, data, forget, cache_dir, revision)
    if isinstance(reference, Sequence) and not isinstance(reference, str):
        if odd := [r for r in reference if not isinstance(r, str | Path)]:
            raise ConfigError(f"each reference is a model directory, not {odd[0]!r}")
        paths = [_given_reference(r, data, forget, revision, benchmark, allow_pickle) for r in reference]
        if not paths:
            raise ConfigError("the references given are an empty list: give a model directory, or none to use the "
                              "cached one")
        weights = [model_fingerprint(p) for p in paths]
        if len(set(weights)) < len(weights):
            twice = [str(p) for p, w in zip(paths, weights, strict=True) if weights.count(w) > 1]
            raise ConfigError(f"the references {', '.join(twice)} hold the same weights: each draw of the reference "
                              "is given once (another draw: `unsee retrain --seed N`)")
        return paths[0] if len(paths) == 1 else paths
    if reference is not None:
        return _given_reference(reference, data, forget, revision, benchmark, allow_pickle)
    if base is None:
        return None
    if not (Path(data) / "world.json").is_file():
        return cached_benchmark_reference(base, data, forget, cache_dir, revision)
    return cached_reference(base, data, forget, cache_dir)


def _given_reference(reference: str | Path, data: str | Path, forget: str, revision: str | None,
                     benchmark: str | None, allow_pickle: bool) -> Path:
    """A reference given by hand, checked now: it loads after the unlearning, and is refused before it if broken."""
    path = Path(reference)
    if not (path / "config.json").is_file():
        raise ModelError(f"the reference {path} is not a model directory (no config.json)")
    check_model_dir(path, allow_pickle=allow_pickle)
    check_reference(path, forget, detect_benchmark(data, benchmark, revision), data)
    return path


def reference_option(reference: References) -> str:
    """The option that gave ``reference`` on the command line, for an error to name."""
    return "--reference-draws" if isinstance(reference, CachedDraws) else "--reference"


def _cached_draws(n: int, base: str | Path | None, data: str | Path, forget: str, cache_dir: str | Path | None,
                  revision: str | None) -> Path | list[Path]:
    """The draws :class:`CachedDraws` names, each from the cache; every missing one is named in one line."""
    if is_request_file(data):
        raise ConfigError("a removal request has no retrained reference in the cache (unsee retrain makes one for a "
                          "benchmark's split): give each draw with --reference DIR")
    if base is None:
        raise ConfigError("the cached draws of the retrained reference are found for a vanilla model of unsee "
                          "finetune, and none is given here (attack: --vanilla): give each draw with --reference DIR")
    found = (cached_draws(base, data, forget, n, cache_dir) if (Path(data) / "world.json").is_file()
             else cached_benchmark_draws(base, data, forget, n, cache_dir, revision))
    if missing := [s for s, path in found.items() if path is None]:
        which = ", ".join("the recipe's own" if s is None else f"--seed {s}" for s in missing)
        raise DataError(f"{len(missing)} of the {n} draws of the retrained reference for {forget} are not in the cache "
                        f"{cache_root(cache_dir)} ({which}): make each with `unsee retrain --model {base} --data "
                        f"{data} --forget {forget} --out DIR [--seed N]` and the same --cache-dir")
    paths = [p for p in found.values() if p is not None]
    return paths[0] if n == 1 else paths


def reference_record(reference: Path | Sequence[Path] | None) -> str | list[str] | None:
    """The reference as results record it: its path, or the paths of its draws."""
    if reference is None:
        return None
    return str(reference) if isinstance(reference, str | Path) else [str(p) for p in reference]


def check_reference(path: Path, forget: str, benchmark: str, data: str | Path | None = None) -> None:
    """A reference given by hand is the model that never saw ``forget``'s photos of ``benchmark``, or its
    figures mislead: one that ``unsee retrain`` made for another benchmark or split is refused; one made
    elsewhere is used, and the run says that nothing checks it."""
    record = path / RETRAINED_FILE
    if not record.is_file():
        print(f"unsee: {path} has no {RETRAINED_FILE}, so nothing says it never saw {forget}'s photos; its figures "
              "are read as the retrained reference's", file=sys.stderr)
        return
    try:
        meta = json.loads(record.read_text())
        made, kind = meta.get("forget"), meta.get("benchmark")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{record} cannot be read ({e})") from None
    made_on = kind or ("builtin" if "world" in meta else None)  # the built-in world's record names its world
    if made_on is not None and made_on != benchmark:
        raise DataError(f"the reference {path} was retrained on {made_on}, and this run measures {benchmark}: its "
                        f"figures would be another benchmark's; build the reference with `unsee retrain` on this data")
    world = Path(data) if data is not None else None
    if made_on == "builtin" and world is not None and (world / "world.json").is_file() and \
            meta.get("world_fingerprint") not in (None, world_fingerprint(world)):
        raise DataError(f"the reference {path} was retrained on another world ({meta.get('world')}) than {world}: "
                        "its forget people are others; build the reference with `unsee retrain` on this world")
    if not isinstance(made, str) or split_name(kind, made) != split_name(kind, forget):  # CLEAR: forget_5 is forget05
        raise DataError(f"the reference {path} was retrained without {made}'s photos, and this run forgets {forget}: "
                        f"its figures would be another split's; build the reference with `unsee retrain ... --forget "
                        f"{forget}`")


def attach_holdout(suite: Suite, data: str | Path | None, name: str, seed: int = 0) -> Suite:
    """``suite`` with the membership attack's held-out group: a group it already has, or the image
    questions of split ``name`` of the same benchmark. Overlap with the forget set is refused here,
    before any model is loaded."""

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


@functools.cache
def audit_code() -> tuple[str, ...]:
    """The modules whose code makes an attack's figures: the attacks' and all they import (losses, optimisers,
    scoring, each architecture's adapter). Found when a reference is first audited, not at every command's start
    (reading them takes a tenth of a second)."""
    return imported_modules("unsee.audit.attacks", "unsee.audit.mia", "unsee.audit.quant", "unsee.methods.baselines",
                            *sorted({adapter.split(":")[0] for adapter in REGISTRY.values()}))


class ReferenceAudits:
    """The retrained reference's figures for each attack, computed once and kept.

    The reference does not change between the methods and seeds it is set beside, so its
    figures are cached in memory and, under ``cache_dir``, on disk, keyed on the reference's
    weights, the attack's options, the items, ``dtype`` and the code of the attacks and their scores (figures
    of an earlier definition would be set beside this one's) (``cache_dir``: the stage cache by default).
    ``dtype``, the attacked model's, is the reference's too: a figure set beside another is read at its precision."""

    def __init__(self, path: str | Path, suite: Suite, cfg: Any, cache_dir: str | Path | None = None,
                 dtype: Any = None, allow_pickle: bool = False) -> None:
        self.path, self.suite, self.cfg, self.dtype = Path(path), suite, cfg, resolve_dtype(dtype)
        self.allow_pickle = allow_pickle
        self.cache = Path(cache_dir or default_cache()) / "reference-audits"
        uids = {g: [e.uid for e in items] for g, items in sorted(suite.groups.items())}
        self.key = content_hash("reference-audit", model_fingerprint(self.path), to_dict(cfg), uids,
                                str(self.dtype), source_fingerprint(*audit_code()))
        self._adapter: Adapter | None = None
        self._memo: dict[str, dict[str, Any]] = {}

    def __call__(self, kind: str) -> dict[str, Any]:

        if kind in self._memo:
            return self._memo[kind]
        file = self.cache / f"{content_hash(self.key, kind)}.json"
        if file.is_file():
            self._memo[kind] = json.loads(file.read_text())
            return self._memo[kind]
        if self._adapter is None:
            self._adapter = load_adapter(self.path, dtype=self.dtype, allow_pickle=self.allow_pickle)
        figures = run_attacks(self._adapter, self.suite, [kind], self.cfg, strict=False, keep_items=True)[kind]
        self._memo[kind] = figures
        try:  # a cache of figures, not the run's output: a cache that cannot be written loses the run nothing
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(file, figures)
        except (OSError, OutputError) as e:
            print(f"unsee: the reference's {kind} figures are not kept in {self.cache} ({str(e).splitlines()[0]}); "
                  "they are computed again next time", file=sys.stderr)
        return figures


class ReferenceDraws:
    """Several draws of the retrained reference, attacked each (and cached each, :class:`ReferenceAudits`) and
    read as one: each figure the mean over the draws, forget quality against their items pooled
    (:func:`unsee.audit.verdicts.reference_of_draws`)."""

    def __init__(self, draws: Sequence[ReferenceAudits]) -> None:
        self.draws = list(draws)

    def __call__(self, kind: str) -> dict[str, Any]:

        return reference_of_draws([draw(kind) for draw in self.draws])


def check_audit_options(audit: bool, overrides: Any = (), kinds: Sequence[str] | None = None,
                        reference: Any = None) -> None:
    """Audit options (and the attacks asked for, ``kinds``, and the ``reference`` to attack beside the model) are
    checked before any work; given where no audit runs, they would be dropped without a word, so they are refused."""
    if isinstance(kinds, str):  # read letter by letter, 'pgd' would be three unknown attacks
        raise ConfigError(f"the audits asked for are a list of attack names, such as [{kinds!r}], not the string "
                          f"{kinds!r}")
    unknown = sorted(set(kinds or ()) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown} in the audits asked for{did_you_mean(unknown, ATTACKS)}: "
                          f"give a list of {', '.join(ATTACKS)}")
    if not audit and reference is not None:
        option = reference_option(reference)
        raise ConfigError(f"{option} is the model the audits attack beside this one, and no audit runs: add "
                          f"--audit, or leave out {option}")
    if audit:
        audit_config(overrides)
    elif overrides:
        raise ConfigError("audit options (--audit-set) were given, but no audit runs: add --audit (unlearn) or "
                          "leave out --no-audit (forget)")


def audit_config(overrides: Any = (), seed: int = 0, *, dtype: str | None = None) -> AttackConfig:
    """The audits' options, checked; a command that audits calls it before it trains (or loads a model), so
    that a mistyped ``--audit-set`` costs nothing. ``dtype``: the weights' of a model the audits will train."""
    if dtype == "fp16":
        refuse_fp16("the relearning audit")
    return dataclasses.replace(load_config(AttackConfig, None, overrides), seed=check_seed(seed))


def audit_adapter(adapter: Adapter, suite: Suite, *, kinds: Sequence[str] | None = None,
                  steering: str | Path | None = None, artifact: Artifact | None = None,
                  vanilla: Adapter | None = None, seed: int = 0,
                  overrides: Any = (), strict: bool = True, changed: Sequence[str] | None = None,
                  reference: References | ReferenceAudits | ReferenceDraws | None = None,
                  data: str | Path | None = None,
                  cache_dir: str | Path | None = None, allow_pickle: bool = False) -> dict[str, dict[str, Any]]:
    """The robustness audits on a loaded model as deployed (with its ``artifact``, or the steering file at
    ``steering``), each beside the retrained reference's figure when ``reference`` (a model directory, or several
    draws of it; pickle weights only with ``allow_pickle``) is given.

    ``kinds=None`` runs every attack and an empty list none, so that "no audits" is never read as "all"."""

    cfg = audit_config(overrides, seed)
    kinds = list(ATTACKS if kinds is None else kinds)
    if "mia" in kinds and data is not None:
        try:
            suite = attach_holdout(suite, data, cfg.mia_holdout, seed)
        except DataError:
            if strict:
                raise
    artifact = deployed_artifact(artifact, steering)
    ref = reference
    if isinstance(reference, str | Path):
        ref = ReferenceAudits(reference, suite, cfg, cache_dir, dtype=adapter.dtype, allow_pickle=allow_pickle)
    elif isinstance(reference, Sequence):
        ref = ReferenceDraws([ReferenceAudits(r, suite, cfg, cache_dir, dtype=adapter.dtype, allow_pickle=allow_pickle)
                              for r in reference])
    return run_attacks(adapter, suite, kinds, cfg, vanilla=vanilla, artifact=artifact, strict=strict, changed=changed,
                       reference=ref)
