"""One spec per paper prompt (box, list, binary): everything the experiments need to know about a task.

A spec says which of the paper's two tasks it measures, how the question is asked, how long an answer
may be, what the correct answer is when it is teacher-forced (mediation, Integrated Gradients), which
of that answer's tokens are scored, and how generated answers are scored. What differs between model
families (how a box is written and parsed, which box tokens are template) comes from the adapter, so
one spec serves every family.

- `BOX` (localization): "Please provide the bounding box coordinates of the {cls}." -> IoU success.
- `LIST` (classification): "List all objects in the image. Choose only from {classes}." -> the class is
  named anywhere in the answer (§2.3); teacher-forced answer: the class name (mediation's reference); for
  attributions, the image's classes listed up to this one (`list_answer`).
- `BINARY` (classification, §6.2 and the mediation pairs): "Is there a {cls} in the image?" -> yes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechanisms.data.dataset import ObjectSample
from mechanisms.geometry import Box
from mechanisms.tasks.prompts import binary_prompt, box_prompt, list_prompt
from mechanisms.tasks.scoring import LocalizationResult, PresenceResult, score_binary, score_boxes, score_list

TASKS = ("localization", "classification")  # the paper's two tasks, in the order its tables list them


@dataclass(frozen=True)
class TaskSpec:
    """A prompt of the paper and the rules that go with it (see the module docstring)."""

    name: str  # "box", "list" or "binary": keys caches
    task: str  # which of TASKS it measures
    max_new_tokens: int  # upper bound on an answer: a LLaVA box is ~25 tokens, a dozen COCO classes fit 96

    @property
    def per_image(self) -> bool:
        """The question does not name the object (the list prompt): one answer per image serves all its objects."""
        return self.name == "list"

    def question(self, sample: ObjectSample, categories) -> str:
        if self.name == "box":
            return box_prompt(sample.category)
        if self.name == "list":
            return list_prompt(categories)
        return binary_prompt(sample.category)

    def correct_answer(self, adapter, sample: ObjectSample) -> str:
        """The answer teacher-forced after the question: the GT box as the family writes it, the class
        name (the list prompt's answer for this object), or the family's "yes"."""
        if self.name == "box":
            return adapter.format_box(sample.box, sample.width, sample.height)
        if self.name == "list":
            return sample.category
        return adapter.yes_answer

    def list_answer(self, sample: ObjectSample, image_classes: list[str]) -> tuple[str, str]:
        """A list prompt's answer naming the image's classes in category order, cut at this object's class:
        (the answer before the class, the answer through it). Teacher-forcing the second and scoring the
        tokens it adds to the first attributes "the correct class" where a list answer would name it."""
        classes = list(image_classes) if sample.category in image_classes else [*image_classes, sample.category]
        through = classes[: classes.index(sample.category) + 1]
        return ", ".join(through[:-1]) + ("," if len(through) > 1 else ""), ", ".join(through)

    def scored_tokens(self, adapter, answer_ids: torch.Tensor) -> torch.Tensor:
        """Bool [len(answer_ids)]: the answer tokens that carry a choice (the one rule for perplexities
        and attributions). Boxes: the family's rule (`ModelAdapter.box_choice_tokens`); a class name or a
        yes: every token."""
        if self.name == "box":
            return adapter.box_choice_tokens(answer_ids)
        return torch.ones(len(answer_ids), dtype=torch.bool)

    def score(self, adapter, answers: list[str], samples: list[ObjectSample],
              truths: list[Box] | None = None, categories=()) -> LocalizationResult | PresenceResult:
        """Score generated answers, one per sample (`truths`: other boxes to score against, e.g. grown;
        `categories`: the dataset's, so that "hot dog" does not count as naming "dog")."""
        if self.name == "box":
            truths = [s.box for s in samples] if truths is None else truths
            return score_boxes(adapter, answers, truths, [(s.width, s.height) for s in samples])
        if self.name == "list":
            return score_list(answers, [s.category for s in samples], categories)
        return score_binary(answers)


BOX = TaskSpec("box", "localization", 40)
LIST = TaskSpec("list", "classification", 96)
BINARY = TaskSpec("binary", "classification", 6)
