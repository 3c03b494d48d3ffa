"""Inside the container, arrangement barely matters for localization; classification ignores order (§3.1.1, Table 2).

Tokens are permuted at the LM input: all image tokens, or only the object's tokens among themselves;
each over the profile's shuffling seeds.
"""

from mechanisms.experiments.token_effects import expect_competence, measure_effects
from mechanisms.interventions.conditions import BASELINE, full_shuffle, object_shuffle
from mechanisms.tasks.specs import TASKS


def _shuffled(vlm, dataset, claim):
    settings = vlm.profile.claims["shuffling"]
    samples = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    seeds = [claim.seed + i for i in range(settings["seeds"])]
    shuffles = {"full": [full_shuffle(s) for s in seeds], "object": [object_shuffle(s) for s in seeds]}
    effects = measure_effects(vlm, dataset, samples, [c for cs in shuffles.values() for c in cs])
    rows = []
    for i, task in enumerate(TASKS):
        base = vlm.profile.paper_value("ablation", "baseline", task)
        rows.append({"order": 10 * i, "task": task, "mode": "Baseline",
                     "value": round(100 * float(effects.of(task, BASELINE).mean()), 2), "std": 0.0,
                     "drop": 0.0, "paper": base and round(100 * base, 2)})
        for j, group in enumerate(shuffles.values()):
            paper = vlm.profile.paper_value(*group[0].paper, task)
            value = float(effects.of(task, group).mean())
            rows.append({"order": 10 * i + j + 1, "task": task, "mode": group[0].label,
                         "value": round(100 * value, 2), "std": round(100 * effects.seed_std(task, group), 2),
                         "drop": round(100 * float(effects.of(task, BASELINE).mean() - value), 2),
                         "paper": paper and round(100 * paper, 2)})
    claim.table("table2", rows, title="Table 2: accuracy under token shuffling (%)")
    return effects, shuffles, seeds


def _record(claim, vlm, effects, shuffles, seeds, task, which):
    group = shuffles[which]
    paper = vlm.profile.paper_value(*group[0].paper, task)
    base = vlm.profile.paper_value("ablation", "baseline", task)
    claim.measure(f"{task}_{which}_shuffle", effects.of(task, group), paper=paper,
                  seed_std=effects.seed_std(task, group), seeds=seeds)
    return claim.difference(f"{task}_drop_{which}_shuffle", effects.of(task, BASELINE), effects.of(task, group),
                            paper=paper and round(base - paper, 4))


def test_shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it(vlm, dataset, claim):
    """Localization performance drops only slightly when the tokens within the object mask are shuffled,
    compared to a full shuffle of all image tokens.

    Paper: §3.1.1, Table 2 (Localization)
    """
    limits = vlm.profile.claims["shuffling"]
    effects, shuffles, seeds = _shuffled(vlm, dataset, claim)
    expect_competence(claim, vlm.profile, effects.of("localization", BASELINE), "localization")
    inside = _record(claim, vlm, effects, shuffles, seeds, "localization", "object")
    full = _record(claim, vlm, effects, shuffles, seeds, "localization", "full")
    claim.expect_at_most(inside, limits["max_object_shuffle_drop_localization"],
                         "shuffling the object's tokens leaves localization near baseline")
    claim.expect_at_least(full, limits["min_full_shuffle_drop_localization"],
                          "shuffling all image tokens destroys localization")


def test_classification_is_unaffected_by_either_shuffle(vlm, dataset, claim):
    """Object classification is unaffected by either shuffling procedure.

    Paper: §3.1.1, Table 2 (Classification)
    """
    limit = vlm.profile.claims["shuffling"]["max_classification_change"]
    effects, shuffles, seeds = _shuffled(vlm, dataset, claim)
    expect_competence(claim, vlm.profile, effects.of("classification", BASELINE), "classification")
    for which in ("object", "full"):
        drop = _record(claim, vlm, effects, shuffles, seeds, "classification", which)
        claim.expect_at_most(drop, limit, f"a {which} shuffle costs classification at most {limit:.2f}")
        claim.expect_at_least(drop, -limit, f"a {which} shuffle gains classification at most {limit:.2f}",
                              bound="ci_low")
