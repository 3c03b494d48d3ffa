"""Inside the container, arrangement barely matters for localization; classification ignores order (§3.1.1, Table 2).

Tokens are permuted at the LM input: all image tokens, or only the object's tokens among themselves;
each over the profile's shuffling seeds.
"""

from mechanisms.effects import TASKS, expect_competence, measure_effects
from mechanisms.interventions.conditions import full_shuffle, object_shuffle


def _shuffled(vlm, dataset, claim):
    settings = vlm.profile.claims["shuffling"]
    samples = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    seeds = [claim.seed + i for i in range(settings["seeds"])]
    modes = {"full": [full_shuffle(s) for s in seeds], "object": [object_shuffle(dataset, s) for s in seeds]}
    effects = measure_effects(vlm, dataset, samples, [c for cs in modes.values() for c in cs])
    names = {mode: [c.name for c in cs] for mode, cs in modes.items()}
    rows = []
    for i, task in enumerate(TASKS):
        base = vlm.profile.paper_value("ablation", "baseline")
        rows.append({"order": 10 * i, "task": task, "mode": "Baseline",
                     "value": round(100 * float(effects.of(task, "baseline").mean()), 2), "std": 0.0,
                     "drop": 0.0, "paper": base and round(100 * base[i], 2)})
        for j, (mode, group) in enumerate(names.items()):
            paper = vlm.profile.paper_value("shuffling", mode)
            value = float(effects.of(task, group).mean())
            rows.append({"order": 10 * i + j + 1, "task": task, "mode": mode.capitalize(),
                         "value": round(100 * value, 2), "std": round(100 * effects.seed_std(task, group), 2),
                         "drop": round(100 * float(effects.of(task, "baseline").mean() - value), 2),
                         "paper": paper and round(100 * paper[i], 2)})
    claim.table("table2", rows, title="Table 2: accuracy under token shuffling (%)")
    return effects, names, seeds


def _record(claim, vlm, effects, names, seeds, task, mode):
    i = TASKS.index(task)
    paper, base = vlm.profile.paper_value("shuffling", mode), vlm.profile.paper_value("ablation", "baseline")
    claim.measure(f"{task}_{mode}_shuffle", effects.of(task, names[mode]), paper=paper and paper[i],
                  seed_std=effects.seed_std(task, names[mode]), seeds=seeds)
    return claim.difference(f"{task}_drop_{mode}_shuffle", effects.of(task, "baseline"), effects.of(task, names[mode]),
                            paper=paper and round(base[i] - paper[i], 4))


def test_shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it(vlm, dataset, claim):
    """Localization performance drops only slightly when the tokens within the object mask are shuffled,
    compared to a full shuffle of all image tokens.

    Paper: §3.1.1, Table 2 (Localization)
    """
    limits = vlm.profile.claims["shuffling"]
    effects, names, seeds = _shuffled(vlm, dataset, claim)
    expect_competence(claim, vlm.profile, effects, "localization")
    inside = _record(claim, vlm, effects, names, seeds, "localization", "object")
    full = _record(claim, vlm, effects, names, seeds, "localization", "full")
    claim.expect_at_most(inside, limits["max_object_shuffle_drop_localization"],
                         "shuffling the object's tokens leaves localization near baseline")
    claim.expect_at_least(full, limits["min_full_shuffle_drop_localization"],
                          "shuffling all image tokens destroys localization")


def test_classification_is_unaffected_by_either_shuffle(vlm, dataset, claim):
    """Object classification is unaffected by either shuffling procedure.

    Paper: §3.1.1, Table 2 (Classification)
    """
    limit = vlm.profile.claims["shuffling"]["max_classification_change"]
    effects, names, seeds = _shuffled(vlm, dataset, claim)
    expect_competence(claim, vlm.profile, effects, "classification")
    for mode in ("object", "full"):
        drop = _record(claim, vlm, effects, names, seeds, "classification", mode)
        claim.expect_at_most(drop, limit, f"a {mode} shuffle costs classification at most {limit:.2f}")
        claim.expect_at_least(drop, -limit, f"a {mode} shuffle gains classification at most {limit:.2f}",
                              bound="ci_low")
