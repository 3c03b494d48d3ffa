"""InternVL-3.5 family (`InternVLForConditionalGeneration`): local tiles + a global thumbnail.

The image processor picks a tile grid (cols x rows, at most `max_patches` tiles) whose aspect ratio is
closest to the image's, resizes the image non-uniformly to (cols*T, rows*T) and cuts it row-major; when
there is more than one tile a T x T thumbnail of the whole image follows as the last view. Each view's
P x P patches are pixel-shuffled (ratio 0.5) to (P/2) x (P/2) tokens. Boxes are answered as
`<box>[[x0, y0, x1, y1]]</box>`, integers on a 0-1000 scale of the original image's width and height.
"""

from __future__ import annotations

import re

import torch

from mechanisms.geometry import Box, View
from mechanisms.models.adapters.base import NUMBER, ModelAdapter, first_box, from_checkpoint

PAPER_MAX_TILES = 6  # §2.1: "we cap the number of local tiles at six"

_FOUR = (r"\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*")
# what InternVL writes: `<ref>dog</ref><box>[[x0, y0, x1, y1]]</box>`, with or without the <ref> and <box>
# tags, and sometimes single brackets; all on the 0-1000 scale
_INTERNVL_BOX = re.compile(r"\[\s*\[" + _FOUR + r"\]\s*\]")
_INTERNVL_SINGLE = re.compile(r"\[" + _FOUR + r"\]")


def parse_internvl_box(text: str) -> tuple[float, float, float, float] | None:
    """InternVL's `<box>[[x0, y0, x1, y1]]</box>` on the 0-1000 scale, returned in [0, 1]: the first
    double-bracketed box (tags or not), else the first single-bracketed one."""
    return first_box(_INTERNVL_BOX, text, 1000.0) or (None if _INTERNVL_BOX.search(text)
                                                        else first_box(_INTERNVL_SINGLE, text, 1000.0))


class InternVLAdapter(ModelAdapter):
    family = "internvl"
    answer_separator = ""  # the answer follows "<|im_start|>assistant\n" directly
    pooled_as_one_tensor = True
    answer_tokens = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")

    @property
    def tile_size(self) -> int:
        size = self.processor.image_processor.size
        return int(size["height"] if isinstance(size, dict) else size.height)

    @property
    def grid(self) -> int:
        """Tokens per side of one view after pixel shuffle (16 for InternVL-3.5)."""
        vision = self.model.config.vision_config
        image_size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        return int(image_size // patch * self.model.config.downsample_ratio)

    def tile_grid(self, width: int, height: int) -> tuple[int, int]:
        """(cols, rows) of local tiles: the image processor's own choice, asked of the same function."""
        from transformers.models.got_ocr2.image_processing_got_ocr2 import get_optimal_tiled_canvas

        ip = self.processor.image_processor
        return get_optimal_tiled_canvas((height, width), (self.tile_size, self.tile_size),
                                        ip.min_patches, ip.max_patches)

    def views(self, width: int, height: int) -> list[View]:
        cols, rows = self.tile_grid(width, height)
        t, g = float(self.tile_size), self.grid
        views = []
        for k in range(cols * rows):
            r, c = divmod(k, cols)
            views.append(View(name=f"tile{k}", rows=g, cols=g, width=t, height=t,
                              scale_x=cols * t / width, scale_y=rows * t / height,
                              offset_x=-c * t, offset_y=-r * t, first_token=k * g * g, kind="local"))
        if len(views) == 1:  # a single tile is the whole image resized: it plays the global role
            return [View(name="image", rows=g, cols=g, width=t, height=t, scale_x=t / width,
                         scale_y=t / height, offset_x=0.0, offset_y=0.0, kind="global")]
        views.append(View(name="thumbnail", rows=g, cols=g, width=t, height=t, scale_x=t / width,
                          scale_y=t / height, offset_x=0.0, offset_y=0.0, first_token=len(views) * g * g,
                          kind="global"))
        return views

    def image_token_ids(self, width: int, height: int) -> list[int]:
        inner = super().image_token_ids(width, height)
        return [self.processor.start_image_token_id, *inner, self.processor.end_image_token_id]

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """Every InternViT layer's patch states per view (embeddings first, CLS dropped), before the pixel
        shuffle: the backbone's own P x P grid per view."""
        pixels = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.model.vision_tower(pixels, output_hidden_states=True)
        side = self.grid * 2
        return [list(h[:, 1:]) for h in out.hidden_states], [(side, side)] * pixels.shape[0]

    def format_box(self, box: Box, width: int, height: int) -> str:
        values = [box.x0 / width, box.y0 / height, box.x1 / width, box.y1 / height]
        ints = [int(round(min(max(v, 0.0), 1.0) * 1000)) for v in values]
        return "<box>[[" + ", ".join(str(v) for v in ints) + "]]</box>"

    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        values = parse_internvl_box(text)
        if values is None:
            return None
        x0, y0, x1, y1 = values
        return Box(x0 * width, y0 * height, x1 * width, y1 * height)


def load_internvl(path, dtype: torch.dtype, device: str | torch.device,
                  max_tiles: int = PAPER_MAX_TILES) -> InternVLAdapter:
    """Load any InternVL-3.5 HF-format checkpoint, shipped or real, through the same path.

    The hub processors allow up to 12 tiles; the paper caps them at 6, so `max_patches` is set here.
    """
    from transformers import InternVLForConditionalGeneration

    model, processor = from_checkpoint(InternVLForConditionalGeneration, path, dtype, device)
    processor.image_processor.max_patches = max_tiles
    processor.image_processor.crop_to_patches = True
    return InternVLAdapter(model, processor)
