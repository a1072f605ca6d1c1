"""MLLMEraser on a real (tiny, random) LLaVA: the maps, the hooks, the file, the entry point."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from unsee.config import load_config
from unsee.data.collate import image_of
from unsee.data.schema import Example, Suite
from unsee.errors import ConfigError, DataError, ModelError
from unsee.eval.evaluator import option_logprobs
from unsee.methods.eraser import (
    REFUSAL_SUFFIX,
    STEERING_FILE,
    Eraser,
    EraserConfig,
    Steering,
    build_steering,
    collect_last_token,
    erasure_turns,
    find_prompt_ends,
    generation_marker,
    joint_map,
    layer_span,
    mcq_accuracy,
    pgd_pixels,
    prompt_ends,
    run_eraser,
    steer,
    sweep,
)
from unsee.models import Turn, load_adapter
from unsee.models.tiny import init_model

FORGET_Q = ["Who is this?", "What is the name of the person in this image?", "Where was this person born?",
            "What is the occupation of this person?"]
RETAIN_Q = ["What colour is the shape?", "How many objects are there?", "Where is the shape?",
            "Is the shape red or blue? Answer yes or no."]
LAYERS = [1, 2]


def images(n: int, seed: int, lo: int = 0, hi: int = 256) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(lo, hi, (64, 64, 3), dtype=np.uint8)) for _ in range(n)]


def turns(n: int, questions: list[str], seed: int, lo: int = 0, hi: int = 256) -> list[Turn]:
    return [Turn(im, questions[i % len(questions)], "yes") for i, im in enumerate(images(n, seed, lo, hi))]


# Forget images are dark, neutral ones bright, retain ones anything, with other questions:
# three distinguishable input distributions, as identities and tasks are in a real suite.
# d = 256 and null_ratio = 0.3 keep k = 77 null directions; 64 retain items (< d - k = 179)
# make them an exact null space of the retain activations, and 32 forget items (< k) let
# the least-squares map fit every one of them. Held-out items then test generalisation.
N_FORGET, N_NEUTRAL, N_RETAIN, N_HELD = 32, 16, 64, 16


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory):
    path = init_model("tiny-llava", tmp_path_factory.mktemp("m") / "tiny-llava", seed=0)
    return load_adapter(path)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory):
    return load_adapter(init_model("tiny-qwen2-vl", tmp_path_factory.mktemp("q") / "tiny-qwen2-vl", seed=0))


@pytest.fixture(scope="module")
def data() -> dict[str, list[Turn]]:
    return {
        "forget": turns(N_FORGET, FORGET_Q, seed=1, hi=128),
        "neutral": turns(N_NEUTRAL, FORGET_Q, seed=2, lo=128),
        "retain": turns(N_RETAIN, RETAIN_Q, seed=3),
        "forget_held": turns(N_HELD, FORGET_Q, seed=4, hi=128),
        "retain_held": turns(N_HELD, RETAIN_Q, seed=5),
    }


@pytest.fixture(scope="module")
def steering(llava, data) -> Steering:
    cfg = EraserConfig(layers=LAYERS, batch_size=16)
    return build_steering(llava, data["forget"], data["neutral"], data["retain"], cfg)


def logits(adapter, batch) -> torch.Tensor:
    with torch.no_grad():
        return adapter.forward(batch).logits


def test_default_layers_are_the_middle_third_and_the_shipped_span_the_middle_half():
    assert layer_span(4) == [1]
    assert layer_span(32) == list(range(10, 21))
    assert layer_span(1) == [0]
    assert layer_span(4, 0.25, 0.75) == [1, 2] and layer_span(32, 0.25, 0.75) == list(range(8, 24))
    assert layer_span(3, 0.9, 1.0) == [2]


def test_config_loads_and_rejects_bad_values():
    cfg = load_config(EraserConfig, {"layers": [1, 2], "strength": -0.25, "use_pgd": True})
    assert (cfg.layers, cfg.strength, cfg.use_pgd, cfg.null_ratio, cfg.lam) == ([1, 2], -0.25, True, 0.3, 0.1)
    with pytest.raises(ConfigError, match="null_ratio"):
        load_config(EraserConfig, {"null_ratio": 1.5})
    with pytest.raises(ConfigError, match="unknown config key 'strenght'"):
        load_config(EraserConfig, {"strenght": -0.2})
    for bad, match in (({"depth": [0.8, 0.2]}, "depth"), ({"gate": 1.0}, "gate"), ({"keep": ["train_text"]}, "keep"),
                       ({"sweep_gates": [-0.1]}, "sweep_gates"), ({"erasure_items": 0}, "erasure_items")):
        with pytest.raises(ConfigError, match=match):
            load_config(EraserConfig, bad)


@pytest.mark.parametrize("fit", ["joint", "nullspace"])
def test_maps_send_forget_to_r_and_retain_to_zero(llava, data, fit):
    steering = build_steering(llava, data["forget"], data["neutral"], data["retain"],
                              EraserConfig(layers=LAYERS, batch_size=16, fit=fit))
    assert steering.layers == LAYERS and steering.hidden_size == 256
    acts = {k: collect_last_token(llava, v, LAYERS, batch_size=16)
            for k, v in data.items() if k != "retain"}
    for i in LAYERS:
        w = steering.weights[i].double()
        r = acts["forget"][i].mean(0) - acts["neutral"][i].mean(0)
        assert steering.info["r_norm"][str(i)] == pytest.approx(float(r.norm()), rel=1e-6)
        assert torch.allclose(steering.directions[i].double(), r, atol=1e-4)
        for group in ("forget", "forget_held"):
            out = acts[group][i] @ w
            cos = torch.nn.functional.cosine_similarity(out, r[None], dim=1)
            assert cos.min() > 0.9, (group, i)
            assert ((out - r).norm(dim=1) / r.norm()).mean() < 0.1, (group, i)
        retain_rel = ((acts["retain_held"][i] @ w).norm(dim=1) / r.norm()).mean()
        assert retain_rel < 0.1, i


def test_steer_changes_logits_and_restores_them_exactly(llava, data, steering):
    batch = llava.generation_batch(data["forget"][:2] + data["retain"][:1])
    weights = {k: v.clone() for k, v in llava.model.state_dict().items()}
    before = logits(llava, batch)
    with steer(llava, steering):
        during = logits(llava, batch)
    assert not torch.allclose(before, during)
    assert torch.equal(logits(llava, batch), before)

    with pytest.raises(RuntimeError, match="boom"), steer(llava, steering):
        logits(llava, batch)
        raise RuntimeError("boom")
    assert torch.equal(logits(llava, batch), before)
    assert all(not layer._forward_hooks for layer in llava.decoder_layers())
    assert not llava.model._forward_pre_hooks
    assert all(torch.equal(v, weights[k]) for k, v in llava.model.state_dict().items())


def test_only_prefill_is_steered(llava, data, steering):
    """Cached decoding under steering == one pass over prompt + generated token with the prompt as anchor."""
    strong = steering.select(strength=-2.0)
    batch = llava.to_device(llava.generation_batch(data["forget"][:1]))
    n = batch["input_ids"].shape[1]
    with steer(llava, strong), torch.no_grad():
        gen = llava.model.generate(**batch, max_new_tokens=2, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, pad_token_id=llava.tokenizer.pad_token_id)
    longer = dict(batch)
    longer["input_ids"] = gen.sequences[:, : n + 1]
    longer["attention_mask"] = torch.ones_like(longer["input_ids"])
    with steer(llava, strong, anchor=torch.tensor([n - 1])):
        anchored = logits(llava, longer)[:, -1]
    torch.testing.assert_close(anchored, gen.logits[1], atol=1e-4, rtol=1e-4)
    with steer(llava, strong):  # the prompt end is found from the template without an anchor
        found = logits(llava, longer)[:, -1]
    torch.testing.assert_close(found, gen.logits[1], atol=1e-4, rtol=1e-4)
    with steer(llava, strong, anchor=torch.tensor([n])):  # steering the decoded token too would differ
        decoded_too = logits(llava, longer)[:, -1]
    assert not torch.allclose(decoded_too, gen.logits[1], atol=1e-3)


@pytest.mark.parametrize("arch", ["llava", "qwen"])
def test_prompt_ends_are_found_in_generation_and_training_batches(arch, llava, qwen, data):
    adapter = llava if arch == "llava" else qwen
    prompts = [data["forget"][0], Turn(None, "Where was this person born?", "Paris, France"),
               Turn(data["retain"][0].image, "Who?", "A: yes")]
    marker = generation_marker(adapter)
    assert marker is not None and marker.numel() >= 2
    gen = adapter.generation_batch(prompts)
    width = gen["input_ids"].shape[1]
    assert find_prompt_ends(gen["input_ids"], gen["attention_mask"], marker).tolist() == [width - 1] * 3
    train = adapter.training_batch(prompts)
    assert find_prompt_ends(train["input_ids"], train["attention_mask"], marker).tolist() == \
        prompt_ends(train).tolist()


def test_steered_batched_generation_equals_one_by_one(llava, data, steering):
    prompts = [data["forget"][0], data["retain"][1], Turn(data["forget"][2].image, "Who?"),
               data["neutral"][0]]
    strong = steering.select(strength=-2.0)
    plain = llava.generate(prompts, max_new_tokens=4, batch_size=4)
    with steer(llava, strong):
        batched = llava.generate(prompts, max_new_tokens=4, batch_size=4)
        single = [llava.generate([t], max_new_tokens=4)[0] for t in prompts]
    assert batched == single
    assert batched != plain


def test_steered_generation_on_qwen2_vl(qwen, data):
    """M-RoPE and Qwen's cache handling: the prefill-only hooks work there too."""
    st = build_steering(qwen, data["forget"][:8], data["neutral"][:8], data["retain"][:16],
                        EraserConfig(batch_size=8)).select(strength=-3.0)
    assert st.layers == [1] and st.arch == "qwen2_vl"
    prompts = [data["forget"][0], data["retain"][1], Turn(None, "Who is Alice?")]
    plain = qwen.generate(prompts, max_new_tokens=4)
    with steer(qwen, st):
        batched = qwen.generate(prompts, max_new_tokens=4)
        single = [qwen.generate([t], max_new_tokens=4)[0] for t in prompts]
    assert batched == single and batched != plain
    assert qwen.generate(prompts, max_new_tokens=4) == plain


