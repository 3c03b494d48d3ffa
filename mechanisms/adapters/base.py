"""What every model family must tell the rest of the suite. Claims and interventions talk only to this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from PIL import Image

from mechanisms.geometry import Box, View


@dataclass(frozen=True)
class HeadLayout:
    """Where attention heads live: `o_proj` of each LM layer reads [B, T, n_query_heads * head_dim]."""

    n_layers: int
    n_query_heads: int
    n_kv_heads: int
    head_dim: int


class ModelAdapter(ABC):
    """Architecture-specific knowledge of one model family, and nothing else."""

    family: ClassVar[str]

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer

    # ----- prompts -------------------------------------------------------------------------------
    def chat_text(self, question: str) -> str:
        """The full prompt text (system, image placeholder, task) ending where the answer begins."""
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)

    def encode(self, images: list[Image.Image], questions: list[str]) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch (left-padded so generation continues every row)."""
        self.tokenizer.padding_side = "left"
        texts = [self.chat_text(q) for q in questions]
        return self.processor(images=images, text=texts, return_tensors="pt", padding=True)

    # ----- image tokens ---------------------------------------------------------------------------
    @abstractmethod
    def views(self, width: int, height: int) -> list[View]:
        """The token grids an image of this size becomes, in the order their tokens enter the LM."""

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool [B, T]: which sequence positions hold image tokens (never hard-coded)."""
        return input_ids == self.model.config.image_token_id

    def n_image_tokens(self, width: int, height: int) -> int:
        return sum(view.n_tokens for view in self.views(width, height))

    # ----- answers --------------------------------------------------------------------------------
    @abstractmethod
    def format_box(self, box: Box, width: int, height: int) -> str:
        """How this family writes a box in its answers (training targets, examples)."""

    @abstractmethod
    def parse_box(self, text: str, width: int, height: int) -> Box | None:
        """A box in original-image pixels from an answer, or None when it cannot be parsed."""

    # ----- structure -------------------------------------------------------------------------------
    @abstractmethod
    def language_layers(self) -> list[torch.nn.Module]:
        """The LM's decoder layers, in order."""

    @abstractmethod
    def head_layout(self) -> HeadLayout:
        """Attention-head geometry of the LM."""

    @abstractmethod
    def projector(self) -> torch.nn.Module:
        """The module whose output are the image tokens at the LM input."""
