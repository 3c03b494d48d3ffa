"""The paper's three tasks on a model under test: localize, list-classify, and the binary presence query.

`VLM` wraps a loaded adapter with its profile and memoizes answers within a process, so that claims
sharing a baseline (several claims read the unmodified model's answers) generate it once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechanisms.adapters.base import ModelAdapter
from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.evaluation import (
    Generator,
    LocalizationResult,
    PresenceResult,
    score_binary,
    score_boxes,
    score_list,
)
from mechanisms.interventions.conditions import Condition
from mechanisms.interventions.reference import DEFAULT_REFERENCE
from mechanisms.prompts import binary_prompt, box_prompt, list_prompt
from mechanisms.registry import Profile

# Upper bounds on answer length: a LLaVA box is ~25 tokens; a list of up to a dozen COCO classes fits 96.
MAX_NEW_TOKENS = {"box": 40, "list": 96, "binary": 6}
CHUNK = 256  # images held in memory at once


@dataclass
class VLM:
    """A model under test: adapter (architecture knowledge), profile (thresholds, paper values), caches."""

    profile: Profile
    adapter: ModelAdapter
    checkpoint: Path
    fingerprint: str
    device: str = "cpu"
    reference_images: str = DEFAULT_REFERENCE
    _answers: dict = field(default_factory=dict, repr=False)
    _mean: torch.Tensor | None = field(default=None, repr=False)
    _changed: dict = field(default_factory=dict, repr=False)

    @property
    def generator(self) -> Generator:
        return Generator(self.adapter, batch_size=self.profile.batch_size, device=self.device)

    def describe(self) -> dict:
        return {"profile": self.profile.name, "family": self.profile.family, "checkpoint": str(self.checkpoint),
                "fingerprint": self.fingerprint, "dtype": self.profile.dtype, "device": self.device,
                "reference_images": self.reference_images}

    def mean_visual_embedding(self) -> torch.Tensor:
        """What ablation writes into removed tokens, over the reference images (cached on disk)."""
        if self._mean is None:
            from mechanisms.data import cache_root
            from mechanisms.interventions.reference import mean_visual_embedding

            self._mean = mean_visual_embedding(self.adapter, self.fingerprint, self.reference_images,
                                               cache_root(), self.profile.batch_size).to(self.device)
        return self._mean

    def ask(self, key: tuple, dataset: Dataset, samples: list[ObjectSample], questions: list[str],
            kind: str, counterfactual: bool = False, condition: Condition | None = None) -> list[str]:
        """Answers to one question per sample, under one condition (None: the unmodified model)."""
        return self.ask_under(key, dataset, samples, questions, kind, [condition], counterfactual)[
            _name(condition)]

    def ask_under(self, key: tuple, dataset: Dataset, samples: list[ObjectSample], questions: list[str],
                  kind: str, conditions: list[Condition | None], counterfactual: bool = False) -> dict:
        """Answers per condition name, memoized under `key`; conditions not yet asked run together,
        sharing each image's visual tokens, with images loaded chunk by chunk."""
        keys = {_name(c): (dataset.fingerprint, kind, counterfactual, _name(c)) + key for c in conditions}
        todo = [c for c in conditions if keys[_name(c)] not in self._answers]
        if todo:
            mean = self.mean_visual_embedding() if any(c is not None for c in todo) else None
            answers: dict[str, list[str]] = {_name(c): [] for c in todo}
            generator = self.generator
            load = dataset.counterfactual if counterfactual else dataset.image
            changed: dict[str, dict[int, float]] = {_name(c): {} for c in todo}
            for start in range(0, len(samples), CHUNK):
                chunk = samples[start:start + CHUNK]
                makers = {_name(c): _edit_maker(self.adapter, chunk, c, changed[_name(c)]) for c in todo}
                out = generator.generate_conditions([load(s) for s in chunk], questions[start:start + CHUNK],
                                                    MAX_NEW_TOKENS[kind], makers, mean)
                for name, texts in out.items():
                    answers[name] += texts
            for c in todo:
                self._answers[keys[_name(c)]] = answers[_name(c)]
                self._changed.update({(_name(c), a): f for a, f in changed[_name(c)].items()})
        return {name: self._answers[k] for name, k in keys.items()}

    def changed_fraction(self, condition: Condition | None, samples: list[ObjectSample]) -> np.ndarray:
        """Per sample, the fraction of its image tokens the condition changed (Table 1's `Token (%)`)."""
        if condition is None:
            return np.zeros(len(samples))
        return np.asarray([self._changed[(condition.name, s.annotation_id)] for s in samples])


