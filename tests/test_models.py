"""The model foundation on the three tiny architectures: real HF classes, real losses, on CPU.

Covers what every method and the evaluator rely on: the saved directory is a standard
checkpoint, a training batch learns only the answer and reaches every part of the model,
scopes freeze exactly the groups they name, batched generation equals one-at-a-time
generation, visual features need no language model, and bad input fails with an error
a user can act on.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from unsee.data.schema import Example
from unsee.errors import ConfigError, DataError, ModelError, OutputExistsError
from unsee.models import Adapter, Turn, check_model_dir, load_adapter, model_fingerprint
from unsee.models.base import IGNORE
from unsee.models.tiny import ARCHS, build_tiny, init_model

if TYPE_CHECKING:
    from conftest import TinyModels

HF_CLASSES: dict[str, type[PreTrainedModel]] = {
    "tiny-llava": LlavaForConditionalGeneration,
    "tiny-qwen2-vl": Qwen2VLForConditionalGeneration,
    "tiny-qwen2.5-vl": Qwen2_5_VLForConditionalGeneration,
}
ADAPTER_ARCH = {"tiny-llava": "llava", "tiny-qwen2-vl": "qwen2_vl", "tiny-qwen2.5-vl": "qwen2_5_vl"}

MakeImage = Callable[..., Image.Image]
archs = pytest.mark.parametrize("arch", ARCHS)


def three_turns(make_image: MakeImage) -> list[Turn]:
    """Two turns with images, one text-only: the mix every training batch must handle."""
    return [
        Turn(make_image(1), "Who is the person in this image?", "Alice Smith"),
        Turn(None, "Where was this person born?", "Paris"),
        Turn(make_image(2), "What is the occupation of this person?", "a red circle"),
    ]


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name, tensor in sa.items():
        assert torch.equal(tensor, sb[name]), name


# ---- the saved directory ----------------------------------------------------------


@archs
def test_init_writes_a_standard_checkpoint(tiny_models: TinyModels, arch: str) -> None:
    path = tiny_models.dir(arch)
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").is_file()
    assert not list(path.glob("*.bin")), "tiny models must be saved as safetensors only"
    assert json.loads((path / "unsee.json").read_text()) == {"arch": arch, "seed": 0}
    model = HF_CLASSES[arch].from_pretrained(path)
    assert type(model) is HF_CLASSES[arch]
    built, _ = build_tiny(arch, seed=0)
    assert_same_weights(model, built)


@archs
def test_load_adapter_reloads_the_directory(tiny_models: TinyModels, arch: str) -> None:
    adapter = load_adapter(tiny_models.dir(arch))
    assert isinstance(adapter, Adapter)
    assert adapter.arch == ADAPTER_ARCH[arch]
    assert type(adapter.model) is HF_CLASSES[arch]
    assert adapter.model.dtype == torch.float32
    assert_same_weights(adapter.model, HF_CLASSES[arch].from_pretrained(tiny_models.dir(arch)))
    assert adapter.fingerprint() == model_fingerprint(tiny_models.dir(arch))


@archs
def test_same_seed_same_weights_other_seed_differs(tiny_models: TinyModels, arch: str, tmp_path: Path) -> None:
    again = init_model(arch, tmp_path / "again", seed=0)
    other = init_model(arch, tmp_path / "other", seed=1)
    base = state_dict(tiny_models.dir(arch))
    same = state_dict(again)
    assert base.keys() == same.keys()
    assert all(torch.equal(base[k], same[k]) for k in base)
    assert (again / "tokenizer.json").read_text() == (tiny_models.dir(arch) / "tokenizer.json").read_text()
    assert model_fingerprint(again) == model_fingerprint(tiny_models.dir(arch))

    different = state_dict(other)
    assert base.keys() == different.keys()
    assert not all(torch.equal(base[k], different[k]) for k in base)
    assert model_fingerprint(other) != model_fingerprint(tiny_models.dir(arch))


def test_a_config_that_is_not_json_is_one_line_wherever_the_model_is_read(tiny_models: TinyModels,
                                                                         tmp_path: Path) -> None:
    """finetune, continual runs and the reference audits hash the model before they load it."""
    bad = Path(shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / "m"))
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read .*config.json"):
        model_fingerprint(bad)
    with pytest.raises(ModelError, match="cannot read the config"):
        check_model_dir(bad)


def test_one_tensor_changed_in_the_middle_of_the_weights_is_another_model(tiny_models: TinyModels,
                                                                            tmp_path: Path) -> None:
    """What a merged LoRA does to a file: a few bytes far from its head and tail. The stage cache, the card's
    weights hash and the steering file's base check must all tell the two apart."""
    source = tiny_models.dir("tiny-llava")
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    weights = load_file(copy / "model.safetensors")
    with safe_open(copy / "model.safetensors", "pt") as f:
        meta = f.metadata()
    raw = (copy / "model.safetensors").read_bytes()
    size = len(raw)
    header = 8 + int.from_bytes(raw[:8], "little")
    offsets = json.loads(raw[8:header])
    middle = min((k for k in offsets if k != "__metadata__"),
                 key=lambda k: abs(header + offsets[k]["data_offsets"][0] - size // 2))
    assert 2 << 20 < header + offsets[middle]["data_offsets"][0] < size - (2 << 20)
    weights[middle] = weights[middle] + 0.5
    save_file(weights, copy / "model.safetensors", metadata=meta)
    assert (copy / "model.safetensors").stat().st_size == size
    assert model_fingerprint(copy) != model_fingerprint(source)
    assert model_fingerprint(copy) == model_fingerprint(copy)


@archs
def test_save_round_trips(tiny_models: TinyModels, arch: str, tmp_path: Path, make_image: MakeImage) -> None:
    adapter = tiny_models.adapter(arch)
    turns = three_turns(make_image)
    adapter.generation_batch(turns)  # batched on the left, as generation does before a save
    adapter.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    again = load_adapter(tmp_path / "saved")
    assert_same_weights(again.model, adapter.model)
    assert torch.equal(adapter.training_batch(turns)["input_ids"], again.training_batch(turns)["input_ids"])
    # the tokenizer is saved as it was loaded: whoever loads the checkpoint pads on the same side
    source = tiny_models.dir(arch)
    saved = json.loads((tmp_path / "saved" / "tokenizer.json").read_text())
    assert saved["padding"] == json.loads((source / "tokenizer.json").read_text())["padding"]
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").padding_side == \
        AutoTokenizer.from_pretrained(source).padding_side
    if arch.startswith("tiny-qwen"):  # AutoProcessor builds the video processor too: its settings are saved
        parts = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
        video, image = parts["video_processor"], parts["image_processor"]
        assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
        assert {k: video[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean")} == \
            {k: image[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean")}
        if importlib.util.find_spec("torchvision") is not None:
            assert AutoProcessor.from_pretrained(tmp_path / "saved").video_processor.patch_size == image["patch_size"]


@archs
def test_a_pad_token_borrowed_for_batching_is_not_saved(tiny_models: TinyModels, arch: str, tmp_path: Path,
                                                       make_image: MakeImage) -> None:
    """A tokenizer loaded without a pad token pads with its end token in unsee; the saved copy stays without one."""
    source = tmp_path / "source"
    shutil.copytree(tiny_models.dir(arch), source)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    adapter = load_adapter(source)
    assert adapter.tokenizer.pad_token == adapter.tokenizer.eos_token
    adapter.generation_batch(three_turns(make_image))
    adapter.save(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").pad_token is None
    assert adapter.tokenizer.pad_token == adapter.tokenizer.eos_token  # the loaded adapter still batches


def test_a_llava_processor_saved_without_its_patch_size_reads_it_from_the_config(
        tiny_models: TinyModels, tmp_path: Path, make_image: MakeImage) -> None:
    """Processors saved before they expanded the image token lack it; the first batch was a traceback."""
    source = tiny_models.dir("tiny-llava")
    old = shutil.copytree(source, tmp_path / "old")
    parts = json.loads((old / "processor_config.json").read_text())
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens"):
        parts.pop(key, None)
    (old / "processor_config.json").write_text(json.dumps(parts))
    turns = three_turns(make_image)
    expected = tiny_models.adapter("tiny-llava").training_batch(turns)["input_ids"]
    assert torch.equal(load_adapter(old).training_batch(turns)["input_ids"], expected)
    (old / "processor_config.json").write_text(json.dumps({**parts, "patch_size": 8}))  # not the tower's: one line
    with pytest.raises(ModelError, match=r"processor's patch_size 8 \(the tower's 16\)"):
        load_adapter(old)


def test_a_qwen_processor_that_merges_otherwise_than_its_tower_is_refused(tiny_models: TinyModels,
                                                                         tmp_path: Path) -> None:
    other = shutil.copytree(tiny_models.dir("tiny-qwen2-vl"), tmp_path / "other")
    parts = json.loads((other / "processor_config.json").read_text())
    parts["image_processor"]["merge_size"] = 4
    (other / "processor_config.json").write_text(json.dumps(parts))
    with pytest.raises(ModelError, match=r"processor's merge_size 4 \(the tower's 2\)"):
        load_adapter(other)


# ---- training batches --------------------------------------------------------------


@archs
def test_training_batch_gradient_reaches_every_group(
    tiny_models: TinyModels, arch: str, make_image: MakeImage
) -> None:
    adapter = tiny_models.adapter(arch)
    batch = adapter.training_batch(three_turns(make_image))
    assert batch["input_ids"].shape[0] == 3
    out = adapter.model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    groups = adapter.groups()
    assert set(groups) == {"vision", "projector", "language"}
    for group, params in groups.items():
        assert params, f"{group} group is empty"
        total = sum(float(p.grad.abs().sum()) for _, p in params if p.grad is not None)
        assert total > 0, f"no gradient reached the {group} group"


@archs
def test_training_batch_passes_processor_outputs_through(
    tiny_models: TinyModels, arch: str, make_image: MakeImage
) -> None:
    adapter = tiny_models.adapter(arch)
    batch = adapter.training_batch(three_turns(make_image))
    pixels = adapter.image_inputs([make_image(1), make_image(2)])
    for key, value in pixels.items():
        assert torch.equal(batch[key], value), key
    if "mm_token_type_ids" in batch:
        assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == adapter.image_token_id).long())


@archs
def test_labels_cover_exactly_the_answer(tiny_models: TinyModels, arch: str, make_image: MakeImage) -> None:
    adapter = tiny_models.adapter(arch)
    turns = three_turns(make_image)
    batch = adapter.training_batch(turns)
    labels, ids = batch["labels"], batch["input_ids"]
    eoa = adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_answer)
    for i, turn in enumerate(turns):
        where = labels[i] != IGNORE
        assert torch.equal(labels[i][where], ids[i][where])
        learnt = labels[i][where]
        assert adapter.tokenizer.decode(learnt) == adapter.answer_prefix + turn.answer + adapter.end_of_answer
        assert adapter.tokenizer.decode(learnt, skip_special_tokens=True).strip() == turn.answer
        assert int(learnt[-1]) == eoa
        # the labelled span is contiguous and ends the row; padding after it is neither learnt nor attended
        span = where.nonzero().flatten()
        assert torch.equal(span, torch.arange(int(span[0]), int(span[-1]) + 1))
        assert int(batch["attention_mask"][i].sum()) == int(span[-1]) + 1


