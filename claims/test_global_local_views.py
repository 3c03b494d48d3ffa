"""The global and local views carry complementary evidence (§3.1.2, Table 3, Figure 10).

Models that see an image through several views (InternVL: high-resolution local tiles plus a global
thumbnail) get the object's tokens ablated in the global view only, in the local views only, and in both,
with -1, 0 and +1 rings of padding. Models with a single view per image skip these claims: they have no
local pathway to compare. Each claim is a test (measure) and a rule of the same name without `test_`
(decide); `tests/test_paper_tables.py` runs the rules on the paper's own numbers (Table 3).
"""

import numpy as np
import pytest

from mechanisms.experiments.token_effects import measure_effects
from mechanisms.geometry import coco_equivalent_area, coco_size_bucket
from mechanisms.interventions.conditions import BASELINE, object_ablation
from mechanisms.interventions.selection import object_tokens, view_kinds
from mechanisms.tasks.specs import TASKS

VIEWS = {"global": ("global",), "local": ("local",), "both": None}
SIZES = ("small", "medium", "large")


def _ablated(view: str, padding: int = 0):
    """Object-token ablation in the views of one kind (or both kinds), grown by `padding` rings."""
    return object_ablation(padding=padding, views=VIEWS[view])


def _view_effects(vlm, dataset, claim):
    """Effects of every (view, padding) ablation on the objects whose image has both kinds of view."""
    adapter, settings = vlm.adapter, vlm.profile.claims["views"]
    pool = claim.samples(dataset, limit=vlm.profile.claims["interventions"]["max_objects"])
    samples = [s for s in pool if {v.kind for v in adapter.views(s.width, s.height)} >= {"global", "local"}]
    if not samples:
        pytest.skip("this model sees each image through a single view: there is no global/local split to ablate")
    claim.note("objects_without_both_views", len(pool) - len(samples))
    conditions = [_ablated(view, p) for view in VIEWS for p in settings["paddings"]]
    effects = measure_effects(vlm, dataset, samples, conditions)
    _record_tables(vlm, dataset, claim, samples, effects, settings["paddings"])
    return effects


def test_removing_global_view_object_tokens_hurts_localization_more_than_local(vlm, dataset, claim):
    """Removing the object's tokens from the global view hurts localization more than removing them from the
    local views: the global pathway is the primary carrier of spatial grounding.

    Paper: §3.1.2, Table 3 (InternVL: -36.4 points global vs -9.7 local)
    """
    effects = _view_effects(vlm, dataset, claim)
    removing_global_view_object_tokens_hurts_localization_more_than_local(claim, vlm.profile, effects)


def removing_global_view_object_tokens_hurts_localization_more_than_local(claim, profile, effects):
    for task in TASKS:
        paper_base = profile.paper_value(*BASELINE.paper, task)
        claim.measure(f"{task}_baseline", effects.of(task, BASELINE), paper=paper_base)
        for view in ("global", "local"):
            claim.measure(f"{task}_drop_{view}_only", effects.drop(task, _ablated(view)),
                          paper=profile.paper_drop(*_ablated(view).paper, task))
    drop_g, drop_l = (profile.paper_drop(*_ablated(v).paper, "localization") for v in ("global", "local"))
    gap = claim.difference("localization_drop_global_minus_local",
                           effects.drop("localization", _ablated("global")),
                           effects.drop("localization", _ablated("local")),
                           paper=None if drop_g is None or drop_l is None else round(drop_g - drop_l, 4),
                           description="drop(global-view object tokens) - drop(local-view object tokens), per object")
    claim.expect_at_least(gap, profile.claims["views"]["min_global_minus_local_localization"],
                          "removing global-view object tokens hurts localization more than removing local-view ones")


def test_ablating_both_views_hurts_more_than_either_view_alone(vlm, dataset, claim):
    """Removing object tokens from one view causes a moderate drop, whereas ablating both views at once
    leads to a substantially larger decline, for both tasks.

    Measured per task as drop(both) - max(drop(global only), drop(local only)), bootstrapped over objects.
    Paper: §3.1.2, Tables 1 and 3
    """
    ablating_both_views_hurts_more_than_either_view_alone(claim, vlm.profile, _view_effects(vlm, dataset, claim))


def ablating_both_views_hurts_more_than_either_view_alone(claim, profile, effects):
    for task in TASKS:
        arrays = [effects.drop(task, _ablated(v)) for v in ("both", "global", "local")]
        paper = _paper_drops(profile, task)
        excess = claim.statistic(
            f"{task}_drop_both_minus_stronger_single_view",
            lambda both, g, l: both.mean() - max(g.mean(), l.mean()), arrays,
            paper=paper and round(paper["both"] - max(paper["global"], paper["local"]), 4),
            description="drop(both views) - the larger single-view drop")
        claim.expect_at_least(excess, profile.claims["views"]["min_both_minus_stronger_single"],
                              f"ablating both views hurts {task} more than either view alone")


