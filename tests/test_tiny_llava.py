"""tiny-llava's tokenizer, processor and training encoding agree with what evaluation feeds the model."""

from __future__ import annotations

import random

import pytest
import torch

from mechanisms.adapters.llava import LlavaAdapter
from mechanisms.data.synthetic import CATEGORY_NAMES, generate_scenes, render_scene
from mechanisms.models import tiny_llava
from mechanisms.models.train import ChatBuilder
from mechanisms.prompts import binary_prompt, box_prompt, list_prompt
from mechanisms.registry import REPO_ROOT

SHIPPED = REPO_ROOT / "fixtures" / "models" / "tiny-llava"


@pytest.fixture(scope="module")
def adapter() -> LlavaAdapter:
    tokenizer = tiny_llava.build_tokenizer()
    return LlavaAdapter(tiny_llava.build_model(0, tokenizer), tiny_llava.build_processor(tokenizer))


@pytest.mark.parametrize("question", [box_prompt("red circle"), list_prompt(CATEGORY_NAMES),
                                      binary_prompt("black arrow")])
def test_prompts_have_no_unknown_tokens(adapter, question):
    """Every word of the paper's three prompts is in the vocabulary."""
    ids = adapter.tokenizer(adapter.chat_text(question)).input_ids
    assert adapter.tokenizer.unk_token_id not in ids


@pytest.mark.parametrize("answer", ["[0.12, 0.34, 0.56, 0.78]", "red circle, blue square", "Yes", "No"])
def test_answers_decode_to_their_text(adapter, answer):
    """Word-level tokens with single digits decode back to exactly the answer text."""
    ids = adapter.tokenizer(f" {answer}</s>", add_special_tokens=False).input_ids
    assert adapter.tokenizer.decode(ids, skip_special_tokens=True).strip() == answer


def test_training_first_turn_equals_what_evaluation_encodes(adapter):
    """The training chat's first prompt is token-for-token the processor's encoding of the same question."""
    scene = generate_scenes(1, seed=3)[0]
    builder = ChatBuilder(adapter, max_turns=5, rng=random.Random(0))
    ids, labels = builder.encode(scene)
    question = builder.turns(scene)  # consumes the rng: rebuild with the same seed for the question
    builder = ChatBuilder(adapter, max_turns=5, rng=random.Random(0))
    first_question = builder.turns(scene)[0][0]
    encoded = adapter.encode([render_scene(scene)], [first_question])["input_ids"][0].tolist()
    assert ids[: len(encoded)] == encoded
    assert all(label == -100 for label in labels[: len(encoded)])
    assert labels[len(encoded)] != -100  # the answer starts right after the prompt
    assert question  # several turns were built


def test_config_has_structure_for_layer_and_head_claims(adapter):
    """At least 6 LM layers and 4 query heads (sharing key/value heads: GQA), a 12x12 token grid."""
    layout = adapter.head_layout()
    assert layout.n_layers >= 6 and layout.n_query_heads >= 4 and layout.n_kv_heads < layout.n_query_heads
    assert adapter.n_image_tokens(300, 200) == 144


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="shipped tiny-llava not present")
def test_shipped_checkpoint_is_small_and_matches_the_builder():
    """The shipped weights stay a few MiB and were made by this package's builder (same config)."""
    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size < 12 * 2**20
    from transformers import LlavaConfig

    shipped = LlavaConfig.from_pretrained(SHIPPED)
    built = tiny_llava.build_config(tiny_llava.build_tokenizer())
    assert shipped.text_config.num_hidden_layers == built.text_config.num_hidden_layers
    assert shipped.vision_config.image_size == built.vision_config.image_size
    assert shipped.text_config.vocab_size == built.text_config.vocab_size


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="shipped tiny-llava not present")
def test_batched_generation_equals_one_at_a_time():
    """Identity check: left-padded batched greedy decoding gives each row's single-example answer."""
    from mechanisms.adapters.llava import load_llava
    from mechanisms.evaluation import Generator

    shipped = load_llava(SHIPPED, torch.float32, "cpu")
    scenes = generate_scenes(3, seed=11)
    images = [render_scene(s) for s in scenes]
    questions = [box_prompt(scenes[0].objects[0].name), list_prompt(CATEGORY_NAMES),
                 binary_prompt(scenes[2].objects[0].name)]
    batched = Generator(shipped, batch_size=3).generate(images, questions, 40)
    single = [Generator(shipped, batch_size=1).generate([i], [q], 40)[0] for i, q in zip(images, questions)]
    assert batched == single
