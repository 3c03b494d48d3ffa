"""The shared prefix of the circuit sweeps (§3.3): run each image's prompt up to the end of its image once.

Knockout from post-image queries and head patching at prompt positions leave everything up to the end
of the image unchanged. So each image's prefix (system text + image tokens) runs once with the KV cache
on, the cache is shared by a batch of variants, and only the suffix (the question, the teacher-forced
answer or the generated tokens) runs per variant, many variants per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prefix:
    """One image's prompt, run up to the end of its image tokens, with the cache kept for reuse."""

    inputs: dict
    end: int  # first position after the image
    cache: object
    image_positions: torch.Tensor

    def cache_for(self, variants: int):
        """A cache for a batch of `variants`: broadcast views of the prefix keys/values (no copies; the model
        concatenates new positions into fresh tensors, so the prefix itself is never written)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, layer in enumerate(self.cache.layers):
            cache.update(layer.keys.expand(variants, *layer.keys.shape[1:]),
                         layer.values.expand(variants, *layer.values.shape[1:]), index)
        return cache


@torch.no_grad()
def run_prefix(adapter, inputs: dict) -> Prefix:
    """The single-image `inputs` (prompt, maybe with a teacher-forced answer) up to the image's end."""
    device = next(adapter.model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    positions = adapter.image_token_mask(inputs["input_ids"])[0].nonzero()[:, 0]
    end = int(positions[-1]) + 1
    features = adapter.visual_tokens(inputs)
    out = adapter.model(input_ids=inputs["input_ids"][:, :end], attention_mask=inputs["attention_mask"][:, :end],
                        **adapter.visual_inputs(features), use_cache=True)
    return Prefix(inputs, end, out.cache if getattr(out, "cache", None) is not None else out.past_key_values,
                  positions)


def progress(items, description: str):
    """A progress bar on a long sweep (shown on a terminal, silent in logs and under xdist)."""
    from tqdm import tqdm

    return tqdm(items, desc=description, unit="sample", leave=False, disable=None)
