"""Properties of boxes, IoU, the pad-to-square token geometry and token-grid dilation (mechanisms.geometry)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.geometry import (
    Box,
    View,
    coco_equivalent_area,
    coco_size_bucket,
    dilate,
    iou,
    mask_bbox,
    pad_to_square_view,
)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)

coord = st.integers(-200, 200)
size = st.integers(1, 200)
grids = st.sampled_from([12, 24])


@st.composite
def boxes(draw, allow_empty: bool = False) -> Box:
    """Integer-cornered boxes (exact arithmetic under translation/scaling by powers of two)."""
    x0, y0 = draw(coord), draw(coord)
    lo = 0 if allow_empty else 1
    w, h = draw(st.integers(lo, 200)), draw(st.integers(lo, 200))
    return Box(float(x0), float(y0), float(x0 + w), float(y0 + h))


# ----- Box / iou --------------------------------------------------------------------------------------


def test_box_from_coco_converts_xywh_to_corners():
    """Box.from_coco turns COCO [x, y, w, h] into corners with exclusive x1 = x + w, y1 = y + h."""
    box = Box.from_coco([10, 20.5, 30, 40])
    assert box == Box(10.0, 20.5, 40.0, 60.5)
    assert box.width == 30 and box.height == 40 and box.area == 1200
    assert all(isinstance(v, float) for v in box.as_list())


@PROPERTY
@given(boxes(allow_empty=True), boxes(allow_empty=True))
def test_iou_symmetric_and_bounded(a, b):
    """iou(a, b) == iou(b, a) and lies in [0, 1]."""
    value = iou(a, b)
    assert value == iou(b, a)
    assert 0.0 <= value <= 1.0


@PROPERTY
@given(boxes())
def test_iou_with_itself_is_one(a):
    """A non-empty box overlaps itself completely."""
    assert iou(a, a) == 1.0


def test_iou_of_empty_box_is_zero():
    """An empty box has IoU 0 with anything, itself included (no division by zero)."""
    empty = Box(5.0, 5.0, 5.0, 9.0)
    assert iou(empty, empty) == 0.0
    assert iou(empty, Box(0, 0, 10, 10)) == 0.0


@PROPERTY
@given(boxes(), boxes(), st.integers(0, 50))
def test_iou_zero_for_disjoint_boxes(a, b, gap):
    """Boxes separated horizontally (or touching at an edge) have IoU 0."""
    shift = a.x1 - b.x0 + gap  # move b to start `gap` pixels right of a's right edge
    moved = Box(b.x0 + shift, b.y0, b.x1 + shift, b.y1)
    assert iou(a, moved) == 0.0
    assert iou(moved, a) == 0.0


@PROPERTY
@given(boxes(allow_empty=True), boxes(allow_empty=True), coord, coord)
def test_iou_invariant_under_common_translation(a, b, dx, dy):
    """Translating both boxes by the same (integer) offset leaves IoU unchanged."""
    ta = Box(a.x0 + dx, a.y0 + dy, a.x1 + dx, a.y1 + dy)
    tb = Box(b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy)
    assert iou(ta, tb) == pytest.approx(iou(a, b), abs=1e-12)


@PROPERTY
@given(boxes(allow_empty=True), boxes(allow_empty=True), st.sampled_from([0.25, 0.5, 2.0, 3.0, 7.5]))
def test_iou_invariant_under_common_uniform_scaling(a, b, s):
    """Scaling both boxes by the same factor about the origin leaves IoU unchanged."""
    sa = Box(a.x0 * s, a.y0 * s, a.x1 * s, a.y1 * s)
    sb = Box(b.x0 * s, b.y0 * s, b.x1 * s, b.y1 * s)
    assert iou(sa, sb) == pytest.approx(iou(a, b), rel=1e-12, abs=1e-12)


def test_iou_known_value():
    """Two unit-offset 2x2 boxes share 1 of 7 pixels."""
    assert iou(Box(0, 0, 2, 2), Box(1, 1, 3, 3)) == pytest.approx(1 / 7)


# ----- pad_to_square_view: where pixels land ----------------------------------------------------------


def _padding(width: int, height: int) -> tuple[int, int, int]:
    side = max(width, height)
    return side, (side - width) // 2, (side - height) // 2


def test_pad_to_square_view_layout():
    """The view is a G x G grid on an S x S canvas with the image pasted at ((S-W)//2, (S-H)//2)."""
    view = pad_to_square_view(300, 101, 24, first_token=5)
    assert (view.rows, view.cols, view.n_tokens) == (24, 24, 576)
    assert (view.width, view.height) == (300.0, 300.0)
    assert (view.offset_x, view.offset_y) == (0.0, 99.0)
    assert view.first_token == 5
    assert view.cell_width == pytest.approx(12.5) and view.cell_height == pytest.approx(12.5)


@PROPERTY
@given(st.integers(1, 800), st.integers(1, 800), grids, st.data())
def test_token_of_pixel_centre_matches_integer_formula(width, height, grid, data):
    """The token under pixel (x, y)'s centre is row floor((y+top+.5)G/S), col floor((x+left+.5)G/S)."""
    view = pad_to_square_view(width, height, grid)
    side, left, top = _padding(width, height)
    xs = np.asarray(data.draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=20)))
    ys = np.asarray(data.draw(st.lists(st.integers(0, height - 1), min_size=len(xs), max_size=len(xs))))
    rows, cols, inside = view.token_of_point(xs + 0.5, ys + 0.5)
    # exact integer arithmetic: floor((2(x+left)+1) * G / (2S))
    expected_cols = ((2 * (xs + left) + 1) * grid) // (2 * side)
    expected_rows = ((2 * (ys + top) + 1) * grid) // (2 * side)
    np.testing.assert_array_equal(cols, expected_cols)
    np.testing.assert_array_equal(rows, expected_rows)
    assert inside.all()


