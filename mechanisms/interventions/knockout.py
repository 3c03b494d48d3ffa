"""Attention knockout in the language model (§3.3.1): chosen layers stop attending to chosen keys.

A custom attention function, registered with transformers' `AttentionInterface` (and the matching
mask function with `AttentionMaskInterface`), is switched on for the text model only (the dict form of
`set_attn_implementation`, through the adapter; the vision tower keeps its own). Inside, for the layers
a batch element names, query positions from `query_from` on may not attend to its blocked keys;
everything else is plain SDPA with the model's own mask, so an empty knockout is bit-identical to none.

Elements of a batch carry their own spec (one layer group per batch element), which is how sweeps are
batched. Query positions under a cache are `kv_len - q_len + i`: a spec is written in absolute positions.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

NAME = "vlm_knockout"
_active: list["KnockoutSpec"] = []


@dataclass
class KnockoutSpec:
    """Per batch element: blocked key positions (bool [B, K]), first blocked query position ([B]), layers
    (bool [B, L])."""

    keys: torch.Tensor
    query_from: torch.Tensor
    layers: torch.Tensor

    def elements_blocking(self, layer: int) -> torch.Tensor:
        return self.layers[:, layer]


def _attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spec = _active[-1] if _active else None
    if spec is None or not bool(spec.elements_blocking(module.layer_idx).any()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, q_len, k_len = query.shape[0], query.shape[2], key.shape[2]
    device = query.device
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    k_pos = torch.arange(k_len, device=device)
    if attention_mask is None:
        allowed = (k_pos[None, :] <= q_pos[:, None])[None, None].expand(batch, 1, q_len, k_len)
    elif attention_mask.dtype == torch.bool:
        allowed = attention_mask
    else:
        allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
    keys = spec.keys.to(device)
    if keys.shape[1] < k_len:  # generated tokens are never blocked keys
        keys = torch.nn.functional.pad(keys, (0, k_len - keys.shape[1]))
    block = (keys[:, None, :k_len] & (q_pos[None, :, None] >= spec.query_from.to(device)[:, None, None])
             & spec.elements_blocking(module.layer_idx).to(device)[:, None, None])
    allowed = allowed & ~block[:, None]
    kwargs.pop("is_causal", None)
    return sdpa_attention_forward(module, query, key, value, allowed, is_causal=False, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def knocking_out(adapter, spec: KnockoutSpec):
    """Within the block, the LM's attention obeys `spec` (batch element i follows the spec's element i)."""
    _register()
    previous = adapter.text_attention()
    adapter.set_text_attention(NAME)
    _active.append(spec)
    try:
        yield
    finally:
        _active.pop()
        adapter.set_text_attention(previous)


def spec_per_layer_set(key_positions: torch.Tensor, seq_len: int, query_from: int,
                       layer_sets: list[set[int]], n_layers: int) -> KnockoutSpec:
    """One sample's spec, one batch element per layer set (elements differ only in which layers knock out)."""
    n = len(layer_sets)
    keys = torch.zeros(n, seq_len, dtype=torch.bool)
    keys[:, key_positions] = True
    layers = torch.zeros(n, n_layers, dtype=torch.bool)
    for element, chosen in enumerate(layer_sets):
        layers[element, sorted(chosen)] = True
    return KnockoutSpec(keys, torch.full((n,), query_from), layers)