@archs
def test_follow_up_exchanges_continue_the_conversation(tiny_models: TinyModels, arch: str,
                                                      make_image: MakeImage) -> None:
    """A turn with follow-ups learns every answer and nothing else, and starts exactly as the
    single-exchange turn does, so its first answer is scored in the same context."""
    adapter = tiny_models.adapter(arch)
    single = Turn(make_image(5), "Who is this?", "Ada Vance")
    packed = Turn(single.image, single.prompt, single.answer,
                  follow=(("Where was she born?", "Tarrow Hill"), ("What is her pet?", "an iguana")))
    one, many = adapter.training_batch([single]), adapter.training_batch([packed])
    n = one["input_ids"].shape[1]
    assert torch.equal(many["input_ids"][0, :n], one["input_ids"][0])
    assert torch.equal(many["labels"][0, :n], one["labels"][0])
    labels, ids = many["labels"][0], many["input_ids"][0]
    learnt = labels[labels != IGNORE]
    assert torch.equal(learnt, ids[labels != IGNORE])
    eoa = adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_answer)
    answers = [a for a in adapter.tokenizer.decode(learnt).split(adapter.end_of_answer) if a]
    assert [a.strip() for a in answers] == ["Ada Vance", "Tarrow Hill", "an iguana"]
    assert int((learnt == eoa).sum()) == 3
    # the follow-up questions are in the sequence, as the chat template writes a user turn
    text = adapter.tokenizer.decode(ids)
    assert "Where was she born?" in text and "What is her pet?" in text
    assert int((ids == adapter.image_token_id).sum()) == int((one["input_ids"] == adapter.image_token_id).sum())
    loss = adapter.forward(many, labels=many["labels"]).loss
    assert torch.isfinite(loss)


