"""Batched greedy decoding for one adapter, optionally under edits of the visual tokens.

Generation is `model.generate` with the KV cache. The vision tower and projector run once per batch of
images; every condition then decodes from the same visual tokens (edited per image) through
`mm_encoder_outputs`, which is bit-identical to passing pixels when nothing is edited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from PIL import Image

from mechanisms.interventions.tokens import TokenEdit, edited_features
from mechanisms.models.adapters.base import ModelAdapter

EditMaker = Callable[[int, torch.Tensor], TokenEdit | None]  # (index in the batch, its visual tokens) -> edit


class Generator:
    """Batched greedy decoding for one adapter, optionally under edits of the visual tokens (module docstring)."""

    def __init__(self, adapter: ModelAdapter, batch_size: int = 32, device: str | torch.device | None = None):
        self.adapter = adapter
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(adapter.model.parameters()).device

    def generate(self, images: list[Image.Image], questions: list[str], max_new_tokens: int) -> list[str]:
        """Answers of the unmodified model."""
        return self.generate_conditions(images, questions, max_new_tokens, {"baseline": None})["baseline"]

    @torch.no_grad()
    def generate_conditions(self, images: list[Image.Image], questions: list[str], max_new_tokens: int,
                            conditions: Mapping[str, EditMaker | None],
                            mean: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Answers per condition name; a condition maps (index, that image's visual tokens) to its edit."""
        answers: dict[str, list[str]] = {name: [] for name in conditions}
        for start in range(0, len(questions), self.batch_size):
            indices = range(start, min(start + self.batch_size, len(questions)))
            batch = self.adapter.encode([images[i] for i in indices], [questions[i] for i in indices])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            features = self.adapter.visual_tokens(batch)
            for name, make_edit in conditions.items():
                edits = [make_edit(i, f) if make_edit else None for i, f in zip(indices, features)]
                answers[name] += self._decode(batch, edited_features(features, edits, mean), max_new_tokens)
        return answers

    def _decode(self, batch: dict, features: list[torch.Tensor], max_new_tokens: int) -> list[str]:
        out = self.adapter.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            **self.adapter.visual_inputs(features), **self.adapter.layout_inputs(batch), do_sample=False, max_new_tokens=max_new_tokens,
            use_cache=True, pad_token_id=self.adapter.tokenizer.pad_token_id)
        return self.adapter.decode_answers(out[:, batch["input_ids"].shape[1]:])
