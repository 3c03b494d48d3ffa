"""Inside the container, arrangement barely matters for localization; classification ignores order (§3.1.1, Table 2).

Tokens are permuted at the LM input: all image tokens, or only the object's tokens among themselves;
each over the profile's shuffling seeds. Each claim is a test (measure) and a rule of the same name
without `test_` (decide); `tests/test_paper_tables.py` runs the rules on the paper's own numbers.
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


def _record(claim, profile, effects, shuffles, seeds, task, which):
    group = shuffles[which]
    claim.measure(f"{task}_{which}_shuffle", effects.of(task, group), paper=profile.paper_value(*group[0].paper, task),
                  seed_std=effects.seed_std(task, group), seeds=seeds)
    return claim.difference(f"{task}_drop_{which}_shuffle", effects.of(task, BASELINE), effects.of(task, group),
                            paper=profile.paper_drop(*group[0].paper, task))


def test_shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it(vlm, dataset, claim):
    """Localization performance drops only slightly when the tokens within the object mask are shuffled,
    compared to a full shuffle of all image tokens.

    "Only slightly" next to the full shuffle: drop(object shuffle) is at most a fixed share of drop(full
    shuffle) on the same objects (an equivalence test; the paper's ratio is recorded beside it).
    Paper: §3.1.1, Table 2 (Localization)
    """
    effects, shuffles, seeds = _shuffled(vlm, dataset, claim)
    shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it(
        claim, vlm.profile, effects, shuffles, seeds)


def shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it(claim, profile, effects,
                                                                                     shuffles, seeds):
    limits = profile.claims["shuffling"]
    expect_competence(claim, profile, effects.of("localization", BASELINE), "localization")
    _record(claim, profile, effects, shuffles, seeds, "localization", "object")
    full = _record(claim, profile, effects, shuffles, seeds, "localization", "full")
    claim.expect_at_least(full, limits["min_full_shuffle_drop_localization"],
                          "shuffling all image tokens destroys localization")
    claim.expect_minor("localization_drop_object_shuffle_vs_full_shuffle",
                       effects.drop("localization", shuffles["object"]), effects.drop("localization", shuffles["full"]),
                       limits["max_object_shuffle_share_of_full"],
                       "shuffling the object's tokens costs localization little next to a full shuffle",
                       paper=_paper_ratio(profile, "localization", shuffles["object"]))


def test_classification_is_unaffected_by_either_shuffle(vlm, dataset, claim):
    """Object classification is unaffected by either shuffling procedure, confirming that the observed
    effect is specific to localization.

    "Unaffected" next to that effect: under each shuffle, classification's change (loss or gain) is at
    most a fixed share of localization's drop under the full shuffle, on the same objects.
    Paper: §3.1.1, Table 2 (Classification)
    """
    effects, shuffles, seeds = _shuffled(vlm, dataset, claim)
    classification_is_unaffected_by_either_shuffle(claim, vlm.profile, effects, shuffles, seeds)


def classification_is_unaffected_by_either_shuffle(claim, profile, effects, shuffles, seeds):
    limits = profile.claims["shuffling"]
    expect_competence(claim, profile, effects.of("classification", BASELINE), "classification")
    reference = _record(claim, profile, effects, shuffles, seeds, "localization", "full")
    claim.expect_at_least(reference, limits["min_full_shuffle_drop_localization"],
                          "the full shuffle costs localization enough to compare with")
    for which in ("object", "full"):
        _record(claim, profile, effects, shuffles, seeds, "classification", which)
        claim.expect_minor(f"classification_change_{which}_shuffle_vs_localization_full_shuffle",
                           effects.drop("classification", shuffles[which]),
                           effects.drop("localization", shuffles["full"]),
                           limits["max_classification_change_share"],
                           f"a {which} shuffle barely changes classification next to what it costs localization",
                           two_sided=True,
                           paper=_paper_ratio(profile, "classification", shuffles[which]))


def _paper_ratio(profile, task, conditions):
    """The paper's `task` drop under `conditions` over its localization drop under the full shuffle."""
    drop = profile.paper_drop(*conditions[0].paper, task)
    reference = profile.paper_drop(*full_shuffle(0).paper, "localization")
    return None if drop is None or not reference else round(drop / reference, 4)
