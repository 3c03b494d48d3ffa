"""Gemma 3 family (`Gemma3ForConditionalGeneration`): SigLIP at 896 px, 4 x 4 average pooling to 16 x 16 tokens.

Every view is resized (non-uniformly) to 896 x 896, cut into 64 x 64 patches of 14 px, and pooled 4 x 4 into
256 tokens, each between `<start_of_image>` and `<end_of_image>`. Without pan-and-scan the image is one view
(`global`). With pan-and-scan (the image processor's `do_pan_and_scan`; the gemma3 profiles turn it on so that
the view claims have local views to ablate), an image whose aspect ratio reaches 1.2 is also cut into 2-4
equal crops along its long side, each resized to 896 x 896 (`local`); the prompt then reads "Here is the
original image <image> and here are some crops to help you see better <crop> <crop> ...": the whole image
comes first. The crops' count and cuts are the image processor's own (`pan_and_scan_batched` is asked).

Gemma 3's LM attends bidirectionally inside each image block (its token types drive the mask), so the
adapter passes the token types to every forward; layers alternate sliding-window (1,024) and global
attention, which the suite's attention code honours.

Boxes: Gemma 3 has no grounding format of its own documented. The adapter writes and reads the convention of
its Gemini siblings, `{"box_2d": [y0, x0, y1, x1]}` with integers on a 0-1000 scale of the image's height and
width (y first); a bare `[a, b, c, d]` is read in the same order. Unverified without weights: a checkpoint
that answers `[x0, y0, x1, y1]` would score as misses, which the report's parse-failure counts would show.
"""

from __future__ import annotations

import re

import torch

from mechanisms.geometry import Box, View
from mechanisms.models.adapters.base import NUMBER, ModelAdapter, from_checkpoint

_FOUR = (r"\[\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*\]")
_BOX_2D = re.compile(r"""["']?box_2d["']?\s*:\s*""" + _FOUR)
_ANY_FOUR = re.compile(_FOUR)


def parse_gemini_box(text: str) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) in [0, 1] from the first `"box_2d": [y0, x0, y1, x1]` (0-1000) of an answer, else its
    first bracketed four numbers in the same order; None when there is none or it is not a box."""
    match = _BOX_2D.search(text) or _ANY_FOUR.search(text)
    if not match:
        return None
    y0, x0, y1, x1 = (float(v) / 1000.0 for v in match.groups())
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


class Gemma3Adapter(ModelAdapter):
    family = "gemma3"
    answer_separator = ""  # the answer follows "<start_of_turn>model\n" directly
    pooled_as_one_tensor = True

    @property
    def view_size(self) -> int:
        size = self.processor.image_processor.size
        return int(size["height"] if isinstance(size, dict) else size.height)

    @property
    def grid(self) -> int:
        """Tokens per side of one view (16: 256 tokens)."""
        return int(round(self.model.config.mm_tokens_per_image ** 0.5))

    def processor_call_settings(self) -> dict:
        """All pan-and-scan settings, passed explicitly: the processor would otherwise take its class defaults
        over the checkpoint's preprocessor_config values, and the views would not be its crops."""
        settings = self.pan_and_scan()
        return {"do_pan_and_scan": False} if settings is None else {"do_pan_and_scan": True, **settings}

    def pan_and_scan(self) -> dict | None:
        """The pan-and-scan settings every processor call uses (the profile's, else the checkpoint's
        preprocessor_config, else the processor's defaults), or None when it is off."""
        ip, defaults = self.processor.image_processor, type(self.processor).images_kwargs
        names = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                 "pan_and_scan_min_ratio_to_activate")
        settings = {n: next((v for v in (self.processor_settings.get(n), getattr(ip, n, None), defaults.get(n))
                             if v is not None), None) for n in names}
        return settings if settings.pop("do_pan_and_scan") else None

    def crops(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """Pan-and-scan crops (x, y, width, height) in original pixels, [] when off or not triggered: the image
        processor's own `pan_and_scan_batched` run on an image of this size."""
        settings = self.pan_and_scan()
        if settings is None:
            return []
        cut = self.processor.image_processor.pan_and_scan_batched  # it reads the size and slices: probes whose
        rows = torch.arange(height).view(1, 1, height, 1).expand(1, 1, height, width)  # values are their own
        cols = torch.arange(width).view(1, 1, 1, width).expand(1, 1, height, width)  # row / column (no copies)
        return [(int(c[0, 0, 0, 0]), int(r[0, 0, 0, 0]), c.shape[-1], c.shape[-2])
                for r, c in zip(cut(rows, *settings.values()), cut(cols, *settings.values()))]

    def views(self, width: int, height: int) -> list[View]:
        s, g = float(self.view_size), self.grid
        whole = View(name="image", rows=g, cols=g, width=s, height=s, scale_x=s / width, scale_y=s / height,
                     offset_x=0.0, offset_y=0.0, kind="global")
        views = [whole]
        for k, (x0, y0, w, h) in enumerate(self.crops(width, height)):
            views.append(View(name=f"crop{k}", rows=g, cols=g, width=s, height=s, scale_x=s / w, scale_y=s / h,
                              offset_x=-x0 * s / w, offset_y=-y0 * s / h, first_token=(k + 1) * g * g,
                              kind="local"))
        return views

    def processor_images(self, images: list) -> list:
        return [[image] for image in images]

    def layout_inputs(self, inputs: dict, end: int | None = None, rows: int | None = None) -> dict:
        types = inputs["token_type_ids"][:, :end]
        return {"token_type_ids": types if rows is None else types.expand(rows, -1)}

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """Every SigLIP layer's patch states per view (embeddings first), on its 64 x 64 patch grid (before the
        4 x 4 pooling)."""
        pixels = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.model.vision_tower(pixel_values=pixels, output_hidden_states=True)
        vision = self.model.config.vision_config
        side = vision.image_size // vision.patch_size
        return [list(h) for h in out.hidden_states], [(side, side)] * pixels.shape[0]

    def format_box(self, box: Box, width: int, height: int) -> str:
        values = [box.y0 / height, box.x0 / width, box.y1 / height, box.x1 / width]
        ints = [int(round(min(max(v, 0.0), 1.0) * 1000)) for v in values]
        return '{"box_2d": [' + ", ".join(str(v) for v in ints) + "]}"

    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        values = parse_gemini_box(text)
        if values is None:
            return None
        x0, y0, x1, y1 = values
        return Box(x0 * width, y0 * height, x1 * width, y1 * height)


def load_gemma3(path, dtype: torch.dtype, device) -> Gemma3Adapter:
    """Any Gemma 3 HF checkpoint (4B and up: the 1B has no vision tower), shipped or real, one path."""
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3Adapter(*from_checkpoint(Gemma3ForConditionalGeneration, path, dtype, device))