def _name(condition: Condition | None) -> str:
    return "none" if condition is None else condition.name


def _edit_maker(adapter: ModelAdapter, chunk: list[ObjectSample], condition: Condition | None,
                changed: dict[int, float]):
    if condition is None:
        return None

    def make(row: int, features: torch.Tensor):
        sample = chunk[row]
        edit = condition.edit(sample, adapter.views(sample.width, sample.height), features)
        changed[sample.annotation_id] = edit.n_changed / edit.n_tokens
        return edit
    return make


def _ids(samples: list[ObjectSample]) -> tuple[int, ...]:
    return tuple(s.annotation_id for s in samples)


def localize(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
             condition: Condition | None = None) -> LocalizationResult:
    """Box prompt per object, scored by IoU against the ground-truth box."""
    return localize_under(vlm, dataset, samples, [condition])[_name(condition)]


def localize_under(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                   conditions: list[Condition | None]) -> dict[str, LocalizationResult]:
    """The box prompt under several conditions at once (they share each image's visual tokens)."""
    answers = vlm.ask_under(_ids(samples), dataset, samples, [box_prompt(s.category) for s in samples], "box",
                            conditions)
    return {name: box_answers_scored(vlm, texts, samples) for name, texts in answers.items()}


def box_answers_scored(vlm: VLM, answers: list[str], samples: list[ObjectSample],
                       truths: list | None = None) -> LocalizationResult:
    """Score box answers against the samples' boxes (or other `truths`, e.g. scaled boxes)."""
    truths = [s.box for s in samples] if truths is None else truths
    return score_boxes(vlm.adapter, answers, truths, [(s.width, s.height) for s in samples])


def classify_by_list(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                     counterfactual: bool = False) -> PresenceResult:
    """List prompt; an object counts as found when its class name appears in the answer (§2.3).

    On original images one answer per image serves all its objects; on object-removed images every
    (image, object) pair is its own image.
    """
    question = list_prompt(dataset.categories)
    if counterfactual:
        answers = vlm.ask(_ids(samples), dataset, samples, [question] * len(samples), "list", True)
    else:
        first_of_image: dict[int, ObjectSample] = {}
        for s in samples:
            first_of_image.setdefault(s.image_id, s)
        unique = list(first_of_image.values())
        per_image = vlm.ask(_ids(unique), dataset, unique, [question] * len(unique), "list")
        by_image = {s.image_id: a for s, a in zip(unique, per_image)}
        answers = [by_image[s.image_id] for s in samples]
    return score_list(answers, [s.category for s in samples])


def classify_by_list_under(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                           conditions: list[Condition]) -> dict[str, PresenceResult]:
    """The list prompt per (image, object) under each condition: an edit is specific to its object."""
    question = list_prompt(dataset.categories)
    answers = vlm.ask_under(_ids(samples), dataset, samples, [question] * len(samples), "list", conditions)
    return {name: score_list(texts, [s.category for s in samples]) for name, texts in answers.items()}


def ask_presence(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                 counterfactual: bool = False) -> PresenceResult:
    """Binary prompt `Is there a {class} in the image?` per object; yes counts as detected."""
    answers = vlm.ask(_ids(samples), dataset, samples, [binary_prompt(s.category) for s in samples],
                      "binary", counterfactual)
    return score_binary(answers)
