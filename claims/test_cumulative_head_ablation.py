"""The heads mediation ranks first are causally necessary (§3.3.3, Figure 5, Figure 15).

Heads are ranked by mean MF (from the head-mediation sweep) and zeroed cumulatively, a growing fraction
at a time, at every position; localization accuracy is measured per fraction. Rankings compared: the
localization-critical heads, the classification-critical heads, and the low-importance heads (MF
closest to zero). Normalized AUC = area under accuracy vs fraction / (fraction range x unablated accuracy).
"""

import numpy as np
import pytest

from mechanisms.experiments.head_ablation import answers_with_heads_ablated, normalized_auc
from mechanisms.experiments.mediation import mediation
from mechanisms.models.sites import Head
from mechanisms.tasks.specs import BINARY, BOX


def _curves(vlm, dataset, claim):
    profile = vlm.profile
    pool = dataset.with_counterfactuals()
    if not pool:
        pytest.skip(f"dataset {dataset.name} has no object-removed images: the head ranking needs mediation pairs")
    pairs = claim.samples(dataset, pool=pool, limit=profile.claims["mediation"]["pairs"])
    gap = profile.claims["mediation"]["min_relative_gap"]
    rankings = {}
    for spec in (BOX, BINARY):
        rankings[f"{spec.task}-critical"] = mediation(vlm, dataset, pairs, spec, gap).ranked()
    loc_mf = mediation(vlm, dataset, pairs, BOX, gap).mean_mf
    flat = np.abs(np.nan_to_num(loc_mf, nan=np.inf)).ravel()
    n_heads = loc_mf.shape[1]
    rankings["low-importance"] = [Head(int(i) // n_heads, int(i) % n_heads)
                                  for i in np.lexsort((np.arange(flat.size), flat))]
    settings = profile.claims["head_ablation"]
    samples = claim.samples(dataset, limit=settings["max_objects"])
    fractions = settings["fractions"]
    curves: dict[str, list[np.ndarray]] = {}
    rows = []
    for name, ranked in rankings.items():
        curves[name] = []
        for i, fraction in enumerate(fractions):
            heads = ranked[: int(round(fraction * len(ranked)))]
            answers = answers_with_heads_ablated(vlm, dataset, samples, heads)
            scores = BOX.score(vlm.adapter, answers, samples).outcomes()
            curves[name].append(scores)
            rows.append({"order": i, "mode": name, "fraction": fraction, "heads": len(heads),
                         "value": round(100 * float(scores.mean()), 2)})
    claim.table("figure5", rows, title="Figure 5: localization accuracy (%) under cumulative head ablation",
                figure={"kind": "lines", "x": "fraction", "y": "value", "series": "mode",
                        "xlabel": "fraction of heads ablated", "ylabel": "localization accuracy (%)"})
    for name, scores in curves.items():
        claim.statistic(f"auc_{name}", lambda *s: normalized_auc(fractions, [x.mean() for x in s]), scores)
    return curves, fractions


def _expect_auc_gap(vlm, dataset, claim, critical: str, statement: str):
    """AUC(low-importance heads) - AUC(`critical` heads), paired over objects, against the profile's margin."""
    curves, fractions = _curves(vlm, dataset, claim)
    k = len(fractions)

    def gap(*arrays):
        low, ranked = arrays[:k], arrays[k:]
        return (normalized_auc(fractions, [x.mean() for x in low])
                - normalized_auc(fractions, [x.mean() for x in ranked]))

    measured = claim.statistic(f"auc_low_importance_minus_{critical.replace('-', '_')}", gap,
                               [*curves["low-importance"], *curves[critical]])
    claim.expect_at_least(measured, vlm.profile.claims["head_ablation"]["min_auc_gap"], statement)


def test_ablating_localization_critical_heads_hurts_far_more_than_low_importance_heads(vlm, dataset, claim):
    """Ablating localization-critical heads leads to a substantially larger drop in localization accuracy
    than removing an equal number of low-importance heads (normalized AUC).

    Paper: §3.3.3, Figure 5, Figure 15
    """
    _expect_auc_gap(vlm, dataset, claim, "localization-critical",
                    "localization-critical heads are causally necessary for localization")


def test_ablating_classification_critical_heads_also_hurts_localization(vlm, dataset, claim):
    """Despite the limited overlap between the two tasks' critical heads, ablating classification-critical
    heads still degrades localization strongly (object identification precedes grounding).

    Paper: §3.3.3, Figure 5, Figure 15
    """
    _expect_auc_gap(vlm, dataset, claim, "classification-critical",
                    "classification-critical heads are needed for localization too")
