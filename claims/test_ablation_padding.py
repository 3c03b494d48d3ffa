"""The information both tasks need lies within the object's boundaries (§3.1, Table 1).

Growing the ablated region past the object (positive padding) removes more of it; shrinking it
(negative padding, keeping the boundary tokens) or removing the high-norm "register" tokens leaves
the model nearly as good as the baseline: "nearly" is measured against the object ablation's own drop.

Each claim is a test (measure on the model) and a rule of the same name without `test_` (decide on
per-object outcomes); `tests/test_paper_tables.py` runs the rules on the paper's own numbers.
"""

import numpy as np

from mechanisms.experiments.token_effects import ablation_row, expect_competence, measure_effects
from mechanisms.interventions.conditions import BASELINE, object_ablation, register_ablation
from mechanisms.interventions.selection import object_tokens, register_tokens
from mechanisms.tasks.specs import TASKS

PADDED = {p: object_ablation(padding=p) for p in (-2, -1, 0, 1, 2)}
OBJECT = PADDED[0]
REGISTER = register_ablation(n_std=2.0)
CONDITIONS = [*PADDED.values(), REGISTER]


def _padding_effects(vlm, dataset, claim):
    samples = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    effects = measure_effects(vlm, dataset, samples, CONDITIONS)
    profile = vlm.profile
    rows = [ablation_row(0, effects, BASELINE, profile)]
    rows += [ablation_row(3 + p, effects, condition, profile) for p, condition in PADDED.items()]
    rows.append(ablation_row(60, effects, REGISTER, profile))
    claim.table("table1", rows, title="Table 1: accuracy after token ablation (%)")
    return effects


def _record_drop(claim, effects, task, condition, profile):
    """The condition's accuracy and its drop from baseline, named by its paper key (e.g. `object-1`)."""
    section, key = condition.paper
    claim.measure(f"{task}_{key}", effects.of(task, condition), paper=profile.paper_value(section, key, task))
    return claim.measure(f"{task}_drop_{key}", effects.drop(task, condition),
                         paper=profile.paper_drop(section, key, task))


def _paper_ratio(profile, task, condition, reference):
    drop, ref = profile.paper_drop(*condition.paper, task), profile.paper_drop(*reference.paper, task)
    return None if drop is None or not ref else round(drop / ref, 4)


def test_positive_padding_deepens_the_drop(vlm, dataset, claim):
    """Positive padding around the object further amplifies the effect of object-token ablation.

    A drop cannot deepen below zero accuracy: where object ablation already takes a task (nearly) to 0 the
    claim fails on that floor, and says so. The extra drop as a share of what object ablation left is
    recorded beside the paper's.
    Paper: §3.1, Table 1 (+1/+2 Padding rows)
    """
    positive_padding_deepens_the_drop(claim, vlm.profile, _padding_effects(vlm, dataset, claim))


def positive_padding_deepens_the_drop(claim, profile, effects):
    settings = profile.claims["padding"]
    for task in TASKS:
        claim.measure(f"{task}_baseline", effects.of(task, BASELINE))
        for p in (0, 1, 2):
            _record_drop(claim, effects, task, PADDED[p], profile)
        left, plus1 = effects.of(task, OBJECT), effects.of(task, PADDED[1])
        paper_left, paper_plus1 = (profile.paper_value(*c.paper, task) for c in (OBJECT, PADDED[1]))
        claim.statistic(f"{task}_extra_drop_share_of_what_object_ablation_left",
                        lambda a, b: 1 - b.mean() / a.mean() if a.mean() > 0 else float("nan"), [left, plus1],
                        paper=round(1 - paper_plus1 / paper_left, 4) if paper_left else None,
                        description="1 - acc(+1 padding) / acc(object)")
        room = claim.measure(f"{task}_accuracy_left_after_object_ablation", left)
        claim.expect_at_least(room, settings["min_extra_drop_positive"],
                              f"object ablation leaves {task} room to fall further (at zero, no drop can deepen)",
                              bound="ci_high")
        extra = claim.difference(f"{task}_extra_drop_plus1_vs_object", left, plus1,
                                 description="drop(+1) - drop(object)")
        claim.expect_at_least(extra, settings["min_extra_drop_positive"],
                              f"one ring of padding deepens the {task} drop")
    claim.measure("token_share_object+1", effects.tokens(PADDED[1]),
                  paper=profile.paper_value("ablation_tokens", "object+1"))


def _expect_minor_beside_object(claim, profile, effects, task, condition, statement):
    """drop(condition) <= share x drop(object) per object (`ClaimRecorder.expect_minor`), with the object
    drop it is relative to required to exist."""
    settings = profile.claims["padding"]
    reference = _record_drop(claim, effects, task, OBJECT, profile)
    claim.expect_at_least(reference, settings["min_reference_drop"],
                          f"object ablation costs {task} enough to compare with (else 'barely' says nothing)")
    claim.expect_minor(f"{task}_drop_{condition.paper[1]}_vs_object", effects.drop(task, condition),
                       effects.drop(task, OBJECT), settings["max_share_of_object_drop"], statement,
                       paper=_paper_ratio(profile, task, condition, OBJECT))


def test_negative_padding_barely_moves_accuracy(vlm, dataset, claim):
    """Maintaining the original boundaries through negative padding has minimal influence on performance.

    Minimal next to ablating the whole object: drop(-1 padding) is at most a fixed share of drop(object)
    on the same objects (an equivalence test; the paper's ratio is recorded beside it).
    Paper: §3.1, Table 1 (-1/-2 Padding rows)
    """
    negative_padding_barely_moves_accuracy(claim, vlm.profile, _padding_effects(vlm, dataset, claim))


def negative_padding_barely_moves_accuracy(claim, profile, effects):
    for task in TASKS:
        expect_competence(claim, profile, effects.of(task, BASELINE), task)
        _record_drop(claim, effects, task, PADDED[-2], profile)
        _record_drop(claim, effects, task, PADDED[-1], profile)
        _expect_minor_beside_object(claim, profile, effects, task, PADDED[-1],
                                    f"ablating the object minus its boundary ring barely moves {task}")
    claim.measure("token_share_object-1", effects.tokens(PADDED[-1]),
                  paper=profile.paper_value("ablation_tokens", "object-1"))


def test_ablating_register_tokens_barely_moves_accuracy(vlm, dataset, claim):
    """Register tokens (embedding norm above mean + 2 std) carry little of what either task needs.

    Little next to the object's own tokens: drop(register) is at most a fixed share of drop(object) on
    the same objects. Also recorded: how many register tokens there are and how many lie on the object.
    Paper: §3.1 ii, Table 1 (Register row)
    """
    profile = vlm.profile
    ablating_register_tokens_barely_moves_accuracy(claim, profile, _padding_effects(vlm, dataset, claim))
    on_object = _register_tokens_on_object(vlm, dataset, claim.samples(
        dataset, limit=profile.claims["interventions"]["max_objects"]))
    claim.measure("register_tokens_on_the_object", on_object,
                  description="per image with register tokens: share of them inside the object selection")


def ablating_register_tokens_barely_moves_accuracy(claim, profile, effects):
    for task in TASKS:
        expect_competence(claim, profile, effects.of(task, BASELINE), task)
        _record_drop(claim, effects, task, REGISTER, profile)
        _expect_minor_beside_object(claim, profile, effects, task, REGISTER,
                                    f"ablating register tokens barely moves {task}")
    claim.measure("token_share_register", effects.tokens(REGISTER),
                  paper=profile.paper_value("ablation_tokens", "register"))


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
