"""Circuits (§3.3): attention knockout by layer group, head-level causal mediation, cumulative head ablation.

Speed comes from one fact: knockout from post-image queries and head patching at prompt positions leave
everything up to the end of the image unchanged. So each image's prefix (system text + image tokens) is
run once with the KV cache on, the cache is copied to a batch of variants, and only the suffix (the
question, the teacher-forced answer or the generated tokens) runs per variant, many variants per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.interventions.heads import Head, ablating_heads, patching_heads, recording_heads
from mechanisms.interventions.knockout import knocking_out, spec_for_rows
from mechanisms.interventions.selection import object_tokens
from mechanisms.prompts import binary_prompt, box_prompt, list_prompt
from mechanisms.tasks import MAX_NEW_TOKENS

# ----- the shared prefix ----------------------------------------------------------------------------


@dataclass
class Prefix:
    """One image's prompt, run up to the end of its image tokens, with the cache kept for reuse."""

    inputs: dict
    end: int  # first position after the image
    cache: object
    image_positions: torch.Tensor

    def cache_for(self, rows: int):
        """A cache for `rows` variants: broadcast views of the prefix keys/values (no copies; the model
        concatenates new positions into fresh tensors, so the prefix itself is never written)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, layer in enumerate(self.cache.layers):
            cache.update(layer.keys.expand(rows, *layer.keys.shape[1:]),
                         layer.values.expand(rows, *layer.values.shape[1:]), index)
        return cache


@torch.no_grad()
def run_prefix(adapter, inputs: dict) -> Prefix:
    """The single-row `inputs` (prompt, maybe with a teacher-forced answer) up to the image's end."""
    device = next(adapter.model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    end = int(positions[-1]) + 1
    features = adapter.visual_tokens(inputs)
    out = adapter.model(input_ids=inputs["input_ids"][:, :end], attention_mask=inputs["attention_mask"][:, :end],
                        **adapter.visual_inputs(features), use_cache=True)
    return Prefix(inputs, end, out.cache if getattr(out, "cache", None) is not None else out.past_key_values,
                  positions)


def _progress(items, description: str):
    """A progress bar on a long sweep (shown on a terminal, silent in logs and under xdist)."""
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="sample", leave=False, disable=None)


# ----- attention knockout ---------------------------------------------------------------------------


def consecutive_groups(n_layers: int, size: int) -> dict[str, set[int]]:
    """Non-overlapping groups of `size` consecutive layers (the last may be shorter), by name."""
    return {f"layers {start}-{min(start + size, n_layers) - 1}": set(range(start, min(start + size, n_layers)))
            for start in range(0, n_layers, size)}


def layer_groups(n_layers: int, sizes: list[int]) -> dict[str, set[int]]:
    """Every knockout condition of Figures 3 and 12: groups of each size, single layers, all layers."""
    groups: dict[str, set[int]] = {}
    for size in sizes:
        groups.update(consecutive_groups(n_layers, size))
    groups.update({f"layer {layer}": {layer} for layer in range(n_layers)})
    groups["all layers"] = set(range(n_layers))
    return groups


TASK_KIND = {"localization": "box", "classification": "list"}  # answer lengths: tasks.MAX_NEW_TOKENS


def _question(dataset: Dataset, sample: ObjectSample, task: str) -> str:
    return box_prompt(sample.category) if task == "localization" else list_prompt(dataset.categories)


@torch.no_grad()
def knockout_answers(vlm, dataset: Dataset, samples: list[ObjectSample], task: str,
                     groups: dict[str, set[int]], padding: int = 0) -> dict[str, list[str]]:
    """Greedy answers per group name (and "none") with post-image queries blocked from the object's tokens.

    One prefix per sample; all groups decode together as rows of one batch from copies of its cache.
    """
    names = ["none", *groups]
    answers: dict[str, list[str]] = {name: [] for name in names}
    for sample in _progress(samples, f"knockout ({task})"):
        key = ("knockout", dataset.fingerprint, task, padding, sample.annotation_id, tuple(names),
               tuple(tuple(sorted(groups[n])) for n in names[1:]))
        texts = vlm.memo(key, lambda sample=sample: _knockout_one(vlm, dataset, sample, task, groups, names, padding))
        for name, text in zip(names, texts):
            answers[name].append(text)
    return answers


