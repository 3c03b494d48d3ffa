"""The Qwen-VL adapters on stand-ins real in everything but the weights (`tests/standins.py`): Qwen2.5-VL-7B's
and Qwen3-VL-8B's own tokenizer, chat template and image processor (smart_resize to multiples of 28 / 32,
2 x 2 merge), their configs shrunk in depth and width with the head counts (GQA) and M-RoPE kept.

The pixel -> token map is checked against what the real processor does to rendered masks; the token count
against the processor's; multimodal RoPE against the model's own `get_rope_index` (a shared prefix with
shifted suffix positions, and a forward on embeddings, reproduce the model's own forward); the vision
tower's window order against its merger; the answer format through the real tokenizer; and every claim runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mechanisms.geometry import Box
from mechanisms.tasks.prompts import box_prompt
from mechanisms.tasks.specs import BOX
from tests.families import (
    PROFILES,
    check_every_claim_runs,
    check_fast_sweeps_match_references,
    check_token_map,
    check_visual_tokens_reproduce_the_forward,
    load_profile_adapter,
    rectangle_image,
)
from tests.standins import qwen2_5_vl_standin, qwen3_vl_standin

FAMILIES = {"qwen25vl7b": qwen2_5_vl_standin, "qwen3vl8b": qwen3_vl_standin}


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-standins")
    return {name: build(root / name) for name, build in FAMILIES.items()}


@pytest.fixture(scope="module")
def adapters(standins):
    return {name: load_profile_adapter(name, standins[name]) for name in FAMILIES}


def lit_tokens(adapter, pixel_values: torch.Tensor) -> np.ndarray:
    """Which LM tokens hold a bright pixel, from the processor's own patches: each row of `pixel_values` is one
    patch (channels x 2 frames x p x p, normalised), merge groups of 2 x 2 consecutive patches are one token."""
    ip = adapter.processor.image_processor
    p = ip.patch_size
    patches = pixel_values.reshape(pixel_values.shape[0], 3, ip.temporal_patch_size, p, p)
    mean, std = torch.tensor(ip.image_mean), torch.tensor(ip.image_std)
    pixels = patches * std[None, :, None, None, None] + mean[None, :, None, None, None]
    bright = pixels.mean(1).amax((1, 2, 3)) > 0.75
    return bright.reshape(-1, ip.merge_size ** 2).any(1).numpy()


@st.composite
def image_and_rectangle(draw):
    width, height = draw(st.integers(40, 900)), draw(st.integers(40, 900))
    x0, y0 = draw(st.integers(0, width - 4)), draw(st.integers(0, height - 4))
    return width, height, (x0, y0, draw(st.integers(x0 + 3, width)), draw(st.integers(y0 + 3, height)))


@pytest.mark.parametrize("name", list(FAMILIES))
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_and_rectangle())
def test_mask_to_tokens_matches_the_processor(adapters, name, case):
    """A white rectangle through the real image processor (smart_resize, patches, 2 x 2 merge groups): the
    tokens it lights are those the adapter's view selects, up to the resize blur on the one-token border; the
    token count is the processor's."""
    adapter = adapters[name]
    width, height, box = case
    image, mask = rectangle_image(width, height, box)
    batch = adapter.encode([image], [box_prompt("dog")])
    views = adapter.views(width, height)
    assert int(adapter.image_token_mask(batch["input_ids"]).sum()) == adapter.n_image_tokens(width, height)
    t, h, w = batch["image_grid_thw"][0].tolist()
    merge = adapter.merge
    assert (t, h // merge, w // merge) == (1, views[0].rows, views[0].cols)
    check_token_map(views, mask, lit_tokens(adapter, batch["pixel_values"]), box)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_visual_tokens_and_positions_reproduce_the_models_own_forward(adapters, name):
    """Visual tokens fed back (with the layout keywords), also for one prompt repeated over rows (Integrated
    Gradients' steps), give the pixel forward's logits; the text after the image sits at index + offset."""
    adapter = adapters[name]
    one = check_visual_tokens_reproduce_the_forward(adapter, [Image.new("RGB", (400, 300), (200, 30, 30)),
                                                              Image.new("RGB", (150, 420), (30, 30, 200))])
    positions, _ = adapter.model.model.get_rope_index(one["input_ids"], one["mm_token_type_ids"],
                                                      image_grid_thw=one["image_grid_thw"])
    view = adapter.views(400, 300)[0]
    last_image = int(adapter.image_token_mask(one["input_ids"])[0].nonzero()[-1])
    offset = adapter.text_position_offset(one)
    assert offset == -(view.rows * view.cols - max(view.rows, view.cols))  # R*C tokens, max(R, C) positions
    assert int(positions[0, 0, last_image + 1]) == last_image + 1 + offset


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_fast_circuit_sweeps_match_the_references(adapters, name):
    """Mediation on the shared prefix and the knockout sweep's greedy decoder, with M-RoPE's shifted suffix
    positions and Qwen's GQA, equal one full forward per head / one `generate` per group (float64)."""
    check_fast_sweeps_match_references(adapters[name], PROFILES[name])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_vision_states_are_each_images_patch_grid_in_row_major_order(adapters, name):
    """Every vision layer per image on its own (H/p) x (W/p) grid. Row-major order: on an image the processor
    does not resize (448 x 224: multiples of 28 and 32) with a patch-aligned rectangle, the patch embeddings
    differ from the black background's exactly on the rectangle's patches; and the last block's states, put
    back in merge-group order, give the model's own visual tokens through its merger (window order undone)."""
    adapter = adapters[name]
    image, _ = rectangle_image(448, 224, (112, 0, 336, 112))
    batch = adapter.encode([image, Image.new("RGB", (120, 90))], ["Hi", "Hi"])
    with torch.no_grad():
        layers, grids = adapter.vision_hidden_states(batch)
        features = adapter.visual_tokens(batch)
    tower, p, merge = adapter.model.model.visual, adapter.patch, adapter.merge
    assert len(layers) == len(tower.blocks) + 1 and len(layers[0]) == 2
    assert grids == [(int(h), int(w)) for _, h, w in batch["image_grid_thw"].tolist()]
    rows, cols = grids[0]
    assert (rows, cols) == (224 // p, 448 // p)
    embeds = layers[0][0].reshape(rows, cols, -1)
    differs = ((embeds - embeds[-1, 0]).abs().amax(-1) > 1e-4).numpy()
    expected = np.zeros((rows, cols), dtype=bool)
    expected[:112 // p, 112 // p:336 // p] = True
    np.testing.assert_array_equal(differs, expected)
    last = layers[-1][0].reshape(rows // merge, merge, cols // merge, merge, -1).permute(0, 2, 1, 3, 4)
    with torch.no_grad():
        merged = tower.merger(last.reshape(rows * cols, -1))
    torch.testing.assert_close(merged, features[0][:, :merged.shape[-1]], rtol=1e-5, atol=1e-5)  # (+ deepstack)


@pytest.mark.parametrize("name", list(FAMILIES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(box=st.tuples(st.floats(0, 0.45), st.floats(0, 0.45), st.floats(0.55, 1), st.floats(0.55, 1)),
       size=st.tuples(st.integers(40, 2000), st.integers(40, 2000)))
def test_box_answers_round_trip(adapters, name, box, size):
    """`{"bbox_2d": [...]}` in the family's units (Qwen2.5-VL: pixels of the resized image; Qwen3-VL: 0-1000)
    survives writing and reading to within half a unit."""
    adapter = adapters[name]
    width, height = size
    truth = Box(box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    text = adapter.format_box(truth, width, height)
    assert text.startswith('{"bbox_2d": [')
    parsed = adapter.parse_box(text, width, height)
    sx, sy = adapter._box_scale(width, height)
    for got, want, unit in zip(parsed.as_list(), truth.as_list(), (1 / sx, 1 / sy, 1 / sx, 1 / sy)):
        assert abs(got - want) <= unit / 2 + 1e-6


@pytest.mark.parametrize("written, expected", [
    ('```json\n[\n\t{"bbox_2d": [120, 60, 300, 240], "label": "dog"}\n]\n```', (120, 60, 300, 240)),
    ('{"bbox_2d": [120, 60, 300, 240]}', (120, 60, 300, 240)),
    ('The dog is at [120, 60, 300, 240].', (120, 60, 300, 240)),
    ('{"label": "dog", "bbox_2d": [300, 60, 120, 240]}', None),  # x1 < x0: not a box
    ("There is no dog.", None),
])
def test_answers_as_qwen_writes_them_survive_decoding(adapters, written, expected):
    """Through the real tokenizer and back (end-of-turn dropped): the JSON grounding answer, fenced or not."""
    adapter = adapters["qwen25vl7b"]
    ids = adapter.tokenizer(written + "<|im_end|>", add_special_tokens=False)["input_ids"]
    (decoded,) = adapter.decode_answers(torch.tensor([ids]))
    assert decoded == written
    width, height = 420, 280  # resized to itself (multiples of 28): answer pixels are image pixels
    assert adapter.resized(width, height) == (width, height)
    parsed = adapter.parse_box(decoded, width, height)
    assert (parsed is None) == (expected is None)
    if expected:
        assert parsed.as_list() == pytest.approx(list(expected))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_template_and_teacher_forced_box(adapters, name):
    """Qwen's chat template (its default system turn), the answer right after "assistant\\n", and every digit
    of the JSON box scored (Qwen's tokenizer writes one digit per token)."""
    adapter = adapters[name]
    text = adapter.chat_text("Is there a dog in the image?")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n") or name == "qwen3vl8b"
    assert text.endswith("<|vision_start|><|image_pad|><|vision_end|>Is there a dog in the image?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    answer = adapter.format_box(Box(40, 30, 200, 150), 420, 280)
    inputs, span = adapter.encode_with_answer(Image.new("RGB", (420, 280)), box_prompt("dog"), answer)
    ids = inputs["input_ids"][0, span]
    scored = BOX.scored_tokens(adapter, ids)
    assert adapter.tokenizer.decode(ids) == answer
    assert adapter.tokenizer.decode(ids[scored]).replace(" ", "") == "".join(c for c in answer if c.isdigit())


def test_head_layout_and_loader_settings(adapters):
    layout = adapters["qwen25vl7b"].head_layout()
    assert (layout.n_query_heads, layout.n_kv_heads) == (28, 4)
    layout = adapters["qwen3vl8b"].head_layout()
    assert (layout.n_query_heads, layout.n_kv_heads) == (32, 8)
    assert adapters["qwen25vl7b"].model.generation_config.repetition_penalty == 1.0  # the hub's 1.05, reset


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_claim_runs_on_the_stand_in(standins, name, tmp_path):
    """Every claim through --model-path: each records and fails or is inconclusive on random weights (one view:
    the view claims skip saying so); the positional claims note that M-RoPE hands the LM 2-D positions."""
    report = check_every_claim_runs(name, standins[name], tmp_path, multi_view=False)
    notes = {e["nodeid"].split("::")[-1].split("[")[0]: e.get("notes", []) for e in report["claims"]}
    rebuild = notes["test_the_language_model_rebuilds_position_to_a_peak"]
    assert "multimodal RoPE" in str(rebuild)
