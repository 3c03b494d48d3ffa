"""The cost model: its FLOP formula against torch's own count on the real configs (meta device, no
weights), and a paper-scale estimate for every paper profile that states memory, disk and time."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mechanisms.experiments import costs as cost_model
from mechanisms.models.paper_configs import PAPER_PROFILES, meta_model
from mechanisms.models.registry import load_profiles


@pytest.mark.parametrize("paper", PAPER_PROFILES)
def test_the_lm_flop_formula_matches_torch_s_count_on_the_real_config(paper):
    """2 x decoder parameters per token plus attention, against FlopCounterMode over the full-size LM on the
    meta device (its SDPA count is the full T x T product, so the formula is compared without causality)."""
    model = meta_model(paper)
    shape = cost_model.shape_of(model, 576, 1, 577, 64)
    tokens = 640
    x = torch.empty(1, tokens, shape.hidden, device="meta")
    mask = torch.ones(1, 1, tokens, tokens, dtype=torch.bool, device="meta")  # prepared: no data-dependent checks
    with FlopCounterMode(display=False) as counter:
        model.model.language_model(inputs_embeds=x, attention_mask=mask, use_cache=False)
    counted = counter.get_total_flops()
    full_attention = 4 * shape.layers * shape.heads * shape.head_dim * tokens * tokens
    formula = cost_model.lm_flops(shape, tokens) - 4 * shape.layers * shape.heads * shape.head_dim * (
        tokens * (tokens + 1) / 2) + full_attention
    assert abs(formula - counted) < 0.005 * counted


def test_parameter_counts_are_the_published_ones():
    """7.06 B for llava-1.5-7b-hf, 13.35 B for 13B, 8.53 B for InternVL3.5-8B (untied lm_head)."""
    counts = {p: sum(t.numel() for t in meta_model(p).parameters()) / 1e9 for p in PAPER_PROFILES}
    assert counts["llava7b"] == pytest.approx(7.06, abs=0.01)
    assert counts["llava13b"] == pytest.approx(13.35, abs=0.01)
    assert counts["internvl8b"] == pytest.approx(8.53, abs=0.01)


@pytest.mark.parametrize("paper", PAPER_PROFILES)
def test_a_paper_scale_run_fits_one_h200_and_every_experiment_has_a_cost(paper):
    shape = cost_model.paper_shape(paper)
    works = cost_model.paper_scale_work(load_profiles()[paper], shape)
    names = {w.name for w in works}
    assert {"head mediation", "attention knockout", "integrated gradients", "positional probes"} <= names
    for w in works:
        assert w.flops > 0 and w.peak_bytes > shape.weight_bytes
        assert w.peak_bytes < cost_model.H200.memory_bytes, w.name
    probes = next(w for w in works if w.name == "positional probes")
    assert 50e9 < probes.disk_bytes < 300e9  # 8 tokens per image and stage; all tokens would be ~10 TB
    mediation = next(w for w in works if w.name == "head mediation")
    ratio = cost_model.naive_mediation_pair_flops(shape, 40) / cost_model.mediation_pair_flops(shape, 40)
    assert ratio > 15  # at 1,024+ heads, prefix reuse and branching by layer
    assert mediation.seconds(shape, cost_model.H200) > 0
