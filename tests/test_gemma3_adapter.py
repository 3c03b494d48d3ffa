"""The Gemma 3 adapter on a stand-in real in everything but the weights (`tests/standins.py`): gemma-3-4b-it's
own tokenizer (262k SentencePiece-BPE), chat template and image processor (896 px, 16 x 16 pooled tokens per
view), pan-and-scan as the gemma3_4b profile turns it on; its config shrunk with GQA, sliding-window and
global layers kept.

Checked: the views (whole image, then the processor's own crops) against what the processor does to rendered
masks; visual tokens and the token types of the bidirectional image block reproduce the model's forward; the
shared-prefix sweeps against full passes (sliding window, Gemma's attention scaling); answers through the real
tokenizer; vision states; every claim runs, the view claims on real local crops.
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
from mechanisms.tasks.specs import BINARY, BOX
from tests.families import (
    PROFILES,
    check_every_claim_runs,
    check_fast_sweeps_match_references,
    check_token_map,
    check_visual_tokens_reproduce_the_forward,
    load_profile_adapter,
    rectangle_image,
)
from tests.standins import gemma3_standin

NAME = "gemma3_4b"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return gemma3_standin(tmp_path_factory.mktemp("gemma3") / NAME)


@pytest.fixture(scope="module")
def adapter(standin):
    return load_profile_adapter(NAME, standin)


def lit_tokens(adapter, pixel_values: torch.Tensor) -> np.ndarray:
    """Which tokens hold a bright pixel: each view's 896 px canvas in 16 x 16 cells of 56 px (4 x 4 patches of
    14 px, pooled into one token), views in the processor's order."""
    ip = adapter.processor.image_processor
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    pixels = (pixel_values * std + mean).mean(1)  # [views, 896, 896]
    g, cell = adapter.grid, adapter.view_size // adapter.grid
    return (pixels.reshape(-1, g, cell, g, cell).amax((2, 4)) > 0.75).reshape(-1).numpy()


@st.composite
def image_and_rectangle(draw):
    """Sizes around and beyond pan-and-scan's trigger (aspect >= 1.2, crops >= 256 px), either orientation."""
    long_side, ratio = draw(st.integers(300, 1400)), draw(st.floats(1.0, 3.5))
    width, height = long_side, max(40, int(long_side / ratio))
    if draw(st.booleans()):
        width, height = height, width
    x0, y0 = draw(st.integers(0, width - 4)), draw(st.integers(0, height - 4))
    return width, height, (x0, y0, draw(st.integers(x0 + 3, width)), draw(st.integers(y0 + 3, height)))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_and_rectangle())
def test_mask_to_view_tokens_matches_the_processor(adapter, case):
    """A white rectangle through the real processor (pan-and-scan on): as many views as it makes, the whole image
    first; in each, the tokens it lights are those the adapter selects, up to the resize blur on the border."""
    width, height, box = case
    image, mask = rectangle_image(width, height, box)
    batch = adapter.encode([image], [box_prompt("dog")])
    views = adapter.views(width, height)
    assert batch["pixel_values"].shape[0] == len(views)
    assert [v.kind for v in views] == ["global"] + ["local"] * (len(views) - 1)
    assert int(adapter.image_token_mask(batch["input_ids"]).sum()) == adapter.n_image_tokens(width, height)
    check_token_map(views, mask, lit_tokens(adapter, batch["pixel_values"]), box)


@pytest.mark.parametrize("size, crops", [((640, 480), 2), ((1000, 400), 3), ((400, 1300), 3), ((500, 480), 0),
                                         ((300, 240), 0)])  # 300 x 240: crops would be under 256 px
def test_pan_and_scan_crops_are_the_processors(adapter, size, crops):
    assert len(adapter.crops(*size)) == crops
    batch = adapter.encode([Image.new("RGB", size)], ["Hi"])
    ids = batch["input_ids"][0]
    start, end = adapter.tokenizer.convert_tokens_to_ids(["<start_of_image>", "<end_of_image>"])
    assert int((ids == start).sum()) == int((ids == end).sum()) == crops + 1  # one block per view


def test_the_checkpoints_own_pan_and_scan_settings_are_the_ones_used(tmp_path):
    """A preprocessor_config that sets a crop minimum (64 px here, the hub's is null) is what the processor
    crops with, because the adapter passes every setting its views depend on explicitly (the processor alone
    would fall back to its class default of 256 px and the views would not be its crops)."""
    adapter = load_profile_adapter(NAME, gemma3_standin(tmp_path / NAME, pan_and_scan_min_crop_size=64))
    assert len(adapter.crops(300, 240)) == 2
    batch = adapter.encode([Image.new("RGB", (300, 240))], ["Hi"])
    assert batch["pixel_values"].shape[0] == len(adapter.views(300, 240)) == 3
    assert int(adapter.image_token_mask(batch["input_ids"]).sum()) == adapter.n_image_tokens(300, 240) == 768


def test_visual_tokens_and_token_types_reproduce_the_models_forward(adapter):
    """Visual tokens fed back with the token types (the bidirectional image block), also for one prompt repeated
    over rows (Integrated Gradients' steps), give the pixel forward's logits; without the token types the image
    block would be causal and the logits differ (the layout keywords matter)."""
    images = [Image.new("RGB", (640, 480), (200, 30, 30)), Image.new("RGB", (300, 300), (30, 30, 200))]
    assert [adapter.n_image_tokens(*im.size) for im in images] == [768, 256]
    one = check_visual_tokens_reproduce_the_forward(adapter, images)
    with torch.no_grad():
        features = adapter.visual_tokens(one)
        typed = adapter.model(input_ids=one["input_ids"], **adapter.visual_inputs(features),
                              **adapter.layout_inputs(one), logits_to_keep=4).logits
        causal = adapter.model(input_ids=one["input_ids"], **adapter.visual_inputs(features), logits_to_keep=4).logits
    assert not torch.allclose(causal, typed)


