"""Qwen2.5-VL family (`Qwen2_5_VLForConditionalGeneration`), and Qwen3-VL (`Qwen3VLForConditionalGeneration`).

Native dynamic resolution: the image processor resizes each image with `smart_resize` to multiples of
(patch x merge) pixels (28 for Qwen2.5-VL's 14 px patches, 32 for Qwen3-VL's 16 px) with the area kept
between its min and max pixels, then every 2 x 2 block of patches becomes one LM token: one view of
(H'/28) x (W'/28) tokens, row-major, covering the resized image exactly (no padding, no crops). The LM places
those tokens with multimodal RoPE: an image of R x C tokens takes max(R, C) positions, token (r, c) at
(t, row, col) = (p, p + r, p + c), so the text after it is shifted (`text_position_offset`); the adapter
hands the model its grid sizes and token types wherever it runs a forward.

Boxes: the prompts are the paper's ("Please provide the bounding box coordinates of the dog."); Qwen2.5-VL
answers grounding questions in JSON with absolute pixel coordinates of the *resized* image,
`{"bbox_2d": [x1, y1, x2, y2], "label": "dog"}` (often inside a ```json fence and a list). Qwen3-VL writes
the same JSON with coordinates on a 0-1000 scale of the image. `format_box` writes `{"bbox_2d": [...]}`
(the teacher-forced target: the label is the question's); `parse_box` reads the first `bbox_2d` list, else
the first bracketed four numbers, in the family's coordinates.
"""

from __future__ import annotations

import re

import torch

from mechanisms.geometry import Box, View
from mechanisms.models.adapters.base import NUMBER, ModelAdapter, from_checkpoint

_FOUR = (r"\[\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*,\s*(" + NUMBER + r")\s*\]")
_BBOX_2D = re.compile(r"""["']?bbox_2d["']?\s*:\s*""" + _FOUR)
_ANY_FOUR = re.compile(_FOUR)


def parse_qwen_box(text: str) -> tuple[float, float, float, float] | None:
    """The first `"bbox_2d": [x1, y1, x2, y2]` in an answer, else its first bracketed four numbers; raw numbers
    (the caller knows their scale); None when there is none or it is not a box (x2 <= x1 or y2 <= y1)."""
    match = _BBOX_2D.search(text) or _ANY_FOUR.search(text)
    if not match:
        return None
    x0, y0, x1, y1 = (float(v) for v in match.groups())
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        return None
    return x0, y0, x1, y1


class QwenVLAdapter(ModelAdapter):
    """Qwen2.5-VL: boxes in absolute pixels of the resized image."""

    family = "qwen2_5_vl"
    image_positions_note = ("multimodal RoPE: the LM is handed each image token's (row, column) as rotary "
                            "positions, so decodable position in the LM need not be rebuilt from a 1-D sequence "
                            "(as in LLaVA and InternVL); what is measured is how linearly decodable it stays")
    answer_separator = ""  # the answer follows "<|im_start|>assistant\n" directly
    box_scale: float | None = None  # None: absolute pixels of the resized image; Qwen3-VL: 1000

    # ----- geometry ---------------------------------------------------------------------------------
    @property
    def merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def patch(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the image processor resizes this image to: its own `smart_resize`, asked."""
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        ip = self.processor.image_processor
        size = ip.size if isinstance(ip.size, dict) else ip.size.__dict__
        h, w = smart_resize(height, width, factor=ip.patch_size * ip.merge_size,
                            min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
        return w, h

    def views(self, width: int, height: int) -> list[View]:
        w, h = self.resized(width, height)
        cell = self.patch * self.merge
        return [View(name="image", rows=h // cell, cols=w // cell, width=float(w), height=float(h),
                     scale_x=w / width, scale_y=h / height, offset_x=0.0, offset_y=0.0, kind="global")]

    # ----- the forward's inputs -------------------------------------------------------------------------
    def _image_outputs(self, inputs: dict):
        pixels = inputs["pixel_values"].to(self.model.dtype)
        return self.model.model.get_image_features(pixel_values=pixels, image_grid_thw=inputs["image_grid_thw"],
                                                   return_dict=True)

    def image_features_pooled(self, inputs: dict) -> list[torch.Tensor]:
        return self._image_outputs(inputs).pooler_output

    def layout_inputs(self, inputs: dict, end: int | None = None, rows: int | None = None) -> dict:
        grids, types = inputs["image_grid_thw"], inputs["mm_token_type_ids"][:, :end]
        if rows is not None:
            grids, types = grids.expand(rows, -1), types.expand(rows, -1)
        return {"image_grid_thw": grids, "mm_token_type_ids": types}

    def projector(self) -> torch.nn.Module:
        return self.model.model.visual.merger

    def _rope_index(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(position ids [3, B, T], text offset per row [B, 1]) from the model's own `get_rope_index`."""
        return self.model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                               image_grid_thw=inputs["image_grid_thw"],
                                               attention_mask=inputs.get("attention_mask"))

    def text_position_offset(self, inputs: dict) -> int:
        _, offsets = self._rope_index(inputs)
        if offsets.shape[0] != 1:
            raise ValueError("a text position offset is one prompt's: pass a single-row input")
        return int(offsets[0, 0])

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """The patch embeddings and every vision block's output, per image on its own (H/p) x (W/p) patch grid,
        row-major (from the processor's order of 2 x 2 merge groups)."""
        grids = [(int(h), int(w)) for _, h, w in inputs["image_grid_thw"].tolist()]
        layers = [[_merge_groups_to_rows(s, h, w, self.merge) for s, (h, w) in
                   zip(states.split([h * w for h, w in grids]), grids)] for states in self._tower_states(inputs)]
        return layers, grids

    def _tower_states(self, inputs: dict) -> list[torch.Tensor]:
        """The patch embeddings and every vision block's output [all patches, d], in the processor's order.
        Qwen2.5-VL's blocks run on patches regrouped into attention windows: that order is undone."""
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

        tower, grid_thw = self.model.model.visual, inputs["image_grid_thw"]
        recorded: list[torch.Tensor] = []
        hooks = [module.register_forward_hook(lambda m, a, out: recorded.append(out))
                 for module in (tower.patch_embed, *tower.blocks)]
        try:
            tower(inputs["pixel_values"].to(self.model.dtype), grid_thw=grid_thw)
        finally:
            for hook in hooks:
                hook.remove()
        if not hasattr(tower, "window_size"):  # Qwen3-VL: full attention, no regrouping
            return recorded
        window_index, _ = qwen.get_vision_window_index(grid_thw, spatial_merge_size=tower.spatial_merge_size,
                                                       window_size=tower.window_size, patch_size=tower.patch_size)
        inverse, unit = torch.argsort(window_index), tower.spatial_merge_unit
        return [recorded[0]] + [s.reshape(-1, unit, s.shape[-1])[inverse].reshape(s.shape) for s in recorded[1:]]

    # ----- answers ------------------------------------------------------------------------------------
    def _box_scale(self, width: int, height: int) -> tuple[float, float]:
        """Answer units per original-image pixel, (x, y)."""
        if self.box_scale is not None:
            return self.box_scale / width, self.box_scale / height
        w, h = self.resized(width, height)
        return w / width, h / height

    def format_box(self, box: Box, width: int, height: int) -> str:
        sx, sy = self._box_scale(width, height)
        limit_x, limit_y = width * sx, height * sy
        values = [min(max(box.x0 * sx, 0), limit_x), min(max(box.y0 * sy, 0), limit_y),
                  min(max(box.x1 * sx, 0), limit_x), min(max(box.y1 * sy, 0), limit_y)]
        return '{"bbox_2d": [' + ", ".join(str(int(round(v))) for v in values) + "]}"

    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        values = parse_qwen_box(text)
        if values is None:
            return None
        sx, sy = self._box_scale(width, height)
        x0, y0, x1, y1 = values
        if x1 > width * sx * 1.001 + 1 or y1 > height * sy * 1.001 + 1:
            return None  # outside the image in the family's own units: not a box of this image
        return Box(x0 / sx, y0 / sy, x1 / sx, y1 / sy)