def test_token_of_point_outside_canvas_is_flagged_and_clipped():
    """Points off the padded canvas report inside=False and a clipped (valid) token index."""
    view = pad_to_square_view(100, 50, 12)  # canvas 100 x 100, image rows land at v in [25, 75)
    rows, cols, inside = view.token_of_point(np.array([-30.0, 50.0, 150.0]), np.array([10.0, -26.0, 10.0]))
    assert inside.tolist() == [False, False, False]
    assert rows.min() >= 0 and rows.max() <= 11 and cols.min() >= 0 and cols.max() <= 11


def _expected_tokens(view: View, side: int, grid: int, u0: int, v0: int, u1: int, v1: int) -> np.ndarray:
    """Tokens whose half-open patch [c S/G, (c+1) S/G) meets the half-open extent [u0, u1), by integers."""
    expected = np.zeros((grid, grid), dtype=bool)
    for r in range(grid):
        for c in range(grid):
            meets_x = c * side < u1 * grid and (c + 1) * side > u0 * grid
            meets_y = r * side < v1 * grid and (r + 1) * side > v0 * grid
            expected[r, c] = meets_x and meets_y
    return expected


@PROPERTY
@given(st.integers(1, 800), st.integers(1, 800), grids, st.data())
def test_single_pixel_mask_selects_its_centre_token_and_at_most_2x2(width, height, grid, data):
    """A one-pixel mask selects the token under the pixel centre, inside a block of at most 2x2 tokens."""
    view = pad_to_square_view(width, height, grid)
    side, left, top = _padding(width, height)
    x, y = data.draw(st.integers(0, width - 1)), data.draw(st.integers(0, height - 1))
    mask = np.zeros((height, width), dtype=bool)
    mask[y, x] = True
    selected = view.tokens_overlapping(mask)
    row, col, _ = view.token_of_point(x + 0.5, y + 0.5)
    assert selected[int(row), int(col)]
    rows, cols = np.nonzero(selected)
    block_rows, block_cols = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert selected.sum() == block_rows * block_cols  # a filled rectangle
    limit = 2 if side >= grid else math.ceil(grid / side) + 1  # a pixel may span several tiny patches
    assert block_rows <= limit and block_cols <= limit
    np.testing.assert_array_equal(selected, _expected_tokens(view, side, grid, x + left, y + top,
                                                             x + left + 1, y + top + 1))