def test_the_fast_circuit_sweeps_match_the_references(adapter):
    """Mediation on the shared prefix and the knockout decoder (Gemma's sliding-window layers, q/k norms and
    query_pre_attn_scalar scaling, GQA 2:1) equal one full pass per head / one `generate` per group."""
    check_fast_sweeps_match_references(adapter, PROFILES[NAME])


def test_vision_states_are_each_views_64x64_patch_grid(adapter):
    """Row-major order: on an image the processor does not resize, a patch-aligned rectangle changes exactly its
    own patches' embeddings (SigLIP adds position embeddings: compared with an all-black image's)."""
    image, _ = rectangle_image(896, 896, (0, 0, 448, 224))
    batch = adapter.encode([image, Image.new("RGB", (896, 896))], ["Hi", "Hi"])
    with torch.no_grad():
        layers, grids = adapter.vision_hidden_states(batch)
    assert grids == [(64, 64)] * 2 and len(layers) == adapter.model.config.vision_config.num_hidden_layers + 1
    embeds, black = layers[0][0].reshape(64, 64, -1), layers[0][1].reshape(64, 64, -1)
    differs = ((embeds - black).abs().amax(-1) > 1e-4).numpy()
    expected = np.zeros((64, 64), dtype=bool)
    expected[:16, :32] = True
    np.testing.assert_array_equal(differs, expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(box=st.tuples(st.floats(0, 0.45), st.floats(0, 0.45), st.floats(0.55, 1), st.floats(0.55, 1)),
       size=st.tuples(st.integers(40, 2000), st.integers(40, 2000)))
def test_box_answers_round_trip_on_the_0_1000_scale(adapter, box, size):
    width, height = size
    truth = Box(box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    text = adapter.format_box(truth, width, height)
    assert text.startswith('{"box_2d": [')
    parsed = adapter.parse_box(text, width, height)
    for got, want, side in zip(parsed.as_list(), truth.as_list(), (width, height, width, height)):
        assert abs(got - want) <= side / 1000 / 2 + 1e-6


@pytest.mark.parametrize("written, expected", [
    ('```json\n[\n  {"box_2d": [100, 200, 500, 700], "label": "dog"}\n]\n```', (200, 100, 700, 500)),
    ('{"box_2d": [100, 200, 500, 700]}', (200, 100, 700, 500)),
    ("The dog is at [100, 200, 500, 700].", (200, 100, 700, 500)),
    ('{"box_2d": [500, 200, 100, 700]}', None),  # y1 < y0
    ("I can't see a dog.", None),
])
def test_answers_survive_decoding(adapter, written, expected):
    """Through Gemma's real tokenizer and back (end of turn dropped); y first, 0-1000 of a 1000 x 1000 image."""
    ids = adapter.tokenizer(written + "<end_of_turn>", add_special_tokens=False)["input_ids"]
    (decoded,) = adapter.decode_answers(torch.tensor([ids]))
    assert decoded == written
    parsed = adapter.parse_box(decoded, 1000, 1000)
    assert (parsed is None) == (expected is None)
    if expected:
        assert parsed.as_list() == pytest.approx(list(expected))


def test_template_teacher_forcing_and_layout(adapter):
    """Gemma's template (<start_of_turn>user ... <start_of_turn>model) after exactly one <bos> (the template
    writes one and the tokenizer adds one: the text drops the template's), the answer right after it, digits
    scored, the binary answer one token; GQA 8:4 in the head layout."""
    text = adapter.chat_text("Is there a dog in the image?")
    assert text == ("<start_of_turn>user\n<start_of_image>Is there a dog in the image?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    image = Image.new("RGB", (640, 480))
    answer = adapter.format_box(Box(64, 48, 320, 240), 640, 480)
    inputs, span = adapter.encode_with_answer(image, box_prompt("dog"), answer)
    ids = inputs["input_ids"][0, span]
    assert adapter.tokenizer.decode(ids) == answer
    assert int((inputs["input_ids"][0] == adapter.tokenizer.bos_token_id).sum()) == 1  # no second <bos>
    scored = BOX.scored_tokens(adapter, ids)
    assert adapter.tokenizer.decode(ids[scored]).replace(" ", "") == "".join(c for c in answer if c.isdigit())
    yes, yes_span = adapter.encode_with_answer(image, "Is there a dog in the image?", adapter.yes_answer)
    assert yes_span.stop - yes_span.start == 1 and BINARY.scored_tokens(adapter, yes["input_ids"][0, yes_span]).all()
    layout = adapter.head_layout()
    assert (layout.n_query_heads, layout.n_kv_heads, layout.head_dim) == (8, 4, 16)


def test_every_claim_runs_on_the_stand_in(tmp_path):
    """Every claim through --model-path; the view claims run on local crops. The suite's synthetic scenes are
    120-400 px, under the real 256 px crop minimum for two crops, so this stand-in's processor crops from 64 px
    (the only setting changed, and only here)."""
    checkpoint = gemma3_standin(tmp_path / NAME, pan_and_scan_min_crop_size=64)
    report = check_every_claim_runs(NAME, checkpoint, tmp_path, multi_view=True)
    views = [e for e in report["claims"] if "global_local" in e["nodeid"]]
    assert views and all(e["outcome"] != "skipped" for e in views)