@torch.no_grad()
def _knockout_one(vlm, dataset, sample, task, groups, names, padding) -> list[str]:
    adapter = vlm.adapter
    n_layers = adapter.head_layout().n_layers
    inputs = adapter.encode([dataset.image(sample)], [_question(dataset, sample, task)])
    prefix = run_prefix(adapter, inputs)
    selected = object_tokens(adapter.views(sample.width, sample.height), dataset.mask(sample), padding)
    keys = prefix.image_positions[torch.as_tensor(selected, device=prefix.image_positions.device)]
    seq = prefix.inputs["input_ids"]
    spec = spec_for_rows(len(names), keys.cpu(), seq.shape[1], prefix.end,
                         [set()] + [groups[n] for n in names[1:]], n_layers)
    with knocking_out(adapter, spec):
        out = adapter.model.generate(
            input_ids=seq.expand(len(names), -1), attention_mask=prefix.inputs["attention_mask"].expand(
                len(names), -1), cache=prefix.cache_for(len(names)), do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS[TASK_KIND[task]], pad_token_id=adapter.tokenizer.pad_token_id)
    return [t.strip() for t in adapter.tokenizer.batch_decode(out[:, seq.shape[1]:], skip_special_tokens=True)]


# ----- head-level causal mediation -----------------------------------------------------------------


def scored_answer_tokens(tokenizer, answer_ids: torch.Tensor, task: str) -> torch.Tensor:
    """Which answer tokens the perplexity counts (the template rule, documented once here).

    Localization: digit tokens that carry a choice. Brackets, commas, spaces and the "0." that starts
    every LLaVA coordinate are template: a digit directly followed by "." (the integer part of a
    [0, 1] float) and the "." itself are masked; InternVL's 0-1000 integers keep all their digits.
    Classification (binary prompt): every answer token ("Yes").
    """
    if task == "classification":
        return torch.ones(len(answer_ids), dtype=torch.bool)
    texts = [tokenizer.decode([int(t)]).strip() for t in answer_ids]
    keep = []
    for i, text in enumerate(texts):
        following = texts[i + 1] if i + 1 < len(texts) else ""
        keep.append(text.isdigit() and not following.startswith("."))
    return torch.tensor(keep, dtype=torch.bool)


def _target(vlm, dataset: Dataset, sample: ObjectSample, task: str) -> tuple[str, str]:
    if task == "localization":
        return box_prompt(sample.category), vlm.adapter.format_box(sample.box, sample.width, sample.height)
    return binary_prompt(sample.category), "Yes"


