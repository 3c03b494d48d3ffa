"""Asking the model the paper's questions and scoring its answers (§2.3, §6.2).

Generation is batched greedy decoding with the KV cache (`model.generate`). Every answer is kept with
its raw text: an answer that cannot be parsed is a miss, never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from mechanisms.adapters.base import ModelAdapter
from mechanisms.answers import mentions, parse_yes_no
from mechanisms.geometry import Box, iou

IOU_THRESHOLDS = (0.5, 0.7, 0.9)


EditMaker = Callable[[int, torch.Tensor], "TokenEdit | None"]  # (row, that row's visual tokens) -> edit


class Generator:
    """Batched greedy decoding for one adapter, optionally under edits of the visual tokens.

    The vision tower and projector run once per batch of images; every condition then decodes from
    the same visual tokens (edited per row) through `mm_encoder_outputs`, which is bit-identical to
    passing pixels when nothing is edited.
    """

    def __init__(self, adapter: ModelAdapter, batch_size: int = 32, device: str | torch.device | None = None):
        self.adapter = adapter
        self.batch_size = batch_size
        self.device = torch.device(device) if device else next(adapter.model.parameters()).device

    def generate(self, images: list[Image.Image], questions: list[str], max_new_tokens: int) -> list[str]:
        return self.generate_conditions(images, questions, max_new_tokens, {"": None})[""]

    @torch.no_grad()
    def generate_conditions(self, images: list[Image.Image], questions: list[str], max_new_tokens: int,
                            conditions: Mapping[str, EditMaker | None],
                            mean: torch.Tensor | None = None) -> dict[str, list[str]]:
        """Answers per condition name; a condition maps (row, visual tokens) to that row's edit."""
        from mechanisms.interventions.tokens import edited_features

        answers: dict[str, list[str]] = {name: [] for name in conditions}
        for start in range(0, len(questions), self.batch_size):
            rows = range(start, min(start + self.batch_size, len(questions)))
            batch = self.adapter.encode([images[i] for i in rows], [questions[i] for i in rows])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            features = self.adapter.visual_tokens(batch)
            for name, make_edit in conditions.items():
                edits = [make_edit(i, f) if make_edit else None for i, f in zip(rows, features)]
                answers[name] += self._decode(batch, edited_features(features, edits, mean), max_new_tokens)
        return answers

    def _decode(self, batch: dict, features: list[torch.Tensor], max_new_tokens: int) -> list[str]:
        out = self.adapter.model.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
            **self.adapter.visual_inputs(features), do_sample=False, max_new_tokens=max_new_tokens,
            use_cache=True, pad_token_id=self.adapter.tokenizer.pad_token_id)
        new_tokens = out[:, batch["input_ids"].shape[1]:]
        return [a.strip() for a in self.adapter.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@dataclass
class LocalizationResult:
    """Per-sample IoUs and raw answers of the box prompt."""

    ious: np.ndarray
    answers: list[str]
    parsed: np.ndarray  # bool: the answer held a box

    def success(self, threshold: float) -> np.ndarray:
        return (self.ious >= threshold).astype(float)

    def per_sample_score(self) -> np.ndarray:
        """Each sample's mean success over the paper's thresholds: its mean over samples is the score."""
        return np.mean([self.success(t) for t in IOU_THRESHOLDS], axis=0)

    @property
    def score(self) -> float:
        return float(self.per_sample_score().mean()) if len(self.ious) else float("nan")

    def failures(self, limit: int = 20) -> list[str]:
        return [a for a, ok in zip(self.answers, self.parsed) if not ok][:limit]


@dataclass
class PresenceResult:
    """Per-sample 'the class was reported' for the list or binary prompt, with raw answers."""

    detected: np.ndarray  # float 0/1
    answers: list[str]
    unparsed: list[str] = field(default_factory=list)


def score_boxes(adapter: ModelAdapter, answers: list[str], truths: list[Box],
                sizes: list[tuple[int, int]]) -> LocalizationResult:
    ious, parsed = [], []
    for text, truth, (w, h) in zip(answers, truths, sizes):
        box = adapter.parse_box(text, w, h)
        parsed.append(box is not None)
        ious.append(iou(box, truth) if box is not None else 0.0)
    return LocalizationResult(np.asarray(ious, dtype=float), list(answers), np.asarray(parsed, dtype=bool))


def score_list(answers: list[str], classes: list[str]) -> PresenceResult:
    return PresenceResult(np.asarray([float(mentions(a, c)) for a, c in zip(answers, classes)]), list(answers))


def score_binary(answers: list[str]) -> PresenceResult:
    """A yes counts as detected; an answer that is neither yes nor no counts as not detected (recorded)."""
    verdicts = [parse_yes_no(a) for a in answers]
    return PresenceResult(np.asarray([float(v is True) for v in verdicts]), list(answers),
                          unparsed=[a for a, v in zip(answers, verdicts) if v is None])
