"""The shipped tiny models' tokenizers, processors and training encodings agree with what evaluation feeds
the model, for each family (tiny-llava, tiny-internvl)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pytest
import torch

from mechanisms.data.synthetic import CATEGORY_NAMES, generate_scenes, render_scene
from mechanisms.models.adapters import InternVLAdapter, LlavaAdapter, ModelAdapter, load_adapter
from mechanisms.models.registry import REPO_ROOT
from mechanisms.organisms import tiny_internvl, tiny_llava
from mechanisms.organisms.train import ChatBuilder
from mechanisms.tasks.prompts import binary_prompt, box_prompt, list_prompt


@dataclass(frozen=True)
class TinyModel:
    family: str
    module: ModuleType
    adapter_class: type
    folder: str
    box_answer: str
    config_class: str

    @property
    def shipped(self):
        return REPO_ROOT / "fixtures" / "models" / self.folder


TINY_MODELS = [
    TinyModel("llava", tiny_llava, LlavaAdapter, "tiny-llava", "[0.12, 0.34, 0.56, 0.78]", "LlavaConfig"),
    TinyModel("internvl", tiny_internvl, InternVLAdapter, "tiny-internvl", "<box>[[120, 340, 560, 1000]]</box>",
              "InternVLConfig"),
]


@pytest.fixture(scope="module", params=TINY_MODELS, ids=lambda m: m.folder)
def tiny(request) -> TinyModel:
    return request.param


@pytest.fixture(scope="module")
def adapter(tiny) -> ModelAdapter:
    tokenizer = tiny.module.build_tokenizer()
    return tiny.adapter_class(tiny.module.build_model(0, tokenizer), tiny.module.build_processor(tokenizer))


@pytest.mark.parametrize("question", [box_prompt("red circle"), list_prompt(CATEGORY_NAMES),
                                      binary_prompt("black arrow")])
def test_prompts_have_no_unknown_tokens(adapter, question):
    """Every word of the paper's three prompts is in the vocabulary."""
    ids = adapter.tokenizer(adapter.chat_text(question)).input_ids
    assert adapter.tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("kind", ["box", "list", "yes", "no"])
def test_answers_decode_to_their_text(tiny, adapter, kind):
    """Word-level tokens with single digits decode back to exactly the answer text, the end-of-turn token
    dropped."""
    answer = {"box": tiny.box_answer, "list": "red circle, blue square", "yes": "Yes", "no": "No"}[kind]
    ids = adapter.tokenizer(tiny.module.REPLY.format(answer=answer), add_special_tokens=False).input_ids
    assert adapter.tokenizer.unk_token_id not in ids
    assert adapter.tokenizer.decode(ids, skip_special_tokens=True).strip() == answer


def test_training_first_turn_equals_what_evaluation_encodes(tiny, adapter):
    """The training chat's first prompt is token-for-token the processor's encoding of the same question
    (image placeholder expanded to the image's views), and the answer starts right after it."""
    for seed in (3, 4, 5):
        scene = generate_scenes(1, seed=seed)[0]
        builder = ChatBuilder(adapter, 5, random.Random(0), tiny.module.FOLLOW_UP_TURN, tiny.module.REPLY)
        ids, labels = builder.encode(scene)
        first_question = ChatBuilder(adapter, 5, random.Random(0)).turns(scene)[0][0]
        encoded = adapter.encode([render_scene(scene)], [first_question])["input_ids"][0].tolist()
        assert ids[: len(encoded)] == encoded
        assert all(label == -100 for label in labels[: len(encoded)])
        assert labels[len(encoded)] != -100


def test_config_has_structure_for_layer_and_head_claims(adapter):
    """At least 6 LM layers and 4 query heads sharing key/value heads (GQA)."""
    layout = adapter.head_layout()
    assert layout.n_layers >= 6 and layout.n_query_heads >= 4 and layout.n_kv_heads < layout.n_query_heads


def test_the_recipe_in_training_has_room_for_layer_bands_and_head_circuits(tiny):
    """Issue 14's organisms: at least 12 LM layers of 8 query heads sharing fewer key/value heads (GQA), and
    for tiny-llava a 16 x 16 grid; the tower's pre-training pools by max (image-level labels only)."""
    tokenizer = tiny.module.build_tokenizer()
    config = tiny.module.build_config(tokenizer, recipe=tiny.module.TRAINING)
    text = config.text_config
    assert text.num_hidden_layers >= 12 and text.num_attention_heads >= 8
    assert text.num_key_value_heads < text.num_attention_heads
    assert tiny.module.RECIPES[tiny.module.TRAINING].tower_pooling == "max"
    if tiny.family == "llava":
        assert config.image_seq_length == 16 * 16


def test_image_geometry(tiny, adapter):
    """tiny-llava: one 12x12 grid. tiny-internvl: up to 6 tiles of 6x6 tokens plus a 6x6 thumbnail."""
    if tiny.family == "llava":
        assert adapter.n_image_tokens(300, 200) == 144
    else:
        views = adapter.views(300, 200)
        assert len(views) == 7 and views[-1].kind == "global" and {v.n_tokens for v in views} == {36}
        assert len(adapter.views(3000, 100)) <= 7


