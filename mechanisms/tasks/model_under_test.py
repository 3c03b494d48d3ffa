"""The model under test: an adapter with its profile, asked the paper's questions under token conditions.

`VLM` memoizes answers in its result cache (on disk when the run has one), so claims sharing a baseline
or a condition generate it once, and an interrupted run redoes at most the chunk it was in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.interventions.conditions import BASELINE, Condition
from mechanisms.models.adapters.base import ModelAdapter
from mechanisms.models.mean_embedding import DEFAULT_REFERENCE
from mechanisms.models.registry import Profile
from mechanisms.storage import MISSING, ResultCache
from mechanisms.tasks.generation import Generator
from mechanisms.tasks.scoring import LocalizationResult, PresenceResult
from mechanisms.tasks.specs import TaskSpec

CHUNK = 256  # images held in memory at once


@dataclass
class Answers:
    """One condition's answers, one per sample, and the share of each sample's image tokens it changed
    (Table 1's `Token (%)`; 0 for the unmodified model)."""

    texts: list[str]
    token_share: np.ndarray


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
    mutation: str | None = None  # planted breakage (mechanisms/models/mutations.py), None for the model as is
    _mean: torch.Tensor | None = field(default=None, repr=False)

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
        notes = {}
        if self.reference_images == DEFAULT_REFERENCE and self.profile.hf_id:
            notes["reference_images_note"] = (
                "ablated tokens were replaced by the mean over a synthetic image pool; the paper averages over "
                "ImageNet val: pass --reference-images /path/to/imagenet/val (or the evaluation set's images)")
        return {**notes, "profile": self.profile.name, "family": self.profile.family,
                "paper_tables": self.profile.paper_dataset, "checkpoint": str(self.checkpoint),
                **({"paper_model": self.profile.nearest_paper_model} if self.profile.paper_from_nearest else {}),
                "fingerprint": self.fingerprint, "dtype": str(self.adapter.model.dtype).removeprefix("torch."),
                "device": self.device, "system_prompt": self.adapter.system_prompt,
                "reference_images": self.reference_images,
                **({"mutation": self.mutation} if self.mutation else {})}

    def mean_visual_embedding(self) -> torch.Tensor:
        """What ablation writes into removed tokens, over the reference images (cached on disk)."""
        if self._mean is None:
            from mechanisms.data import cache_root
            from mechanisms.models.mean_embedding import mean_visual_embedding

            self._mean = mean_visual_embedding(self.adapter, self.fingerprint, self.reference_images,
                                               cache_root(), self.profile.batch_size).to(self.device)
        return self._mean

    def ask(self, spec: TaskSpec, dataset: Dataset, samples: list[ObjectSample], condition: Condition = BASELINE,
            counterfactual: bool = False) -> LocalizationResult | PresenceResult:
        """The spec's question per sample under one condition, scored (on the object-removed images when
        `counterfactual`)."""
        answers = self.ask_under(spec, dataset, samples, [condition], counterfactual)[condition]
        return spec.score(self.adapter, answers.texts, samples, categories=dataset.categories)

    def ask_under(self, spec: TaskSpec, dataset: Dataset, samples: list[ObjectSample],
                  conditions: list[Condition], counterfactual: bool = False) -> dict[Condition, Answers]:
        """Answers per condition. Work is cached per (condition, chunk of samples), on disk when the run has
        a result cache: a chunk's missing conditions run together, sharing each image's visual tokens.

        When the question does not depend on the object (the list prompt), the unmodified model's answer
        on an original image serves every object in it: it is asked once per image.
        """
        if BASELINE in conditions and spec.per_image and not counterfactual:
            edited = [c for c in conditions if c != BASELINE]
            found = self.ask_under(spec, dataset, samples, edited) if edited else {}
            first_of_image: dict[int, ObjectSample] = {}
            for s in samples:
                first_of_image.setdefault(s.image_id, s)
            unique = list(first_of_image.values())
            per_image = dict(zip((s.image_id for s in unique),
                                 self._ask_chunks(spec, dataset, unique, [BASELINE], False)[BASELINE].texts))
            found[BASELINE] = Answers([per_image[s.image_id] for s in samples], np.zeros(len(samples)))
            return {c: found[c] for c in conditions}
        return self._ask_chunks(spec, dataset, samples, conditions, counterfactual)

    def _ask_chunks(self, spec, dataset, samples, conditions, counterfactual) -> dict[Condition, Answers]:
        texts: dict[Condition, list[str]] = {c: [] for c in conditions}
        shares: dict[Condition, list[float]] = {c: [] for c in conditions}
        load = dataset.counterfactual if counterfactual else dataset.image
        for start in range(0, len(samples), CHUNK):
            chunk = samples[start:start + CHUNK]
            keys = {c: self._chunk_key(spec, dataset, counterfactual, c, chunk) for c in conditions}
            found = {c: self.results.get(k) for c, k in keys.items()}
            if any(v is MISSING for v in found.values()):
                group = ("chunk", dataset.fingerprint, spec.name, counterfactual, tuple(s.annotation_id for s in chunk))
                with self.results.lock(group):
                    found.update({c: self.results.get(keys[c]) for c in found})
                    missing = [c for c in conditions if found[c] is MISSING]
                    if missing:
                        found.update(self._generate(spec, dataset, chunk, missing, load, keys))
            for condition in conditions:
                chunk_texts, changed = found[condition]
                texts[condition] += chunk_texts
                shares[condition] += [changed.get(s.annotation_id, 0.0) for s in chunk]
        return {c: Answers(texts[c], np.asarray(shares[c], dtype=float)) for c in conditions}

    def _chunk_key(self, spec, dataset, counterfactual, condition, chunk) -> tuple:
        reference = None if condition == BASELINE else self.reference_images
        return ("answers", dataset.fingerprint, spec.name, counterfactual, condition.name, reference,
                spec.max_new_tokens, tuple(s.annotation_id for s in chunk))

    def _generate(self, spec, dataset, chunk, conditions, load, keys) -> dict:
        """Generate the chunk's answers under `conditions` (one pass of the vision tower) and cache them,
        each with its per-sample share of changed tokens."""
        mean = self.mean_visual_embedding() if any(c != BASELINE for c in conditions) else None
        changed: dict[Condition, dict[int, float]] = {c: {} for c in conditions}
        makers = {c.name: _edit_maker(self.adapter, dataset, chunk, c, changed[c]) for c in conditions}
        questions = [spec.question(s, dataset.categories) for s in chunk]
        out = self.generator.generate_conditions([load(s) for s in chunk], questions, spec.max_new_tokens,
                                                 makers, mean)
        results = {}
        for condition in conditions:
            results[condition] = (out[condition.name], changed[condition])
            self.results.put(keys[condition], results[condition])
        self.results.misses += 1
        return results


def _edit_maker(adapter: ModelAdapter, dataset: Dataset, chunk: list[ObjectSample], condition: Condition,
                changed: dict[int, float]):
    """(index in the chunk, its visual tokens) -> the sample's edit, noting the share of tokens it changed."""
    if condition == BASELINE:
        return None

    def make(index: int, features: torch.Tensor):
        sample = chunk[index]
        edit = condition.edit(sample, adapter.views(sample.width, sample.height), features, dataset)
        changed[sample.annotation_id] = edit.n_changed / edit.n_tokens
        return edit
    return make
