"""The paper's checkpoints' conventions, on stand-ins real in everything but the weights (`tests/standins.py`).

Unit tests of everything tokenizer-dependent on the real tokenizers and templates (image-token positions,
the system prompt, teacher forcing, the scored-token rule, answers as each real model writes them, the
binary answer), and an end-to-end run of every claim on a llava7b-, llava13b- and internvl8b-shaped
checkpoint through `--model-path`: random weights fail the claims, nothing may error.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mechanisms.geometry import Box
from mechanisms.models.adapters import load_adapter
from mechanisms.models.registry import load_profiles
from mechanisms.tasks.prompts import box_prompt
from mechanisms.tasks.specs import BINARY, BOX
from tests.families import check_every_claim_runs, check_fast_sweeps_match_references
from tests.standins import BUILDERS

PROFILES = load_profiles()
FAMILY = {"llava7b": "llava", "llava13b": "llava", "internvl8b": "internvl"}


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def adapters(standins):
    return {name: load_adapter(FAMILY[name], path, torch.float32, "cpu", PROFILES[name].system_prompt)
            for name, path in standins.items()}


@pytest.mark.parametrize("name", ["llava7b", "llava13b"])
def test_llava_template_and_image_tokens(adapters, name):
    adapter = adapters[name]
    assert adapter.head_layout().n_query_heads == (32 if name == "llava7b" else 40)
    text = adapter.chat_text("Is there a dog in the image?")
    assert text == (PROFILES[name].system_prompt + " USER: <image>\nIs there a dog in the image? ASSISTANT:")
    adapter.system_prompt = None  # llava-hf's own template: no system text
    try:
        ids = adapter.encode([Image.new("RGB", (640, 480))], ["Is there a dog in the image?"])["input_ids"][0]
    finally:
        adapter.system_prompt = PROFILES[name].system_prompt
    assert ids[:5].tolist() == [1, 3148, 1001, 29901, 29871]  # <s> USER: (as the real checkpoint tokenizes it)
    positions = (ids == 32000).nonzero()[:, 0]
    assert len(positions) == 576 == adapter.n_image_tokens(640, 480)
    assert (positions.diff() == 1).all()  # one contiguous block, in place of <image>


@pytest.mark.parametrize("size, tokens", [((640, 480), 1792), ((400, 120), 1024), ((300, 300), 256)])
def test_internvl_image_tokens_follow_the_tiles(adapters, size, tokens):
    adapter = adapters["internvl8b"]
    ids = adapter.encode([Image.new("RGB", size)], ["Is there a dog in the image?"])["input_ids"][0]
    assert int((ids == 151671).sum()) == tokens == adapter.n_image_tokens(*size)
    assert int((ids == 151669).sum()) == 1 and int((ids == 151670).sum()) == 1  # <img> ... </img>
    text = adapter.chat_text("Is there a dog in the image?")
    assert text.startswith("<|im_start|>system\n" + PROFILES["internvl8b"].system_prompt + "<|im_end|>\n")
    assert text.endswith("<|im_start|>user\n<IMG_CONTEXT>\nIs there a dog in the image?<|im_end|>\n"
                         "<|im_start|>assistant\n")


@pytest.mark.parametrize("name, total, scored", [("llava7b", 24, 8), ("llava13b", 24, 8), ("internvl8b", 22, 12)])
def test_teacher_forced_box_answer_and_its_scored_tokens(adapters, name, total, scored):
    """The GT box as the family writes it: its tokens split cleanly from the prompt's, and the one scored-token
    rule keeps the digits that carry a choice (LLaVA: 8 of 24 after masking "0."; InternVL: all 12)."""
    adapter = adapters[name]
    image = Image.new("RGB", (640, 480))
    answer = adapter.format_box(Box(64, 48, 320, 240), 640, 480)
    inputs, span = adapter.encode_with_answer(image, box_prompt("dog"), answer)
    ids = inputs["input_ids"][0, span]
    assert len(ids) == total and int(BOX.scored_tokens(adapter, ids).sum()) == scored
    assert adapter.parse_box(adapter.tokenizer.decode(ids), 640, 480) is not None
    yes_inputs, yes_span = adapter.encode_with_answer(image, "Is there a dog in the image?", adapter.yes_answer)
    assert yes_span.stop - yes_span.start == 1  # "Yes" is one token in both real tokenizers
    assert BINARY.scored_tokens(adapter, yes_inputs["input_ids"][0, yes_span]).all()


@pytest.mark.parametrize("name", ["llava7b", "llava13b", "internvl8b"])
@pytest.mark.parametrize("category, classes", [("dog", ["cat", "dog", "person"]), ("hot dog", ["person", "hot dog"]),
                                               ("cat", ["cat", "dog"])])
def test_ig_attributes_the_class_inside_a_list_answer_with_the_real_tokenizers(adapters, name, category, classes):
    """Classification IG teacher-forces "cat, dog" and attributes only "dog": with the real SentencePiece and
    Qwen BPE tokenizers the earlier classes tokenize as a prefix, and the attributed tokens are the class."""
    from types import SimpleNamespace

    from mechanisms.experiments.attribution import _teacher_forced
    from mechanisms.tasks.specs import LIST

    adapter = adapters[name]
    sample = SimpleNamespace(category=category, image_id=1)
    dataset = SimpleNamespace(classes_in_image=lambda image_id: classes)
    image = Image.new("RGB", (640, 480))
    inputs, span, scored = _teacher_forced(adapter, dataset, sample, LIST, image, "List all objects in the image.")
    answer_ids = inputs["input_ids"][0, span]
    assert adapter.tokenizer.decode(answer_ids[scored]).strip() == category
    assert scored[-1] and (not scored[0] or classes.index(category) == 0)


@pytest.mark.parametrize("written, box", [
    ("<ref>dog</ref><box>[[120, 340, 560, 780]]</box>", (0.12, 0.34, 0.56, 0.78)),
    ("<box>[[120, 340, 560, 780]]</box>", (0.12, 0.34, 0.56, 0.78)),
    ("[[120, 340, 560, 780]]", (0.12, 0.34, 0.56, 0.78)),
])
def test_internvl_answers_survive_decoding(adapters, written, box):
    """`<ref>`/`<box>` are special tokens of InternVL's tokenizer: decoding keeps them, drops the end of turn."""
    adapter = adapters["internvl8b"]
    ids = adapter.tokenizer(written + "<|im_end|><|endoftext|>", add_special_tokens=False)["input_ids"]
    (decoded,) = adapter.decode_answers(torch.tensor([ids]))
    assert decoded == written
    parsed = adapter.parse_box(decoded, 1000, 1000)
    assert (parsed.x0, parsed.y0, parsed.x1, parsed.y1) == pytest.approx(tuple(1000 * v for v in box))


