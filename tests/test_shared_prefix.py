"""The circuit sweeps' shared prefix (`experiments.prefix`): running the suffix on it reproduces the full
pass; rows joining at a layer with nothing changed reproduce the base run; knockout inside it equals the
reference knockout on the full sequence; greedy decoding on it equals `generate`."""

from __future__ import annotations

import pytest
import torch

from mechanisms.data import resolve_dataset
from mechanisms.experiments.prefix import (branching, greedy_on_prefix, on_prefix, recording_layer_inputs,
                                           run_prefix, stop_tokens, suffix_position_ids)
from mechanisms.interventions.knockout import knocking_out, spec_per_layer_set
from mechanisms.models.adapters.llava import load_llava
from mechanisms.models.registry import REPO_ROOT
from mechanisms.tasks.prompts import box_prompt

SHIPPED = REPO_ROOT / "fixtures/models/tiny-llava"


@pytest.fixture(scope="module")
def adapter():
    return load_llava(SHIPPED, torch.float32, "cpu")


@pytest.fixture(scope="module")
def inputs(adapter):
    dataset = resolve_dataset("synthetic:5:6")
    sample = dataset.samples[0]
    return adapter.encode([dataset.image(sample)], [box_prompt(sample.category)])


@torch.no_grad()
def test_the_suffix_on_the_shared_prefix_reproduces_the_full_pass(adapter, inputs):
    full = adapter.model(**inputs).logits
    prefix = run_prefix(adapter, inputs)
    suffix = prefix.suffix_ids
    with on_prefix(adapter, prefix):
        logits = adapter.model(input_ids=suffix.expand(3, -1),
                               position_ids=suffix_position_ids(prefix, 0, suffix.shape[1])).logits
    assert adapter.text_attention() == "sdpa"  # restored on exit
    for row in logits:
        torch.testing.assert_close(row, full[0, prefix.end:], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_rows_joining_at_a_layer_with_nothing_changed_reproduce_the_base_run(adapter, inputs):
    prefix = run_prefix(adapter, inputs)
    suffix = prefix.suffix_ids
    positions = suffix_position_ids(prefix, 0, suffix.shape[1])
    states: dict[int, torch.Tensor] = {}
    with on_prefix(adapter, prefix):
        with recording_layer_inputs(adapter, states):
            base = adapter.model(input_ids=suffix, position_ids=positions).logits
        n_layers = adapter.head_layout().n_layers
        joining = {1: 2, n_layers - 1: 3}  # two rows from layer 1, three more at the last layer
        with branching(adapter, states, joining):
            rows = adapter.model(input_ids=suffix.expand(2, -1), position_ids=positions).logits
        assert all("forward" not in layer.__dict__ for layer in adapter.language_layers())  # restored
    assert rows.shape[0] == 5
    for row in rows:
        torch.testing.assert_close(row, base[0], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_knockout_inside_the_shared_prefix_equals_the_reference_knockout(adapter, inputs):
    prefix = run_prefix(adapter, inputs)
    positions = prefix.image_positions[:7]  # some image keys, blocked in layers {1, 2} for row 1 only
    n_layers = adapter.head_layout().n_layers
    spec = spec_per_layer_set(positions, inputs["input_ids"].shape[1], prefix.end, [set(), {1, 2}], n_layers)
    with knocking_out(adapter, spec):
        reference = adapter.model(**{k: v.expand(2, *v.shape[1:]) for k, v in inputs.items()}).logits[:, prefix.end:]
    suffix = prefix.suffix_ids
    with on_prefix(adapter, prefix, spec):
        ours = adapter.model(input_ids=suffix.expand(2, -1),
                             position_ids=suffix_position_ids(prefix, 0, suffix.shape[1])).logits
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # the knockout did something


@torch.no_grad()
def test_greedy_decoding_on_the_prefix_equals_generate(adapter, inputs):
    prefix = run_prefix(adapter, inputs)
    expected = adapter.model.generate(**inputs, do_sample=False, max_new_tokens=40,
                                      pad_token_id=adapter.tokenizer.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    ours = greedy_on_prefix(adapter, prefix, 2, 40)
    assert adapter.decode_answers(ours) == adapter.decode_answers(expected.expand(2, -1))


def test_a_generation_config_beyond_greedy_is_refused_not_ignored(adapter):
    config = adapter.model.generation_config
    saved = config.repetition_penalty
    config.repetition_penalty = 1.3
    try:
        with pytest.raises(ValueError, match="repetition_penalty"):
            stop_tokens(adapter)
    finally:
        config.repetition_penalty = saved
