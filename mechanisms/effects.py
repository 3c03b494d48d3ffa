"""Per-sample task outcomes under token conditions, and the rows of the paper's ablation tables.

Claims compare conditions on the same objects, so everything here is per sample: a localization score
(mean success over the IoU thresholds) and a classification hit (class named in the list answer) for
each object, per condition name. Conditions repeated over seeds are averaged per sample; the spread
across seeds is reported as the paper reports it (std of the seed means, Table 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mechanisms.interventions.conditions import Condition
from mechanisms.tasks import classify_by_list, classify_by_list_under, localize_under

BASELINE = "baseline"
TASKS = ("localization", "classification")


@dataclass
class Effects:
    """Per-sample outcomes: `scores[task][condition name]`, and the share of tokens each condition changed."""

    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {t: {} for t in TASKS})
    tokens: dict[str, np.ndarray] = field(default_factory=dict)

    def of(self, task: str, names: str | list[str]) -> np.ndarray:
        """Per-sample outcome, averaged over the listed (seed) conditions."""
        names = [names] if isinstance(names, str) else names
        return np.mean([self.scores[task][n] for n in names], axis=0)

    def seed_std(self, task: str, names: list[str]) -> float:
        """Std across seeds of the mean outcome (0 for a single condition)."""
        means = [self.scores[task][n].mean() for n in names]
        return float(np.std(means, ddof=1)) if len(means) > 1 else 0.0

    def drop(self, task: str, names: str | list[str]) -> np.ndarray:
        """Per-sample baseline minus condition (positive = the condition hurts)."""
        return self.of(task, BASELINE) - self.of(task, names)


def measure_effects(vlm, dataset, samples, conditions: list[Condition], tasks=TASKS) -> Effects:
    """Run every condition (batched, sharing visual tokens) on both tasks, plus the unmodified baseline."""
    effects = Effects()
    if "localization" in tasks:
        located = localize_under(vlm, dataset, samples, [None, *conditions])
        effects.scores["localization"][BASELINE] = located["none"].per_sample_score()
        for c in conditions:
            effects.scores["localization"][c.name] = located[c.name].per_sample_score()
    if "classification" in tasks:
        effects.scores["classification"][BASELINE] = classify_by_list(vlm, dataset, samples).detected
        listed = classify_by_list_under(vlm, dataset, samples, conditions)
        for c in conditions:
            effects.scores["classification"][c.name] = listed[c.name].detected
    effects.tokens[BASELINE] = np.zeros(len(samples))
    for c in conditions:
        effects.tokens[c.name] = vlm.changed_fraction(c, samples)
    return effects


def ablation_row(order: int, strategy: str, effects: Effects, names: list[str], paper_key: str | None,
                 profile, k: int | None = None) -> dict:
    """One row of Table 1/4: accuracy (%) per task, drop from baseline, seed std, the paper's values."""
    paper = profile.paper_value("ablation", paper_key) if paper_key else None
    paper_tokens = profile.paper_value("ablation_tokens", paper_key) if paper_key else None
    row = {"order": order, "strategy": strategy, "k": k,
           "tokens_pct": round(100 * float(np.mean([effects.tokens[n].mean() for n in names])), 2),
           "paper_tokens_pct": None if paper_tokens is None else round(100 * paper_tokens, 2)}
    for i, task in enumerate(TASKS):
        if not effects.scores[task]:
            continue
        value = effects.of(task, names).mean()
        row[task] = round(100 * float(value), 2)
        row[f"{task}_std"] = round(100 * effects.seed_std(task, names), 2)
        row[f"{task}_drop"] = round(100 * float(effects.of(task, BASELINE).mean() - value), 2)
        row[f"paper_{task}"] = None if paper is None else round(100 * paper[i], 2)
    return row


def expect_competence(claim, profile, effects: Effects, task: str):
    """A "barely moves" claim is vacuous on a model that cannot do the task: require the baseline floor."""
    floor = profile.threshold("baseline", "min_localization" if task == "localization" else "min_classification")
    baseline = claim.measure(f"{task}_baseline", effects.of(task, BASELINE))
    claim.expect_at_least(baseline, floor, f"the unmodified model does {task} above its floor "
                                           "(without it, 'barely moves' says nothing)")
    return baseline