def test_the_two_views_are_synergistic_not_redundant(vlm, dataset, claim):
    """Ablating both views hurts more than the two single-view ablations added together: neither view can
    compensate when both are impaired (the paper's "synergy rather than redundancy").

    Measured per task as the interaction drop(both) - drop(global only) - drop(local only), per object.
    Paper: §3.1.2 (InternVL localization: 61.4 vs 36.4 + 9.7; classification: 50.0 vs 9.5 + 6.6)
    """
    the_two_views_are_synergistic_not_redundant(claim, vlm.profile, _view_effects(vlm, dataset, claim))


def the_two_views_are_synergistic_not_redundant(claim, profile, effects):
    for task in TASKS:
        interaction = (effects.drop(task, _ablated("both")) - effects.drop(task, _ablated("global"))
                       - effects.drop(task, _ablated("local")))
        paper = _paper_drops(profile, task)
        measured = claim.measure(f"{task}_interaction", interaction,
                                 paper=paper and round(paper["both"] - paper["global"] - paper["local"], 4),
                                 description="drop(both) - drop(global only) - drop(local only), per object")
        claim.expect_at_least(measured, profile.claims["views"]["min_interaction"],
                              f"for {task}, ablating both views hurts more than the single-view drops added up")


def _paper_drops(profile, task: str) -> dict | None:
    drops = {v: profile.paper_drop(*_ablated(v).paper, task) for v in VIEWS}
    return None if any(x is None for x in drops.values()) else drops


def _record_tables(vlm, dataset, claim, samples, effects, paddings):
    """Table 3 (accuracy per view and padding, with the share of each view kind's tokens removed) and
    Figure 10 (the drops by COCO size bucket on 640-px-equivalent areas: `coco_equivalent_area`)."""
    profile, adapter = vlm.profile, vlm.adapter
    rows = [_table3_row(0, effects, BASELINE, None, profile)]
    for v_index, view in enumerate(("local", "global", "both")):
        for p in paddings:
            condition = _ablated(view, p)
            rows.append(_table3_row(10 * (v_index + 1) + p + 2, effects, condition,
                                    _token_shares(adapter, dataset, samples, condition), profile))
    claim.table("table3", rows, title="Table 3: object-token ablation in the global view, the local views, "
                                      "or both (accuracy %, drop in points)")
    buckets = np.array([coco_size_bucket(coco_equivalent_area(s.box.area, s.width, s.height)) for s in samples])
    claim.note("size_buckets", {b: int((buckets == b).sum()) for b in SIZES})
    figure_rows = []
    for t_index, task in enumerate(TASKS):
        for v_index, view in enumerate(("global", "local", "both")):
            drop = effects.drop(task, _ablated(view))
            for s_index, size in enumerate(SIZES):
                chosen = buckets == size
                if chosen.any():
                    figure_rows.append({"order": 100 * t_index + 10 * v_index + s_index, "task": task,
                                        "view": _ablated(view).view_label, "size": size, "n": int(chosen.sum()),
                                        "drop_points": round(100 * float(drop[chosen].mean()), 2)})
    claim.table("figure10", figure_rows, title="Figure 10: drop (points) when ablating object tokens per view, "
                "by COCO size bucket (areas rescaled to a 640 px long side)",
                figure={"kind": "bars", "x": "size", "y": "drop_points", "series": "view", "panel": "task",
                        "ylabel": "drop (points)"})


def _token_shares(adapter, dataset, samples, condition) -> dict:
    """Mean share of all image tokens, and of the global / local views' own tokens, that a selection removes."""
    total, per_kind = [], {"global": [], "local": []}
    for s in samples:
        views = adapter.views(s.width, s.height)
        selected = object_tokens(views, dataset.mask(s), condition.padding, condition.views)
        owner = view_kinds(views)
        total.append(selected.mean())
        for kind in per_kind:
            per_kind[kind].append(selected[owner == kind].mean())
    return {"all": float(np.mean(total)), **{k: float(np.mean(v)) for k, v in per_kind.items()}}


def _table3_row(order, effects, condition, shares, profile) -> dict:
    """Table 3's row for one (view, padding) condition (ablating both views is Table 1's object ablation)."""
    baseline = condition == BASELINE
    view = "Baseline" if baseline else condition.view_label
    paper_section, key = condition.paper
    paper_tokens = None if baseline else profile.paper_value(f"{paper_section}_tokens", key)
    row = {"order": order, "view": view, "strategy": "" if baseline else condition.label,
           "tokens_pct": round(100 * shares["all"], 2) if shares else 0.0,
           "global_tokens_pct": round(100 * shares["global"], 2) if shares else 0.0,
           "local_tokens_pct": round(100 * shares["local"], 2) if shares else 0.0,
           "paper_tokens_pct": None if paper_tokens is None else round(100 * paper_tokens, 2)}
    for task in TASKS:
        value = effects.of(task, condition).mean()
        paper = profile.paper_value(paper_section, key, task)
        row[task] = round(100 * float(value), 2)
        row[f"{task}_drop"] = round(100 * float(effects.of(task, BASELINE).mean() - value), 2)
        row[f"paper_{task}"] = None if paper is None else round(100 * paper, 2)
    return row
