"""Attention knockout by layer group (§3.3.1, Figures 3 and 12): answers with the object's keys blocked.

Every token after the image is blocked from attending to the object's image tokens in a group of
consecutive LM layers, in single layers, or in all layers (`interventions.knockout.KnockoutSpec`, applied
inside the shared-prefix attention; `interventions.knockout.knocking_out` is the reference hook). Each
image's prefix runs once (`experiments.prefix`); all groups decode together on it, each group's row joining
the batch at its first knocked-out layer (the prompt's layers below are the baseline's).
"""

from __future__ import annotations

from collections import Counter

import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.experiments.prefix import greedy_on_prefix, progress, run_prefix
from mechanisms.interventions import conditions
from mechanisms.interventions.knockout import spec_per_layer_set
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
    # rows in the order they join: the baseline first, then each group at its first knocked-out layer
    order = sorted(range(len(names)), key=lambda i: (0, i) if i == 0 else (min(groups[names[i]]), i))
    layer_sets = [set() if i == 0 else groups[names[i]] for i in order]
    knockout = spec_per_layer_set(keys.cpu(), prefix.inputs["input_ids"].shape[1], prefix.end, layer_sets, n_layers)
    joining = dict(Counter(0 if not chosen else min(chosen) for chosen in layer_sets))
    tokens = greedy_on_prefix(adapter, prefix, len(names), spec.max_new_tokens, knockout, joining)
    texts = adapter.decode_answers(tokens)
    answers = [""] * len(names)
    for row, index in enumerate(order):
        answers[index] = texts[row]
    return answers
