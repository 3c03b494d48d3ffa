"""Cumulative head ablation (§3.3.3, Figures 5 and 15): localization as a growing share of heads is zeroed.

Heads are zeroed at every position (so no prefix is shared); the curve over the fraction of heads
ablated is summarized by its normalized AUC.
"""

from __future__ import annotations

import math

import numpy as np

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.interventions.heads import ablating_heads
from mechanisms.models.sites import Head
from mechanisms.tasks.specs import BOX


def answers_with_heads_ablated(vlm, dataset: Dataset, samples: list[ObjectSample], heads: list[Head]) -> list[str]:
    """Box answers with the listed heads zeroed at every position (the prefix changes: no reuse)."""
    key = ("head-ablation", dataset.fingerprint, tuple(sorted(heads)), tuple(s.annotation_id for s in samples))

    def compute() -> list[str]:
        with ablating_heads(vlm.adapter, heads):
            return vlm.generator.generate([dataset.image(s) for s in samples],
                                          [BOX.question(s, dataset.categories) for s in samples], BOX.max_new_tokens)

    return vlm.memo(key, compute)


def normalized_auc(fractions: list[float], accuracies: list[float]) -> float:
    """Area under accuracy vs fraction of heads ablated, over the fraction range, divided by the
    unablated accuracy (1.0: ablation never hurts; 0: accuracy gone at once)."""
    f, a = np.asarray(fractions, dtype=float), np.asarray(accuracies, dtype=float)
    if a[0] <= 0 or f[-1] <= f[0]:
        return math.nan
    return float(np.trapezoid(a, f) / ((f[-1] - f[0]) * a[0]))
