"""Object tokens carry what both tasks need (§3.1, Table 1).

Ablation replaces visual tokens at the LM input with the global mean visual embedding. The control for
"these tokens matter" is ablating as many tokens drawn at random, per object, over the profile's seeds.
Each claim is a test (measure) and a rule of the same name without `test_` (decide on per-object
outcomes); `tests/test_paper_tables.py` runs the rules on the paper's own numbers.
"""

from mechanisms.experiments.token_effects import Effects, ablation_row, expect_competence, measure_effects
from mechanisms.interventions.conditions import BASELINE, matched_random_ablation, object_ablation
from mechanisms.tasks.specs import TASKS

OBJECT = object_ablation(padding=0)


def _object_vs_random(vlm, dataset, claim) -> tuple[Effects, list]:
    settings = vlm.profile.claims["interventions"]
    samples = claim.samples(dataset, limit=settings["max_objects"])
    randoms = [matched_random_ablation(claim.seed + i) for i in range(settings["random_seeds"])]
    return measure_effects(vlm, dataset, samples, [OBJECT, *randoms]), randoms


def _paper(profile, condition, task):
    return profile.paper_value(*condition.paper, task)


def test_ablating_object_tokens_hurts_far_more_than_ablating_as_many_random_tokens(vlm, dataset, claim):
    """Ablating the object's tokens hurts localization and classification far more than ablating the same
    number of randomly chosen tokens.

    Per object, the random control removes exactly as many tokens as its object selection holds (mask
    overlap >= 1 pixel); the excess drop is paired per object and averaged over the random seeds.
    Paper: §3.1, Table 1 (Object vs Random rows)
    """
    effects, randoms = _object_vs_random(vlm, dataset, claim)
    ablating_object_tokens_hurts_far_more_than_ablating_as_many_random_tokens(claim, vlm.profile, effects, randoms)


def ablating_object_tokens_hurts_far_more_than_ablating_as_many_random_tokens(claim, profile, effects, randoms):
    limits = profile.claims["object_ablation"]
    for task in TASKS:
        claim.measure(f"{task}_baseline", effects.of(task, BASELINE), paper=_paper(profile, BASELINE, task))
        claim.measure(f"{task}_object_ablated", effects.of(task, OBJECT), paper=_paper(profile, OBJECT, task))
        claim.measure(f"{task}_random_ablated", effects.of(task, randoms), random_seeds=[c.seed for c in randoms],
                      seed_std=effects.seed_std(task, randoms))
        excess = claim.difference(f"{task}_excess_drop_object_vs_random", effects.drop(task, OBJECT),
                                  effects.drop(task, randoms),
                                  description="drop(object tokens) - drop(as many random tokens), per object")
        claim.expect_at_least(excess, limits[f"min_excess_drop_{task}"],
                              f"object-token ablation hurts {task} far more than random-token ablation")
    claim.measure("object_token_share", effects.tokens(OBJECT), unit="fraction of image tokens",
                  paper=profile.paper_value("ablation_tokens", OBJECT.paper[1]))
    claim.table("table1", [ablation_row(0, effects, BASELINE, profile), ablation_row(3, effects, OBJECT, profile),
                           ablation_row(40, effects, randoms, profile)],
                title="Table 1: accuracy after token ablation (%)")


def test_localization_suffers_more_than_classification_from_object_ablation(vlm, dataset, claim):
    """Localization is more affected than classification by object-token ablation: it loses a larger share
    of its baseline accuracy.

    Shares, not points: the tasks start from different baselines (LLaVA-7B loses 29.4 of 35.3 points
    of localization but 38.7 of 58.1 of classification). The gap is bootstrapped over objects.
    Paper: §3.1, Table 1 (Object row)
    """
    effects, _ = _object_vs_random(vlm, dataset, claim)
    localization_suffers_more_than_classification_from_object_ablation(claim, vlm.profile, effects)


def localization_suffers_more_than_classification_from_object_ablation(claim, profile, effects):
    paper_share = {task: _paper_share_lost(profile, task) for task in TASKS}
    arrays = []
    for task in TASKS:
        expect_competence(claim, profile, effects.of(task, BASELINE), task)  # a share of nothing is undefined
        arrays += [effects.of(task, BASELINE), effects.of(task, OBJECT)]
        claim.statistic(f"{task}_share_of_baseline_lost", _share_lost, arrays[-2:], paper=paper_share[task],
                        description="1 - ablated / baseline accuracy")
    both = None if None in paper_share.values() else round(paper_share["localization"]
                                                           - paper_share["classification"], 4)
    gap = claim.statistic("share_lost_localization_minus_classification",
                          lambda lb, la, cb, ca: _share_lost(lb, la) - _share_lost(cb, ca), arrays, paper=both)
    claim.expect_at_least(gap, profile.claims["object_ablation"]["min_relative_drop_gap"],
                          "localization loses a larger share of its baseline than classification")


def _paper_share_lost(profile, task):
    base, ablated = _paper(profile, BASELINE, task), _paper(profile, OBJECT, task)
    return None if base is None or ablated is None else round(1 - ablated / base, 4)


def _share_lost(baseline, ablated):
    return 1 - ablated.mean() / baseline.mean() if baseline.mean() > 0 else float("nan")
