"""Where the LM reads the object: attention knockout by layer group (§3.3.1, Figure 3, Figure 12).

Every token after the image (prompt and generated tokens) is blocked from attending to the object's
image tokens, in a group of consecutive layers only, or in single layers, or in all layers; only the
language model's attention changes. Groups: the profile's sizes (the paper: 4 and 6). Claims compare the
series of the first size. Each claim is a test (measure) and, where the paper gives its inputs, a rule
of the same name without `test_` (decide).
"""

import numpy as np
import pytest

from mechanisms.experiments.knockout_sweep import BASELINE, consecutive_groups, knockout_answers, layer_groups
from mechanisms.experiments.token_effects import expect_competence
from mechanisms.models import sites
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
        scores[spec.task] = {n: spec.score(vlm.adapter, a, samples, categories=dataset.categories).outcomes()
                             for n, a in answers.items()}
    first = list(consecutive_groups(n_layers, settings["group_sizes"][0]))  # the series the claims compare
    rows = []
    for task in TASKS:
        base = scores[task][BASELINE].mean()
        for order, name in enumerate(groups):
            rows.append({"order": order, "task": task, "mode": name,
                         "value": round(100 * float(scores[task][name].mean()), 2),
                         "drop": round(100 * float(base - scores[task][name].mean()), 2)})
    baselines = [{"y": round(100 * float(scores[task][BASELINE].mean()), 2), "label": f"{task} without knockout",
                  "color": colour} for task, colour in zip(TASKS, ("tab:blue", "tab:orange"))]
    claim.table("figure3", rows, title="Figure 3/12: accuracy (%) after attention knockout of the object's tokens",
                figure={"kind": "lines", "x": "mode", "y": "value", "series": "task", "hlines": baselines,
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


def _centres(groups, names) -> np.ndarray:
    """Each group's centre layer (the mean of its layers)."""
    return np.asarray([float(np.mean(sorted(groups[n]))) for n in names])


def test_knocking_out_the_padding_too_costs_localization_more(vlm, dataset, claim):
    """Blocking attention to padding tokens (one ring of tokens around the object) as well causes an
    additional decrease in localization performance.

    Per object and group (the first group size): drop with the object and one ring blocked minus drop with
    the object alone, averaged over the groups.
    Paper: §3.3.1, Figure 12 caption
    """
    settings = vlm.profile.claims["knockout"]
    scores, groups, first = _knockout(vlm, dataset, claim)
    samples = claim.samples(dataset, limit=settings["max_objects"])
    padded = knockout_answers(vlm, dataset, samples, BOX, {n: groups[n] for n in first}, settings["padding"] + 1)
    loc = scores["localization"]
    padded_scores = {n: BOX.score(vlm.adapter, padded[n], samples).outcomes() for n in first}
    for name in first:
        claim.measure(f"localization_{name.replace(' ', '_')}_object_plus1_knocked_out", padded_scores[name])
    extra = claim.measure("localization_extra_drop_with_padding_mean_over_groups",
                          np.mean([loc[n] - padded_scores[n] for n in first], axis=0),
                          description="mean over groups of acc(object knocked out) - acc(object + 1 ring knocked out)")
    claim.expect_at_least(extra, settings["min_padding_extra_drop_localization"],
                          "blocking the padding ring too costs localization more than the object alone")


def test_localization_needs_layers_after_those_classification_needs(vlm, dataset, claim):
    """Both classification and localization rely on early shared layers, after which localization depends
    on additional task-specific processing: classification's knockout curve recovers at earlier layers
    than localization's.

    Per task, the drop-weighted mean layer of its group-knockout curve (each group at its centre layer,
    weighted by its positive mean drop); localization's minus classification's, paired over objects. The
    first group's drop (the shared early layers) is recorded for both tasks.
    Paper: §3.3.1, Figure 3
    """
    scores, groups, first = _knockout(vlm, dataset, claim)
    localization_needs_layers_after_those_classification_needs(
        claim, vlm.profile, _centres(groups, first), {t: scores[t][BASELINE] for t in TASKS},
        {t: [scores[t][n] for n in first] for t in TASKS})


def localization_needs_layers_after_those_classification_needs(claim, profile, centres, baseline, knocked_out):
    """`centres`: each group's centre layer; `baseline[task]`, `knocked_out[task][group]`: per-object outcomes."""
    k = len(centres)
    _expect_a_drop_to_locate(claim, profile, baseline["localization"], knocked_out["localization"])

    def weighted_layer(base, *group_scores):
        drops = np.clip([base.mean() - g.mean() for g in group_scores], 0, None)
        return float(np.dot(drops, centres) / drops.sum()) if drops.sum() > 0 else float("nan")

    for task in TASKS:
        claim.difference(f"{task}_drop_first_group", baseline[task], knocked_out[task][0])
        claim.statistic(f"{task}_drop_weighted_layer", weighted_layer, [baseline[task], *knocked_out[task]],
                        unit="layer")
    arrays = [baseline["localization"], *knocked_out["localization"], baseline["classification"],
              *knocked_out["classification"]]
    lag = claim.statistic("localization_minus_classification_drop_weighted_layer",
                          lambda *a: weighted_layer(*a[:k + 1]) - weighted_layer(*a[k + 1:]), arrays, unit="layers")
    claim.expect_at_least(lag, profile.claims["knockout"]["min_localization_lag_layers"],
                          "localization's knockout drop sits at later layers than classification's")


def test_the_localization_drop_lies_in_the_layers_the_paper_names(vlm, dataset, claim):
    """For the LLaVA models, blocking attention to the object decreases performance most in the early to mid
    layers; for InternVL, the strongest decline occurs in the middle to later layers.

    The centre layer of the group with the largest localization drop, bootstrapped over objects, lies
    within the paper's band for this model (`[paper.locations] knockout_layers`); others skip.
    Paper: §3.3.1, Figure 3, Figure 12
    """
    if vlm.profile.paper_value("locations", "knockout_layers") is None:
        pytest.skip(f"the paper locates the knockout band for LLaVA-1.5 and InternVL-3.5 only, not {vlm.profile.name}")
    scores, groups, first = _knockout(vlm, dataset, claim)
    the_localization_drop_lies_in_the_layers_the_paper_names(
        claim, vlm.profile, _centres(groups, first), scores["localization"][BASELINE],
        [scores["localization"][n] for n in first])


def _worst_centre(centres, base, groups) -> float:
    return float(centres[int(np.argmax([base.mean() - g.mean() for g in groups]))])


def _expect_a_drop_to_locate(claim, profile, baseline, knocked_out):
    """Where nothing drops, the worst group is an argmax over noise: a location needs a real drop."""
    drop = claim.statistic("worst_group_localization_drop",
                           lambda b, *g: max(b.mean() - x.mean() for x in g), [baseline, *knocked_out])
    claim.expect_at_least(drop, profile.claims["locations"]["min_located_drop"],
                          "some layer group's knockout costs localization (there is a band to locate)")


def the_localization_drop_lies_in_the_layers_the_paper_names(claim, profile, centres, baseline, knocked_out):
    low, high = profile.paper_value("locations", "knockout_layers")
    _expect_a_drop_to_locate(claim, profile, baseline, knocked_out)
    worst = claim.statistic("worst_group_centre_layer", lambda b, *g: _worst_centre(centres, b, g),
                            [baseline, *knocked_out], paper=[low, high], unit="layer",
                            description="centre layer of the group whose knockout costs localization most")
    claim.expect_at_least(worst, low, f"the worst group lies at or after layer {low}")
    claim.expect_at_most(worst, high, f"the worst group lies at or before layer {high}")


def test_the_worst_knockout_layers_retain_strong_positional_information(vlm, dataset, claim, probes):
    """For the LLaVA models, the layers with the largest localization decline under knockout align with
    those that retain strong positional information.

    |peak LM layer of the positional probes - centre of the worst knockout group| is at most one group
    (the first group size); probe images and knockout objects are resampled independently.
    Paper: §3.3.1 (with §3.2)
    """
    settings = vlm.profile.claims["knockout"]
    if not settings["probe_alignment"]:
        pytest.skip(f"the paper states this alignment for the LLaVA models only ({vlm.profile.name} is not one)")
    scores, groups, first = _knockout(vlm, dataset, claim)
    llm = probes.stages(sites.LLM)
    probe_layers = np.asarray([sites.layer_of(s) for s in llm])
    accuracy = np.stack([probes.results[s].per_image() for s in llm], axis=1)  # [images, LM layers]
    centres = _centres(groups, first)
    loc = scores["localization"]
    knock = np.stack([loc[BASELINE], *[loc[n] for n in first]], axis=1)  # [objects, baseline + groups]

    def peak_layer(acc):
        return float(probe_layers[int(np.argmax(acc.mean(0)))])

    def worst_centre(kn):
        return _worst_centre(centres, kn[:, 0], list(kn[:, 1:].T))

    def distance(acc, kn):
        return abs(peak_layer(acc) - worst_centre(kn))

    _expect_a_drop_to_locate(claim, vlm.profile, loc[BASELINE], [loc[n] for n in first])
    gain = claim.difference("probe_peak_minus_projector_accuracy", accuracy[:, int(np.argmax(accuracy.mean(0)))],
                            probes.results[sites.PROJECTOR].per_image())
    claim.expect_at_least(gain, vlm.profile.claims["probing"]["min_llm_gain_over_projector"],
                          "the LM rebuilds position to a peak (else its argmax is noise)")
    claim.statistic("probe_peak_layer", peak_layer, [accuracy],
                    paper=vlm.profile.paper_value("probing", "peak_llm_layer"), unit="layer")
    claim.statistic("worst_knockout_group_centre_layer", worst_centre, [knock], unit="layer")
    gap = claim.unpaired_statistic("probe_peak_to_worst_knockout_group_layers", distance, [accuracy, knock],
                                   unit="layers")
    claim.expect_at_most(gap, settings["group_sizes"][0],
                         f"the probe peak lies within one group ({settings['group_sizes'][0]} layers) of the worst "
                         "knockout group")