def test_collection_stops_after_the_deepest_layer_and_reads_the_same(llava, data):
    calls = []
    handle = llava.decoder_layers()[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        shallow = collect_last_token(llava, data["forget"][:4], [1], batch_size=4)
        assert not calls  # layer 3 never ran
        deep = collect_last_token(llava, data["forget"][:4], [1, 3], batch_size=4)
        assert calls
    finally:
        handle.remove()
    assert torch.equal(shallow[1], deep[1])


def test_joint_map_separates_forget_from_kept_rows():
    """Rows the joint least squares was fitted on: forget -> r, kept -> 0 (fewer rows than dimensions, so exactly)."""
    g = torch.Generator().manual_seed(0)
    h_f, h_k, r = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((20, 64), (30, 64), (64,)))
    w = joint_map(h_f, h_k, r, lam=1e-6)
    assert torch.linalg.matrix_rank(w) == 1
    assert torch.allclose(h_f @ w, r.expand(20, -1), atol=1e-4)
    assert (h_k @ w).abs().max() < 1e-4


def test_gate_leaves_prompts_below_the_threshold_exactly_alone(llava, data, steering):
    """With a gate, a prompt whose map reads c <= tau gets no injection at all; a forget prompt still moves."""
    gated = steering.select(strength=-4.0, gate=0.5)
    acts = collect_last_token(llava, data["retain_held"] + data["forget_held"], LAYERS, batch_size=16)
    c = {i: acts[i] @ steering.weights[i].double() @ steering.directions[i].double()
         / steering.directions[i].double().norm() ** 2 for i in LAYERS}
    quiet = [k for k in range(N_HELD) if all(c[i][k] <= 0.5 for i in LAYERS)]
    loud = [N_HELD + k for k in range(N_HELD) if all(c[i][N_HELD + k] > 0.6 for i in LAYERS)]
    assert quiet and loud
    turns = data["retain_held"] + data["forget_held"]
    batch = llava.generation_batch([turns[quiet[0]], turns[loud[0]]])
    before = logits(llava, batch)
    with steer(llava, gated):
        during = logits(llava, batch)
    assert torch.equal(during[0], before[0])
    assert not torch.allclose(during[1], before[1])


