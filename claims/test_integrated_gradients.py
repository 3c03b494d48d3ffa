"""Gradient-selected tokens matter, random ones barely do (§3.1 iii-iv, Table 1, Table 4).

Integrated Gradients (captum) ranks the image tokens by attribution magnitude toward the correct answer
(the box's coordinate tokens for localization, the class name for classification); ablating its top-k
is compared with ablating k random tokens, repeated over the profile's seeds. The claim is a test
(measure) and a rule of the same name without `test_` (decide), which `tests/test_paper_tables.py` runs
on the paper's own numbers.
"""

from mechanisms.experiments.attribution import attributions, completeness_summary
from mechanisms.experiments.token_effects import Effects, ablation_row, measure_effects
from mechanisms.interventions.conditions import BASELINE, random_ablation, top_k_ablation, top_matched_ablation
from mechanisms.tasks.specs import BOX, LIST, TASKS


def test_gradient_selected_tokens_hurt_localization_more_than_as_many_random_tokens(vlm, dataset, claim):
    """Ablating the k tokens with the highest Integrated-Gradients attribution hurts localization more than
    ablating k random tokens; the random control barely moves either task at small k.

    The sweep over k fills Table 1's Integrated Gradients and Random rows and Table 4's seed spreads.
    Paper: §3.1, Table 1 (Integrated Gradients, Random rows), Table 4
    """
    profile, settings = vlm.profile, vlm.profile.claims["integrated_gradients"]
    samples = claim.samples(dataset, limit=profile.claims["interventions"]["max_objects"])
    seeds = [claim.seed + i for i in range(profile.claims["interventions"]["random_seeds"])]
    randoms = {k: [random_ablation(k, s) for s in seeds] for k in settings["random_k"]}
    effects, top = Effects(), {}  # top[task][k]: the task's own IG ranking, cut at k
    for spec in (BOX, LIST):
        found = attributions(vlm, dataset, samples, spec, settings["steps"])
        claim.note(f"{spec.task} IG completeness error", completeness_summary(found))
        scores = {i: a.magnitude for i, a in found.items()}
        top[spec.task] = {k: top_k_ablation(f"ig-{spec.task}", scores, k) for k in settings["k"]}
        top[spec.task]["matched"] = top_matched_ablation(f"ig-{spec.task}", scores)  # Table 5's Gradients row
        effects.update(measure_effects(vlm, dataset, samples, [*top[spec.task].values(),
                                                               *[c for cs in randoms.values() for c in cs]],
                                       specs=(spec,)))

    gradient_selected_tokens_hurt_localization_more_than_as_many_random_tokens(claim, profile, effects, top, randoms,
                                                                               seeds)
    claim.note("IG target", "log-prob of the GT box's choice-carrying digit tokens (localization) / of the class "
                            "name inside the image's list answer (classification); baseline = mean visual embedding; "
                            f"{settings['steps']} steps")


def gradient_selected_tokens_hurt_localization_more_than_as_many_random_tokens(claim, profile, effects, top, randoms,
                                                                               seeds):
    """`top[task][k]`: the task's own top-k IG ablation (and `top[task]["matched"]`: as many as the object's
    tokens, Table 5's Gradients row); `randoms[k]`: k random tokens, one per seed."""
    settings = profile.claims["integrated_gradients"]
    k = settings["compare_k"]
    for task in TASKS:
        claim.measure(f"{task}_baseline", effects.of(task, BASELINE))
        claim.measure(f"{task}_ig_top{k}", effects.of(task, top[task][k]),
                      paper=profile.paper_value(*top[task][k].paper, task))
        claim.measure(f"{task}_random{k}", effects.of(task, randoms[k]),
                      paper=profile.paper_value(*randoms[k][0].paper, task),
                      seed_std=effects.seed_std(task, randoms[k]), random_seeds=seeds)
        excess = claim.difference(f"{task}_excess_drop_ig_vs_random_k{k}", effects.drop(task, top[task][k]),
                                  effects.drop(task, randoms[k]))
        if task == "localization":
            claim.expect_at_least(excess, settings["min_excess_drop_localization"],
                                  f"the top-{k} IG tokens hurt localization more than {k} random tokens")

    if all("matched" in top[task] for task in TASKS):
        for task in TASKS:
            claim.measure(f"{task}_ig_as_many_as_object", effects.of(task, top[task]["matched"]),
                          paper=profile.paper_value(*top[task]["matched"].paper, task))
    rows = [ablation_row(0, effects, BASELINE, profile)]
    rows += [ablation_row(10 + i, effects, {task: top[task][k] for task in top}, profile, k=k)
             for i, k in enumerate(settings["k"])]
    if all("matched" in top[task] for task in TASKS):
        rows.append(ablation_row(9, effects, {task: top[task]["matched"] for task in top}, profile))
    rows += [ablation_row(20 + i, effects, randoms[k], profile, k=k) for i, k in enumerate(settings["random_k"])]
    claim.table("table1", rows, title="Table 1: accuracy after token ablation (%)")
