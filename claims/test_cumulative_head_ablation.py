"""The heads mediation ranks first are causally necessary (§3.3.3, Figure 5, Figure 15).

Heads are ranked by mean MF (from the head-mediation sweep) and zeroed cumulatively, a growing fraction
at a time, at every position; localization accuracy is measured per fraction. Rankings compared, per task
(localization by the box prompt's MF, classification by the binary prompt's): the task-critical heads
(highest MF) against the same task's low-importance heads (MF closest to zero), as Figure 5 compares each
ranking. Heads are ranked on the mediation pairs and evaluated on disjoint objects. Normalized AUC = area
under accuracy vs fraction / (fraction range x unablated accuracy).
"""

import numpy as np
import pytest

from mechanisms.experiments.head_ablation import answers_with_heads_ablated, normalized_auc
from mechanisms.experiments.mediation import mediation
from mechanisms.models.sites import Head
from mechanisms.tasks.specs import BINARY, BOX


def _curves(vlm, dataset, claim):
    """Localization curves under each ranking. Heads are ranked on the mediation pairs and evaluated on
    other objects (annotation ids disjoint from the ranking pairs), so the ranking cannot fit the objects
    it is tested on; both sets are recorded."""
    profile = vlm.profile
    pool = dataset.with_counterfactuals()
    if not pool:
        pytest.skip(f"dataset {dataset.name} has no object-removed images: the head ranking needs mediation pairs")
    pairs = claim.samples(dataset, pool=pool, limit=profile.claims["mediation"]["pairs"])
    gap = profile.claims["mediation"]["min_relative_gap"]
    rankings = {}
    for spec in (BOX, BINARY):
        result = mediation(vlm, dataset, pairs, spec, gap)
        rankings[f"{spec.task}-critical"] = result.ranked()
        rankings[f"{spec.task}-low-importance"] = _closest_to_zero(result.mean_mf)
    settings = profile.claims["head_ablation"]
    ranking_ids = {s.annotation_id for s in pairs}
    candidates = [s for s in dataset.samples if s.annotation_id not in ranking_ids]
    if not candidates:
        pytest.skip("every object is a mediation pair: no object is left to evaluate the ranking on")
    samples = claim.samples(dataset, pool=candidates, limit=settings["max_objects"])
    claim.note("ranking objects (mediation pairs, annotation ids)", sorted(ranking_ids))
    claim.note("evaluation objects (annotation ids, disjoint from the ranking objects)",
               sorted(s.annotation_id for s in samples))
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
    labels = {name: f"{name} (normalized AUC {normalized_auc(fractions, [x.mean() for x in scores]):.3f})"
              for name, scores in curves.items()}
    claim.table("figure5", rows, title="Figure 5: localization accuracy (%) under cumulative head ablation",
                figure={"kind": "lines", "x": "fraction", "y": "value", "series": "mode", "labels": labels,
                        "xlabel": "fraction of heads ablated", "ylabel": "localization accuracy (%)"})
    for name, scores in curves.items():
        claim.statistic(f"auc_{name}", lambda *s: normalized_auc(fractions, [x.mean() for x in s]), scores)
    return curves, fractions


def _closest_to_zero(mean_mf: np.ndarray) -> list[Head]:
    """Heads by |mean MF| ascending (ties by position): the task's low-importance heads come first."""
    flat = np.abs(np.nan_to_num(mean_mf, nan=np.inf)).ravel()
    n_heads = mean_mf.shape[1]
    return [Head(int(i) // n_heads, int(i) % n_heads) for i in np.lexsort((np.arange(flat.size), flat))]


def _expect_auc_gap(vlm, dataset, claim, task: str, statement: str):
    """AUC(the `task`'s low-importance heads) - AUC(its critical heads), paired over objects."""
    curves, fractions = _curves(vlm, dataset, claim)
    expect_auc_gap(claim, vlm.profile, fractions, curves[f"{task}-low-importance"], curves[f"{task}-critical"],
                   task, statement)


def expect_auc_gap(claim, profile, fractions, low_importance, critical, task: str, statement: str):
    """The rule: per-object localization outcomes at each fraction under the two rankings."""
    k = len(fractions)

    def gap(*arrays):
        low, ranked = arrays[:k], arrays[k:]
        return (normalized_auc(fractions, [x.mean() for x in low])
                - normalized_auc(fractions, [x.mean() for x in ranked]))

    measured = claim.statistic(f"auc_{task}_low_importance_minus_{task}_critical", gap, [*low_importance, *critical])
    claim.expect_at_least(measured, profile.claims["head_ablation"]["min_auc_gap"], statement)


def test_ablating_localization_critical_heads_hurts_far_more_than_low_importance_heads(vlm, dataset, claim):
    """Ablating localization-critical heads leads to a substantially larger drop in localization accuracy
    than removing an equal number of low-importance heads (normalized AUC).

    Paper: §3.3.3, Figure 5, Figure 15
    """
    _expect_auc_gap(vlm, dataset, claim, "localization",
                    "localization-critical heads are causally necessary for localization")


def test_ablating_classification_critical_heads_also_hurts_localization(vlm, dataset, claim):
    """Despite the limited overlap between the two tasks' critical heads, ablating classification-critical
    heads still degrades localization strongly (object identification precedes grounding).

    Paper: §3.3.3, Figure 5, Figure 15
    """
    _expect_auc_gap(vlm, dataset, claim, "classification",
                    "classification-critical heads are needed for localization too")