@archs
def test_prompt_words_do_not_move_the_loss(tiny_models: TinyModels, arch: str, make_image: MakeImage) -> None:
    adapter = tiny_models.adapter(arch)
    first, second = "What colour is the circle?", "What colour is the square?"
    tokenize = adapter.tokenizer.tokenize
    assert len(tokenize(first)) == len(tokenize(second)), "the two prompts must be of the same token length"
    tail = Turn(None, "Where was this person born?", "Paris")

    def batch_for(prompt: str):  # noqa: ANN202
        return adapter.training_batch([Turn(make_image(3), prompt, "red"), tail])

    a, b = batch_for(first), batch_for(second)
    assert a["input_ids"].shape == b["input_ids"].shape
    assert not torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["labels"] != IGNORE, b["labels"] != IGNORE)
    assert torch.equal(a["labels"], b["labels"])
    changed = (a["input_ids"] != b["input_ids"]).nonzero()
    assert changed.shape[0] == 1 and int(changed[0, 0]) == 0
    assert int(a["labels"][0, changed[0, 1]]) == IGNORE


@archs
def test_answer_scores_match_the_hf_loss_and_the_full_logits(
    tiny_models: TinyModels, arch: str, make_image: MakeImage
) -> None:
    """The scores cover the tokens the HF loss covers, and only the answer-predicting positions
    reach the vocabulary projection: every row's score equals the full-logits computation."""
    adapter = tiny_models.adapter(arch)
    batch = adapter.training_batch(three_turns(make_image))
    with torch.no_grad():
        out = adapter.model(**batch)
        logprobs = adapter.answer_logprobs(batch)
        kept, mask = adapter.answer_logits(batch)
    labels = batch["labels"][:, 1:]
    own = labels != IGNORE
    assert logprobs.shape == (3,)
    assert torch.allclose(-logprobs.sum() / own.sum(), out.loss, rtol=1e-4, atol=1e-5)
    full = torch.log_softmax(out.logits[:, :-1].float(), -1)
    expected = (full.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * own).sum(-1)
    assert torch.allclose(logprobs, expected, rtol=1e-5, atol=1e-4)
    assert kept.shape[1] == int(own.any(0).sum()) < labels.shape[1]  # fewer positions than the sequence
    assert int(mask.sum()) == int(own.sum())


