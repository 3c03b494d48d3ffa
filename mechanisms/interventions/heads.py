"""Attention heads of the language model: read, zero or overwrite one head's output (§3.3.2, §3.3.3).

Where heads live is the adapter's knowledge (`head_outputs(layer)`, `head_layout()`): that module
receives z [batch, positions, n_query_heads * head_dim], head-major, so head h of a layer is the slice
[h * head_dim, (h + 1) * head_dim) of z. Zeroing the slice equals zeroing the head's columns of W_O;
with grouped-query attention each *query* head has its own slice. Heads are `sites.Head(layer, head)`.

Every function here is a context manager that removes its hooks on exit. Elements of a batch may carry
different interventions (one head variant per batch element), which is how sweeps are batched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch

from mechanisms.models.sites import Head


@contextlib.contextmanager
def editing_head_inputs(adapter, edit: Callable[[int, torch.Tensor], torch.Tensor | None]):
    """Within the block, `edit(layer, z)` may return a replacement for the heads' outputs z [B, T, H*D]."""
    handles = []
    for index in range(adapter.head_layout().n_layers):
        def hook(module, args, index=index):
            replaced = edit(index, args[0])
            return None if replaced is None else (replaced, *args[1:])
        handles.append(adapter.head_outputs(index).register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_slice(adapter, head: int) -> slice:
    d = adapter.head_layout().head_dim
    return slice(head * d, (head + 1) * d)


@contextlib.contextmanager
def ablating_heads(adapter, heads: Iterable[Head]):
    """Zero the listed heads' outputs at every position, in every batch element (cumulative head ablation)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def edit(layer: int, z: torch.Tensor):
        if layer not in by_layer:
            return None
        z = z.clone()
        for head in by_layer[layer]:
            z[..., head_slice(adapter, head)] = 0
        return z

    with editing_head_inputs(adapter, edit):
        yield


@contextlib.contextmanager
def recording_heads(adapter, store: dict[int, torch.Tensor]):
    """Fill `store[layer]` with the heads' outputs z [B, T, H*D] of the forward pass run in the block."""
    def edit(layer: int, z: torch.Tensor):
        store[layer] = z.detach().clone()
        return None

    with editing_head_inputs(adapter, edit):
        yield


@contextlib.contextmanager
def patching_heads(adapter, variants: list[Head | None], source: dict[int, torch.Tensor], positions: slice):
    """Batch element i gets head variants[i]'s output replaced by `source[layer][0, positions]` (None:
    unpatched).

    `positions` indexes the positions of *this* forward pass (e.g. the prompt part of a suffix run on a
    reused prefix cache); `source` holds the same positions of the source run.
    """
    elements_by_layer: dict[int, list[tuple[int, int]]] = {}
    for element, variant in enumerate(variants):
        if variant is not None:
            elements_by_layer.setdefault(variant[0], []).append((element, variant[1]))

    def edit(layer: int, z: torch.Tensor):
        if layer not in elements_by_layer:
            return None
        z = z.clone()
        for element, head in elements_by_layer[layer]:
            dims = head_slice(adapter, head)
            z[element, positions, dims] = source[layer][0, positions, dims].to(z.dtype)
        return z

    with editing_head_inputs(adapter, edit):
        yield
