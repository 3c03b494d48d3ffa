"""Boxes, IoU, and where original-image pixels land on a model's grids of image tokens.

One vocabulary for "where" in the image: a `View` is one grid of image tokens (LLaVA has one; InternVL
has its local tiles plus a global thumbnail), with an affine map from original-image pixel coordinates
to the view's canvas. Adapters build the views; everything else (token selection, box scaling,
padding rings) is written once here against `View`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in original-image pixel coordinates; x1/y1 exclusive (COCO x+w, y+h)."""

    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def from_coco(cls, bbox) -> "Box":
        x, y, w, h = (float(v) for v in bbox)
        return cls(x, y, x + w, y + h)

    @property
    def width(self) -> float:
        return max(0.0, self.x1 - self.x0)

    @property
    def height(self) -> float:
        return max(0.0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def expanded(self, dx: float, dy: float) -> "Box":
        return Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy)

    def clipped(self, width: float, height: float) -> "Box":
        return Box(min(max(self.x0, 0.0), width), min(max(self.y0, 0.0), height),
                   min(max(self.x1, 0.0), width), min(max(self.y1, 0.0), height))


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 when either box is empty."""
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


@dataclass(frozen=True)
class View:
    """One grid of image tokens and the affine map original pixel -> view canvas.

    A point (x, y) of the original image (continuous coordinates, pixel i spanning [i, i+1)) lands
    on the canvas at (x * scale_x + offset_x, y * scale_y + offset_y). The canvas is `width` x
    `height` view units, cut into `rows` x `cols` equal patches; token (r, c) covers
    [c*width/cols, (c+1)*width/cols) x [r*height/rows, (r+1)*height/rows). `first_token` is the
    index of token (0, 0) among all of the model's image tokens; tokens run row-major. `kind` says which
    pathway the view belongs to: "global" (the whole image at once: LLaVA's view, InternVL's thumbnail)
    or "local" (InternVL's high-resolution tiles). `row_end_tokens` tokens follow each row and cover no
    pixels (LLaVA-OneVision's image-newline token): a view's tokens are `rows * (cols + row_end_tokens)`,
    and `spread`/`grid_of` move between that token order and the [rows, cols] grid.
    """

    name: str
    rows: int
    cols: int
    width: float
    height: float
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    first_token: int = 0
    kind: str = "global"
    row_end_tokens: int = 0

    @property
    def n_tokens(self) -> int:
        return self.rows * (self.cols + self.row_end_tokens)

    def grid_slots(self) -> np.ndarray:
        """Bool [n_tokens]: which of the view's tokens are grid cells (not row-end tokens)."""
        slots = np.zeros((self.rows, self.cols + self.row_end_tokens), dtype=bool)
        slots[:, :self.cols] = True
        return slots.ravel()

    def spread(self, grid: np.ndarray, fill=False) -> np.ndarray:
        """A [rows, cols] grid as the view's tokens in order, `fill` at row-end tokens."""
        out = np.full((self.rows, self.cols + self.row_end_tokens), fill, dtype=np.asarray(grid).dtype)
        out[:, :self.cols] = grid
        return out.ravel()

    def grid_of(self, tokens: np.ndarray) -> np.ndarray:
        """The view's tokens (in order) as its [rows, cols] grid, row-end tokens dropped."""
        return np.asarray(tokens).reshape(self.rows, self.cols + self.row_end_tokens)[:, :self.cols]

    @property
    def cell_width(self) -> float:
        """Width of one token in original-image pixels."""
        return self.width / self.cols / self.scale_x

    @property
    def cell_height(self) -> float:
        return self.height / self.rows / self.scale_y

    def to_canvas(self, x, y):
        return np.asarray(x) * self.scale_x + self.offset_x, np.asarray(y) * self.scale_y + self.offset_y

    def from_canvas(self, u, v):
        return (np.asarray(u) - self.offset_x) / self.scale_x, (np.asarray(v) - self.offset_y) / self.scale_y

    def token_of_point(self, x, y):
        """(row, col, inside) of the token under original-image point(s) (x, y)."""
        u, v = self.to_canvas(x, y)
        inside = (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
        col = np.floor(u * self.cols / self.width).astype(int)
        row = np.floor(v * self.rows / self.height).astype(int)
        return np.clip(row, 0, self.rows - 1), np.clip(col, 0, self.cols - 1), inside

    def tokens_overlapping(self, mask: np.ndarray) -> np.ndarray:
        """Bool [rows, cols]: tokens whose patch overlaps at least one pixel of the mask."""
        grid = np.zeros((self.rows, self.cols), dtype=bool)
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return grid
        u0, v0 = self.to_canvas(xs, ys)
        u1, v1 = self.to_canvas(xs + 1, ys + 1)
        c0 = np.floor(u0 * self.cols / self.width).astype(int)
        r0 = np.floor(v0 * self.rows / self.height).astype(int)
        # a pixel ending exactly on a patch boundary does not reach into the next patch
        c1 = np.ceil(u1 * self.cols / self.width - 1e-9).astype(int) - 1
        r1 = np.ceil(v1 * self.rows / self.height - 1e-9).astype(int) - 1
        c0, c1 = np.clip(c0, 0, self.cols - 1), np.clip(c1, -1, self.cols - 1)
        r0, r1 = np.clip(r0, 0, self.rows - 1), np.clip(r1, -1, self.rows - 1)
        visible = (u1 > 0) & (u0 < self.width) & (v1 > 0) & (v0 < self.height)
        for a, b, c, d in zip(r0[visible], r1[visible], c0[visible], c1[visible]):
            grid[a:b + 1, c:d + 1] = True
        return grid

    def extent(self) -> Box:
        """The view's whole canvas in original-image coordinates (may reach past the image: padding)."""
        return self.box_from_canvas(0.0, 0.0, self.width, self.height)

    def box_to_canvas(self, box: Box) -> tuple[float, float, float, float]:
        u0, v0 = self.to_canvas(box.x0, box.y0)
        u1, v1 = self.to_canvas(box.x1, box.y1)
        return float(u0), float(v0), float(u1), float(v1)

    def box_from_canvas(self, u0, v0, u1, v1) -> Box:
        x0, y0 = self.from_canvas(u0, v0)
        x1, y1 = self.from_canvas(u1, v1)
        return Box(float(x0), float(y0), float(x1), float(y1))


def pad_to_square_view(width: int, height: int, grid: int, name: str = "image",
                       first_token: int = 0) -> View:
    """LLaVA-1.5's expand2square: the image pasted at ((S-W)//2, (S-H)//2) of an S x S canvas."""
    side = max(width, height)
    return View(name=name, rows=grid, cols=grid, width=float(side), height=float(side),
                scale_x=1.0, scale_y=1.0, offset_x=float((side - width) // 2),
                offset_y=float((side - height) // 2), first_token=first_token)


def grow_by_cells(box: Box, views: list[View], cells: int) -> Box:
    """A box grown by `cells` token cells on every side, in original-image pixels (Figure 1's scaled GT).

    A cell is the coarsest view's (the one whose rings cover the most image), and the result is clipped
    to where the views have tokens at all.
    """
    dx = cells * max(v.cell_width for v in views)
    dy = cells * max(v.cell_height for v in views)
    grown = box.expanded(dx, dy)
    extents = [v.extent() for v in views]
    x0, y0 = min(e.x0 for e in extents), min(e.y0 for e in extents)
    x1, y1 = max(e.x1 for e in extents), max(e.y1 for e in extents)
    clipped_x0, clipped_y0 = min(max(grown.x0, x0), x1), min(max(grown.y0, y0), y1)
    return Box(clipped_x0, clipped_y0, max(min(grown.x1, x1), clipped_x0), max(min(grown.y1, y1), clipped_y0))


def dilate(grid: np.ndarray, rings: int) -> np.ndarray:
    """Grow (rings > 0) or shrink (rings < 0) a token selection by whole rings (8-neighbourhood)."""
    out = grid.copy()
    for _ in range(abs(rings)):
        padded = np.pad(out, 1, constant_values=rings < 0)
        stacked = np.stack([padded[1 + dy: 1 + dy + out.shape[0], 1 + dx: 1 + dx + out.shape[1]]
                            for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        out = stacked.any(0) if rings > 0 else stacked.all(0)
    return out


def mask_bbox(mask: np.ndarray) -> Box | None:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def coco_size_bucket(area: float) -> str:
    """COCO's size buckets on an area in pixels: small < 32^2 <= medium < 96^2 <= large."""
    if area < 32 ** 2:
        return "small"
    return "medium" if area < 96 ** 2 else "large"


COCO_LONG_SIDE = 640  # the long side of (almost) every COCO image


def coco_equivalent_area(area: float, width: int, height: int) -> float:
    """An area as it would be on the image rescaled to COCO's 640 px long side.

    COCO's size buckets (Figure 10) are absolute pixel areas on ~640 x 480 images; on other image sizes
    (the synthetic scenes are 120-400 px) the same object would fall in a smaller bucket only because
    the canvas is smaller. Rescaling to a 640 px long side keeps the bucket a statement about the object's
    share of the image, and is the identity on COCO itself.
    """
    return area * (COCO_LONG_SIDE / max(width, height)) ** 2


def round_half_up(x: float, ndigits: int = 2) -> float:
    return math.floor(x * 10 ** ndigits + 0.5) / 10 ** ndigits