# ---- generation ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2-vl"])
def test_batched_generation_equals_one_at_a_time(
    tiny_models: TinyModels, arch: str, make_image: MakeImage
) -> None:
    adapter = tiny_models.adapter(arch)
    turns = [
        Turn(make_image(4), "Who is the person in this image? Please **ONLY** provide the correct answer."),
        Turn(None, "Where was this person born?"),
        Turn(make_image(5), "Who is this?"),
        Turn(make_image(6), "What is the occupation of this person? What is their hobby?"),
    ]
    assert len({len(adapter.tokenizer.tokenize(t.prompt)) for t in turns}) == len(turns)
    adapter.model.train()
    batched = adapter.generate(turns, max_new_tokens=6)
    assert adapter.model.training, "generate must restore the training mode it found"
    adapter.model.eval()
    in_twos = adapter.generate(turns, max_new_tokens=6, batch_size=2)
    alone = [adapter.generate([t], max_new_tokens=6)[0] for t in turns]
    assert batched == alone
    assert in_twos == alone

    # the same at the token level: random weights decode to many U+FFFD, which could hide a difference
    def new_tokens(group: list[Turn]) -> list[list[int]]:
        batch = adapter.generation_batch(group)
        assert all(int(batch["attention_mask"][i, -1]) == 1 for i in range(len(group))), "not left-padded"
        with torch.no_grad():
            gen = adapter.model.generate(**batch, max_new_tokens=6, do_sample=False,
                                         pad_token_id=adapter.tokenizer.pad_token_id,
                                         eos_token_id=adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_answer))
        stop = {adapter.tokenizer.pad_token_id, adapter.tokenizer.convert_tokens_to_ids(adapter.end_of_answer)}
        rows = gen[:, batch["input_ids"].shape[1]:].tolist()
        return [row[: next((j for j, t in enumerate(row) if t in stop), len(row))] for row in rows]

    assert new_tokens(turns) == [new_tokens([t])[0] for t in turns]


