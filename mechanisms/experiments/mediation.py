"""Head-level causal mediation (§3.3.2, Figures 4, 13, 14): how much of the object's effect each head carries.

For each (image, object) pair the source run sees the object and the base run the object-removed image;
each head's source output at the prompt positions is patched into the base run and the correct answer's
perplexity (over the spec's scored tokens) is read: MF = (P_base - P_patched) / (P_base - P_src). The base
run's prefix runs once (`experiments.prefix`); every head is one row of a batch run on it, joining at its layer.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.experiments.prefix import (branching, memory_budget, on_prefix, progress, recording_layer_inputs,
                                           rows_that_fit, run_prefix, suffix_position_ids)
from mechanisms.interventions.heads import patching_heads, recording_heads
from mechanisms.models.sites import Head, all_heads
from mechanisms.storage import storable
from mechanisms.tasks.specs import TaskSpec


def perplexity(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """exp(mean NLL) of the scored target tokens; logits [B, A, V] predict targets [A]."""
    nll = -logits.float().log_softmax(-1).gather(-1, targets.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    return nll[:, scored].mean(-1).exp()


@storable
@dataclass
class PairMediation:
    """One (source, base) pair: perplexities and each head's patched perplexity [n_layers, n_query_heads]."""

    p_source: float
    p_base: float
    p_patched: np.ndarray

    def fractions(self) -> np.ndarray:
        return (self.p_base - self.p_patched) / (self.p_base - self.p_source)


@torch.no_grad()
def mediate_pair(vlm, dataset: Dataset, sample: ObjectSample, spec: TaskSpec, rows: int | None = None) -> PairMediation:
    """Patch every head's source output (object present) into the base run (object removed) at the prompt
    positions (after the image, before the answer); score the correct answer.

    One base run of the suffix on the shared prefix records each layer's input; a head of layer l then
    joins the batch at layer l from there (`prefix.branching`), `rows` heads per forward (default: as many
    as fit the device's memory budget)."""
    adapter = vlm.adapter
    layout = adapter.head_layout()
    question, answer = spec.question(sample, dataset.categories), spec.correct_answer(adapter, sample)
    source_inputs, span = adapter.encode_with_answer(dataset.image(sample), question, answer)
    base_inputs, base_span = adapter.encode_with_answer(dataset.counterfactual(sample), question, answer)
    if span != base_span or source_inputs["input_ids"].shape != base_inputs["input_ids"].shape:
        raise ValueError(f"annotation {sample.annotation_id}: source and base prompts differ in length")
    device = next(adapter.model.parameters()).device
    source_inputs = {k: v.to(device) for k, v in source_inputs.items()}
    targets = source_inputs["input_ids"][0, span]
    scored = spec.scored_tokens(adapter, targets).to(device)

    recorded: dict[int, torch.Tensor] = {}
    kept = span.stop - span.start + 1  # logits only where answer tokens are predicted (the answer ends the input)
    with recording_heads(adapter, recorded):
        source_logits = adapter.model(**source_inputs, logits_to_keep=kept).logits
    p_source = float(perplexity(source_logits[:, :-1], targets, scored)[0])

    prefix = run_prefix(adapter, base_inputs)
    suffix = prefix.suffix_ids
    positions = suffix_position_ids(prefix, 0, suffix.shape[1])
    source_suffix = {layer: z[:, prefix.end:] for layer, z in recorded.items()}
    prompt_positions = slice(0, span.start - prefix.end)
    heads = all_heads(layout.n_layers, layout.n_query_heads)  # layer-major: the order rows join in
    rows = rows or rows_that_fit(adapter, suffix.shape[1], base_inputs["input_ids"].shape[1], memory_budget(device),
                                 len(heads))
    base_states: dict[int, torch.Tensor] = {}
    perplexities = []
    with on_prefix(adapter, prefix):
        with recording_layer_inputs(adapter, base_states):
            logits = adapter.model(input_ids=suffix, position_ids=positions, logits_to_keep=kept).logits
        p_base = float(perplexity(logits[:, :-1], targets, scored)[0])
        for start in range(0, len(heads), rows):
            chunk = heads[start:start + rows]
            joining = dict(Counter(layer for layer, _ in chunk))
            with branching(adapter, base_states, joining), patching_heads(adapter, chunk, source_suffix,
                                                                          prompt_positions):
                logits = adapter.model(input_ids=suffix.expand(joining[min(joining)], -1), position_ids=positions,
                                       logits_to_keep=kept).logits
            perplexities.append(perplexity(logits[:, :-1], targets, scored))
    p = torch.cat(perplexities).cpu().numpy()
    return PairMediation(p_source, p_base, p.reshape(layout.n_layers, layout.n_query_heads))


@storable
@dataclass
class Mediation:
    """Mean mediation fraction per head over the pairs kept; pairs excluded for too small a gap, counted."""

    task: str
    mean_mf: np.ndarray  # [n_layers, n_query_heads]
    per_pair: np.ndarray  # [n_kept, n_layers, n_query_heads]
    kept: list[int]
    excluded: list[int]

    def ranked(self) -> list[Head]:
        """Heads by decreasing mean MF (ties by position)."""
        flat = self.mean_mf.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        n_heads = self.mean_mf.shape[1]
        return [Head(int(i) // n_heads, int(i) % n_heads) for i in order]


def mediation(vlm, dataset: Dataset, samples: list[ObjectSample], spec: TaskSpec, min_relative_gap: float,
              rows: int | None = None) -> Mediation:
    """MF = (P_base - P_patched) / (P_base - P_src) per head, averaged over pairs with
    P_base - P_src >= min_relative_gap * P_src (a smaller gap makes the ratio noise)."""
    key = ("mediation", dataset.fingerprint, spec.name, min_relative_gap, tuple(s.annotation_id for s in samples))

    def compute() -> Mediation:
        kept, excluded, fractions = [], [], []
        for sample in progress(samples, f"head mediation ({spec.task})"):
            pair = vlm.memo(("mediation-pair", dataset.fingerprint, spec.name, sample.annotation_id),
                            lambda sample=sample: mediate_pair(vlm, dataset, sample, spec, rows))
            if pair.p_base - pair.p_source < min_relative_gap * pair.p_source:
                excluded.append(sample.annotation_id)
                continue
            kept.append(sample.annotation_id)
            fractions.append(pair.fractions())
        layout = vlm.adapter.head_layout()
        per_pair = np.asarray(fractions) if fractions else np.zeros((0, layout.n_layers, layout.n_query_heads))
        mean = per_pair.mean(0) if len(per_pair) else np.full((layout.n_layers, layout.n_query_heads), math.nan)
        return Mediation(spec.task, mean, per_pair, kept, excluded)

    return vlm.memo(key, compute)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of the positive part of `values` (0: spread evenly, -> 1: one head holds it all)."""
    x = np.sort(np.clip(np.asarray(values, dtype=float).ravel(), 0, None))
    if x.sum() <= 0:
        return math.nan
    n = x.size
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def top_share(values: np.ndarray, fraction: float) -> float:
    """Share of the positive MF mass held by the top `fraction` of heads."""
    x = np.sort(np.clip(np.asarray(values, dtype=float).ravel(), 0, None))[::-1]
    if x.sum() <= 0:
        return math.nan
    k = max(1, int(round(fraction * x.size)))
    return float(x[:k].sum() / x.sum())
