"""The LLaVA-OneVision adapter on a stand-in assembled from llava-onevision-qwen2-7b-ov-hf's published settings
(`tests/standins.py` says which file is whose): Qwen2's BPE with OneVision's `<image>`/`<video>` tokens, the
llava-hf chat template, the anyres image processor (36 grid pinpoints, 384 px crops) and the model's own
unpadding, anyres_max_9 shrinking and image-newline tokens; a Qwen2 LM with 28 query / 4 key-value heads.

The token map is checked against the processor's pixels laid out by the model's own `pack_image_features`
(unpadding, shrinking and newlines included); visual tokens reproduce the model's forward; the shared-prefix
sweeps match full passes; answers; vision states; every claim runs, the view claims on base view + crops.
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
from tests.standins import llava_onevision_standin

NAME = "llavaov7b"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return llava_onevision_standin(tmp_path_factory.mktemp("onevision") / NAME)


@pytest.fixture(scope="module")
def adapter(standin):
    return load_profile_adapter(NAME, standin)


def lit_tokens(adapter, batch: dict) -> np.ndarray:
    """Which of the image's LM tokens hold a bright pixel, and where the row-end tokens are: each SigLIP patch's
    brightest pixel (of the processor's own crops) as a one-channel feature, laid out by the model's own
    `pack_image_features` (base view, crops unpadded, shrunk, an image-newline marker after each row)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    model, ip = adapter.model, adapter.processor.image_processor
    config, p, patch = model.config, adapter.patches, model.config.vision_config.patch_size
    n = image_size_to_num_patches(batch["image_sizes"][0].tolist(), config.image_grid_pinpoints,
                                  config.vision_config.image_size)
    mean, std = torch.tensor(ip.image_mean)[:, None, None], torch.tensor(ip.image_std)[:, None, None]
    pixels = (batch["pixel_values"][0, :n] * std + mean).mean(1)[:, :p * patch, :p * patch]
    bright = pixels.reshape(n, p, patch, p, patch).amax((2, 4)).reshape(n, p * p, 1)
    (packed,), _ = model.model.pack_image_features([bright], batch["image_sizes"], image_newline=torch.tensor([-1.0]),
                                                   vision_aspect_ratio=config.vision_aspect_ratio)
    return packed[:, 0].numpy()


@st.composite
def image_and_rectangle(draw):
    width, height = draw(st.integers(60, 1300)), draw(st.integers(60, 1300))
    x0, y0 = draw(st.integers(0, width - 4)), draw(st.integers(0, height - 4))
    return width, height, (x0, y0, draw(st.integers(x0 + 3, width)), draw(st.integers(y0 + 3, height)))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_and_rectangle())
def test_mask_to_view_tokens_matches_the_processor_and_the_models_packing(adapter, case):
    """A white rectangle through the real processor and the model's own packing: the base view's and the crops'
    lit tokens are those the adapter selects, up to resampling blur on the border (and, in the crops, the
    uniform-cell approximation of ~6 px per 384 px crop); the row-end tokens are where the views put them."""
    width, height, box = case
    image, mask = rectangle_image(width, height, box)
    batch = adapter.encode([image], [box_prompt("dog")])
    views = adapter.views(width, height)
    assert [v.kind for v in views] == ["global", "local"]
    values = lit_tokens(adapter, batch)
    assert len(values) == adapter.n_image_tokens(width, height) == int(adapter.image_token_mask(batch["input_ids"]).sum())
    row_end = np.concatenate([~v.grid_slots() for v in views])
    np.testing.assert_array_equal(values == -1.0, row_end)  # the image-newline marker, exactly there
    check_token_map(views, mask, values > 0.5, box)


def test_visual_tokens_reproduce_the_models_forward(adapter):
    check_visual_tokens_reproduce_the_forward(adapter, [Image.new("RGB", (400, 300), (200, 30, 30)),
                                                        Image.new("RGB", (200, 350), (30, 30, 200))])


def test_the_fast_circuit_sweeps_match_the_references(adapter):
    check_fast_sweeps_match_references(adapter, PROFILES[NAME])


def test_vision_states_follow_the_views(adapter):
    """Two vision 'views' per image as `views` lays them out: the base view's 27 x 27 patches, and the crops'
    patches unpadded as the model unpads them (before shrinking)."""
    batch = adapter.encode([Image.new("RGB", (400, 300)), Image.new("RGB", (200, 350))], ["Hi", "Hi"])
    with torch.no_grad():
        layers, grids = adapter.vision_hidden_states(batch)
    assert len(layers) == adapter.model.config.vision_config.num_hidden_layers + 1
    assert len(layers[0]) == len(grids) == 4 and grids[0] == grids[2] == (27, 27)
    for (rows, cols), states in zip(grids, layers[-1]):
        assert states.shape[0] == rows * cols
    for size, (rows, cols) in zip([(400, 300), (200, 350)], grids[1::2]):
        assert (rows, cols) == adapter.crop_layout(*size)["unpadded"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(box=st.tuples(st.floats(0, 0.45), st.floats(0, 0.45), st.floats(0.55, 1), st.floats(0.55, 1)),
       size=st.tuples(st.integers(40, 2000), st.integers(40, 2000)))
def test_box_answers_round_trip(adapter, box, size):
    width, height = size
    truth = Box(box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    parsed = adapter.parse_box(adapter.format_box(truth, width, height), width, height)
    for got, want, side in zip(parsed.as_list(), truth.as_list(), (width, height, width, height)):
        assert abs(got - want) <= side * 0.005 + 1e-6


def test_template_teacher_forcing_and_layout(adapter):
    text = adapter.chat_text("Is there a dog in the image?")
    assert text == "<|im_start|>user\n<image>\nIs there a dog in the image?<|im_end|>\n<|im_start|>assistant\n"
    answer = adapter.format_box(Box(40, 30, 200, 150), 400, 300)
    inputs, span = adapter.encode_with_answer(Image.new("RGB", (400, 300)), box_prompt("dog"), answer)
    ids = inputs["input_ids"][0, span]
    assert adapter.tokenizer.decode(ids) == answer == "[0.10, 0.10, 0.50, 0.50]"
    assert int(BOX.scored_tokens(adapter, ids).sum()) == 8  # two decimals of four numbers, "0." masked
    layout = adapter.head_layout()
    assert (layout.n_query_heads, layout.n_kv_heads) == (28, 4)


def test_every_claim_runs_on_the_stand_in(standin, tmp_path):
    report = check_every_claim_runs(NAME, standin, tmp_path, multi_view=True)
    views = [e for e in report["claims"] if "global_local" in e["nodeid"]]
    assert views and all(e["outcome"] != "skipped" for e in views)