# ---- scopes -----------------------------------------------------------------------

SCOPE_GROUPS = {
    "full": {"vision", "projector", "language"},
    "visual": {"vision", "projector"},
    "vision_tower": {"vision"},
    "projector": {"projector"},
    "language": {"language"},
}


@archs
@pytest.mark.parametrize("scope", sorted(SCOPE_GROUPS))
def test_scope_trains_exactly_its_groups(tiny_models: TinyModels, arch: str, scope: str) -> None:
    adapter = tiny_models.adapter(arch)
    trainable = adapter.set_scope(scope)
    groups = adapter.groups()
    for group, params in groups.items():
        want = group in SCOPE_GROUPS[scope]
        wrong = [name for name, p in params if p.requires_grad != want]
        assert not wrong, f"scope {scope}: {group} parameters with requires_grad != {want}: {wrong[:3]}"
    expected = {id(p) for g in SCOPE_GROUPS[scope] for _, p in groups[g]}
    assert {id(p) for p in trainable} == expected


@archs
def test_groups_follow_the_module_layout(tiny_models: TinyModels, arch: str) -> None:
    groups = tiny_models.adapter(arch).groups()
    projector_word = "multi_modal_projector" if arch == "tiny-llava" else "merger"
    vision_word = "vision_tower" if arch == "tiny-llava" else "visual"
    assert all(projector_word in name for name, _ in groups["projector"])
    assert all(vision_word in name and projector_word not in name for name, _ in groups["vision"])
    assert all(vision_word not in name for name, _ in groups["language"])
    assert any("language_model" in name for name, _ in groups["language"])
    assert any(name.startswith("lm_head") for name, _ in groups["language"])


def test_unknown_scope_raises(tiny_models: TinyModels) -> None:
    adapter = tiny_models.adapter("tiny-llava")
    with pytest.raises(ConfigError, match="unknown scope 'everything'"):
        adapter.set_scope("everything")



def test_lora_scope_without_peft_raises_and_freezes_nothing(tiny_models: TinyModels) -> None:
    adapter = tiny_models.adapter("tiny-llava")
    with pytest.raises(ConfigError, match="no LoRA parameters") as e:
        adapter.set_scope("lora")
    assert "peft" in str(e.value) and "full" in str(e.value)
    assert all(p.requires_grad for p in adapter.model.parameters())


def test_lora_scope_trains_only_the_adapter_weights(tiny_models: TinyModels) -> None:
    from unsee.engine.prepare import apply_lora
    from unsee.engine.trainer import TrainConfig

    adapter = load_adapter(tiny_models.dir("tiny-llava"))  # its own copy: peft wraps the model in place
    apply_lora(adapter, TrainConfig(scope="lora", lora_r=2))
    trainable = adapter.set_scope("lora")
    names = {id(p): n for n, p in adapter.model.named_parameters()}
    assert trainable and all("lora_" in names[id(p)] for p in trainable)
    assert {id(p) for p in trainable} == {id(p) for n, p in adapter.model.named_parameters() if "lora_" in n}


# ---- visual features ------------------------------------------------------------------


