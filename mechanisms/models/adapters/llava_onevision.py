"""LLaVA-OneVision family (`LlavaOnevisionForConditionalGeneration`): "anyres" base view + unpadded crops.

The image processor sends SigLIP (384 px, 14 px patches: 27 x 27 per view, the last 6 px of each side unseen)
a base view, the whole image resized to 384 x 384 (`global`), and the crops of the image resized to fit the
best of the checkpoint's grid pinpoints (aspect kept, centred on padding) and cut into 384 px crops. The model
lays the crops' features out as one map (27 per crop and side), cuts the padding's rows or columns away
(`unpad_image`), shrinks the map bilinearly when it holds more than 9 crops' worth ("anyres_max_9"), and ends
every row with the learned image-newline token: the crops are one `local` view of R x C tokens plus one
row-end token per row (`View.row_end_tokens`; row-end tokens cover no pixels and are never an object's).

The crops view's cells are uniform over the crops' canvas, 384/27 px each: within a crop the model's cells are
14 px and the crop's last 6 px are unseen, so a cell boundary is off by at most 6 canvas px (0.42 cell); the
base view is exact. The map's arithmetic (best resolution, resized size, unpadding, shrinking) is the
processor's and model's own functions, asked.

Boxes: LLaVA-OneVision answers grounding questions like LLaVA-1.5, `[x0, y0, x1, y1]` as [0, 1] fractions of
the image, two decimals (no padding to square here: the fractions are of the original image).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mechanisms.geometry import Box, View
from mechanisms.models.adapters.base import ModelAdapter, from_checkpoint
from mechanisms.models.adapters.llava import parse_float_box


class LlavaOnevisionAdapter(ModelAdapter):
    family = "llava_onevision"
    answer_separator = ""  # the answer follows "<|im_start|>assistant\n" directly

    @property
    def patches(self) -> int:
        """Backbone patches per side of one view (27)."""
        vision = self.model.config.vision_config
        return vision.image_size // vision.patch_size

    def crop_layout(self, width: int, height: int) -> dict:
        """How the crops of an image of this size are laid out, from the processor's and model's functions:
        best resolution, resized size and paste offset in it, the crops' token map before and after unpadding
        and shrinking."""
        from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
        from transformers.image_utils import ChannelDimension

        config, side = self.model.config, self.model.config.vision_config.image_size
        target_h, target_w = select_best_resolution((height, width), config.image_grid_pinpoints)
        blank = np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (1, height, width))  # no memory: sizes only
        new_h, new_w = get_patch_output_size(blank, (target_h, target_w), ChannelDimension.FIRST)
        rows_all, cols_all = target_h // side * self.patches, target_w // side * self.patches
        top_rows = left_cols = 0  # token rows / cols cut from each side by `unpad_image`
        if width / height > cols_all / rows_all:
            kept = int(round(height * (cols_all / width), 7))
            top_rows = (rows_all - kept) // 2
        else:
            kept = int(round(width * (rows_all / height), 7))
            left_cols = (cols_all - kept) // 2
        rows, cols = rows_all - 2 * top_rows, cols_all - 2 * left_cols
        max_crops = int(getattr(config, "vision_aspect_ratio", "anyres_max_9").removeprefix("anyres_max_"))
        ratio = math.sqrt(rows * cols / (max_crops * self.patches ** 2))
        shrunk = (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)
        return {"target": (target_w, target_h), "resized": (new_w, new_h),
                "paste": ((target_w - new_w) // 2, (target_h - new_h) // 2), "unpadded": (rows, cols),
                "cut": (top_rows, left_cols), "tokens": shrunk, "cell": side / self.patches}

    def views(self, width: int, height: int) -> list[View]:
        p, patch = self.patches, self.model.config.vision_config.patch_size
        side = float(self.model.config.vision_config.image_size)
        base = View(name="image", rows=p, cols=p, width=float(p * patch), height=float(p * patch),
                    scale_x=side / width, scale_y=side / height, offset_x=0.0, offset_y=0.0, kind="global")
        layout = self.crop_layout(width, height)
        (new_w, new_h), (paste_x, paste_y) = layout["resized"], layout["paste"]
        (rows, cols), (top_rows, left_cols), cell = layout["unpadded"], layout["cut"], layout["cell"]
        token_rows, token_cols = layout["tokens"]
        crops = View(name="crops", rows=token_rows, cols=token_cols, width=cols * cell, height=rows * cell,
                     scale_x=new_w / width, scale_y=new_h / height, offset_x=paste_x - left_cols * cell,
                     offset_y=paste_y - top_rows * cell, first_token=base.n_tokens, kind="local",
                     row_end_tokens=1 if getattr(self.model.model, "image_newline", None) is not None else 0)
        return [base, crops]

    def image_features_pooled(self, inputs: dict) -> list[torch.Tensor]:
        pixels = inputs["pixel_values"].to(self.model.dtype)
        return self.model.model.get_image_features(pixel_values=pixels, image_sizes=inputs["image_sizes"],
                                                   return_dict=True).pooler_output

    def vision_hidden_states(self, inputs: dict) -> tuple[list[list[torch.Tensor]], list[tuple[int, int]]]:
        """Every SigLIP layer's patch states (embeddings first), two views per image as `views` lays them out:
        the base view's 27 x 27 patches, and the crops' patches as one map, unpadded as the model unpads it
        (before any shrinking: the backbone's own patches)."""
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            image_size_to_num_patches,
            unpad_image,
        )

        config, p = self.model.config, self.patches
        sizes = inputs["image_sizes"].tolist()
        counts = [image_size_to_num_patches(s, config.image_grid_pinpoints, config.vision_config.image_size)
                  for s in sizes]
        pixels = inputs["pixel_values"].to(self.model.dtype)
        pixels = torch.cat([v[:n] for v, n in zip(pixels, counts)]) if pixels.dim() == 5 else pixels
        out = self.model.model.vision_tower(pixels, output_hidden_states=True)
        layers, grids = [], []
        for depth, states in enumerate(out.hidden_states):
            per_layer = []
            for image, size in zip(states.split(counts), sizes):
                n_h, n_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints,
                                                       config.vision_config.image_size)
                crops = image[1:].view(n_h, n_w, p, p, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
                crops = unpad_image(crops, size)  # [d, rows, cols]
                per_layer += [image[0], crops.flatten(1).transpose(0, 1)]
                if depth == 0:
                    grids += [(p, p), (crops.shape[1], crops.shape[2])]
            layers.append(per_layer)
        return layers, grids

    def format_box(self, box: Box, width: int, height: int) -> str:
        values = [box.x0 / width, box.y0 / height, box.x1 / width, box.y1 / height]
        return "[" + ", ".join(f"{min(max(v, 0.0), 1.0):.2f}" for v in values) + "]"

    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        values = parse_float_box(text)
        if values is None:
            return None
        x0, y0, x1, y1 = values
        return Box(x0 * width, y0 * height, x1 * width, y1 * height)


def load_llava_onevision(path, dtype: torch.dtype, device) -> LlavaOnevisionAdapter:
    """Any LLaVA-OneVision HF checkpoint (llava-hf's), shipped or real, through the same path."""
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionAdapter(*from_checkpoint(LlavaOnevisionForConditionalGeneration, path, dtype, device))
