"""The paper's three tasks on a model under test: localize, list-classify, and the binary presence query.

`VLM` wraps a loaded adapter with its profile and memoizes answers within a process, so that claims
sharing a baseline (several claims read the unmodified model's answers) generate it once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
    _answers: dict = field(default_factory=dict, repr=False)

    @property
    def generator(self) -> Generator:
        return Generator(self.adapter, batch_size=self.profile.batch_size, device=self.device)

    def describe(self) -> dict:
        return {"profile": self.profile.name, "family": self.profile.family, "checkpoint": str(self.checkpoint),
                "fingerprint": self.fingerprint, "dtype": self.profile.dtype, "device": self.device}

    def ask(self, key: tuple, dataset: Dataset, samples: list[ObjectSample], questions: list[str],
            kind: str, counterfactual: bool = False) -> list[str]:
        """Answers to one question per sample (memoized under `key`), images loaded chunk by chunk."""
        full_key = (dataset.fingerprint, kind, counterfactual) + key
        if full_key not in self._answers:
            answers: list[str] = []
            generator = self.generator
            load = dataset.counterfactual if counterfactual else dataset.image
            for start in range(0, len(samples), CHUNK):
                chunk = samples[start:start + CHUNK]
                answers += generator.generate([load(s) for s in chunk], questions[start:start + CHUNK],
                                              MAX_NEW_TOKENS[kind])
            self._answers[full_key] = answers
        return self._answers[full_key]


def _ids(samples: list[ObjectSample]) -> tuple[int, ...]:
    return tuple(s.annotation_id for s in samples)


def localize(vlm: VLM, dataset: Dataset, samples: list[ObjectSample]) -> LocalizationResult:
    """Box prompt per object, scored by IoU against the ground-truth box."""
    answers = vlm.ask(_ids(samples), dataset, samples, [box_prompt(s.category) for s in samples], "box")
    return score_boxes(vlm.adapter, answers, [s.box for s in samples], [(s.width, s.height) for s in samples])


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


def ask_presence(vlm: VLM, dataset: Dataset, samples: list[ObjectSample],
                 counterfactual: bool = False) -> PresenceResult:
    """Binary prompt `Is there a {class} in the image?` per object; yes counts as detected."""
    answers = vlm.ask(_ids(samples), dataset, samples, [binary_prompt(s.category) for s in samples],
                      "binary", counterfactual)
    return score_binary(answers)
