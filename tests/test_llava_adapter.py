"""The LLaVA adapter on a tiny random-init model with LLaVA-1.5's real geometry (336 px, patch 14, 24x24).

Loaded through `load_llava`, the path real checkpoints take, from a folder saved like a llava-hf
checkpoint (a CLIP image processor that centre-crops), so the pad-to-square fix is exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import LlavaImageProcessor

from mechanisms.geometry import dilate
from mechanisms.models.adapters.llava import LlavaAdapter, load_llava
from mechanisms.organisms.tiny_llava import CLIP_MEAN, CLIP_STD, save_random_real_geometry
from mechanisms.tasks.prompts import box_prompt

GRID = 24


@pytest.fixture(scope="module")
def real_geometry_llava(tmp_path_factory) -> LlavaAdapter:
    folder = save_random_real_geometry(tmp_path_factory.mktemp("llava-336"), seed=0)
    return load_llava(folder, torch.float32, "cpu")


def test_loader_replaces_centre_crop_with_pad_to_square(real_geometry_llava):
    """A checkpoint's centre-cropping CLIP processor is replaced by LLaVA-1.5's pad-to-square one."""
    image_processor = real_geometry_llava.processor.image_processor
    assert isinstance(image_processor, LlavaImageProcessor)
    assert image_processor.do_pad
    assert real_geometry_llava.grid == GRID


def test_image_tokens_are_576_contiguous_positions(real_geometry_llava):
    """Each image becomes 24x24 = 576 contiguous image tokens, found from the ids, not hard-coded."""
    adapter = real_geometry_llava
    images = [Image.new("RGB", (300, 170), (90, 120, 200)), Image.new("RGB", (150, 390), (10, 200, 30))]
    batch = adapter.encode(images, [box_prompt("red circle"), box_prompt("blue square of a longer prompt")])
    mask = adapter.image_token_mask(batch["input_ids"])
    assert mask.sum(1).tolist() == [576, 576]
    for row in mask:
        positions = torch.nonzero(row).flatten()
        assert (positions[-1] - positions[0] + 1).item() == 576
    assert adapter.n_image_tokens(300, 170) == 576
    with torch.no_grad():
        logits = adapter.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(60, 420), height=st.integers(60, 420), data=st.data())
def test_mask_to_tokens_matches_processor(real_geometry_llava, width, height, data):
    """The adapter's pixel -> token map agrees with what the processor does to a rendered mask.

    A white rectangle on black goes through the real image processor (pad to square with the mean
    colour, bicubic resize to 336); the patches it lights up are the tokens the adapter predicts, up to
    the bicubic blur on the rectangle's one-token border.
    """
    x0 = data.draw(st.integers(0, width - 4))
    y0 = data.draw(st.integers(0, height - 4))
    x1 = data.draw(st.integers(x0 + 3, width))
    y1 = data.draw(st.integers(y0 + 3, height))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    pixels = real_geometry_llava.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    brightness = (pixels * torch.tensor(CLIP_STD)[:, None, None] + torch.tensor(CLIP_MEAN)[:, None, None]).mean(0)
    lit = (brightness.reshape(GRID, 14, GRID, 14) > 0.75).any(3).any(1).numpy()

    view = real_geometry_llava.views(width, height)[0]
    predicted = view.tokens_overlapping(mask)
    border = dilate(predicted, 1) & ~dilate(predicted, -1)
    disagreement = predicted ^ lit
    assert not (disagreement & ~border).any(), "processor and adapter disagree away from the object border"
    # a rectangle thinner than one token cell after resizing is blurred below the "lit" level by bicubic
    # resampling (e.g. 3 px of a 413 px side = 2.4 processed px), so coverage is only asked of thicker ones
    scale = 336 / max(width, height)
    if min(x1 - x0, y1 - y0) * scale >= 14:
        assert (lit & predicted).sum() >= 0.5 * predicted.sum()


def test_box_answers_are_normalised_to_the_padded_square(real_geometry_llava):
    """LLaVA-1.5 writes boxes relative to the padded square: a tall image's left edge is not 0."""
    adapter = real_geometry_llava
    from mechanisms.geometry import Box

    text = adapter.format_box(Box(0, 0, 100, 400), 100, 400)
    assert text == "[0.38, 0.00, 0.62, 1.00]"
    box = adapter.parse_box(text, 100, 400)
    assert abs(box.x0) <= 2 and abs(box.x1 - 100) <= 2 and box.y0 == 0 and box.y1 == 400


def test_head_layout_reports_grouped_query_attention(real_geometry_llava):
    """Heads live in the LM's o_proj: 4 query heads share 2 key/value heads of width 8."""
    layout = real_geometry_llava.head_layout()
    assert (layout.n_layers, layout.n_query_heads, layout.n_kv_heads, layout.head_dim) == (2, 4, 2, 8)
    layers = real_geometry_llava.language_layers()
    assert layers[0].self_attn.o_proj.in_features == layout.n_query_heads * layout.head_dim
