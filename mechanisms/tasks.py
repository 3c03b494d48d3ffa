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
from mechanisms.cache import MISSING, ResultCache
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
    results: ResultCache | None = field(default=None, repr=False)
    _mean: torch.Tensor | None = field(default=None, repr=False)
    _changed: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.results is None:  # in memory only; the pytest plugin passes a disk-backed cache
            self.results = ResultCache(None, self.fingerprint)

    def memo(self, key: tuple, compute):
        """A measurement computed once per (model, code version, key): from the result cache if there."""
        return self.results.get_or_compute(key, compute)

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

    def ask(self, dataset: Dataset, samples: list[ObjectSample], questions: list[str],
            kind: str, counterfactual: bool = False, condition: Condition | None = None) -> list[str]:
        """Answers to one question per sample, under one condition (None: the unmodified model)."""
        return self.ask_under(dataset, samples, questions, kind, [condition], counterfactual)[
            _name(condition)]

    def ask_under(self, dataset: Dataset, samples: list[ObjectSample], questions: list[str],
                  kind: str, conditions: list[Condition | None], counterfactual: bool = False) -> dict:
        """Answers per condition name. Work is cached per (condition, chunk of samples), on disk when the
        run has a result cache: a chunk's missing conditions run together, sharing each image's visual
        tokens, so an interrupted run redoes at most the chunk it was in."""
        answers: dict[str, list[str]] = {_name(c): [] for c in conditions}
        load = dataset.counterfactual if counterfactual else dataset.image
        for start in range(0, len(samples), CHUNK):
            chunk, chunk_questions = samples[start:start + CHUNK], questions[start:start + CHUNK]
            keys = {_name(c): self._chunk_key(dataset, kind, counterfactual, c, chunk) for c in conditions}
            found = {n: self.results.get(k) for n, k in keys.items()}
            missing = [c for c in conditions if found[_name(c)] is MISSING]
            if missing:
                group = ("chunk", dataset.fingerprint, kind, counterfactual, tuple(s.annotation_id for s in chunk))
                with self.results.lock(group):
                    found.update({n: self.results.get(keys[n]) for n in found})
                    missing = [c for c in conditions if found[_name(c)] is MISSING]
                    if missing:
                        found.update(self._generate(chunk, chunk_questions, kind, missing, load, keys))
            for name in answers:
                texts, changed = found[name]
                answers[name] += texts
                self._changed.update({(name, a): f for a, f in changed.items()})
        return answers

    def _chunk_key(self, dataset, kind, counterfactual, condition, chunk) -> tuple:
        reference = None if condition is None else self.reference_images
        return ("answers", dataset.fingerprint, kind, counterfactual, _name(condition), reference,
                MAX_NEW_TOKENS[kind], tuple(s.annotation_id for s in chunk))

    def _generate(self, chunk, questions, kind, conditions, load, keys) -> dict:
        mean = self.mean_visual_embedding() if any(c is not None for c in conditions) else None
        changed: dict[str, dict[int, float]] = {_name(c): {} for c in conditions}
        makers = {_name(c): _edit_maker(self.adapter, chunk, c, changed[_name(c)]) for c in conditions}
        out = self.generator.generate_conditions([load(s) for s in chunk], questions, MAX_NEW_TOKENS[kind],
                                                 makers, mean)
        results = {}
        for name, texts in out.items():
            results[name] = (texts, changed[name])
            self.results.put(keys[name], results[name])
        self.results.misses += 1
        return results

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


def localize(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
             condition: Condition | None = None) -> LocalizationResult:
    """Box prompt per object, scored by IoU against the ground-truth box."""
    return localize_under(vlm, dataset, samples, [condition])[_name(condition)]


def localize_under(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                   conditions: list[Condition | None]) -> dict[str, LocalizationResult]:
    """The box prompt under several conditions at once (they share each image's visual tokens)."""
    answers = vlm.ask_under(dataset, samples, [box_prompt(s.category) for s in samples], "box",
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
        answers = vlm.ask(dataset, samples, [question] * len(samples), "list", True)
    else:
        first_of_image: dict[int, ObjectSample] = {}
        for s in samples:
            first_of_image.setdefault(s.image_id, s)
        unique = list(first_of_image.values())
        per_image = vlm.ask(dataset, unique, [question] * len(unique), "list")
        by_image = {s.image_id: a for s, a in zip(unique, per_image)}
        answers = [by_image[s.image_id] for s in samples]
    return score_list(answers, [s.category for s in samples])


def classify_by_list_under(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                           conditions: list[Condition]) -> dict[str, PresenceResult]:
    """The list prompt per (image, object) under each condition: an edit is specific to its object."""
    question = list_prompt(dataset.categories)
    answers = vlm.ask_under(dataset, samples, [question] * len(samples), "list", conditions)
    return {name: score_list(texts, [s.category for s in samples]) for name, texts in answers.items()}


def ask_presence(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                 counterfactual: bool = False) -> PresenceResult:
    """Binary prompt `Is there a {class} in the image?` per object; yes counts as detected."""
    answers = vlm.ask(dataset, samples, [binary_prompt(s.category) for s in samples],
                      "binary", counterfactual)
    return score_binary(answers)
