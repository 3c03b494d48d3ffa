"""Containerization: object tokens define the object's extent, whatever their arrangement (§3.1.1, Fig 1, 8, 9).

The object's container is grown by p rings of token cells filled with tokens copied at random from
inside the object (10 seeds). If the model boxes "wherever object tokens are", its predictions under
padding p match the ground-truth box grown by s = p cells better than any other scaling.
"""

import numpy as np

from mechanisms.geometry import grow_by_cells
from mechanisms.interventions.conditions import BASELINE, containerization
from mechanisms.tasks.specs import BOX


def test_predicted_boxes_grow_with_the_token_container(vlm, dataset, claim):
    """Predicted bounding boxes scale with the artificially enlarged objects: inputs padded by p rings align
    best with ground-truth boxes scaled by s = p token cells (the diagonal dominates the p x s matrix).

    Score: the localization score (mean success at IoU 0.5/0.7/0.9) against the scaled box; each cell is
    the mean over seeds, with the std across seeds; diagonal dominance is tested per object, paired.
    Paper: §3.1.1, Figure 1, Figure 8, Figure 9
    """
    profile, settings = vlm.profile, vlm.profile.claims["containerization"]
    samples = claim.samples(dataset, limit=profile.claims["interventions"]["max_objects"])
    seeds = [claim.seed + i for i in range(settings["seeds"])]
    rings, scales = settings["rings"], settings["scales"]
    conditions = {p: [containerization(p, s) for s in seeds] for p in rings}
    answers = vlm.ask_under(BOX, dataset, samples, [BASELINE, *[c for cs in conditions.values() for c in cs]])
    truths = {s: [grow_by_cells(x.box, vlm.adapter.views(x.width, x.height), s) for x in samples] for s in scales}

    def scores(condition, s):
        return BOX.score(vlm.adapter, answers[condition].texts, samples, truths[s]).outcomes()

    # per_seed[p][s]: [n_seeds, n_samples]; p = 0 is the unmodified model (one "seed")
    per_seed = {0: {s: np.asarray([scores(BASELINE, s)]) for s in scales}}
    for p in rings:
        per_seed[p] = {s: np.asarray([scores(c, s) for c in conditions[p]]) for s in scales}

    rows = []
    for p, by_scale in per_seed.items():
        for s, matrix in by_scale.items():
            std = float(np.std(matrix.mean(1), ddof=1)) if len(matrix) > 1 else 0.0
            claim.measure(f"score_padding{p}_scale{s}", matrix.mean(0), seed_std=std, seeds=len(matrix))
            rows.append({"order": 10 * p + s, "padding": p, "scale": s, "value": round(float(matrix.mean()), 4),
                         "std": round(std, 4)})
    claim.table("figure1", rows, title="Figure 1: localization score of padded inputs against scaled GT boxes",
                figure={"kind": "heatmap", "x": "scale", "y": "padding", "value": "value", "std": "std",
                        "xlabel": "GT box grown by s token cells", "ylabel": "container padding p"})
    for p in rings:
        diagonal = per_seed[p][p].mean(0)
        for s in scales:
            if s == p:
                continue
            margin = claim.difference(f"diagonal_margin_padding{p}_vs_scale{s}", diagonal, per_seed[p][s].mean(0),
                                      description=f"score against GT+{p} cells minus against GT+{s} cells")
            claim.expect_at_least(margin, settings["min_diagonal_margin"],
                                  f"padding {p} predictions match the +{p}-cell box better than the +{s}-cell box")
    claim.measure("boxes_parsed_padding" + "_".join(map(str, rings)),
                  np.mean([BOX.score(vlm.adapter, answers[c].texts, samples).parsed
                           for cs in conditions.values() for c in cs], axis=0))
