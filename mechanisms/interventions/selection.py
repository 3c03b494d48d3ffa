"""Which image tokens an intervention touches (Table 1's selection strategies).

A selection is a bool array over all of a model's image tokens, in the order they enter the LM (the
adapter's views, concatenated). Everything here is written against `View`, so it holds for LLaVA's
single grid and InternVL's tiles + thumbnail alike.
"""

from __future__ import annotations

import numpy as np
import torch

from mechanisms.geometry import View, dilate


def object_tokens(views: list[View], mask: np.ndarray, padding: int = 0,
                  kinds: tuple[str, ...] | None = None) -> np.ndarray:
    """Tokens whose patch overlaps the object mask by >= 1 pixel, grown/shrunk by `padding` rings (Fig 7).

    Padding acts on each view's grid separately: +1 adds the ring of 8-neighbours, -1 keeps only tokens
    whose 8 neighbours are all selected (a token on the grid border counts its outside as selected,
    so an object touching the border is not shrunk from that side). `kinds` restricts the selection to
    views of those kinds ("global", "local": Table 3's view-wise ablation); None means every view.
    """
    return np.concatenate([
        view.spread(dilate(view.tokens_overlapping(mask), padding)) if kinds is None or view.kind in kinds
        else np.zeros(view.n_tokens, dtype=bool) for view in views])


def view_kinds(views: list[View]) -> np.ndarray:
    """The kind of the view each image token belongs to, in token order."""
    return np.concatenate([np.full(view.n_tokens, view.kind) for view in views])


def per_view(views: list[View], selection: np.ndarray) -> list[np.ndarray]:
    """Split a selection into each view's [rows, cols] grid."""
    grids, start = [], 0
    for view in views:
        grids.append(view.grid_of(selection[start:start + view.n_tokens]))
        start += view.n_tokens
    return grids


def register_tokens(features: torch.Tensor, n_std: float = 2.0) -> np.ndarray:
    """Tokens whose embedding norm exceeds the image's mean norm by `n_std` standard deviations (§3.1 ii)."""
    norms = features.float().norm(dim=-1)
    return (norms > norms.mean() + n_std * norms.std()).cpu().numpy()


def random_tokens(n_tokens: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct tokens drawn uniformly (the control of §3.1 iv)."""
    selection = np.zeros(n_tokens, dtype=bool)
    selection[rng.choice(n_tokens, size=min(k, n_tokens), replace=False)] = True
    return selection


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring tokens (ties broken by position, so the result is deterministic)."""
    if k < 0:
        raise ValueError(f"top_k needs k >= 0, got {k}")
    scores = np.asarray(scores, dtype=float)
    order = np.lexsort((np.arange(len(scores)), -scores))
    selection = np.zeros(len(scores), dtype=bool)
    selection[order[:min(k, len(scores))]] = True
    return selection
