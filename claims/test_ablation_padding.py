"""The information both tasks need lies within the object's boundaries (§3.1, Table 1).

Growing the ablated region past the object (positive padding) removes more of it; shrinking it
(negative padding, keeping the boundary tokens) or removing the high-norm "register" tokens leaves
the model nearly as good as the baseline.
"""

from mechanisms.effects import TASKS, ablation_row, expect_competence, measure_effects
from mechanisms.interventions.conditions import object_ablation, register_ablation

PADDINGS = (-2, -1, 0, 1, 2)


def _padding_effects(vlm, dataset, claim):
    samples = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    conditions = [object_ablation(dataset, p) for p in PADDINGS] + [register_ablation()]
    effects = measure_effects(vlm, dataset, samples, conditions)
    profile = vlm.profile
    rows = [ablation_row(0, "Baseline", effects, ["baseline"], "baseline", profile)]
    rows += [ablation_row(3 + p, "Object" if p == 0 else f"{p:+d} Padding", effects, [f"ablate:object{p:+d}"],
                          f"object{p:+d}", profile) for p in PADDINGS]
    rows.append(ablation_row(60, "Register", effects, ["ablate:register2std"], "register", profile))
    claim.table("table1", rows, title="Table 1: accuracy after token ablation (%)")
    return effects


def _record_drop(claim, effects, task, name, paper_key, profile):
    paper_base, paper = profile.paper_value("ablation", "baseline"), profile.paper_value("ablation", paper_key)
    i = TASKS.index(task)
    claim.measure(f"{task}_{paper_key}", effects.of(task, name), paper=paper and paper[i])
    return claim.measure(f"{task}_drop_{paper_key}", effects.drop(task, name),
                         paper=paper and round(paper_base[i] - paper[i], 4))


def test_positive_padding_deepens_the_drop(vlm, dataset, claim):
    """Positive padding around the object further amplifies the effect of object-token ablation.

    Paper: §3.1, Table 1 (+1/+2 Padding rows)
    """
    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        claim.measure(f"{task}_baseline", effects.of(task, "baseline"))
        for p in (0, 1, 2):
            _record_drop(claim, effects, task, f"ablate:object{p:+d}", f"object{p:+d}", profile)
        extra = claim.difference(f"{task}_extra_drop_plus1_vs_object", effects.of(task, "ablate:object+0"),
                                 effects.of(task, "ablate:object+1"), description="drop(+1) - drop(object)")
        claim.expect_at_least(extra, profile.claims["padding"]["min_extra_drop_positive"],
                              f"one ring of padding deepens the {task} drop")
    claim.measure("token_share_object+1", effects.tokens["ablate:object+1"],
                  paper=profile.paper_value("ablation_tokens", "object+1"))


def test_negative_padding_barely_moves_accuracy(vlm, dataset, claim):
    """Maintaining the original boundaries through negative padding has minimal influence on performance.

    Paper: §3.1, Table 1 (-1/-2 Padding rows)
    """
    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        expect_competence(claim, profile, effects, task)
        _record_drop(claim, effects, task, "ablate:object-2", "object-2", profile)
        drop = _record_drop(claim, effects, task, "ablate:object-1", "object-1", profile)
        claim.expect_at_most(drop, profile.claims["padding"]["max_drop_negative"],
                             f"ablating the object minus its boundary ring barely moves {task}")
    claim.measure("token_share_object-1", effects.tokens["ablate:object-1"],
                  paper=profile.paper_value("ablation_tokens", "object-1"))


def test_ablating_register_tokens_barely_moves_accuracy(vlm, dataset, claim):
    """Register tokens (embedding norm above mean + 2 std) carry little of what either task needs.

    Also recorded: how many register tokens there are and how many of them lie on the object.
    Paper: §3.1 ii, Table 1 (Register row)
    """
    from mechanisms.interventions.selection import object_tokens, register_tokens

    profile = vlm.profile
    effects = _padding_effects(vlm, dataset, claim)
    for task in TASKS:
        expect_competence(claim, profile, effects, task)
        drop = _record_drop(claim, effects, task, "ablate:register2std", "register", profile)
        claim.expect_at_most(drop, profile.claims["padding"]["max_drop_register"],
                             f"ablating register tokens barely moves {task}")
    claim.measure("token_share_register", effects.tokens["ablate:register2std"],
                  paper=profile.paper_value("ablation_tokens", "register"))
    on_object = _register_tokens_on_object(vlm, dataset, claim.samples(
        dataset, limit=profile.claims["interventions"]["max_objects"]), object_tokens, register_tokens)
    claim.measure("register_tokens_on_the_object", on_object,
                  description="per image with register tokens: share of them inside the object selection")


def _register_tokens_on_object(vlm, dataset, samples, object_tokens, register_tokens):
    import numpy as np
    import torch

    adapter, shares = vlm.adapter, []
    device = next(adapter.model.parameters()).device
    for start in range(0, len(samples), vlm.profile.batch_size):
        chunk = samples[start:start + vlm.profile.batch_size]
        batch = adapter.encode([dataset.image(s) for s in chunk], ["Describe the image."] * len(chunk))
        with torch.no_grad():
            features = adapter.visual_tokens({k: v.to(device) for k, v in batch.items()})
        for sample, f in zip(chunk, features):
            registers = register_tokens(f)
            if registers.any():
                inside = object_tokens(adapter.views(sample.width, sample.height), dataset.mask(sample))
                shares.append(float(inside[registers].mean()))
    return np.asarray(shares)
