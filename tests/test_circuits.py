"""Circuits on the shipped tiny-llava: identity checks (exact), fast path vs independent references
(naive loop, nnsight), knockout semantics, and the MF/AUC arithmetic (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.data import resolve_dataset
from mechanisms.experiments import head_ablation, knockout_sweep, mediation
from mechanisms.experiments.reference import naive_knockout_answers, naive_mediation, nnsight_mediation
from mechanisms.interventions.heads import ablating_heads, patching_heads, recording_heads
from mechanisms.interventions.knockout import knocking_out, spec_per_layer_set
from mechanisms.models.adapters.llava import load_llava
from mechanisms.models.registry import REPO_ROOT, load_profiles
from mechanisms.tasks.model_under_test import VLM
from mechanisms.tasks.prompts import box_prompt
from mechanisms.tasks.specs import BINARY, BOX

SHIPPED = REPO_ROOT / "fixtures/models/tiny-llava"


@pytest.fixture(scope="module")
def vlm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield VLM(load_profiles()["tiny_llava"], load_llava(SHIPPED, torch.float32, "cpu"), SHIPPED, "test")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return resolve_dataset("synthetic:5:6")


@pytest.fixture(scope="module")
def inputs(vlm, dataset):
    sample = dataset.samples[0]
    return vlm.adapter.encode([dataset.image(sample)], [box_prompt(sample.category)])


@torch.no_grad()
def test_empty_knockout_and_zero_heads_ablated_are_exact_identities(vlm, inputs):
    model, adapter = vlm.adapter.model, vlm.adapter
    reference = model(**inputs).logits
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    spec = spec_per_layer_set(positions, inputs["input_ids"].shape[1], int(positions[-1]) + 1, [set()],
                         adapter.head_layout().n_layers)
    with knocking_out(adapter, spec):
        assert torch.equal(model(**inputs).logits, reference)
    with ablating_heads(adapter, []):
        assert torch.equal(model(**inputs).logits, reference)
    assert model.config.text_config._attn_implementation == "sdpa"  # restored on exit
    assert torch.equal(model(**inputs).logits, reference)


@torch.no_grad()
def test_patching_a_run_into_itself_changes_nothing(vlm, inputs):
    adapter = vlm.adapter
    recorded: dict[int, torch.Tensor] = {}
    with recording_heads(adapter, recorded):
        reference = adapter.model(**inputs).logits
    everything = slice(0, inputs["input_ids"].shape[1])
    layout = adapter.head_layout()
    for head in [(0, 0), (layout.n_layers - 1, layout.n_query_heads - 1)]:
        with patching_heads(adapter, [head], recorded, everything):
            assert torch.equal(adapter.model(**inputs).logits, reference)


@torch.no_grad()
def test_ablating_a_head_equals_zeroing_its_output_columns(vlm, inputs):
    adapter = vlm.adapter
    layer, head = 2, 1
    with ablating_heads(adapter, [(layer, head)]):
        hooked = adapter.model(**inputs).logits
    o_proj = adapter.language_layers()[layer].self_attn.o_proj
    d = adapter.head_layout().head_dim
    saved = o_proj.weight.data.clone()
    o_proj.weight.data[:, head * d:(head + 1) * d] = 0
    try:
        zeroed = adapter.model(**inputs).logits
    finally:
        o_proj.weight.data.copy_(saved)
    assert torch.allclose(hooked, zeroed, atol=1e-5)
    assert not torch.allclose(hooked, adapter.model(**inputs).logits, atol=1e-3)


@torch.no_grad()
def test_knocking_out_every_image_key_everywhere_equals_deleting_the_image(vlm, inputs):
    """Blocking all positions from the image keys in all layers == removing those keys (same positions)."""
    adapter, model = vlm.adapter, vlm.adapter.model
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    n_layers = adapter.head_layout().n_layers
    end = int(positions[-1]) + 1
    spec = spec_per_layer_set(positions, inputs["input_ids"].shape[1], end, [set(range(n_layers))], n_layers)
    with knocking_out(adapter, spec):
        blocked = model(**inputs).logits[:, end:]
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[positions] = False
    embeds = model.get_input_embeddings()(inputs["input_ids"])[:, keep]
    position_ids = torch.arange(inputs["input_ids"].shape[1])[keep][None]
    deleted = model(inputs_embeds=embeds, position_ids=position_ids,
                    attention_mask=torch.ones(1, int(keep.sum()), dtype=torch.long)).logits
    first_after = int(keep[:end].sum())
    assert torch.allclose(blocked, deleted[:, first_after:], atol=1e-4)


def test_mediation_matches_naive_loop_and_nnsight(vlm, dataset):
    """Our batched, prefix-reusing sweep gives the same MF as one-forward-per-head and as nnsight."""
    sample = dataset.with_counterfactuals()[0]
    layout = vlm.adapter.head_layout()
    heads = [(0, 0), (1, 3), (layout.n_layers - 1, 2)]
    for spec in (BOX, BINARY):
        ours = mediation.mediate_pair(vlm, dataset, sample, spec, rows=7)
        index = [l * layout.n_query_heads + h for l, h in heads]
        for reference in (naive_mediation(vlm, dataset, sample, spec, heads),
                          nnsight_mediation(vlm, dataset, sample, spec, heads)):
            assert abs(ours.p_source - reference.p_source) < 1e-4 * max(1.0, reference.p_source)
            assert abs(ours.p_base - reference.p_base) < 1e-4 * max(1.0, reference.p_base)
            np.testing.assert_allclose(ours.fractions().ravel()[index], reference.fractions(), atol=1e-4)


def test_fast_knockout_answers_match_full_recompute(vlm, dataset):
    groups = knockout_sweep.layer_groups(vlm.adapter.head_layout().n_layers, [3])
    samples = dataset.samples[:2]
    fast = knockout_sweep.knockout_answers(vlm, dataset, samples, BOX, groups)
    slow = naive_knockout_answers(vlm, dataset, samples, BOX, groups)
    assert fast == slow


def test_scored_tokens_mask_the_template(vlm):
    tokenizer = vlm.adapter.tokenizer
    ids = torch.tensor(tokenizer(" [0.12, 0.34, 0.56, 0.78]", add_special_tokens=False).input_ids)
    scored = BOX.scored_tokens(vlm.adapter, ids)
    kept = "".join(tokenizer.decode([int(t)]).strip() for t, keep in zip(ids, scored) if keep)
    assert kept == "12345678"
    assert BINARY.scored_tokens(vlm.adapter, ids).all()


def test_layer_groups_cover_each_size_singles_and_all():
    groups = knockout_sweep.layer_groups(7, [3])
    assert groups["layers 0-2"] == {0, 1, 2} and groups["layers 6-6"] == {6}
    assert all(groups[f"layer {i}"] == {i} for i in range(7))
    assert groups["all layers"] == set(range(7))


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 10), min_size=2, max_size=40))
def test_gini_and_top_share_bounds(values):
    x = np.asarray(values)
    g, share = mediation.gini(x), mediation.top_share(x, 0.1)
    if x.sum() <= 0:
        assert np.isnan(g) and np.isnan(share)
    else:
        assert -1e-9 <= g <= 1 and 0 < share <= 1 + 1e-9
        assert mediation.top_share(x, 1.0) == pytest.approx(1.0)


def test_gini_extremes_and_auc():
    assert mediation.gini(np.ones(10)) == pytest.approx(0.0)
    assert mediation.gini(np.r_[np.zeros(9), 1.0]) == pytest.approx(0.9)
    assert head_ablation.normalized_auc([0, 0.5, 1], [0.5, 0.5, 0.5]) == pytest.approx(1.0)
    assert head_ablation.normalized_auc([0, 1], [0.5, 0.0]) == pytest.approx(0.5)