@archs
def test_visual_features_need_no_language_model(tiny_models: TinyModels, arch: str, make_image: MakeImage) -> None:
    adapter = tiny_models.adapter(arch)
    images = [make_image(7), make_image(8)]
    feats = adapter.visual_features(adapter.image_inputs(images))
    hidden = adapter.model.config.text_config.hidden_size
    assert len(feats) == len(images)
    # one row per image token the language model would see for that image
    prompt = adapter.generation_batch([Turn(images[0], "Who is this?")])
    n_tokens = int((prompt["input_ids"] == adapter.image_token_id).sum())
    for f in feats:
        assert f.shape == (n_tokens, hidden)
        assert torch.isfinite(f).all()
    assert not torch.equal(feats[0], feats[1])

    sum(f.pow(2).sum() for f in feats).backward()
    groups = adapter.groups()
    assert all(p.grad is None for _, p in groups["language"]), "the language model got a gradient"
    for group in ("vision", "projector"):
        assert sum(float(p.grad.abs().sum()) for _, p in groups[group] if p.grad is not None) > 0, group


# ---- bad input --------------------------------------------------------------------------


def test_init_unknown_arch_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown architecture 'tiny-gpt'"):
        init_model("tiny-gpt", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_init_missing_world_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="world directory .* does not exist"):
        init_model("tiny-llava", tmp_path / "out", world=tmp_path / "no-world")
    assert not (tmp_path / "out").exists()
    (tmp_path / "world.json").write_text("{}")  # a world's file given for its folder is named as what it is
    with pytest.raises(ModelError, match="world.json is a file, not a world folder"):
        init_model("tiny-llava", tmp_path / "out", world=tmp_path / "world.json")
    assert not (tmp_path / "out").exists()


