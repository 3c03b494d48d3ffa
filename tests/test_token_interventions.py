"""Token-level interventions: `TokenEdit` algebra, token selections, containerization, grown boxes, the
mask -> token projection against the real image processor, and identity checks on the shipped tiny model.

Every intervention of the paper must reduce to the unedited model when it selects nothing; these tests
check that on the algebra (exactly), on the selections (against an independent area computation and the
processor's own pixels) and end to end (answers and logits bit-identical).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from mechanisms.geometry import Box, View, dilate, grow_by_cells, pad_to_square_view
from mechanisms.interventions.selection import (
    object_tokens,
    per_view,
    random_tokens,
    register_tokens,
    top_k,
    view_kinds,
)
from mechanisms.interventions.tokens import (
    MEAN,
    TokenEdit,
    ablate,
    containerize,
    edited_features,
    editing_visual_tokens,
    identity,
    permute,
)
from mechanisms.models.registry import REPO_ROOT

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
SLOW_PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None)

SHIPPED = REPO_ROOT / "fixtures" / "models" / "tiny-llava"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: intra-op threads only add contention (on a busy 2-core machine a forward pass
    of the shipped model went from 0.03 s to 1.8 s with 2 threads). Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----- helpers ----------------------------------------------------------------------------------------


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def _mean(d: int) -> torch.Tensor:
    return torch.linspace(-3.0, 3.0, d)


def _sequential_reference(source: np.ndarray, features: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Row i := features[source[i]], or `mean` where source[i] == MEAN; written row by row."""
    rows = [mean.clone() if s == MEAN else features[s].clone() for s in source]
    return torch.stack(rows) if rows else features[:0].clone()


@st.composite
def edits(draw, n: int) -> TokenEdit:
    return TokenEdit(np.asarray(draw(st.lists(st.integers(MEAN, n - 1), min_size=n, max_size=n)), dtype=np.int64))