def test_file_round_trip_and_compatibility(llava, qwen, steering, tmp_path):
    steering = steering.select(gate=0.5)
    path = steering.save(tmp_path / "s" / STEERING_FILE)
    assert [p.name for p in path.parent.iterdir()] == [STEERING_FILE]  # no temp file left behind
    loaded = Steering.load(path)
    assert loaded.header() == steering.header() and loaded.gate == 0.5
    assert all(torch.equal(loaded.weights[i], steering.weights[i]) for i in steering.layers)
    assert all(torch.equal(loaded.directions[i], steering.directions[i]) for i in steering.layers)
    loaded.check_compatible(llava)
    with pytest.raises(ModelError, match="gated steering needs r_l"):
        dataclasses.replace(steering, directions={})

    other = dataclasses.replace(steering, fingerprint="0123456789abcdef").save(tmp_path / "other.safetensors")
    foreign = Steering.load(other)
    with pytest.raises(ModelError, match="fingerprint 0123456789abcdef"):
        foreign.check_compatible(llava)
    with pytest.raises(ModelError, match="fingerprint"), steer(llava, foreign):
        pass
    foreign.check_compatible(llava, force=True)

    with pytest.raises(ModelError, match="'llava'.*'qwen2_vl'"):
        loaded.check_compatible(qwen, force=True)

    with pytest.raises(ModelError, match="nothing.safetensors does not exist"):
        Steering.load(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelError, match="is a folder, not a steering file"):  # the run's folder for its file
        Steering.load(path.parent)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot read"):
        Steering.load(tmp_path / "junk.safetensors")

    # hand-edited files: one line each, never a traceback mid-evaluation or a layer steered by another's index
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    header = json.loads(meta["header"])
    first = steering.layers[0]
    d = steering.hidden_size
    edits = {
        "no strength": ({k: v for k, v in header.items() if k != "strength"}, tensors),
        "a list": ([1, 2], tensors),
        "text strength": ({**header, "strength": "abc"}, tensors),
        "a map of another shape": (header, {**tensors, f"layer.{first}": torch.zeros(d + 1, d)}),
        "a short direction": (header, {**tensors, f"direction.{first}": torch.zeros(d - 1)}),
        "a gate of 1": ({**header, "gate": 1.0}, tensors),  # the hook divides by 1 - gate
        "a negative gate": ({**header, "gate": -0.5}, tensors),  # it would steer every prompt
        "a zero direction": (header, {**tensors, f"direction.{first}": torch.zeros(d)}),
        "a negative layer": ({**header, "layers": sorted([-1, *steering.layers[1:]])},
                             {**{k: v for k, v in tensors.items() if not k.endswith(f".{first}")},
                              "layer.-1": tensors[f"layer.{first}"], "direction.-1": tensors[f"direction.{first}"]}),
    }
    for name, (head, maps) in edits.items():
        bad = tmp_path / f"{name}.safetensors"
        save_file(maps, str(bad), metadata={**meta, "header": json.dumps(head)})
        with pytest.raises(ModelError, match="corrupt steering"):
            Steering.load(bad)