def test_llava_answers_are_read_from_a_sentence(adapters):
    adapter = adapters["llava7b"]
    ids = adapter.tokenizer("The dog is at [0.12, 0.34, 0.56, 0.78].</s>", add_special_tokens=False)["input_ids"]
    (decoded,) = adapter.decode_answers(torch.tensor([ids]))
    assert decoded == "The dog is at [0.12, 0.34, 0.56, 0.78]."
    assert adapter.parse_box(decoded, 100, 100) is not None


@pytest.mark.parametrize("name", ["llava7b", "llava13b", "internvl8b"])
def test_every_claim_runs_on_the_stand_in(standins, name, tmp_path):
    """Every claim on a random-weight stand-in through --model-path: each one records and fails or, at 2
    samples, is inconclusive (the view claims on single-view LLaVA skip with their reason, as does the
    LLaVA-only knockout/probe alignment on InternVL; a claim the paper's own table contradicts for the
    model is reported `contradicted`); none errors."""
    report = check_every_claim_runs(name, standins[name], tmp_path, multi_view=FAMILY[name] == "internvl")
    assert report["model"]["system_prompt"] == PROFILES[name].system_prompt


@pytest.mark.parametrize("name", ["llava7b", "internvl8b"])
def test_the_fast_circuit_sweeps_match_the_references_on_the_stand_in(adapters, name):
    """On the real head layouts (LLaVA: 32 heads; InternVL: Qwen3 with 32 query / 8 key-value heads, q/k
    norms): head mediation on the shared prefix with rows branching in equals one full pass per head, and
    the knockout sweep's answers equal one `generate` per group (float64: the algorithms, not round-off)."""
    check_fast_sweeps_match_references(adapters[name], PROFILES[name])
