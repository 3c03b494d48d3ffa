"""Per-sample task outcomes under token conditions, and the rows of the paper's ablation tables.

Claims compare conditions on the same objects, so everything here is per sample: a localization score
(mean success over the IoU thresholds) and a classification hit (class named in the list answer) for
each object, per condition. Conditions repeated over seeds are averaged per sample; the spread across
seeds is reported as the paper reports it (std of the seed means, Table 4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mechanisms.interventions.conditions import BASELINE, Condition
from mechanisms.tasks.specs import BOX, LIST, TASKS, TaskSpec

Conditions = Condition | Sequence[Condition]  # one condition, or its seeds (averaged per sample)


def _listed(conditions: Conditions) -> list[Condition]:
    return [conditions] if isinstance(conditions, Condition) else list(conditions)


@dataclass
class Effects:
    """Per-sample outcomes `scores[task][condition]`, and the share of tokens each condition changed."""

    scores: dict[str, dict[Condition, np.ndarray]] = field(default_factory=lambda: {t: {} for t in TASKS})
    token_share: dict[Condition, np.ndarray] = field(default_factory=dict)

    def of(self, task: str, conditions: Conditions) -> np.ndarray:
        """Per-sample outcome, averaged over the listed (seed) conditions."""
        return np.mean([self.scores[task][c] for c in _listed(conditions)], axis=0)

    def seed_std(self, task: str, conditions: Conditions) -> float:
        """Std across seeds of the mean outcome (0 for a single condition)."""
        means = [self.scores[task][c].mean() for c in _listed(conditions)]
        return float(np.std(means, ddof=1)) if len(means) > 1 else 0.0

    def drop(self, task: str, conditions: Conditions) -> np.ndarray:
        """Per-sample baseline minus condition (positive = the condition hurts)."""
        return self.of(task, BASELINE) - self.of(task, conditions)

    def tokens(self, conditions: Conditions) -> np.ndarray:
        """Per-sample share of image tokens changed, averaged over the listed conditions."""
        return np.mean([self.token_share[c] for c in _listed(conditions)], axis=0)

    def update(self, other: "Effects") -> None:
        """Add another measurement's outcomes (e.g. the other task's, under its own conditions)."""
        for task, by_condition in other.scores.items():
            self.scores[task].update(by_condition)
        self.token_share.update(other.token_share)


def measure_effects(vlm, dataset, samples, conditions: list[Condition],
                    specs: Sequence[TaskSpec] = (BOX, LIST)) -> Effects:
    """Every condition (batched, sharing visual tokens) and the unmodified baseline, on each spec's task."""
    effects = Effects()
    for spec in specs:
        asked = vlm.ask_under(spec, dataset, samples, [BASELINE, *conditions])
        for condition, answers in asked.items():
            effects.scores[spec.task][condition] = spec.score(vlm.adapter, answers.texts, samples,
                                                                       categories=dataset.categories).outcomes()
            effects.token_share[condition] = answers.token_share
    return effects


def ablation_row(order: int, effects: Effects, conditions: Conditions | Mapping[str, Conditions], profile,
                 k: int | None = None) -> dict:
    """One row of Table 1/4: accuracy (%) per task, drop from baseline, seed std, the paper's values.

    `conditions` may differ per task ({task: conditions}: e.g. each task's own attribution ranking); the
    label and the paper's value come from the (first) condition.
    """
    per_task = conditions if isinstance(conditions, Mapping) else {task: conditions for task in TASKS}
    first_listed = _listed(next(iter(per_task.values())))
    first = first_listed[0]
    strategy = first.label + (f" ({len(first_listed)} seeds)" if first.recipe == "random" else "")
    section, key = first.paper or (None, None)
    paper_tokens = profile.paper_value(f"{section}_tokens", key) if key and first != BASELINE else None
    row = {"order": order, "strategy": strategy, "k": k,
           "tokens_pct": round(100 * float(np.mean([effects.token_share[c].mean() for c in first_listed])), 2),
           "paper_tokens_pct": None if paper_tokens is None else round(100 * paper_tokens, 2)}
    for task in TASKS:
        if not effects.scores[task] or task not in per_task:
            continue
        value = effects.of(task, per_task[task]).mean()
        paper = profile.paper_value(section, key, task) if key else None
        row[task] = round(100 * float(value), 2)
        row[f"{task}_std"] = round(100 * effects.seed_std(task, per_task[task]), 2)
        row[f"{task}_drop"] = round(100 * float(effects.of(task, BASELINE).mean() - value), 2)
        row[f"paper_{task}"] = None if paper is None else round(100 * paper, 2)
    return row


def expect_competence(claim, profile, baseline_outcomes: np.ndarray, task: str):
    """A "barely moves" claim is vacuous on a model that cannot do the task: require the baseline floor
    (`baseline_outcomes`: the unmodified model's per-sample outcomes on the claim's objects)."""
    floor = profile.threshold("baseline", "min_localization" if task == "localization" else "min_classification")
    baseline = claim.measure(f"{task}_baseline", baseline_outcomes)
    claim.expect_at_least(baseline, floor, f"the unmodified model does {task} above its floor "
                                           "(without it, 'barely moves' says nothing)")
    return baseline