def test_mcq_accuracy_is_the_evaluators_scoring(llava, data, steering):
    """The sweep scores as the evaluator does; steered, that matches one teacher-forced pass per option
    with the hooks anchored at the last prompt token."""
    options = ("yes", "no", "maybe")
    items = [Example(uid=f"q{k}", entity="e", question=t.prompt, answer=options[k % 3], task="mcq",
                     image=png(t.image), options=options, correct=k % 3) for k, t in enumerate(data["forget"][:3])]
    flat = [Turn(image_of(e), e.question, a) for e in items for a in options]
    batch = llava.training_batch(flat)
    prompt_len = llava.generation_batch(flat[:1])["input_ids"].shape[1]
    assert prompt_ends(llava.training_batch(flat[:3])).tolist() == [prompt_len - 1] * 3
    strong = steering.select(strength=-2.0)
    for st in (None, strong):
        with torch.no_grad(), steer(llava, st, anchor=prompt_ends(batch)) if st else contextlib.nullcontext():
            scores = llava.answer_logprobs(batch).view(3, 3)
        expected = float((scores.argmax(-1) == torch.tensor([0, 1, 2])).float().mean())
        assert mcq_accuracy(llava, items, st, batch_size=4) == pytest.approx(expected)
        with steer(llava, st) if st else contextlib.nullcontext():
            evaluated = torch.tensor(option_logprobs(llava, items))
        assert torch.allclose(evaluated, scores, atol=1e-3)


