"""Slow, independent implementations of the circuit sweeps, to check and time the fast ones against.

- `naive_mediation`: one full forward pass per patched head (no prefix reuse, no batching).
- `nnsight_mediation`: the same sweep written with nnsight (0.8) instead of our hooks.
- `naive_knockout_answers`: one full `generate` per layer group (no prefix reuse).

They share only the scoring rule (the spec's scored tokens, `mediation.perplexity`) with the fast path,
so agreement checks the cache reuse, batching and hook code.
"""

from __future__ import annotations

import numpy as np
import torch

from mechanisms.experiments.knockout_sweep import BASELINE
from mechanisms.experiments.mediation import PairMediation, perplexity
from mechanisms.interventions.heads import head_slice, patching_heads, recording_heads
from mechanisms.interventions.knockout import knocking_out, spec_per_layer_set
from mechanisms.interventions.selection import object_tokens
from mechanisms.models.adapters.base import follow_path
from mechanisms.tasks.specs import TaskSpec


def _pair_inputs(vlm, dataset, sample, spec: TaskSpec):
    adapter = vlm.adapter
    question, answer = spec.question(sample, dataset.categories), spec.correct_answer(adapter, sample)
    source, span = adapter.encode_with_answer(dataset.image(sample), question, answer)
    base, _ = adapter.encode_with_answer(dataset.counterfactual(sample), question, answer)
    end = int(adapter.image_token_mask(source["input_ids"])[0].nonzero()[-1]) + 1
    targets = source["input_ids"][0, span]
    scored = spec.scored_tokens(adapter, targets)
    return source, base, span, slice(end, span.start), targets, scored


@torch.no_grad()
def naive_mediation(vlm, dataset, sample, spec: TaskSpec, heads: list[tuple[int, int]]) -> PairMediation:
    """MF inputs for the listed heads, one full forward per head, with our hooks."""
    adapter = vlm.adapter
    source, base, span, prompt, targets, scored = _pair_inputs(vlm, dataset, sample, spec)
    recorded: dict[int, torch.Tensor] = {}
    kept = span.stop - span.start + 1  # the answer ends the sequence: logits where its tokens are predicted

    def answer_logits(inputs):
        return adapter.model(**inputs, logits_to_keep=kept).logits[:, :-1]

    with recording_heads(adapter, recorded):
        source_logits = answer_logits(source)
    p_source = float(perplexity(source_logits, targets, scored)[0])
    p_base = float(perplexity(answer_logits(base), targets, scored)[0])
    patched = []
    for head in heads:
        with patching_heads(adapter, [head], recorded, prompt):
            patched.append(float(perplexity(answer_logits(base), targets, scored)[0]))
    return PairMediation(p_source, p_base, np.asarray(patched))


@torch.no_grad()
def nnsight_mediation(vlm, dataset, sample, spec: TaskSpec, heads: list[tuple[int, int]]) -> PairMediation:
    """The same sweep through nnsight's tracing (an implementation that shares none of our hooks)."""
    from nnsight import NNsight

    adapter = vlm.adapter
    model = NNsight(adapter.model)
    source, base, span, prompt, targets, scored = _pair_inputs(vlm, dataset, sample, spec)
    layers = sorted({layer for layer, _ in heads})
    answer = slice(span.start - 1, span.stop - 1)
    saved = {}
    with model.trace(**source):
        for layer in layers:
            saved[layer] = follow_path(model, adapter.head_outputs_module_path(layer)).input.save()
        source_logits = model.output.logits.save()
    p_source = float(perplexity(source_logits[:, answer], targets, scored)[0])
    with model.trace(**base):
        base_logits = model.output.logits.save()
    p_base = float(perplexity(base_logits[:, answer], targets, scored)[0])
    patched = []
    for layer, head in heads:
        dims = head_slice(adapter, head)
        with model.trace(**base):
            z = follow_path(model, adapter.head_outputs_module_path(layer)).input
            z[:, prompt, dims] = saved[layer][:, prompt, dims]
            logits = model.output.logits.save()
        patched.append(float(perplexity(logits[:, answer], targets, scored)[0]))
    return PairMediation(p_source, p_base, np.asarray(patched))


@torch.no_grad()
def naive_knockout_answers(vlm, dataset, samples, spec: TaskSpec, groups: dict[str, set[int]],
                           padding: int = 0) -> dict[str, list[str]]:
    """One full `generate` (pixels in, no prefix cache) per (sample, group)."""
    adapter = vlm.adapter
    n_layers = adapter.head_layout().n_layers
    names = [BASELINE, *groups]
    answers: dict[str, list[str]] = {name: [] for name in names}
    for sample in samples:
        inputs = adapter.encode([dataset.image(sample)], [spec.question(sample, dataset.categories)])
        positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
        selected = object_tokens(adapter.views(sample.width, sample.height), dataset.mask(sample), padding)
        keys = positions[torch.as_tensor(selected)]
        for name in names:
            layers = set() if name == BASELINE else groups[name]
            knockout = spec_per_layer_set(keys, inputs["input_ids"].shape[1], int(positions[-1]) + 1, [layers],
                                          n_layers)
            with knocking_out(adapter, knockout):
                out = adapter.model.generate(**inputs, do_sample=False, max_new_tokens=spec.max_new_tokens,
                                             pad_token_id=adapter.tokenizer.pad_token_id)
            answers[name] += adapter.decode_answers(out[:, inputs["input_ids"].shape[1]:])
    return answers