def test_init_on_a_folder_that_is_no_world_is_one_line(world: Path, tmp_path: Path) -> None:
    """A tokenizer trained on no world would know none of its people: refused, as a broken world is."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no parquet files"):
        init_model("tiny-llava", tmp_path / "out", world=tmp_path / "empty")
    broken = Path(shutil.copytree(world, tmp_path / "broken"))
    (broken / "world.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read .*world.json"):
        init_model("tiny-llava", tmp_path / "out", world=broken)
    (broken / "world.json").write_text((world / "world.json").read_text())
    shard = next(broken.rglob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(DataError, match="is not a readable parquet file"):
        init_model("tiny-llava", tmp_path / "out", world=broken)
    assert not (tmp_path / "out").exists()


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("results")
    with pytest.raises(OutputExistsError):
        init_model("tiny-llava", out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_adapter(tmp_path / "missing")


def test_load_directory_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=r"config\.json is missing"):
        load_adapter(tmp_path)


def test_load_directory_without_weights(tiny_models: TinyModels, tmp_path: Path) -> None:
    shutil.copy(tiny_models.dir("tiny-llava") / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match="no weights"):
        load_adapter(tmp_path)


def test_pickle_weights_refused_unless_allowed(tiny_models: TinyModels, tmp_path: Path) -> None:
    source = tiny_models.dir("tiny-llava")
    copy = Path(shutil.copytree(source, tmp_path / "pickled"))
    torch.save(load_file(copy / "model.safetensors"), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="pickle"):
        load_adapter(copy)
    adapter = load_adapter(copy, allow_pickle=True)
    assert_same_weights(adapter.model, tiny_models.adapter("tiny-llava").model)


def test_pickle_weights_are_fingerprinted_by_their_bytes(tiny_models: TinyModels, tmp_path: Path) -> None:
    """A fingerprint of config.json alone named two pickle checkpoints with other weights alike."""
    weights = load_file(tiny_models.dir("tiny-llava") / "model.safetensors")
    prints = []
    for shift in (0.0, 1.0):
        copy = Path(shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / f"pickled{shift}"))
        name = next(k for k in weights if k.endswith("q_proj.weight"))
        torch.save({**weights, name: weights[name] + shift}, copy / "pytorch_model.bin")
        (copy / "model.safetensors").unlink()
        prints.append(model_fingerprint(copy))
    assert prints[0] != prints[1]
    beside = Path(shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / "both"))
    shutil.copy(tmp_path / "pickled1.0" / "pytorch_model.bin", beside)  # safetensors load, and name the model
    assert model_fingerprint(beside) == model_fingerprint(tiny_models.dir("tiny-llava"))
    with pytest.raises(ModelError, match="owner/name is not a model folder"):
        model_fingerprint("owner/name")  # a hub id: the hash of nothing named every one of them alike


@pytest.mark.parametrize("arch", ["tiny-llava", "tiny-qwen2-vl"])
def test_a_chat_template_kept_in_the_tokenizer_config_alone_is_used(arch: str, tiny_models: TinyModels,
                                                                    tmp_path: Path) -> None:
    """The folder check accepts it there, so the prompts must be made with it, not fail at the first one."""
    copy = Path(shutil.copytree(tiny_models.dir(arch), tmp_path / "m"))
    template = (copy / "chat_template.jinja").read_text()
    (copy / "chat_template.jinja").unlink()
    for name in ("processor_config.json", "chat_template.json"):
        if (copy / name).is_file():
            config = json.loads((copy / name).read_text())
            config.pop("chat_template", None)
            (copy / name).write_text(json.dumps(config))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    check_model_dir(copy)
    turn = Turn(Image.new("RGB", (32, 32)), "Who is this?")
    assert load_adapter(copy).prompt_text(turn) == tiny_models.adapter(arch).prompt_text(turn)


@pytest.mark.parametrize("case", ["missing_shard", "no_processor", "peft_adapter", "no_chat_template",
                                  "no_tokenizer_config"])
def test_a_model_folder_that_cannot_load_is_refused_by_its_check(case: str, tiny_models: TinyModels,
                                                                 tmp_path: Path) -> None:
    """The retrained reference loads after the unlearning has trained: what would stop its load is refused when
    it is checked, before any work, in one line."""
    source = tiny_models.dir("tiny-llava")
    copy = tmp_path / "m"
    if case == "missing_shard":
        tiny_models.adapter("tiny-llava").model.save_pretrained(copy, max_shard_size="2MB")
        for f in source.iterdir():
            if not f.name.startswith("model"):
                shutil.copy(f, copy)
        shards = sorted(copy.glob("model-*.safetensors"))
        assert len(shards) > 1
        shards[-1].unlink()
    else:
        shutil.copytree(source, copy)
    if case == "no_processor":
        for name in ("processor_config.json", "preprocessor_config.json"):
            (copy / name).unlink(missing_ok=True)
    if case == "peft_adapter":
        (copy / "model.safetensors").rename(copy / "adapter_model.safetensors")
        (copy / "adapter_config.json").write_text("{}")
    if case == "no_chat_template":
        (copy / "chat_template.jinja").unlink(missing_ok=True)
        for name in ("tokenizer_config.json", "processor_config.json"):
            config = json.loads((copy / name).read_text())
            config.pop("chat_template", None)
            (copy / name).write_text(json.dumps(config))
    if case == "no_tokenizer_config":
        (copy / "tokenizer_config.json").unlink()
        with pytest.raises(ModelError, match="neither a pad nor an end token"):
            load_adapter(copy)
        return
    expected = {"missing_shard": "lacks the weight shard", "no_processor": "holds no image processor",
                "peft_adapter": "is a PEFT adapter", "no_chat_template": "has no chat template"}[case]
    with pytest.raises(ModelError, match=expected):
        check_model_dir(copy)
    with pytest.raises(ModelError, match=expected):
        load_adapter(copy)


@pytest.mark.parametrize(
    ("model_type", "message"),
    [("no_such_type", "cannot read the config"), ("llama", "unknown model type 'llama'")],
)
def test_unknown_model_type(tiny_models: TinyModels, tmp_path: Path, model_type: str, message: str) -> None:
    copy = Path(shutil.copytree(tiny_models.dir("tiny-llava"), tmp_path / "edited"))
    config = json.loads((copy / "config.json").read_text())
    config["model_type"] = model_type
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message):
        load_adapter(copy)


def test_corrupt_image_names_the_example() -> None:
    example = Example(uid="person-07-q3", entity="person-07", question="Who is this?", answer="Ann",
                      image=b"\x00not an image\xff", source="forget.parquet")
    with pytest.raises(DataError, match="person-07-q3") as info:
        example.pil_image()
    assert "forget.parquet" in str(info.value)


def test_missing_image_names_the_example() -> None:
    example = Example(uid="text-only-1", entity="e", question="q", answer="a")
    with pytest.raises(DataError, match="text-only-1"):
        example.pil_image()