@PROPERTY
@given(st.integers(1, 260), st.integers(1, 260), grids, st.data())
def test_rectangle_mask_selects_exactly_the_patches_it_meets(width, height, grid, data):
    """A filled rectangle selects exactly the tokens whose canvas patch intersects its canvas extent."""
    view = pad_to_square_view(width, height, grid)
    side, left, top = _padding(width, height)
    x0 = data.draw(st.integers(0, width - 1))
    y0 = data.draw(st.integers(0, height - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y1 = data.draw(st.integers(y0 + 1, height))
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    expected = _expected_tokens(view, side, grid, x0 + left, y0 + top, x1 + left, y1 + top)
    np.testing.assert_array_equal(view.tokens_overlapping(mask), expected)


def test_rectangle_on_patch_boundaries_does_not_leak_into_neighbours():
    """A rectangle aligned exactly to patch boundaries selects only the patches it covers."""
    view = pad_to_square_view(240, 240, 24)  # 10-pixel patches, no padding
    mask = np.zeros((240, 240), dtype=bool)
    mask[20:40, 30:60] = True
    selected = view.tokens_overlapping(mask)
    expected = np.zeros((24, 24), dtype=bool)
    expected[2:4, 3:6] = True
    np.testing.assert_array_equal(selected, expected)


@pytest.mark.parametrize("width,height", [(1, 1), (37, 300), (640, 480)])
def test_empty_mask_selects_nothing(width, height):
    """A mask with no pixels selects no token."""
    view = pad_to_square_view(width, height, 24)
    selected = view.tokens_overlapping(np.zeros((height, width), dtype=bool))
    assert selected.shape == (24, 24) and not selected.any()


@PROPERTY
@given(st.integers(1, 800), st.integers(1, 800), grids, boxes(allow_empty=True))
def test_box_canvas_round_trip(width, height, grid, box):
    """box_from_canvas(box_to_canvas(box)) gives the box back."""
    view = pad_to_square_view(width, height, grid)
    back = view.box_from_canvas(*view.box_to_canvas(box))
    assert back.as_list() == pytest.approx(box.as_list(), abs=1e-9)


def test_box_to_canvas_adds_padding_offset():
    """On a wide image the box moves down by the top padding and keeps its x coordinates."""
    view = pad_to_square_view(200, 100, 12)
    assert view.box_to_canvas(Box(10, 20, 30, 40)) == (10.0, 70.0, 30.0, 90.0)


# ----- dilate ----------------------------------------------------------------------------------------

grid_arrays = st.integers(1, 12).flatmap(
    lambda rows: st.integers(1, 12).flatmap(
        lambda cols: st.lists(st.booleans(), min_size=rows * cols, max_size=rows * cols).map(
            lambda cells: np.array(cells, dtype=bool).reshape(rows, cols))))


@PROPERTY
@given(grid_arrays)
def test_dilate_grows_shrinks_and_zero_is_identity(grid):
    """dilate(g, 1) contains g, dilate(g, -1) is inside g, dilate(g, 0) == g; inputs are not modified."""
    original = grid.copy()
    grown, shrunk, same = dilate(grid, 1), dilate(grid, -1), dilate(grid, 0)
    assert (grown | grid).tolist() == grown.tolist()
    assert (shrunk & grid).tolist() == shrunk.tolist()
    np.testing.assert_array_equal(same, grid)
    assert same is not grid
    np.testing.assert_array_equal(grid, original)


@pytest.mark.parametrize("rings", [1, 3, -2])
def test_dilate_all_false_stays_empty(rings):
    """Growing or shrinking an empty selection selects nothing."""
    assert not dilate(np.zeros((6, 9), dtype=bool), rings).any()


@PROPERTY
@given(st.integers(1, 15), st.integers(1, 15), st.integers(0, 5), st.data())
def test_dilate_single_cell_is_clipped_square(rows, cols, k, data):
    """One True cell grown by k rings is the (2k+1)^2 square around it, clipped to the grid."""
    r, c = data.draw(st.integers(0, rows - 1)), data.draw(st.integers(0, cols - 1))
    grid = np.zeros((rows, cols), dtype=bool)
    grid[r, c] = True
    expected = np.zeros_like(grid)
    expected[max(r - k, 0): r + k + 1, max(c - k, 0): c + k + 1] = True
    np.testing.assert_array_equal(dilate(grid, k), expected)


def test_dilate_shrink_peels_one_ring():
    """Shrinking a 5x5 block in the middle of a grid by one ring leaves its 3x3 core."""
    grid = np.zeros((9, 9), dtype=bool)
    grid[2:7, 2:7] = True
    expected = np.zeros_like(grid)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(dilate(grid, -1), expected)


# ----- misc ------------------------------------------------------------------------------------------


def test_mask_bbox_is_exclusive_and_none_for_empty():
    """mask_bbox gives exclusive x1/y1 (COCO-style) and None for an empty mask."""
    mask = np.zeros((10, 12), dtype=bool)
    assert mask_bbox(mask) is None
    mask[2:5, 3:7] = True
    assert mask_bbox(mask) == Box(3.0, 2.0, 7.0, 5.0)


@pytest.mark.parametrize("area,bucket", [
    (0, "small"), (32 ** 2 - 1e-6, "small"), (32 ** 2, "medium"),
    (96 ** 2 - 1e-6, "medium"), (96 ** 2, "large"), (1e7, "large"),
])
def test_coco_size_bucket_boundaries(area, bucket):
    """COCO buckets: small < 32^2 <= medium < 96^2 <= large."""
    assert coco_size_bucket(area) == bucket


@given(area=st.floats(0, 1e5), width=st.integers(20, 2000), height=st.integers(20, 2000),
       factor=st.floats(0.1, 10))
def test_coco_equivalent_area_depends_only_on_the_objects_share_of_the_image(area, width, height, factor):
    """Figure 10's buckets on 640-px-equivalent areas: the identity on a COCO-sized image, and unchanged when
    image and object are rescaled together (so a synthetic scene's bucket says what COCO's would)."""
    assert coco_equivalent_area(area, 640, 480) == pytest.approx(area)
    scaled = coco_equivalent_area(area * factor ** 2, width * factor, height * factor)
    assert scaled == pytest.approx(coco_equivalent_area(area, width, height), rel=1e-9, abs=1e-9)