def _overlap_areas(view: View, mask: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """[rows, cols] area (canvas units^2) of the mask inside each token's patch.

    Independent of `View.tokens_overlapping`: pixel (x, y) is the canvas rectangle
    [x*sx+ox, (x+1)*sx+ox) x [y*sy+oy, (y+1)*sy+oy) (widened by `grow` on every side, shrunk if negative),
    and the area is separable: area[r, c] = sum_y overlap_y[y, r] * (sum_x mask[y, x] * overlap_x[x, c]).
    """
    def overlap_1d(n_pixels, scale, offset, n_cells, extent):
        edges = np.arange(n_pixels + 1) * scale + offset
        lo, hi = edges[:-1, None] - grow, edges[1:, None] + grow
        cell = extent / n_cells
        c_lo, c_hi = np.arange(n_cells)[None] * cell, (np.arange(n_cells)[None] + 1) * cell
        return np.clip(np.minimum(hi, c_hi) - np.maximum(lo, c_lo), 0.0, None)

    height, width = mask.shape
    ox = overlap_1d(width, view.scale_x, view.offset_x, view.cols, view.width)  # [W, cols]
    oy = overlap_1d(height, view.scale_y, view.offset_y, view.rows, view.height)  # [H, rows]
    return oy.T @ (mask.astype(float) @ ox)


def _exact_overlap(view: View, mask: np.ndarray) -> np.ndarray:
    """Bool [rows, cols]: the patch holds a positive area of the mask, in exact integer arithmetic.

    For a view with unit scale and integer offsets/size (pad-to-square): multiplying x by `cols` (y by
    `rows`) makes pixel edges (x + ox) * cols and patch edges c * width integers, so a pixel that ends
    exactly on a patch boundary has overlap exactly 0.
    """
    assert view.scale_x == view.scale_y == 1.0
    assert all(float(v).is_integer() for v in (view.offset_x, view.offset_y, view.width, view.height))

    def overlaps(n_pixels, offset, n_cells, extent):
        edges = (np.arange(n_pixels + 1, dtype=np.int64) + int(offset)) * n_cells
        cells = np.arange(n_cells + 1, dtype=np.int64) * int(extent)
        return (np.minimum(edges[1:, None], cells[None, 1:]) - np.maximum(edges[:-1, None], cells[None, :-1])) > 0

    height, width = mask.shape
    ox = overlaps(width, view.offset_x, view.cols, view.width)  # [W, cols]
    oy = overlaps(height, view.offset_y, view.rows, view.height)  # [H, rows]
    return (oy.T.astype(np.int64) @ (mask.astype(np.int64) @ ox.astype(np.int64))) > 0


def _multi_views(width: int, height: int) -> list[View]:
    """InternVL-like: two local tiles (left/right half, 5x5 tokens each, anisotropic scale) + a 6x6 thumbnail."""
    half = width / 2
    tiles = [View(name=f"tile{i}", rows=5, cols=5, width=100.0, height=100.0, scale_x=100.0 / half,
                  scale_y=100.0 / height, offset_x=-i * 100.0, offset_y=0.0, first_token=25 * i, kind="local")
             for i in range(2)]
    return tiles + [pad_to_square_view(width, height, 6, name="thumbnail", first_token=50)]


def _views(kind: str, width: int, height: int) -> list[View]:
    return [pad_to_square_view(width, height, 24)] if kind == "llava" else _multi_views(width, height)


@st.composite
def masks(draw, min_side: int = 40, max_side: int = 500, sides=None) -> np.ndarray:
    """A filled rectangle or ellipse (from 1 pixel to the whole image) on an image of random size."""
    sides = sides if sides is not None else st.integers(min_side, max_side)
    width, height = draw(sides), draw(sides)
    x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
    mask = np.zeros((height, width), dtype=bool)
    if draw(st.booleans()):
        mask[y0:y1, x0:x1] = True
    else:
        ys, xs = np.mgrid[0:height, 0:width]
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        mask = ((xs + 0.5 - cx) / rx) ** 2 + ((ys + 0.5 - cy) / ry) ** 2 <= 1.0
    assume(mask.any())
    return mask


# ----- 1. TokenEdit algebra ---------------------------------------------------------------------------


@PROPERTY
@given(n=st.integers(1, 24), d=st.integers(1, 6), seed=st.integers(0, 2**16), data=st.data())
def test_then_equals_applying_both_edits_in_sequence(n, d, seed, data):
    """a.then(b).apply(f) == b.apply(a.apply(f)): composition is sequencing, mean slots included."""
    a, b = data.draw(edits(n)), data.draw(edits(n))
    features, mean = _features(n, d, seed), _mean(d)
    assert torch.equal(a.then(b).apply(features, mean), b.apply(a.apply(features, mean), mean))
    assert torch.equal(a.apply(features, mean), _sequential_reference(a.source, features, mean))
    assert a.then(identity(n)).source.tolist() == a.source.tolist()
    assert identity(n).then(a).source.tolist() == a.source.tolist()


def test_then_rejects_edits_of_different_lengths():
    with pytest.raises(ValueError):
        identity(3).then(identity(4))


@PROPERTY
@given(n=st.integers(0, 40), d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_identity_is_identity_and_returns_features_unchanged(n, d, seed):
    """identity(n) changes no slot and needs no mean; apply gives back exactly the input."""
    edit, features = identity(n), _features(n, d, seed)
    assert edit.is_identity and edit.n_changed == 0 and edit.n_tokens == n
    assert torch.equal(edit.apply(features, None), features)
    assert torch.equal(edited_features([features, features], [edit, None], None)[0], features)


@PROPERTY
@given(n=st.integers(1, 40), d=st.integers(1, 6), seed=st.integers(0, 2**16), data=st.data())
def test_ablate_sets_exactly_the_selected_rows_to_the_mean(n, d, seed, data):
    selection = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    features, mean = _features(n, d, seed), _mean(d)
    edit = ablate(selection)
    out = edit.apply(features, mean)
    assert edit.n_changed == selection.sum()
    assert edit.is_identity == (not selection.any())
    assert torch.equal(out[torch.from_numpy(selection)], mean.expand(int(selection.sum()), d))
    assert torch.equal(out[torch.from_numpy(~selection)], features[torch.from_numpy(~selection)])
    assert out.shape == features.shape and out.dtype == features.dtype


@PROPERTY
@given(n=st.integers(1, 40), d=st.integers(1, 6), seed=st.integers(0, 2**16), data=st.data())
def test_permute_shuffles_only_the_selected_rows(n, d, seed, data):
    """The selected rows are a permutation of themselves (multiset kept); unselected rows are untouched."""
    selection = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    features = _features(n, d, seed)
    edit = permute(selection, np.random.default_rng(seed))
    assert (edit.source != MEAN).all()
    assert sorted(edit.source[selection].tolist()) == np.flatnonzero(selection).tolist()
    assert (edit.source[~selection] == np.flatnonzero(~selection)).all()
    assert edit.n_changed <= selection.sum()
    out = edit.apply(features, None)  # no mean needed: nothing is ablated
    assert torch.equal(out[~selection], features[~selection])
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(out[selection]) == key(features[selection])


@PROPERTY
@given(n=st.integers(0, 40), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_permute_or_ablate_of_empty_or_single_selection_is_identity(n, d, seed):
    """Selecting nothing is the identity edit for both; permuting one token cannot move it."""
    nothing = np.zeros(n, dtype=bool)
    features = _features(n, d, seed)
    for edit in (ablate(nothing), permute(nothing, np.random.default_rng(seed))):
        assert edit.is_identity and edit.n_changed == 0
        assert torch.equal(edit.apply(features, None), features)
    if n:
        one = nothing.copy()
        one[seed % n] = True
        assert permute(one, np.random.default_rng(seed)).is_identity


@PROPERTY
@given(n=st.integers(1, 20), data=st.data())
def test_invalid_sources_are_rejected(n, data):
    """Out-of-range indices (below MEAN = -1 or >= n) and non-1-D sources raise ValueError."""
    source = np.arange(n)
    source[data.draw(st.integers(0, n - 1))] = data.draw(st.one_of(st.integers(-10**6, -2), st.integers(n, 10**6)))
    with pytest.raises(ValueError):
        TokenEdit(source)
    with pytest.raises(ValueError):
        TokenEdit(np.arange(n).reshape(1, n))
    with pytest.raises(ValueError):
        identity(n).apply(torch.zeros(n + 1, 2), None)


def test_ablating_without_a_mean_raises():
    edit = ablate(np.array([False, True, False]))
    with pytest.raises(ValueError, match="mean"):
        edit.apply(torch.ones(3, 2), None)


# ----- 2. selections ----------------------------------------------------------------------------------


# sides that are small multiples of 24 put many pixel edges exactly on patch boundaries
ALIGNED_SIDES = st.sampled_from([48, 72, 96, 120, 144, 168])


@SLOW_PROPERTY
@given(mask=st.one_of(masks(max_side=300), masks(sides=ALIGNED_SIDES)), kind=st.sampled_from(["llava", "tiles"]))
def test_object_tokens_at_padding_zero_are_the_tokens_the_mask_overlaps(mask, kind):
    """object_tokens(p=0) is, view after view, View.tokens_overlapping, and that is exactly the tokens whose
    patch holds a positive area of the mask (an independent area computation: exact integers on the
    pad-to-square grid; floats with +-1e-6 canvas units for ties on the anisotropic tiles)."""
    height, width = mask.shape
    views = _views(kind, width, height)
    selection = object_tokens(views, mask, 0)
    assert selection.dtype == bool and selection.shape == (sum(v.n_tokens for v in views),)
    assert (selection == np.concatenate([v.tokens_overlapping(mask).ravel() for v in views])).all()
    for view, grid in zip(views, per_view(views, selection)):
        assert grid.shape == (view.rows, view.cols)
        if view.scale_x == 1.0:  # pad-to-square: exact, a pixel ending on a patch boundary stays out
            assert (grid == _exact_overlap(view, mask)).all(), f"{view.name}: selection != exact overlap"
        surely_in = _overlap_areas(view, mask, grow=-1e-6) > 0
        maybe_in = _overlap_areas(view, mask, grow=1e-6) > 0
        assert not (surely_in & ~grid).any(), f"{view.name}: tokens holding mask area are not selected"
        assert not (grid & ~maybe_in).any(), f"{view.name}: selected tokens hold no mask area"


@PROPERTY
@given(mask=masks(max_side=300), p=st.integers(-1, 1))
def test_view_wise_selections_partition_the_object_selection(mask, p):
    """Table 3: the global-only and local-only selections are the object selection cut along view kinds;
    together they are exactly the both-views selection, and neither touches the other kind's tokens."""
    height, width = mask.shape
    views = _multi_views(width, height)
    both = object_tokens(views, mask, p)
    global_only = object_tokens(views, mask, p, ("global",))
    local_only = object_tokens(views, mask, p, ("local",))
    owner = view_kinds(views)
    assert (global_only == (both & (owner == "global"))).all()
    assert (local_only == (both & (owner == "local"))).all()
    assert (object_tokens(views, mask, p, ("global", "local")) == both).all()


@SLOW_PROPERTY
@given(mask=masks(max_side=300), kind=st.sampled_from(["llava", "tiles"]), p=st.integers(1, 3))
def test_padding_grows_and_shrinks_monotonically(mask, kind, p):
    """object_tokens(+p) contains object_tokens(0), which contains object_tokens(-p); each is dilate of p=0."""
    height, width = mask.shape
    views = _views(kind, width, height)
    grown, base, shrunk = (object_tokens(views, mask, q) for q in (p, 0, -p))
    assert not (base & ~grown).any() and not (shrunk & ~base).any()
    for view, g, b, s in zip(views, per_view(views, grown), per_view(views, base), per_view(views, shrunk)):
        assert (g == dilate(b, p)).all() and (s == dilate(b, -p)).all()


@pytest.mark.parametrize("padding", [-3, -1, 0, 1, 3])
@pytest.mark.parametrize("kind", ["llava", "tiles"])
def test_padding_of_an_empty_mask_stays_empty_and_the_grid_border_is_never_peeled(padding, kind):
    """No padding selects anything from an empty mask. A whole-image mask on a wide image fills complete
    rows of each grid at every padding: shrinking peels the rows next to the pad-to-square padding but
    never the columns on the grid border (its outside counts as selected); fully covered tiles stay full."""
    width, height = 173, 91
    views = _views(kind, width, height)
    assert not object_tokens(views, np.zeros((height, width), dtype=bool), padding).any()
    full = object_tokens(views, np.ones((height, width), dtype=bool), padding)
    for grid in per_view(views, full):
        assert (grid.any(1) == grid.all(1)).all()
    if kind == "tiles":
        assert full[:50].all()
    if padding <= 0:
        assert full.sum() <= object_tokens(views, np.ones((height, width), dtype=bool), 0).sum()


@PROPERTY
@given(scores=st.lists(st.integers(0, 5), min_size=0, max_size=40), k=st.integers(0, 50))
def test_top_k_picks_exactly_k_of_the_highest_scores(scores, k):
    """min(k, n) tokens, no unselected score above a selected one, ties resolved toward lower positions."""
    scores = np.asarray(scores, dtype=float)
    selection = top_k(scores, k)
    assert selection.dtype == bool and selection.shape == scores.shape
    assert selection.sum() == min(k, len(scores))
    if selection.any() and (~selection).any():
        threshold = scores[selection].min()
        assert scores[~selection].max() <= threshold
        tied = np.flatnonzero(scores == threshold)
        picked = selection[tied]
        assert (np.sort(picked)[::-1] == picked).all(), "ties are not broken by position"


@PROPERTY
@given(n=st.integers(0, 60), k=st.integers(0, 80), seed=st.integers(0, 2**16))
def test_random_tokens_are_min_k_n_distinct_and_seeded(n, k, seed):
    selection = random_tokens(n, k, np.random.default_rng(seed))
    assert selection.dtype == bool and selection.shape == (n,)
    assert selection.sum() == min(k, n)
    assert (random_tokens(n, k, np.random.default_rng(seed)) == selection).all()


def test_random_tokens_vary_with_the_seed():
    draws = {tuple(np.flatnonzero(random_tokens(100, 5, np.random.default_rng(s)))) for s in range(10)}
    assert len(draws) > 1


@PROPERTY
@given(n=st.integers(20, 120), d=st.integers(4, 32), seed=st.integers(0, 2**16), data=st.data())
def test_register_tokens_are_the_norm_outliers(n, d, seed, data):
    """With a few (<= 5 %) planted high-norm rows, exactly those are selected; in general the selection is
    norms > mean + 2 std (unbiased std, as torch computes it)."""
    rng = np.random.default_rng(seed)
    n_planted = data.draw(st.integers(1, max(1, n // 20)))
    planted = np.zeros(n, dtype=bool)
    planted[rng.choice(n, size=n_planted, replace=False)] = True
    features = rng.standard_normal((n, d))
    features[planted] *= 30.0
    for dtype in (torch.float32, torch.bfloat16):
        assert (register_tokens(torch.tensor(features, dtype=dtype)) == planted).all()

    plain = rng.standard_normal((n, d))
    norms = np.linalg.norm(plain, axis=1)
    threshold = norms.mean() + 2.0 * norms.std(ddof=1)
    assume(np.abs(norms - threshold).min() > 1e-4)
    assert (register_tokens(torch.tensor(plain, dtype=torch.float32)) == (norms > threshold)).all()


# ----- 3. containerization ----------------------------------------------------------------------------


@SLOW_PROPERTY
@given(mask=masks(max_side=240), kind=st.sampled_from(["llava", "tiles"]), rings=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_containerize_fills_the_ring_with_copies_from_the_same_view(mask, kind, rings, seed):
    """Ring slots (object_tokens(+rings) minus object_tokens(0)) read from inside the object of their own view;
    every other slot is untouched; the edit is deterministic in the generator's seed."""
    height, width = mask.shape
    views = _views(kind, width, height)
    edit = containerize(views, mask, rings, np.random.default_rng(seed))
    inside, grown = object_tokens(views, mask, 0), object_tokens(views, mask, rings)
    ring = grown & ~inside
    assert edit.n_changed == ring.sum()
    assert (edit.source[~ring] == np.flatnonzero(~ring)).all()
    start = 0
    for view in views:
        part = np.zeros(len(ring), dtype=bool)
        part[start:start + view.n_tokens] = True
        donors = set(np.flatnonzero(inside & part).tolist())
        assert set(edit.source[ring & part].tolist()) <= donors, f"{view.name}: a ring slot copies from elsewhere"
        start += view.n_tokens
    assert edit.source.tolist() == containerize(views, mask, rings, np.random.default_rng(seed)).source.tolist()

    features = _features(len(ring), 3, seed)
    out = edit.apply(features, None)
    assert torch.equal(out[~ring], features[~ring])
    for i in np.flatnonzero(ring):
        assert any(torch.equal(out[i], features[j]) for j in np.flatnonzero(inside))


@SLOW_PROPERTY
@given(mask=masks(max_side=240), kind=st.sampled_from(["llava", "tiles"]), seed=st.integers(0, 2**16))
def test_containerize_with_zero_rings_or_empty_mask_is_identity(mask, kind, seed):
    height, width = mask.shape
    views = _views(kind, width, height)
    assert containerize(views, mask, 0, np.random.default_rng(seed)).is_identity
    for rings in (0, 1, 3):
        assert containerize(views, np.zeros_like(mask), rings, np.random.default_rng(seed)).is_identity


# ----- 4. grow_by_cells -------------------------------------------------------------------------------


@st.composite
def image_boxes(draw):
    width, height = draw(st.integers(10, 800)), draw(st.integers(10, 800))
    x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
    return width, height, Box(float(x0), float(y0), float(x1), float(y1))


def _union_extent(views: list[View]) -> Box:
    extents = [v.extent() for v in views]
    return Box(min(e.x0 for e in extents), min(e.y0 for e in extents),
               max(e.x1 for e in extents), max(e.y1 for e in extents))


@PROPERTY
@given(sized=image_boxes(), grid=st.sampled_from([12, 24]), cells=st.integers(0, 30))
def test_grow_by_cells_on_pad_to_square_adds_whole_cells_then_clips(sized, grid, cells):
    """cells=0 returns the box itself; growth by s cells adds s * side / grid px per side, clipped to the
    padded square (which may reach past the image into the padding)."""
    width, height, box = sized
    views = [pad_to_square_view(width, height, grid)]
    extent = _union_extent(views)
    grown = grow_by_cells(box, views, cells)
    if cells == 0:
        assert grown == box
    step = cells * max(width, height) / grid
    expected = Box(max(box.x0 - step, extent.x0), max(box.y0 - step, extent.y0),
                   min(box.x1 + step, extent.x1), min(box.y1 + step, extent.y1))
    assert grown.as_list() == pytest.approx(expected.as_list(), abs=1e-9)
    assert extent.x0 <= grown.x0 <= box.x0 and box.x1 <= grown.x1 <= extent.x1
    assert extent.y0 <= grown.y0 <= box.y0 and box.y1 <= grown.y1 <= extent.y1


@PROPERTY
@given(sized=image_boxes(), cells=st.integers(0, 10))
def test_grow_by_cells_stays_inside_the_views_and_contains_the_box(sized, cells):
    """Over several views (tiles + thumbnail), a grown in-image box stays within the views' union extent."""
    width, height, box = sized
    views = _multi_views(width, height)
    extent = _union_extent(views)
    grown = grow_by_cells(box, views, cells)
    assert extent.x0 <= grown.x0 <= box.x0 and box.x1 <= grown.x1 <= extent.x1
    assert extent.y0 <= grown.y0 <= box.y0 and box.y1 <= grown.y1 <= extent.y1
    assert grow_by_cells(box, views, 0) == box
    assert grow_by_cells(box, views, cells + 1).area >= grown.area


# ----- 5. mask -> tokens against the real processor ---------------------------------------------------

# Tolerances, measured on ~15k selected tokens of 1,800 random rectangles/ellipses (40..500 px images,
# 1 px .. whole-image masks) through this processor (pad to square with the mean colour, torchvision
# bicubic antialiased resize to 336 on uint8, normalise). Signal = |pixels(mask) - pixels(all black)|
# in brightness units (x std, mean over channels), per 14x14 patch; one uint8 level is 1/255.
#  - A selected token whose patch holds >= 0.1 output px^2 of the mask always had a max signal of at least
#    6/255; we require > 2/255. A selected token with less (a mask pixel that crosses the patch border by
#    a sliver: 0.01 px^2 was seen) can render to exactly nothing, so it is exempt.
#  - Unselected patches carry only bicubic blur/ringing: their mean signal was at most 0.125 of the
#    strongest patch's, so patches above 0.25 of the strongest must all be selected.
SIGNAL_TOL = 2 / 255
SLIVER_OUTPUT_PX2 = 0.1
STRONG_FRACTION = 0.25
PATCH = 14


@pytest.fixture(scope="module")
def real_geometry_llava(tmp_path_factory):
    """A tiny random LLaVA with LLaVA-1.5's geometry (336 px, patch 14, 24x24), saved like a llava-hf
    checkpoint and loaded through `load_llava`."""
    from mechanisms.models.adapters.llava import load_llava
    from mechanisms.organisms.tiny_llava import save_random_real_geometry

    folder = save_random_real_geometry(tmp_path_factory.mktemp("llava-336-interventions"), seed=0)
    return load_llava(folder, torch.float32, "cpu")


def _patch_signal(adapter, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (max, mean) of how much the rendered mask changes pixel_values vs an all-black image."""
    image_processor = adapter.processor.image_processor
    height, width = mask.shape
    white = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    black = Image.new("RGB", (width, height))
    pixels = image_processor(images=[white, black], return_tensors="pt")["pixel_values"]
    std = torch.tensor(image_processor.image_std, dtype=pixels.dtype)[:, None, None]
    diff = ((pixels[0] - pixels[1]) * std).abs().mean(0)
    grid = diff.shape[0] // PATCH
    patches = diff.reshape(grid, PATCH, grid, PATCH).permute(0, 2, 1, 3).reshape(grid, grid, -1)
    return patches.amax(-1).numpy(), patches.mean(-1).numpy()


@PROPERTY
@given(mask=masks(40, 500))
def test_mask_tokens_agree_with_the_processors_pixels_at_every_padding(real_geometry_llava, mask):
    """Selected tokens' patches carry the mask, strongly lit patches are selected, and padding +-1 rings
    sit on the processor's own patch grid (extends test_llava_adapter's rectangle check to ellipses,
    1-pixel masks, small images that get upscaled, and padding +1/-1)."""
    adapter = real_geometry_llava
    height, width = mask.shape
    views = adapter.views(width, height)
    view = views[0]
    peak, mean = _patch_signal(adapter, mask)
    assert peak.shape == (view.rows, view.cols)

    area_out = _overlap_areas(view, mask) * (336.0 / view.width) ** 2
    sliver = (area_out > 0) & (area_out < SLIVER_OUTPUT_PX2)
    lit = peak > SIGNAL_TOL
    strong = mean > STRONG_FRACTION * mean.max()

    selected = {p: object_tokens(views, mask, p).reshape(view.rows, view.cols) for p in (-1, 0, 1)}
    dark = selected[0] & ~lit & ~sliver
    assert not dark.any(), f"selected tokens {np.argwhere(dark).tolist()} show no mask in pixel_values"
    assert not (strong & ~selected[0]).any(), f"lit patches {np.argwhere(strong & ~selected[0]).tolist()} unselected"

    may = lit | sliver  # patches the processor lets the object reach
    assert not (dilate(strong, 1) & ~selected[1]).any() and not (selected[1] & ~dilate(may, 1)).any()
    assert not (dilate(strong, -1) & ~selected[-1]).any() and not (selected[-1] & ~dilate(may, -1)).any()


# ----- 6. identity checks on the shipped tiny model --------------------------------------------------

needs_shipped = pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="shipped tiny-llava not present")
MAX_NEW_TOKENS = 20


@pytest.fixture(scope="module")
def shipped():
    from mechanisms.data import resolve_dataset
    from mechanisms.models.adapters.llava import load_llava
    from mechanisms.tasks.prompts import binary_prompt, box_prompt

    adapter = load_llava(SHIPPED, torch.float32, "cpu")
    dataset = resolve_dataset("synthetic:5:6")
    first_per_image = {}
    for sample in dataset.samples:  # one object per image: rows must differ for batching mix-ups to show
        first_per_image.setdefault(sample.image_id, sample)
    samples = list(first_per_image.values())[:6]
    assert len(samples) >= 5
    images = [dataset.image(s) for s in samples]
    masks_ = [dataset.mask(s) for s in samples]
    questions = [box_prompt(s.category) if i % 3 else binary_prompt(s.category) for i, s in enumerate(samples)]
    mean = torch.linspace(-0.5, 0.5, adapter.model.config.text_config.hidden_size)
    return adapter, images, masks_, questions, mean


def _plain_generate(adapter, images, questions, batch_size: int) -> list[str]:
    """model.generate from pixels, decoded exactly as evaluation.Generator decodes."""
    answers = []
    for start in range(0, len(questions), batch_size):
        batch = adapter.encode(images[start:start + batch_size], questions[start:start + batch_size])
        with torch.no_grad():
            out = adapter.model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, use_cache=True,
                                         pad_token_id=adapter.tokenizer.pad_token_id)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        answers += [a.strip() for a in adapter.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


@needs_shipped
def test_conditions_that_select_nothing_answer_like_the_plain_model(shipped):
    """None, an empty ablation, the identity and empty/one-token permutations and 0-ring containerization
    all decode exactly what Generator.generate and plain model.generate (from pixels) decode."""
    from mechanisms.tasks.generation import Generator

    adapter, images, masks_, questions, mean = shipped
    nothing = lambda f: np.zeros(f.shape[0], dtype=bool)  # noqa: E731

    def one_token(f):
        selection = nothing(f)
        selection[7] = True
        return selection

    conditions = {
        "none": None,
        "ablate-nothing": lambda row, f: ablate(nothing(f)),
        "identity": lambda row, f: identity(f.shape[0]),
        "permute-nothing": lambda row, f: permute(nothing(f), np.random.default_rng(row)),
        "permute-one": lambda row, f: permute(one_token(f), np.random.default_rng(row)),
        "container+0": lambda row, f: containerize(adapter.views(*images[row].size), masks_[row], 0,
                                                   np.random.default_rng(row)),
    }
    generator = Generator(adapter, batch_size=4)
    answers = generator.generate_conditions(images, questions, MAX_NEW_TOKENS, conditions, mean=mean)
    reference = generator.generate(images, questions, MAX_NEW_TOKENS)
    assert reference == _plain_generate(adapter, images, questions, batch_size=4)
    assert all(reference), "the shipped model answered nothing"
    for name, got in answers.items():
        assert got == reference, name


@needs_shipped
def test_projector_hook_matches_feeding_edited_visual_tokens(shipped):
    """editing_visual_tokens: identity edits leave a plain forward's logits bit-identical; an ablation gives the
    logits of feeding the ablated tokens through adapter.visual_inputs, and the same greedy answers as
    Generator.generate_conditions with that ablation."""
    from mechanisms.tasks.generation import Generator

    adapter, images, masks_, questions, mean = shipped
    images, masks_, questions = images[:3], masks_[:3], questions[:3]
    batch = adapter.encode(images, questions)
    with torch.no_grad():
        plain = adapter.model(**batch).logits
        n = adapter.n_image_tokens(*images[0].size)
        with editing_visual_tokens(adapter, [identity(n), None, identity(n)], mean):
            hooked_identity = adapter.model(**batch).logits
    assert torch.equal(hooked_identity, plain)

    ablations = [ablate(object_tokens(adapter.views(*im.size), m, 1)) for im, m in zip(images, masks_)]
    ablations[1] = None  # one image left unedited in the middle of the batch
    text = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        features = adapter.visual_tokens(batch)
        ablated = [f if e is None else e.apply(f, mean) for f, e in zip(features, ablations)]
        fed = adapter.model(**text, **adapter.visual_inputs(ablated)).logits
        with editing_visual_tokens(adapter, ablations, mean):
            hooked = adapter.model(**batch).logits
            hooked_answers = adapter.model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                                    use_cache=True, pad_token_id=adapter.tokenizer.pad_token_id)
    assert torch.allclose(hooked, fed, rtol=0, atol=1e-6)
    assert not torch.allclose(hooked, plain, atol=1e-3), "the ablation did not reach the LM"
    assert torch.allclose(hooked[1], plain[1], rtol=0, atol=1e-6), "the unedited row changed"

    new = hooked_answers[:, batch["input_ids"].shape[1]:]
    decoded = [a.strip() for a in adapter.tokenizer.batch_decode(new, skip_special_tokens=True)]
    condition = {"ablate": lambda row, f: ablations[row]}
    assert decoded == Generator(adapter, batch_size=3).generate_conditions(
        images, questions, MAX_NEW_TOKENS, condition, mean=mean)["ablate"]


# ----- 7. encode_with_answer --------------------------------------------------------------------------


@needs_shipped
@pytest.mark.parametrize("answer", ["[0.12, 0.34, 0.56, 0.78]", "red circle, blue square", "Yes", "No", "[0.0"])
def test_encode_with_answer_slice_holds_exactly_the_answer(shipped, answer):
    """The answer slice decodes to the answer (modulo whitespace), follows the prompt's own tokenization,
    runs to the end of the sequence and holds no image token."""
    adapter, images, _, questions, _ = shipped
    full, answer_slice = adapter.encode_with_answer(images[0], questions[0], answer)
    ids = full["input_ids"][0]
    prompt = adapter.processor(images=[images[0]], text=[adapter.chat_text(questions[0])],
                               return_tensors="pt")["input_ids"][0]
    assert answer_slice.start == len(prompt) and answer_slice.stop == len(ids)
    assert torch.equal(ids[:answer_slice.start], prompt)
    assert not adapter.image_token_mask(ids[answer_slice][None]).any()
    decoded = adapter.tokenizer.decode(ids[answer_slice], skip_special_tokens=True)
    assert "".join(decoded.split()) == "".join(answer.split())
    assert full["attention_mask"].shape == full["input_ids"].shape


def test_inputs_that_would_silently_mean_something_else_are_rejected():
    """Index arrays where a bool mask is expected, float sources, and a negative k raise."""
    from mechanisms.geometry import Box, grow_by_cells, pad_to_square_view
    from mechanisms.interventions.selection import top_k as _top_k
    from mechanisms.interventions.tokens import TokenEdit as _TokenEdit
    from mechanisms.interventions.tokens import ablate as _ablate

    with pytest.raises(TypeError):
        _ablate(np.array([3, 0]))
    with pytest.raises(ValueError):
        _TokenEdit(np.array([0.9, 1.7, 2.2]))
    with pytest.raises(ValueError):
        _top_k(np.arange(5.0), -1)
    grown = grow_by_cells(Box(600, 10, 700, 20), [pad_to_square_view(500, 300, 24)], 1)
    assert grown.x0 <= grown.x1 and grown.x1 <= 500  # a box off the canvas collapses onto its edge


# ----- 8. Integrated Gradients ------------------------------------------------------------------------


@needs_shipped
def test_integrated_gradients_is_complete_and_survives_the_result_cache(tmp_path):
    """IG's completeness on the shipped model: the signed attributions sum to f(input) - f(baseline) within
    the quadrature's error (32 steps: under 5 %; `benchmarks/ig_steps.py` measured 0.4 % median), the
    claim's score is their magnitude, and a memoized attribution comes back from disk identical."""
    from mechanisms.data import resolve_dataset
    from mechanisms.experiments.attribution import attributions, completeness_summary, integrated_gradients
    from mechanisms.models.adapters.llava import load_llava
    from mechanisms.models.registry import load_profiles
    from mechanisms.storage import ResultCache
    from mechanisms.tasks.model_under_test import VLM
    from mechanisms.tasks.specs import BOX

    dataset = resolve_dataset("synthetic:3:6")
    samples = dataset.samples[:2]

    def fresh_vlm():
        return VLM(load_profiles()["tiny_llava"], load_llava(SHIPPED, torch.float32, "cpu"), SHIPPED, "test",
                   results=ResultCache(tmp_path, "ig-test"))

    vlm = fresh_vlm()
    found = attributions(vlm, dataset, samples, BOX, 32)
    for sample in samples:
        a = found[sample.annotation_id]
        assert a.per_token.shape == (vlm.adapter.n_image_tokens(sample.width, sample.height),)
        assert abs(a.at_input - a.at_baseline) > 1e-3
        assert a.completeness_error < 0.05, a
    assert completeness_summary(found)["samples"] == 2 and completeness_summary({}) == {"samples": 0}
    again = fresh_vlm()
    reloaded = integrated_gradients(again, dataset, samples, BOX, 32)
    assert again.results.hits == 2 and again.results.misses == 0
    for sample in samples:
        np.testing.assert_array_equal(reloaded[sample.annotation_id], np.abs(found[sample.annotation_id].per_token))
