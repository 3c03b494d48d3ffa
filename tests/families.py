"""Checks every model family's adapter must pass, shared by the per-family test files.

- `check_token_map`: the adapter's pixel -> (view, row, col) map against what the real processor (and, where
  the model lays tokens out itself, the model's own code) does to a rendered mask;
- `check_fast_sweeps_match_references`: the shared-prefix circuit sweeps against one full pass per head /
  per knockout group (float64), which exercises the family's positions and attention masks on a prefix;
- `check_every_claim_runs`: every claim of a profile on a stand-in through `--model-path`: each records and
  fails, is inconclusive, or skips with a reason (random weights); none errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mechanisms.geometry import Box, dilate
from mechanisms.interventions.selection import object_tokens, per_view
from mechanisms.models.registry import load_profiles
from tests.test_claims_end_to_end import collected_claims, load_report, run_claims

PROFILES = load_profiles()


def load_profile_adapter(name: str, checkpoint):
    """The adapter a claims run of profile `name` would build on `checkpoint` (float32, CPU)."""
    import torch

    from mechanisms.models.adapters import load_adapter

    profile = PROFILES[name]
    return load_adapter(profile.family, checkpoint, torch.float32, "cpu", profile.system_prompt, profile.processor)


def rectangle_image(width: int, height: int, box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """A white rectangle on black, and its mask."""
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB"), mask


def check_token_map(views, mask: np.ndarray, lit: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """`lit` (bool over the image's tokens in LM order, from the processor's pixels) agrees with the tokens the
    adapter's views select for `mask`, except on the selection's one-token border (resampling blur), and
    every token whose cell the rectangle covers entirely is both selected and lit."""
    predicted = object_tokens(views, mask)
    for view, chosen, bright in zip(views, per_view(views, predicted), per_view(views, lit)):
        interior = dilate(np.pad(chosen, 1), -1)[1:-1, 1:-1]
        border = dilate(chosen, 1) & ~interior
        assert not ((chosen ^ bright) & ~border).any(), f"{view.name}: processor and adapter disagree off the border"
        u0, v0, u1, v1 = view.box_to_canvas(Box(*box))
        col_edges = np.arange(view.cols + 1) * view.width / view.cols
        row_edges = np.arange(view.rows + 1) * view.height / view.rows
        inside_x = (col_edges[:-1] >= u0) & (col_edges[1:] <= u1)
        inside_y = (row_edges[:-1] >= v0) & (row_edges[1:] <= v1)
        covered = np.outer(inside_y, inside_x)
        assert not (covered & ~bright).any(), f"{view.name}: a token inside the rectangle is dark"
        assert not (covered & ~chosen).any(), f"{view.name}: a token inside the rectangle is not selected"


def check_visual_tokens_reproduce_the_forward(adapter, images: list[Image.Image]) -> dict:
    """Visual tokens fed back with the family's layout keywords give the pixel forward's logits exactly, also
    for one prompt repeated over rows (Integrated Gradients' steps); one per image token the views count.
    Returns the one-image prompt used for the repeated rows."""
    import torch

    from mechanisms.tasks.prompts import box_prompt

    batch = adapter.encode(images, [box_prompt("red circle"), box_prompt("blue square")][:len(images)])
    features = adapter.visual_tokens(batch)
    assert [f.shape[0] for f in features] == [adapter.n_image_tokens(*im.size) for im in images]
    last = {"logits_to_keep": 4}  # the text after the image reads every image token; a 262k vocabulary is GBs
    with torch.no_grad():
        from_pixels = adapter.model(**batch, **last).logits
        from_tokens = adapter.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    **adapter.visual_inputs(features), **adapter.layout_inputs(batch), **last).logits
        assert torch.equal(from_pixels, from_tokens)
        one = adapter.encode(images[:1], ["Hi"])
        repeated = adapter.model(input_ids=one["input_ids"].expand(3, -1),
                                 attention_mask=one["attention_mask"].expand(3, -1),
                                 **adapter.visual_inputs(adapter.visual_tokens(one) * 3),
                                 **adapter.layout_inputs(one, rows=3), **last).logits
        torch.testing.assert_close(repeated, adapter.model(**one, **last).logits.expand(3, -1, -1), rtol=1e-5,
                                   atol=1e-5)
    return one


def check_fast_sweeps_match_references(adapter, profile) -> None:
    """Head mediation on the shared prefix (rows branching in by layer) equals one full pass per head, and the
    knockout sweep's answers equal one `generate` per group (float64: the algorithms, not round-off)."""
    import torch

    from mechanisms.data import resolve_dataset
    from mechanisms.experiments.knockout_sweep import knockout_answers, layer_groups
    from mechanisms.experiments.mediation import mediate_pair
    from mechanisms.experiments.reference import naive_knockout_answers, naive_mediation
    from mechanisms.tasks.model_under_test import VLM
    from mechanisms.tasks.specs import BINARY, BOX

    adapter.model.double()
    try:
        vlm = VLM(profile, adapter, "stand-in", "stand-in")
        dataset = resolve_dataset("synthetic:5:6")
        sample = dataset.with_counterfactuals()[0]
        layout = adapter.head_layout()
        heads = [(0, 0), (0, layout.n_query_heads - 1), (layout.n_layers - 1, 5)]
        for spec in (BOX, BINARY):
            ours = mediate_pair(vlm, dataset, sample, spec, rows=7)
            reference = naive_mediation(vlm, dataset, sample, spec, heads)
            mine = np.array([ours.p_patched[l, h] for l, h in heads])
            np.testing.assert_allclose(mine, reference.p_patched, rtol=1e-9)
            assert ours.p_base == pytest.approx(reference.p_base, rel=1e-9)
        groups = layer_groups(layout.n_layers, [1])
        assert knockout_answers(vlm, dataset, dataset.samples[:1], BOX, groups) == naive_knockout_answers(
            vlm, dataset, dataset.samples[:1], BOX, groups)
    finally:
        adapter.model.to(torch.float32)


def check_every_claim_runs(name: str, checkpoint, tmp_path, multi_view: bool) -> dict:
    """Every claim of profile `name` on `checkpoint`; returns the report. The view claims must run (not skip)
    where the family has views; the LLaVA-only knockout/probe alignment, and the claims that compare with where
    the paper locates things in its own models, skip saying so; a claim the paper's own table contradicts for
    the model is reported `contradicted`."""
    proc, reports = run_claims("claims", "-m", name, "--model-path", f"{name}={checkpoint}",
                               "--dataset", "synthetic:5:6", "--dtype", "float32", "--max-samples", "2",
                               "--probe-train", "synthetic:31:4", "--probe-test", "synthetic:32:2", "-n", "2",
                               tmp_path=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = load_report(reports, name)
    assert len(report["claims"]) == len(collected_claims(name))
    for entry in report["claims"]:
        if entry["outcome"] == "skipped":
            reason = entry["reason"]
            allowed = ("LLaVA models only" in reason or (not multi_view and "single view" in reason)
                       or ("the paper" in reason and name in reason))  # where the paper locates things, per model
            assert allowed, (entry["nodeid"], reason)
            continue
        test = entry["nodeid"].split("::")[-1].split("[")[0]
        contradicted = ("contradicted",) if test in PROFILES[name].paper_sections().get("contradicts", {}) else ()
        assert entry["outcome"] in ("failed", "inconclusive", *contradicted), (entry["nodeid"], entry.get("reason"))
        assert entry["measurements"] and entry["expectations"], entry["nodeid"]
    return report
