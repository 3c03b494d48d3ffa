"""The InternVL adapter on a tiny random-init model with InternVL-3.5's real geometry: 448 px tiles,
patch 14 (32 x 32 patches, pixel-shuffled to 16 x 16 = 256 tokens per view), at most 6 local tiles plus a
global thumbnail, and a Qwen3 LM with grouped-query attention.

Loaded through `load_internvl`, the path real checkpoints take, from a folder saved like a hub
checkpoint (a processor that allows 12 tiles), so the paper's 6-tile cap is exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mechanisms.geometry import Box, dilate
from mechanisms.interventions.selection import object_tokens, per_view
from mechanisms.models.adapters.internvl import InternVLAdapter, load_internvl
from mechanisms.organisms.tiny_internvl import IMAGENET_MEAN, IMAGENET_STD, save_random_real_geometry
from mechanisms.tasks.prompts import box_prompt

TILE, PATCH, GRID = 448, 14, 16
CELL = TILE // GRID  # 28 view pixels per token side


@pytest.fixture(scope="module")
def real_geometry_internvl(tmp_path_factory) -> InternVLAdapter:
    folder = save_random_real_geometry(tmp_path_factory.mktemp("internvl-448"), seed=0)
    return load_internvl(folder, torch.float32, "cpu")


def processed_views(adapter: InternVLAdapter, image: Image.Image) -> torch.Tensor:
    """What the real image processor makes of an image: [n_views, 3, 448, 448] pixels in [0, 1]."""
    pixels = adapter.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    return pixels * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def test_loader_caps_tiles_at_six(real_geometry_internvl):
    assert real_geometry_internvl.processor.image_processor.max_patches == 6
    assert real_geometry_internvl.grid == GRID and real_geometry_internvl.tile_size == TILE


@pytest.mark.parametrize("size, n_tiles", [
    ((448, 448), 1), ((900, 450), 2), ((450, 1300), 3), ((900, 900), 4), ((2200, 440), 5), ((1300, 900), 6),
    ((3000, 300), 6),  # an extreme aspect ratio still stops at the cap
])
def test_views_are_the_processors_tiles_then_the_thumbnail(real_geometry_internvl, size, n_tiles):
    """Tiles 1..6 row-major, the thumbnail last and only with more than one tile; 256 tokens each, wrapped
    in <img> ... </img> in the prompt."""
    adapter = real_geometry_internvl
    image = Image.new("RGB", size, (120, 80, 40))
    views = adapter.views(*size)
    cols, rows = adapter.tile_grid(*size)
    assert cols * rows == n_tiles
    assert len(views) == n_tiles + (n_tiles > 1)
    assert [v.kind for v in views] == (["local"] * n_tiles + ["global"] if n_tiles > 1 else ["global"])
    assert [v.first_token for v in views] == [256 * k for k in range(len(views))]
    batch = adapter.encode([image], [box_prompt("red circle")])
    assert batch["pixel_values"].shape[0] == len(views)
    ids = batch["input_ids"][0].tolist()
    start = ids.index(adapter.processor.start_image_token_id)
    expected = adapter.image_token_ids(*size)
    assert ids[start:start + len(expected)] == expected
    assert len(expected) == 256 * len(views) + 2
    assert adapter.image_token_mask(batch["input_ids"]).sum().item() == adapter.n_image_tokens(*size)


@st.composite
def image_and_rectangle(draw):
    """An image size that the processor tiles into 1..6 tiles (a grid drawn first, sizes jittered around
    it), and a rectangle inside the image."""
    cols, rows = draw(st.sampled_from([(1, 1), (2, 1), (1, 2), (3, 1), (1, 3), (2, 2), (5, 1), (3, 2), (2, 3), (6, 1)]))
    unit = draw(st.integers(60, 260))
    width = max(40, int(cols * unit * draw(st.floats(0.85, 1.15))))
    height = max(40, int(rows * unit * draw(st.floats(0.85, 1.15))))
    x0 = draw(st.integers(0, width - 4))
    y0 = draw(st.integers(0, height - 4))
    x1 = draw(st.integers(x0 + 3, width))
    y1 = draw(st.integers(y0 + 3, height))
    return width, height, (x0, y0, x1, y1)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=image_and_rectangle())
def test_mask_to_view_tokens_matches_processor(real_geometry_internvl, case):
    """The adapter's pixel -> (view, row, col) map agrees with what the processor does to a rendered mask,
    in every local tile and in the thumbnail.

    A white rectangle on black goes through the real image processor (non-uniform resize to the tile
    grid, row-major cut, bicubic thumbnail); the 28 x 28 pixel blocks it lights up in each view are the
    tokens the adapter predicts there, up to the bicubic blur on the rectangle's one-token border.
    """
    adapter = real_geometry_internvl
    width, height, (x0, y0, x1, y1) = case
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    pixels = processed_views(adapter, image)
    views = adapter.views(width, height)
    assert pixels.shape[0] == len(views)
    predicted_grids = per_view(views, object_tokens(views, mask))
    for view, pixel_view, predicted in zip(views, pixels, predicted_grids):
        brightness = pixel_view.mean(0)
        lit = (brightness.reshape(GRID, CELL, GRID, CELL) > 0.75).any(3).any(1).numpy()
        interior = dilate(np.pad(predicted, 1), -1)[1:-1, 1:-1]  # the view's edge is not part of the object
        border = dilate(predicted, 1) & ~interior
        disagreement = predicted ^ lit
        assert not (disagreement & ~border).any(), f"{view.name}: processor and adapter disagree off the border"
        # every token at least half covered by the rectangle (in view pixels) is lit, unless bicubic blur
        # keeps a rectangle thinner than half a token below the "lit" level
        u0, v0, u1, v1 = view.box_to_canvas(Box(x0, y0, x1, y1))
        if min(u1 - u0, v1 - v0) >= CELL / 2:
            edges = np.arange(GRID + 1) * CELL
            cover_x = np.clip(np.minimum(edges[1:], u1) - np.maximum(edges[:-1], u0), 0, None) / CELL
            cover_y = np.clip(np.minimum(edges[1:], v1) - np.maximum(edges[:-1], v0), 0, None) / CELL
            half_covered = np.outer(cover_y, cover_x) >= 0.5
            assert half_covered.any() <= predicted.any()
            assert not (half_covered & ~lit).any(), f"{view.name}: a half-covered token is dark"
            assert not (half_covered & ~predicted).any(), f"{view.name}: a half-covered token is not selected"


@given(x=st.floats(0, 0.999), y=st.floats(0, 0.999), size=st.sampled_from([(448, 448), (900, 450), (1300, 900), (450, 1300)]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_point_lands_in_exactly_one_tile_and_the_thumbnail(real_geometry_internvl, x, y, size):
    """Every image point has one token in exactly one local tile, and one in the thumbnail, where the
    notes' closed-form formulas put it."""
    adapter = real_geometry_internvl
    width, height = size
    px, py = x * width, y * height
    views = adapter.views(width, height)
    cols, rows = adapter.tile_grid(width, height)
    hits = [(k, *v.token_of_point(px, py)) for k, v in enumerate(views)]
    inside = [(k, int(r), int(c)) for k, r, c, ok in hits if ok]
    X, Y = px * cols * TILE / width, py * rows * TILE / height
    tile = int(Y // TILE) * cols + int(X // TILE)
    expected_tile = (tile, int((Y % TILE) // CELL), int((X % TILE) // CELL))
    if len(views) == 1:
        assert inside == [expected_tile]
    else:
        assert inside == [expected_tile, (len(views) - 1, int(py * GRID / height), int(px * GRID / width))]


def test_visual_tokens_reproduce_the_pixel_path_exactly(real_geometry_internvl):
    """Supplying the adapter's visual tokens instead of pixels gives bit-identical logits (the identity
    every token intervention starts from)."""
    adapter = real_geometry_internvl
    images = [Image.new("RGB", (900, 450), (200, 30, 30)), Image.new("RGB", (300, 300), (30, 30, 200))]
    batch = adapter.encode(images, [box_prompt("red circle"), box_prompt("blue square")])
    features = adapter.visual_tokens(batch)
    assert [f.shape[0] for f in features] == [256 * 3, 256]
    with torch.no_grad():
        from_pixels = adapter.model(**batch).logits
        from_tokens = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    **adapter.visual_inputs(features)).logits
    assert torch.equal(from_pixels, from_tokens)


def test_vision_hidden_states_are_each_views_32x32_patch_grid(real_geometry_internvl):
    adapter = real_geometry_internvl
    batch = adapter.encode([Image.new("RGB", (900, 450), (0, 90, 0))], [box_prompt("red circle")])
    states, grids = adapter.vision_hidden_states(batch)
    assert grids == [(32, 32)] * 3
    assert len(states) == adapter.model.config.vision_config.num_hidden_layers + 1
    assert len(states[-1]) == 3 and states[-1][0].shape[0] == 32 * 32


@given(box=st.tuples(st.floats(0, 0.49), st.floats(0, 0.49), st.floats(0.51, 1), st.floats(0.51, 1)),
       size=st.tuples(st.integers(50, 2000), st.integers(50, 2000)))
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_box_answers_round_trip_on_the_0_1000_scale(real_geometry_internvl, box, size):
    """`<box>[[x0, y0, x1, y1]]</box>` with integers relative to the image: a box survives the round trip
    to within the scale's resolution."""
    adapter = real_geometry_internvl
    width, height = size
    truth = Box(box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    text = adapter.format_box(truth, width, height)
    assert text.startswith("<box>[[") and text.endswith("]]</box>")
    parsed = adapter.parse_box(text, width, height)
    for got, want, side in zip(parsed.as_list(), truth.as_list(), (width, height, width, height)):
        assert abs(got - want) <= side / 1000 / 2 + 1e-6


def test_answer_follows_the_assistant_line_directly(real_geometry_internvl):
    """Teacher forcing: the prompt's tokens are a prefix of prompt + answer, and the answer slice holds
    exactly the answer's tokens."""
    adapter = real_geometry_internvl
    image = Image.new("RGB", (600, 400), (10, 10, 10))
    answer = "<box>[[100, 200, 300, 400]]</box>"
    inputs, answer_slice = adapter.encode_with_answer(image, box_prompt("red circle"), answer)
    decoded = adapter.tokenizer.decode(inputs["input_ids"][0, answer_slice])
    assert decoded == answer


def test_head_layout_reports_grouped_query_attention(real_geometry_internvl):
    """Heads live in the Qwen3 LM's o_proj: 4 query heads share 2 key/value heads of width 8."""
    layout = real_geometry_internvl.head_layout()
    assert (layout.n_layers, layout.n_query_heads, layout.n_kv_heads, layout.head_dim) == (2, 4, 2, 8)
    attention = real_geometry_internvl.language_layers()[0].self_attn
    assert attention.o_proj.in_features == layout.n_query_heads * layout.head_dim
    assert attention.k_proj.out_features == layout.n_kv_heads * layout.head_dim


@torch.no_grad()
def test_circuit_hooks_are_exact_on_the_qwen3_lm(real_geometry_internvl):
    """The family-agnostic circuit tools hold on InternVL's GQA Qwen3 LM: an empty knockout and zero
    ablated heads reproduce the logits bit for bit; ablating a head at o_proj equals zeroing its W_O columns."""
    from mechanisms.interventions.heads import ablating_heads
    from mechanisms.interventions.knockout import knocking_out, spec_per_layer_set

    adapter = real_geometry_internvl
    model = adapter.model
    inputs = adapter.encode([Image.new("RGB", (900, 450), (200, 30, 30))], [box_prompt("red circle")])
    reference = model(**inputs).logits
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    n_layers = adapter.head_layout().n_layers
    spec = spec_per_layer_set(positions, inputs["input_ids"].shape[1], int(positions[-1]) + 1, [set()], n_layers)
    with knocking_out(adapter, spec):
        assert torch.equal(model(**inputs).logits, reference)
    with ablating_heads(adapter, []):
        assert torch.equal(model(**inputs).logits, reference)
    layer, head, d = 1, 3, adapter.head_layout().head_dim
    with ablating_heads(adapter, [(layer, head)]):
        hooked = model(**inputs).logits
    o_proj = adapter.language_layers()[layer].self_attn.o_proj
    saved = o_proj.weight.data.clone()
    o_proj.weight.data[:, head * d:(head + 1) * d] = 0
    try:
        zeroed = model(**inputs).logits
    finally:
        o_proj.weight.data.copy_(saved)
    assert torch.allclose(hooked, zeroed, atol=1e-5)
    assert not torch.equal(hooked, reference)
