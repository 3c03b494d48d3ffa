"""The information both tasks need lies within the object's boundaries (§3.1, Table 1).

Growing the ablated region past the object (positive padding) removes more of it; shrinking it
(negative padding, keeping the boundary tokens) or removing the high-norm "register" tokens leaves
the model nearly as good as the baseline.
"""

import numpy as np

from mechanisms.experiments.token_effects import ablation_row, expect_competence, measure_effects
from mechanisms.interventions.conditions import BASELINE, object_ablation, register_ablation
from mechanisms.interventions.selection import object_tokens, register_tokens
from mechanisms.tasks.specs import TASKS

PADDED = {p: object_ablation(padding=p) for p in (-2, -1, 0, 1, 2)}
REGISTER = register_ablation(n_std=2.0)


def _padding_effects(vlm, dataset, claim):
    samples = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    effects = measure_effects(vlm, dataset, samples, [*PADDED.values(), REGISTER])
    profile = vlm.profile
    rows = [ablation_row(0, effects, BASELINE, profile)]
    rows += [ablation_row(3 + p, effects, condition, profile) for p, condition in PADDED.items()]
    rows.append(ablation_row(60, effects, REGISTER, profile))
    claim.table("table1", rows, title="Table 1: accuracy after token ablation (%)")
    return effects


def _record_drop(claim, effects, task, condition, profile):
    """The condition's accuracy and its drop from baseline, named by its paper key (e.g. `object-1`)."""
    section, key = condition.paper
    paper_base, paper = profile.paper_value("ablation", "baseline", task), profile.paper_value(section, key, task)
    claim.measure(f"{task}_{key}", effects.of(task, condition), paper=paper)
    return claim.measure(f"{task}_drop_{key}", effects.drop(task, condition),
                         paper=None if paper is None else round(paper_base - paper, 4))


def test_positive_padding_deepens_the_drop(vlm, dataset, claim):
    """Positive padding around the object further amplifies the effect of object-token ablation.

    Paper: §3.1, Table 1 (+1/+2 Padding rows)
    """
    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        claim.measure(f"{task}_baseline", effects.of(task, BASELINE))
        for p in (0, 1, 2):
            _record_drop(claim, effects, task, PADDED[p], profile)
        extra = claim.difference(f"{task}_extra_drop_plus1_vs_object", effects.of(task, PADDED[0]),
                                 effects.of(task, PADDED[1]), description="drop(+1) - drop(object)")
        claim.expect_at_least(extra, profile.claims["padding"]["min_extra_drop_positive"],
                              f"one ring of padding deepens the {task} drop")
    claim.measure("token_share_object+1", effects.tokens(PADDED[1]),
                  paper=profile.paper_value("ablation_tokens", "object+1"))


def test_negative_padding_barely_moves_accuracy(vlm, dataset, claim):
    """Maintaining the original boundaries through negative padding has minimal influence on performance.

    Paper: §3.1, Table 1 (-1/-2 Padding rows)
    """
    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        expect_competence(claim, profile, effects.of(task, BASELINE), task)
        _record_drop(claim, effects, task, PADDED[-2], profile)
        drop = _record_drop(claim, effects, task, PADDED[-1], profile)
        claim.expect_at_most(drop, profile.claims["padding"]["max_drop_negative"],
                             f"ablating the object minus its boundary ring barely moves {task}")
    claim.measure("token_share_object-1", effects.tokens(PADDED[-1]),
                  paper=profile.paper_value("ablation_tokens", "object-1"))


def test_ablating_register_tokens_barely_moves_accuracy(vlm, dataset, claim):
    """Register tokens (embedding norm above mean + 2 std) carry little of what either task needs.

    Also recorded: how many register tokens there are and how many of them lie on the object.
    Paper: §3.1 ii, Table 1 (Register row)
    """
    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        expect_competence(claim, profile, effects.of(task, BASELINE), task)
        drop = _record_drop(claim, effects, task, REGISTER, profile)
        claim.expect_at_most(drop, profile.claims["padding"]["max_drop_register"],
                             f"ablating register tokens barely moves {task}")
    claim.measure("token_share_register", effects.tokens(REGISTER),
                  paper=profile.paper_value("ablation_tokens", "register"))
    on_object = _register_tokens_on_object(vlm, dataset, claim.samples(
        dataset, limit=profile.claims["interventions"]["max_objects"]))
    claim.measure("register_tokens_on_the_object", on_object,
                  description="per image with register tokens: share of them inside the object selection")


def _register_tokens_on_object(vlm, dataset, samples):
    adapter, shares = vlm.adapter, []
    for start in range(0, len(samples), vlm.profile.batch_size):
        chunk = samples[start:start + vlm.profile.batch_size]
        for sample, features in zip(chunk, adapter.image_features([dataset.image(s) for s in chunk])):
            registers = register_tokens(features, REGISTER.n_std)
            if registers.any():
                inside = object_tokens(adapter.views(sample.width, sample.height), dataset.mask(sample))
                shares.append(float(inside[registers].mean()))
    return np.asarray(shares)