def test_shipped_checkpoint_is_small_and_matches_the_builder(tiny):
    """The shipped weights stay a few MiB and were made by this package's builder (same config)."""
    if not (tiny.shipped / "config.json").is_file():
        pytest.skip(f"shipped {tiny.folder} not present")
    assert (tiny.shipped / "model.safetensors").stat().st_size < 12 * 2**20
    import transformers

    shipped = getattr(transformers, tiny.config_class).from_pretrained(tiny.shipped)
    built = tiny.module.build_config(tiny.module.build_tokenizer())
    assert shipped.text_config.num_hidden_layers == built.text_config.num_hidden_layers
    assert list(np.atleast_1d(shipped.vision_config.image_size)) == list(np.atleast_1d(built.vision_config.image_size))
    assert shipped.text_config.vocab_size == built.text_config.vocab_size


def test_batched_generation_equals_one_at_a_time(tiny):
    """Identity check: left-padded batched greedy decoding gives each row's single-example answer."""
    from mechanisms.tasks.generation import Generator

    if not (tiny.shipped / "config.json").is_file():
        pytest.skip(f"shipped {tiny.folder} not present")
    shipped = load_adapter(tiny.family, tiny.shipped, torch.float32, "cpu")
    scenes = generate_scenes(3, seed=11)
    images = [render_scene(s) for s in scenes]
    questions = [box_prompt(scenes[0].objects[0].name), list_prompt(CATEGORY_NAMES),
                 binary_prompt(scenes[2].objects[0].name)]
    batched = Generator(shipped, batch_size=3).generate(images, questions, 40)
    single = [Generator(shipped, batch_size=1).generate([i], [q], 40)[0] for i, q in zip(images, questions)]
    assert batched == single


def test_training_mixes_in_bf16_only_where_the_hardware_multiplies_it():
    """An emulated bf16 matmul is ~65x slower than fp32 on an AVX2-only CPU: training must not autocast there."""
    from mechanisms.models.registry import native_bf16
    from mechanisms.organisms.train import mixed_precision

    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with mixed_precision("cpu"):
        product = a @ b
    assert product.dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float32)
    assert native_bf16("cuda")


def test_a_resumed_phase_follows_the_schedule_and_a_longer_one_restarts_warm():
    """Resuming re-warms for 50 steps, then rejoins the same cosine curve; resuming the finished schedule
    with a larger total jumps onto the longer curve (a warm restart) and decays to 10 % of peak at its end."""
    from mechanisms.organisms.train import learning_rate

    peak = 1e-3
    assert learning_rate(5000, 10000, peak, 200, 0) == pytest.approx(peak * 0.55)
    assert learning_rate(5100, 10000, peak, 200, 5000) == learning_rate(5100, 10000, peak, 200, 0)
    assert learning_rate(5000, 10000, peak, 200, 5000) < learning_rate(5000, 10000, peak, 200, 0)
    assert learning_rate(9999, 10000, peak, 200, 0) == pytest.approx(peak * 0.1, rel=1e-3)
    restarted = learning_rate(10060, 20000, peak, 200, 10000)
    assert restarted == pytest.approx(peak * (0.1 + 0.45 * (1 + math.cos(math.pi * 10060 / 20000))))
    assert restarted > 5 * learning_rate(9999, 10000, peak, 200, 0)
    assert learning_rate(19999, 20000, peak, 200, 10000) == pytest.approx(peak * 0.1, rel=1e-3)


def test_the_learning_curves_score_is_the_papers_on_its_own_rows(tiny):
    """`quick_eval` (the learning curve) averages success at IoU 0.5 / 0.7 / 0.9 over exactly the objects
    `heldout_boxes` answers (what `scripts/where_boxes_miss.py` breaks down), each IoU that of its parsed
    answer; it stops at the end of the scene that reaches `max_objects`."""
    from mechanisms.geometry import iou
    from mechanisms.organisms.train import heldout_boxes, quick_eval

    if not (tiny.shipped / "config.json").is_file():
        pytest.skip(f"shipped {tiny.folder} not present")
    shipped = load_adapter(tiny.family, tiny.shipped, torch.float32, "cpu")
    scenes = generate_scenes(4, seed=23)
    result, truths, sizes = heldout_boxes(shipped, scenes, max_objects=3)
    first = next(k for k in range(len(scenes)) if sum(len(s.objects) for s in scenes[:k + 1]) >= 3)
    assert len(result.ious) == len(truths) == sum(len(s.objects) for s in scenes[:first + 1])
    for text, truth, (w, h), value in zip(result.answers, truths, sizes, result.ious):
        parsed = shipped.parse_box(text, w, h)
        assert value == (iou(parsed, truth) if parsed else 0.0)
    scored = quick_eval(shipped, scenes, max_objects=3)
    assert scored["n"] == len(result.ious)
    assert scored["loc"] == pytest.approx(np.mean([(result.ious >= t).mean() for t in (0.5, 0.7, 0.9)]))