def test_sweep_picks_biggest_forget_drop_that_keeps_retain(llava, data):
    """The selection rule, with a scripted score: settings (layers, s) -> (forget, retain) accuracy."""
    table = {None: (0.8, 0.9), ((1,), -0.2): (0.5, 0.89), ((1,), -0.4): (0.1, 0.5),
             ((1, 2), -0.2): (0.5, 0.88), ((1, 2), -0.4): (0.3, 0.86)}

    def score(adapter, items, s):
        key = None if s is None else (tuple(s.layers), s.strength)
        return table[key][0 if items == "F" else 1]

    small = (data["forget"][:4], data["neutral"][:4], data["retain"][:8])
    result = sweep(llava, small, "F", "R", [-0.2, -0.4], [[1], [1, 2]], score,
                   EraserConfig(batch_size=8))
    assert (result.base_forget, result.base_retain) == (0.8, 0.9)
    assert len(result.rows) == 4
    assert result.best is not None
    assert (result.best.layers, result.best.strength) == ([1, 2], -0.4)  # -0.4 on [1] breaks retain
    assert [r["admissible"] for r in result.rows] == [True, False, True, True]


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_run_eraser_writes_only_the_steering_file(llava, tmp_path):
    def ex(kind: str, i: int, img: Image.Image, q: str) -> Example:
        return Example(uid=f"{kind}{i}", entity=f"{kind}{i % 3}", question=q, answer="Alice", image=png(img))

    groups = {
        "train_forget": [ex("f", i, im, FORGET_Q[i % 4]) for i, im in enumerate(images(6, 10, hi=128))],
        "neutral": [ex("n", i, im, FORGET_Q[0]) for i, im in enumerate(images(3, 11, lo=128))],
        "train_retain": [ex("r", i, im, RETAIN_Q[i % 4]) for i, im in enumerate(images(8, 12))],
    }
    suite = Suite("tiny", groups, forget_entities=("f0",), retain_entities=("r0",))
    cfg = EraserConfig(layers=[1], use_pgd=True, pgd_steps=2, max_items=5, batch_size=8)
    weights = {k: v.clone() for k, v in llava.model.state_dict().items()}
    path = run_eraser(llava, suite, tmp_path / "out", cfg)
    assert path == tmp_path / "out" / STEERING_FILE
    assert sorted(p.name for p in path.parent.iterdir()) == [STEERING_FILE]
    loaded = Steering.load(path)
    loaded.check_compatible(llava)
    assert loaded.info["counts"] == {"forget": 5, "erasure": 5, "retain": 5}
    assert loaded.info["config"]["use_pgd"] is True
    assert all(torch.equal(v, weights[k]) for k, v in llava.model.state_dict().items())