def _perplexity(logits: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """exp(mean NLL) of the scored target tokens; logits [B, A, V] predict targets [A]."""
    nll = -logits.float().log_softmax(-1).gather(-1, targets.expand(logits.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    return nll[:, scored].mean(-1).exp()


@dataclass
class PairMediation:
    """One (source, base) pair: perplexities and each head's patched perplexity [n_layers, n_heads]."""

    p_source: float
    p_base: float
    p_patched: np.ndarray

    def fractions(self) -> np.ndarray:
        return (self.p_base - self.p_patched) / (self.p_base - self.p_source)


@torch.no_grad()
def mediate_pair(vlm, dataset: Dataset, sample: ObjectSample, task: str, batch_size: int = 64) -> PairMediation:
    """Patch every head's source output (object present) into the base run (object removed), one head per
    row, at the prompt positions (after the image, before the answer); score the correct answer."""
    adapter = vlm.adapter
    layout = adapter.head_layout()
    question, answer = _target(vlm, dataset, sample, task)
    source_inputs, span = adapter.encode_with_answer(dataset.image(sample), question, answer)
    base_inputs, base_span = adapter.encode_with_answer(dataset.counterfactual(sample), question, answer)
    if span != base_span or source_inputs["input_ids"].shape != base_inputs["input_ids"].shape:
        raise ValueError(f"annotation {sample.annotation_id}: source and base prompts differ in length")
    device = next(adapter.model.parameters()).device
    source_inputs = {k: v.to(device) for k, v in source_inputs.items()}
    targets = source_inputs["input_ids"][0, span]
    scored = scored_answer_tokens(adapter.tokenizer, targets, task).to(device)

    recorded: dict[int, torch.Tensor] = {}
    with recording_heads(adapter, recorded):
        source_logits = adapter.model(**source_inputs).logits
    p_source = float(_perplexity(source_logits[:, span.start - 1: span.stop - 1], targets, scored)[0])

    prefix = run_prefix(adapter, base_inputs)
    suffix = prefix.inputs["input_ids"][:, prefix.end:]
    mask = prefix.inputs["attention_mask"]
    source_suffix = {layer: z[:, prefix.end:] for layer, z in recorded.items()}
    prompt_positions = slice(0, span.start - prefix.end)
    answer_rows = slice(span.start - 1 - prefix.end, span.stop - 1 - prefix.end)
    variants: list[Head | None] = [None] + [(l, h) for l in range(layout.n_layers)
                                            for h in range(layout.n_query_heads)]
    perplexities = []
    for start in range(0, len(variants), batch_size):
        chunk = variants[start:start + batch_size]
        with patching_heads(adapter, chunk, source_suffix, prompt_positions):
            logits = adapter.model(input_ids=suffix.expand(len(chunk), -1), attention_mask=mask.expand(len(chunk), -1),
                                   cache=prefix.cache_for(len(chunk))).logits
        perplexities.append(_perplexity(logits[:, answer_rows], targets, scored))
    p = torch.cat(perplexities).cpu().numpy()
    return PairMediation(p_source, float(p[0]), p[1:].reshape(layout.n_layers, layout.n_query_heads))


@dataclass
class Mediation:
    """Mean mediation fraction per head over the pairs kept; pairs excluded for too small a gap, counted."""

    task: str
    mean_mf: np.ndarray  # [n_layers, n_heads]
    per_pair: np.ndarray  # [n_kept, n_layers, n_heads]
    kept: list[int]
    excluded: list[int]

    def ranked(self) -> list[Head]:
        """Heads by decreasing mean MF (ties by position)."""
        flat = self.mean_mf.ravel()
        order = np.lexsort((np.arange(flat.size), -flat))
        n_heads = self.mean_mf.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads) for i in order]


def mediation(vlm, dataset: Dataset, samples: list[ObjectSample], task: str, min_relative_gap: float,
              batch_size: int = 64) -> Mediation:
    """MF = (P_base - P_patched) / (P_base - P_src) per head, averaged over pairs with
    P_base - P_src >= min_relative_gap * P_src (a smaller gap makes the ratio noise)."""
    key = ("mediation", dataset.fingerprint, task, min_relative_gap, tuple(s.annotation_id for s in samples))

    def compute() -> Mediation:
        kept, excluded, fractions = [], [], []
        for sample in _progress(samples, f"head mediation ({task})"):
            pair = vlm.memo(("mediation-pair", dataset.fingerprint, task, sample.annotation_id),
                            lambda sample=sample: mediate_pair(vlm, dataset, sample, task, batch_size))
            if pair.p_base - pair.p_source < min_relative_gap * pair.p_source:
                excluded.append(sample.annotation_id)
                continue
            kept.append(sample.annotation_id)
            fractions.append(pair.fractions())
        layout = vlm.adapter.head_layout()
        per_pair = np.asarray(fractions) if fractions else np.zeros((0, layout.n_layers, layout.n_query_heads))
        mean = per_pair.mean(0) if len(per_pair) else np.full((layout.n_layers, layout.n_query_heads), math.nan)
        return Mediation(task, mean, per_pair, kept, excluded)

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


# ----- cumulative head ablation --------------------------------------------------------------------


def answers_with_heads_ablated(vlm, dataset: Dataset, samples: list[ObjectSample], heads: list[Head],
                               label: str) -> list[str]:
    """Box answers with the listed heads zeroed at every position (the prefix changes: no reuse)."""
    key = ("head-ablation", dataset.fingerprint, tuple(sorted(heads)), tuple(s.annotation_id for s in samples))

    def compute() -> list[str]:
        with ablating_heads(vlm.adapter, heads):
            return vlm.generator.generate([dataset.image(s) for s in samples],
                                          [box_prompt(s.category) for s in samples], MAX_NEW_TOKENS["box"])

    return vlm.memo(key, compute)


def normalized_auc(fractions: list[float], accuracies: list[float]) -> float:
    """Area under accuracy vs fraction of heads ablated, over the fraction range, divided by the
    unablated accuracy (1.0: ablation never hurts; 0: accuracy gone at once)."""
    f, a = np.asarray(fractions, dtype=float), np.asarray(accuracies, dtype=float)
    if a[0] <= 0 or f[-1] <= f[0]:
        return math.nan
    return float(np.trapezoid(a, f) / ((f[-1] - f[0]) * a[0]))
