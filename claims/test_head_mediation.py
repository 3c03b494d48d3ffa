"""Few heads carry each task, and the two tasks use different heads (§3.3.2, Figures 4, 13, 14).

Head-level causal mediation: for each (image, object) pair, the source run sees the object and the base
run sees the object-removed image; each head's source output at the prompt positions is patched into
the base run and the correct answer's perplexity (template tokens masked) is read:
MF = (P_base - P_patched) / (P_base - P_src). Localization uses the box prompt, classification the
binary prompt ("Yes").
"""

import numpy as np
import pytest

from mechanisms.experiments.mediation import gini, mediation, top_share
from mechanisms.tasks.specs import BINARY, BOX


def _pairs(vlm, dataset, claim):
    pool = dataset.with_counterfactuals()
    if not pool:
        pytest.skip(f"dataset {dataset.name} has no object-removed images: head mediation needs source/base pairs")
    return claim.samples(dataset, pool=pool, limit=vlm.profile.claims["mediation"]["pairs"])


def _both(vlm, dataset, claim):
    settings = vlm.profile.claims["mediation"]
    samples = _pairs(vlm, dataset, claim)
    results = {spec.task: mediation(vlm, dataset, samples, spec, settings["min_relative_gap"])
               for spec in (BOX, BINARY)}
    for task, result in results.items():
        claim.note(f"{task}: pairs kept / excluded (P_base - P_src < {settings['min_relative_gap']} P_src)",
                   f"{len(result.kept)} / {len(result.excluded)}")
        rows = [{"order": l * 1000 + h, "layer": l, "head": h, "value": round(float(v), 4)}
                for (l, h), v in np.ndenumerate(result.mean_mf)]
        claim.table(f"figure4_{task}", rows, title=f"Figure 4: mean mediation fraction per head ({task})",
                    figure={"kind": "heatmap", "x": "head", "y": "layer", "value": "value", "cmap": "RdBu_r",
                                "centered": True})
    return results


def test_mediation_is_concentrated_in_a_few_heads(vlm, dataset, claim):
    """The distribution of MF across heads is highly sparse: a few percent of the heads hold most of the
    positive mediation mass, for both tasks.

    Per task: share of the positive MF mass in the top `top_fraction` of heads (bootstrap over pairs),
    and the Gini coefficient of the positive MF (recorded).
    Paper: §3.3.2, Figure 4, Figure 13, Figure 14
    """
    settings = vlm.profile.claims["mediation"]
    results = _both(vlm, dataset, claim)
    for task, result in results.items():
        if not len(result.per_pair):
            claim.note(f"{task}", "no pair kept: nothing to measure (the claim fails on NaN)")
        flat = result.per_pair.reshape(len(result.per_pair), result.mean_mf.size)
        columns = list(flat.T)
        share = claim.statistic(f"{task}_top_{settings['top_fraction']:g}_share_of_positive_mf",
                                lambda *heads: top_share(np.asarray([h.mean() for h in heads]),
                                                         settings["top_fraction"]), columns)
        claim.statistic(f"{task}_gini_of_positive_mf", lambda *heads: gini(np.asarray([h.mean() for h in heads])),
                        columns)
        claim.expect_at_least(share, settings["min_top_share"],
                              f"the top {settings['top_fraction']:.0%} of heads hold most of the {task} MF mass")


def test_the_two_tasks_rely_on_largely_distinct_heads(vlm, dataset, claim):
    """The dominant mediators of localization and classification are largely distinct: their top-k heads
    by MF overlap little.

    Paper: §3.3.2 (top-10 shared: 2 in LLaVA, 1 in InternVL; top-50: 20 / 15 / 18)
    """
    settings = vlm.profile.claims["mediation"]
    results = _both(vlm, dataset, claim)
    loc, cls = results["localization"].ranked(), results["classification"].ranked()
    n_heads = len(loc)
    for k in settings["overlap_k"]:
        shared = len(set(loc[:k]) & set(cls[:k]))
        paper = vlm.profile.paper_value("mediation", f"top{k}_overlap")
        claim.note(f"top-{k} heads shared", f"{shared} of {k} (chance {k * k / n_heads:.1f})"
                   + (f"; paper {paper}" if paper is not None else ""))
    k = min(settings["overlap_k"])
    # bootstrap over pairs: resample each task's pairs, re-rank, count the shared top-k heads
    per_loc, per_cls = results["localization"].per_pair, results["classification"].per_pair
    n = min(len(per_loc), len(per_cls))
    size = results["localization"].mean_mf.size
    arrays = [per_loc[:n].reshape(n, size), per_cls[:n].reshape(n, size)]

    def overlap(a, b):
        top_a = set(np.argsort(-a.mean(0), kind="stable")[:k])
        top_b = set(np.argsort(-b.mean(0), kind="stable")[:k])
        return len(top_a & top_b) / k

    measured = claim.statistic(f"top{k}_overlap_fraction", overlap, arrays) if n else \
        claim.measure(f"top{k}_overlap_fraction", [])
    claim.expect_at_most(measured, settings["max_overlap_fraction"],
                         f"at most {settings['max_overlap_fraction']:.0%} of the top-{k} heads are shared")