def test_pgd_stays_in_the_pixel_ball(llava):
    cfg = EraserConfig(use_pgd=True, pgd_steps=3)
    ts = [Turn(im, "Who is this?", "Alice") for im in images(2, 20)]
    clean = llava.training_batch(ts)["pixel_values"]
    adv = pgd_pixels(llava, ts, cfg)
    std = torch.tensor(llava.processor.image_processor.image_std).view(1, 3, 1, 1)
    mean = torch.tensor(llava.processor.image_processor.image_mean).view(1, 3, 1, 1)
    moved = ((adv - clean) * std).abs()
    assert moved.max() <= cfg.pgd_eps + 1e-5 and moved.max() > cfg.pgd_step / 2
    pixels = adv * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_erasure_turns_pair_neutral_images_or_ask_for_a_refusal():
    def ex(uid: str, img: Image.Image | None, q: str = "Who is this?") -> Example:
        return Example(uid=uid, entity=uid, question=q, answer="Alice", image=None if img is None else png(img))

    forget = [ex(f"f{i}", im, f"q{i}") for i, im in enumerate(images(3, 30))]
    neutral = [ex("n0", images(1, 31)[0]), ex("n1", None), ex("n2", images(1, 32)[0])]
    paired = erasure_turns(forget, neutral, "neutral")
    assert [t.prompt for t in paired] == ["q0", "q1", "q2"]
    assert [np.asarray(t.image).tobytes() for t in paired] == [
        np.asarray(neutral[k].pil_image()).tobytes() for k in (0, 2, 0)]
    refusal = erasure_turns(forget, [], "refusal")
    assert refusal[1].prompt == f"q1 {REFUSAL_SUFFIX}" and refusal[1].image is not None
    with pytest.raises(DataError, match="erasure=refusal"):
        erasure_turns(forget, [neutral[1]], "neutral")


# ---- the sweep command: unlearn --method eraser sweep=true ----------------------------------------
def test_validation_items_come_from_training_qa_only(tmp_path) -> None:
    from unsee import api
    from unsee.data.world import build_world
    from unsee.methods.eraser import validation_items

    world = build_world(tmp_path / "w", config="quick", overrides=["n_people=8", "n_train_views=2"])
    suite = api.load_suite(world, "forget_15")
    pool = suite.group("train_forget") + suite.group("train_retain")
    items = validation_items(suite.group("train_forget"), pool, n=6)
    assert items
    train_qa = {(e.question, e.answer) for e in suite.group("train_forget")}
    test_qa = {(e.question, e.options[e.correct]) for g in ("forget", "forget_test") for e in suite.group(g)
               if e.task == "mcq"}
    for item in items:
        assert item.task == "mcq" and item.has_image
        assert len(item.options) == 4 and len(set(item.options)) == 4
        assert (item.question, item.options[item.correct]) in train_qa
        assert not any((item.question, o) in test_qa - train_qa for o in item.options)


def test_run_eraser_with_sweep_records_the_grid(tmp_path, llava) -> None:
    from unsee import api
    from unsee.data.world import build_world

    world = build_world(tmp_path / "w", config="quick", overrides=["n_people=8", "n_train_views=2"])
    suite = api.load_suite(world, "forget_15")
    cfg = EraserConfig(sweep=True, sweep_items=4, sweep_strengths=[-0.1, -0.5], sweep_gates=[0.0, 0.5],
                       null_ratio=0.3)
    path = run_eraser(llava, suite, tmp_path / "out", cfg)
    st = Steering.load(path)
    rows = st.info["sweep"]["rows"]
    assert len(rows) == 4 * len({tuple(r["layers"]) for r in rows}) >= 16
    assert st.strength in (-0.1, -0.5) and st.gate in (0.0, 0.5)
    chosen = next(r for r in rows if (r["layers"], r["strength"], r["gate"]) == (st.layers, st.strength, st.gate))
    assert chosen["admissible"]
    # the run records the setting the sweep chose, which the config's strength and gate do not say
    art = Eraser(cfg).unlearn(llava, suite, cfg)
    assert art.info["applied"] == {"strength": art.steering.strength, "gate": art.steering.gate,
                                   "layers": art.steering.layers} and art.info["sweep"]["rows"]
    # the validation slice (2 x sweep_items per side) is held out of the fit
    n_forget = sum(e.has_image for e in suite.group("train_forget"))
    assert st.info["counts"]["forget"] == n_forget - 8
