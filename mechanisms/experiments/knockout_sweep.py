"""Attention knockout by layer group (§3.3.1, Figures 3 and 12): answers with the object's keys blocked.

Every token after the image is blocked from attending to the object's image tokens in a group of
consecutive LM layers, in single layers, or in all layers (the hook: `interventions.knockout`). Each
image's prefix runs once (`experiments.prefix`); all groups decode together from its cache.
"""

from __future__ import annotations

import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.experiments.prefix import progress, run_prefix
from mechanisms.interventions import conditions
from mechanisms.interventions.knockout import knocking_out, spec_per_layer_set
from mechanisms.interventions.selection import object_tokens
from mechanisms.models import sites
from mechanisms.tasks.specs import TaskSpec

BASELINE = conditions.BASELINE.name  # the answers with nothing knocked out: the one name for the unmodified model


def consecutive_groups(n_layers: int, size: int) -> dict[str, set[int]]:
    """Non-overlapping groups of `size` consecutive layers (the last may be shorter), by site name."""
    return {sites.layer_span(start, min(start + size, n_layers) - 1): set(range(start, min(start + size, n_layers)))
            for start in range(0, n_layers, size)}


def layer_groups(n_layers: int, sizes: list[int]) -> dict[str, set[int]]:
    """Every knockout condition of Figures 3 and 12: groups of each size, single layers, all layers."""
    groups: dict[str, set[int]] = {}
    for size in sizes:
        groups.update(consecutive_groups(n_layers, size))
    groups.update({sites.single_layer(layer): {layer} for layer in range(n_layers)})
    groups[sites.ALL_LAYERS] = set(range(n_layers))
    return groups


@torch.no_grad()
def knockout_answers(vlm, dataset: Dataset, samples: list[ObjectSample], spec: TaskSpec,
                     groups: dict[str, set[int]], padding: int = 0) -> dict[str, list[str]]:
    """Greedy answers per group name (and `BASELINE`: nothing knocked out) with post-image queries blocked
    from the object's tokens. One prefix per sample; all groups decode together as one batch from its cache.
    """
    names = [BASELINE, *groups]
    answers: dict[str, list[str]] = {name: [] for name in names}
    for sample in progress(samples, f"knockout ({spec.task})"):
        key = ("knockout", dataset.fingerprint, spec.name, padding, sample.annotation_id, tuple(names),
               tuple(tuple(sorted(groups[n])) for n in names[1:]))
        texts = vlm.memo(key, lambda sample=sample: _knockout_one(vlm, dataset, sample, spec, groups, names, padding))
        for name, text in zip(names, texts):
            answers[name].append(text)
    return answers


@torch.no_grad()
def _knockout_one(vlm, dataset, sample, spec, groups, names, padding) -> list[str]:
    adapter = vlm.adapter
    n_layers = adapter.head_layout().n_layers
    inputs = adapter.encode([dataset.image(sample)], [spec.question(sample, dataset.categories)])
    prefix = run_prefix(adapter, inputs)
    selected = object_tokens(adapter.views(sample.width, sample.height), dataset.mask(sample), padding)
    keys = prefix.image_positions[torch.as_tensor(selected, device=prefix.image_positions.device)]
    seq = prefix.inputs["input_ids"]
    knockout = spec_per_layer_set(keys.cpu(), seq.shape[1], prefix.end,
                                  [set()] + [groups[n] for n in names[1:]], n_layers)
    with knocking_out(adapter, knockout):
        out = adapter.model.generate(
            input_ids=seq.expand(len(names), -1), attention_mask=prefix.inputs["attention_mask"].expand(
                len(names), -1), cache=prefix.cache_for(len(names)), do_sample=False,
            max_new_tokens=spec.max_new_tokens, pad_token_id=adapter.tokenizer.pad_token_id)
    return adapter.decode_answers(out[:, seq.shape[1]:])