def _merge_groups_to_rows(states: torch.Tensor, rows: int, cols: int, merge: int) -> torch.Tensor:
    """[rows*cols, d] in Qwen's patch order (merge x merge groups, row-major over groups) -> row-major patches."""
    d = states.shape[-1]
    grouped = states.reshape(rows // merge, cols // merge, merge, merge, d)
    return grouped.permute(0, 2, 1, 3, 4).reshape(rows * cols, d)


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL: 16 px patches (32 px per token), boxes on a 0-1000 scale of the image, no window attention in
    the vision tower. "Deepstack": features of three intermediate vision layers are added to the LM's hidden
    states at the image positions of its first layers, so an image token is more than its LM input. Here a
    visual token is the LM input and its deepstack features side by side ([n, d * (1 + levels)]): every edit
    of the suite (ablation, shuffling, copying) moves or replaces all of a token's features together, and
    `visual_inputs` splits them back for the model."""

    family = "qwen3_vl"
    box_scale = 1000.0

    def image_features_pooled(self, inputs: dict) -> list[torch.Tensor]:
        out = self._image_outputs(inputs)
        return [torch.cat([main, *levels], dim=-1) for main, *levels in zip(out.pooler_output, *out.deepstack_features)]

    def visual_inputs(self, features: list[torch.Tensor]) -> dict:
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        levels = len(self.model.config.vision_config.deepstack_visual_indexes)
        parts = [f.chunk(1 + levels, dim=-1) for f in features]
        out = BaseModelOutputWithDeepstackFeatures(pooler_output=[p[0] for p in parts],
                                                   deepstack_features=[[p[1 + k] for p in parts]
                                                                       for k in range(levels)])
        return {"mm_encoder_outputs": {"image": out}}


def _load(model_class, adapter_class, path, dtype: torch.dtype, device) -> QwenVLAdapter:
    """The paper decodes greedily: the hub generation configs' repetition penalty (1.05) is reset to none, so
    that `generate` and the shared-prefix decoder write the same plain greedy answers."""
    model, processor = from_checkpoint(model_class, path, dtype, device)
    model.generation_config.repetition_penalty = 1.0
    return adapter_class(model, processor)


def load_qwen2_5_vl(path, dtype: torch.dtype, device) -> QwenVLAdapter:
    """Any Qwen2.5-VL HF checkpoint, shipped or real, through the same path."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return _load(Qwen2_5_VLForConditionalGeneration, QwenVLAdapter, path, dtype, device)


def load_qwen3_vl(path, dtype: torch.dtype, device) -> QwenVLAdapter:
    from transformers import Qwen3VLForConditionalGeneration

    return _load(Qwen3VLForConditionalGeneration, Qwen3VLAdapter, path, dtype, device)
