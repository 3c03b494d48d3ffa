"""Scoring the paper's answers (§2.3, §6.2): IoU success for boxes, "class named" for lists, yes for presence.

Every answer is kept with its raw text: an answer that cannot be parsed is a miss, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mechanisms.geometry import Box, iou
from mechanisms.models.adapters.base import ModelAdapter
from mechanisms.tasks.answers import mentions, parse_yes_no

IOU_THRESHOLDS = (0.5, 0.7, 0.9)


@dataclass
class LocalizationResult:
    """Per-sample IoUs and raw answers of the box prompt."""

    ious: np.ndarray
    answers: list[str]
    parsed: np.ndarray  # bool: the answer held a box

    def success(self, threshold: float) -> np.ndarray:
        return (self.ious >= threshold).astype(float)

    def outcomes(self) -> np.ndarray:
        """Each sample's mean success over the paper's thresholds: its mean over samples is the score."""
        return np.mean([self.success(t) for t in IOU_THRESHOLDS], axis=0)

    @property
    def score(self) -> float:
        return float(self.outcomes().mean()) if len(self.ious) else float("nan")

    def failures(self, limit: int = 20) -> list[str]:
        return [a for a, ok in zip(self.answers, self.parsed) if not ok][:limit]


@dataclass
class PresenceResult:
    """Per-sample 'the class was reported' for the list or binary prompt, with raw answers."""

    detected: np.ndarray  # float 0/1
    answers: list[str]
    unparsed: list[str] = field(default_factory=list)

    def outcomes(self) -> np.ndarray:
        """Each sample's outcome (1: the class was reported): its mean over samples is the accuracy."""
        return self.detected


def score_boxes(adapter: ModelAdapter, answers: list[str], truths: list[Box],
                sizes: list[tuple[int, int]]) -> LocalizationResult:
    """IoU of each answer's box (parsed by the family's rule) against its truth; unparsed: IoU 0."""
    ious, parsed = [], []
    for text, truth, (w, h) in zip(answers, truths, sizes):
        box = adapter.parse_box(text, w, h)
        parsed.append(box is not None)
        ious.append(iou(box, truth) if box is not None else 0.0)
    return LocalizationResult(np.asarray(ious, dtype=float), list(answers), np.asarray(parsed, dtype=bool))


def score_list(answers: list[str], classes: list[str], vocabulary=()) -> PresenceResult:
    """Each answer names its class (`answers.mentions`; `vocabulary`: the prompt's category choices)."""
    return PresenceResult(np.asarray([float(mentions(a, c, vocabulary)) for a, c in zip(answers, classes)]),
                          list(answers))


def score_binary(answers: list[str]) -> PresenceResult:
    """A yes counts as detected; an answer that is neither yes nor no counts as not detected (recorded)."""
    verdicts = [parse_yes_no(a) for a in answers]
    return PresenceResult(np.asarray([float(v is True) for v in verdicts]), list(answers),
                          unparsed=[a for a, v in zip(answers, verdicts) if v is None])
