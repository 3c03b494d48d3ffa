"""Where the LM reads the object: attention knockout by layer group (§3.3.1, Figure 3, Figure 12).

Every token after the image (prompt and generated tokens) is blocked from attending to the object's
image tokens, in a group of consecutive layers only, or in single layers, or in all layers; only the
language model's attention changes. Groups: the profile's sizes (the paper: 4 and 6).
"""

import numpy as np

from mechanisms.experiments.knockout_sweep import BASELINE, consecutive_groups, knockout_answers, layer_groups
from mechanisms.experiments.token_effects import expect_competence
from mechanisms.models.sites import ALL_LAYERS
from mechanisms.tasks.specs import BOX, LIST, TASKS


def _knockout(vlm, dataset, claim):
    settings = vlm.profile.claims["knockout"]
    samples = claim.samples(dataset, limit=settings["max_objects"])
    n_layers = vlm.adapter.head_layout().n_layers
    groups = layer_groups(n_layers, settings["group_sizes"])
    scores = {}
    for spec in (BOX, LIST):
        answers = knockout_answers(vlm, dataset, samples, spec, groups, settings["padding"])
        scores[spec.task] = {n: spec.score(vlm.adapter, a, samples).outcomes() for n, a in answers.items()}
    first = list(consecutive_groups(n_layers, settings["group_sizes"][0]))  # the series the claims compare
    rows = []
    for task in TASKS:
        base = scores[task][BASELINE].mean()
        for order, name in enumerate(groups):
            rows.append({"order": order, "task": task, "mode": name,
                         "value": round(100 * float(scores[task][name].mean()), 2),
                         "drop": round(100 * float(base - scores[task][name].mean()), 2)})
    claim.table("figure3", rows, title="Figure 3/12: accuracy (%) after attention knockout of the object's tokens",
                figure={"kind": "lines", "x": "mode", "y": "value", "series": "task",
                        "xlabel": "layers knocked out", "ylabel": "accuracy (%)"})
    return scores, groups, first


def test_knocking_out_the_object_in_all_layers_destroys_localization(vlm, dataset, claim):
    """Blocking attention from every post-image token to the object's tokens in all LM layers hurts
    localization strongly.

    Paper: §3.3.1, Figure 3 ("all layers" baseline)
    """
    scores, _, _ = _knockout(vlm, dataset, claim)
    for task in TASKS:
        claim.measure(f"{task}_baseline", scores[task][BASELINE])
        claim.measure(f"{task}_all_layers_knocked_out", scores[task][ALL_LAYERS])
    drop = claim.difference("localization_drop_all_layers", scores["localization"][BASELINE],
                            scores["localization"][ALL_LAYERS])
    claim.difference("classification_drop_all_layers", scores["classification"][BASELINE],
                     scores["classification"][ALL_LAYERS])
    claim.expect_at_least(drop, vlm.profile.claims["knockout"]["min_all_layer_drop_localization"],
                          "all-layer knockout of the object's tokens hurts localization strongly")


def test_the_localization_drop_is_concentrated_in_a_layer_band(vlm, dataset, claim):
    """The localization drop under group knockout is concentrated in a band of layers (the paper: early-mid
    layers for LLaVA, mid-late for InternVL): the worst group's drop is several times the median group's.

    The band found is recorded; so is classification's, which the paper finds more stable.
    Paper: §3.3.1, Figure 3, Figure 12
    """
    settings = vlm.profile.claims["knockout"]
    scores, groups, first = _knockout(vlm, dataset, claim)
    loc = scores["localization"]
    expect_competence(claim, vlm.profile, loc[BASELINE], "localization")
    drops = {n: loc[BASELINE] - loc[n] for n in first}
    worst = max(first, key=lambda n: drops[n].mean())
    claim.note("layer band with the largest localization drop", f"{worst} (groups of {settings['group_sizes'][0]})")
    for name in first:
        claim.measure(f"localization_drop_{name.replace(' ', '_')}", drops[name])
    ratio = settings["concentration_ratio"]
    concentration = claim.statistic(
        "worst_minus_ratio_times_median_group_drop",
        lambda *arrays: _worst_minus_median(arrays, ratio), [loc[BASELINE], *[loc[n] for n in first]],
        description=f"max over groups of mean drop - {ratio} x median over groups of mean drop")
    claim.expect_at_least(concentration, settings["min_concentration_excess"],
                          f"the worst group's localization drop exceeds {ratio}x the median group's")
    cls = scores["classification"]
    worst_cls = max(first, key=lambda n: (cls[BASELINE] - cls[n]).mean())
    claim.note("layer band with the largest classification drop", worst_cls)


def _worst_minus_median(arrays, ratio):
    base, groups = arrays[0], arrays[1:]
    drops = np.asarray([base.mean() - g.mean() for g in groups])
    return drops.max() - ratio * np.median(drops)


def test_classification_is_more_stable_than_localization_under_group_knockout(vlm, dataset, claim):
    """Under knockout of single layer groups, classification loses a smaller share of its baseline than
    localization does (compared at each task's worst group).

    Paper: §3.3.1, Figure 3, Figure 12
    """
    settings = vlm.profile.claims["knockout"]
    scores, groups, first = _knockout(vlm, dataset, claim)
    arrays = [scores[t][BASELINE] for t in TASKS] + [scores[t][n] for t in TASKS for n in first]
    k = len(first)

    def worst_share(base, group_scores):
        return max(1 - g.mean() / base.mean() for g in group_scores) if base.mean() > 0 else float("nan")

    def gap(loc_base, cls_base, *rest):
        return worst_share(loc_base, rest[:k]) - worst_share(cls_base, rest[k:])

    claim.statistic("localization_worst_group_share_lost", lambda b, *g: worst_share(b, g),
                    [scores["localization"][BASELINE], *[scores["localization"][n] for n in first]])
    claim.statistic("classification_worst_group_share_lost", lambda b, *g: worst_share(b, g),
                    [scores["classification"][BASELINE], *[scores["classification"][n] for n in first]])
    stability = claim.statistic("share_lost_localization_minus_classification", gap, arrays)
    claim.expect_at_least(stability, settings["min_stability_gap"],
                          "classification is more stable than localization under group knockout")
