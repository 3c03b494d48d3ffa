"""LLaVA-1.5 family (`LlavaForConditionalGeneration`): one pad-to-square view, boxes in [0, 1] floats.

LLaVA-1.5 pads the image to a square with the mean colour (expand2square) and resizes it; its box
answers are normalised to that padded square, two decimals: `[0.12, 0.34, 0.56, 0.78]`.
"""

from __future__ import annotations

import re

import torch

from mechanisms.geometry import Box, View, pad_to_square_view
from mechanisms.models.adapters.base import NUMBER, ModelAdapter, first_box, from_checkpoint

_FOUR_NUMBERS = re.compile(r"\[\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*("
                           + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*\]")


def parse_float_box(text: str) -> tuple[float, float, float, float] | None:
    """LLaVA's `[x0, y0, x1, y1]` with coordinates in [0, 1]; the first such list in the text."""
    return first_box(_FOUR_NUMBERS, text)


class LlavaAdapter(ModelAdapter):
    family = "llava"

    @property
    def grid(self) -> int:
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def views(self, width: int, height: int) -> list[View]:
        return [pad_to_square_view(width, height, self.grid)]

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """Every CLIP layer's patch states, one grid x grid view per image (embeddings first, CLS dropped)."""
        pixels = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.model.vision_tower(pixels, output_hidden_states=True)
        drop_cls = self.model.config.vision_feature_select_strategy == "default"
        layers = [list(h[:, 1:] if drop_cls else h) for h in out.hidden_states]
        return layers, [(self.grid, self.grid)] * pixels.shape[0]

    def format_box(self, box: Box, width: int, height: int) -> str:
        view = self.views(width, height)[0]
        u0, v0, u1, v1 = view.box_to_canvas(box)
        values = [u0 / view.width, v0 / view.height, u1 / view.width, v1 / view.height]
        return "[" + ", ".join(f"{min(max(v, 0.0), 1.0):.2f}" for v in values) + "]"

    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        values = parse_float_box(text)
        if values is None:
            return None
        view = self.views(width, height)[0]
        x0, y0, x1, y1 = values
        return view.box_from_canvas(x0 * view.width, y0 * view.height, x1 * view.width, y1 * view.height)


def load_llava(path, dtype: torch.dtype, device: str | torch.device) -> LlavaAdapter:
    """Load any LLaVA-1.5 checkpoint, shipped or real, through the same path.

    llava-hf checkpoints ship a CLIP image processor that centre-crops (and ignores `do_pad`), whereas
    LLaVA-1.5 itself pads to square; a `LlavaImageProcessor` with `do_pad=True` built from the
    checkpoint's own settings replaces it, so geometry matches the paper's pre-processing.
    """
    from transformers import LlavaForConditionalGeneration

    return llava_adapter(*from_checkpoint(LlavaForConditionalGeneration, path, dtype, device))


def llava_adapter(model, processor) -> LlavaAdapter:
    """The adapter over a loaded LLaVA model and its checkpoint's processor (padding to square restored)."""
    from transformers import LlavaImageProcessor

    current = processor.image_processor
    if not (isinstance(current, LlavaImageProcessor) and getattr(current, "do_pad", False)):
        settings = {k: v for k, v in current.to_dict().items()
                    if k in {"size", "crop_size", "image_mean", "image_std", "resample", "rescale_factor",
                             "do_normalize", "do_rescale", "do_convert_rgb", "do_center_crop", "do_resize"}}
        processor.image_processor = LlavaImageProcessor(do_pad=True, **settings)
    processor.tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return LlavaAdapter(model, processor)
