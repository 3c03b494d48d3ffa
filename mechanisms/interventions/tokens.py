"""Edits of the visual tokens at the LLM input (after the projector, before the LM), §3.1 and §3.1.1.

Every token-level intervention of the paper is one `TokenEdit`: the new token i is the old token
`source[i]`, or the global mean visual embedding where `source[i] == MEAN`. Ablation writes MEAN into
the selected slots, shuffling permutes slots, containerization copies object tokens into a ring
around the object. One representation means one way to apply, compose and cache them, and the identity
edit is literally `source = arange(n)`.

An edit knows nothing about model families: it indexes the image tokens in the order they enter the
LM (the adapter's views, concatenated). Selections (which tokens) come from `interventions.selection`;
the paper's named conditions from `interventions.conditions`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

MEAN = -1  # source index meaning "the global mean visual embedding"


@dataclass(frozen=True, eq=False)
class TokenEdit:
    """New visual token i := old token source[i] (or the mean embedding where source[i] == MEAN)."""

    source: np.ndarray

    def __post_init__(self):
        raw = np.asarray(self.source)
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"a TokenEdit's source must hold integer token indices, got {raw.dtype}")
        source = raw.astype(np.int64)
        if source.ndim != 1 or (source < MEAN).any() or (source >= len(source)).any():
            raise ValueError("a TokenEdit's source must be a 1-D array of token indices in [-1, n)")
        object.__setattr__(self, "source", source)

    @property
    def n_tokens(self) -> int:
        return len(self.source)

    @property
    def is_identity(self) -> bool:
        return bool((self.source == np.arange(self.n_tokens)).all())

    @property
    def n_changed(self) -> int:
        """Slots whose token is not the original one (what the paper's `Token (%)` column counts)."""
        return int((self.source != np.arange(self.n_tokens)).sum())

    def then(self, other: "TokenEdit") -> "TokenEdit":
        """This edit followed by `other` (a slot `other` reads from keeps what this edit put there)."""
        if other.n_tokens != self.n_tokens:
            raise ValueError(f"cannot compose edits of {self.n_tokens} and {other.n_tokens} tokens")
        composed = np.where(other.source == MEAN, MEAN, self.source[np.maximum(other.source, 0)])
        return TokenEdit(composed)

    def apply(self, features: torch.Tensor, mean: torch.Tensor | None) -> torch.Tensor:
        """The edited tokens of one image, `features` [n_tokens, d] -> [n_tokens, d] (pure)."""
        if features.shape[0] != self.n_tokens:
            raise ValueError(f"edit is for {self.n_tokens} image tokens, the image has {features.shape[0]}")
        if self.is_identity:
            return features
        source = torch.as_tensor(self.source, device=features.device)
        out = features[source.clamp(min=0)]
        ablated = source == MEAN
        if ablated.any():
            if mean is None:
                raise ValueError("this edit ablates tokens: it needs the mean visual embedding")
            out = torch.where(ablated[:, None], mean.to(features.dtype).to(features.device), out)
        return out


def identity(n_tokens: int) -> TokenEdit:
    return TokenEdit(np.arange(n_tokens))


def _mask(selection) -> np.ndarray:
    """Selections are bool masks over the image tokens; an index array here would silently mean else."""
    selection = np.asarray(selection)
    if selection.dtype != bool:
        raise TypeError(f"a token selection is a bool mask over the image tokens, got dtype {selection.dtype}")
    return selection


def ablate(selection: np.ndarray) -> TokenEdit:
    """Replace the selected tokens (bool [n_tokens]) with the mean visual embedding."""
    selection = _mask(selection)
    return TokenEdit(np.where(selection, MEAN, np.arange(len(selection))))


def permute(selection: np.ndarray, rng: np.random.Generator) -> TokenEdit:
    """Shuffle the selected tokens among the selected slots (the rest stay put)."""
    selection = _mask(selection)
    source = np.arange(len(selection))
    slots = np.flatnonzero(selection)
    source[slots] = rng.permutation(slots)
    return TokenEdit(source)


def fill_from(targets: np.ndarray, donors: np.ndarray, rng: np.random.Generator) -> TokenEdit:
    """Each target slot receives a copy of a donor token drawn uniformly with replacement (§3.1.1)."""
    targets, donors = _mask(targets), _mask(donors)
    source = np.arange(len(targets))
    slots, pool = np.flatnonzero(targets & ~donors), np.flatnonzero(donors)
    if len(slots) and not len(pool):
        raise ValueError("containerization needs at least one object token to copy from")
    if len(slots):
        source[slots] = rng.choice(pool, size=len(slots), replace=True)
    return TokenEdit(source)


def containerize(views, mask: np.ndarray, rings: int, rng: np.random.Generator) -> TokenEdit:
    """Enlarge the object's container by `rings` token rings filled with copies of its own tokens (§3.1.1).

    Each view is extended on its own grid with donors from the same view, so a copied token never
    crosses between a tile and the thumbnail.
    """
    from mechanisms.interventions.selection import object_tokens

    inside, grown = object_tokens(views, mask, 0), object_tokens(views, mask, rings)
    source, start = np.arange(len(inside)), 0
    for view in views:
        part = slice(start, start + view.n_tokens)
        if inside[part].any():
            source[part] = fill_from(grown[part], inside[part], rng).source + start
        start += view.n_tokens
    return TokenEdit(source)


def edited_features(features: list[torch.Tensor], edits: list[TokenEdit | None],
                    mean: torch.Tensor | None) -> list[torch.Tensor]:
    """Apply one edit per image (None: unchanged)."""
    return [f if e is None else e.apply(f, mean) for f, e in zip(features, edits)]


@contextlib.contextmanager
def editing_visual_tokens(adapter, edits: list[TokenEdit | None], mean: torch.Tensor | None):
    """Within the block, the model's own forward passes see edited visual tokens (one edit per image).

    A forward hook on the projector: useful to intervene on code that calls the model directly
    (`model.generate(pixel_values=...)`). Sweeps use `tasks.generation.Generator.generate_conditions`,
    which runs the vision tower once per image instead.
    """

    def hook(module, inputs, output):
        flat = output.reshape(-1, output.shape[-1])
        sizes = [e.n_tokens if e is not None else None for e in edits]
        if None in sizes:
            known = sum(s for s in sizes if s is not None)
            missing = sizes.count(None)
            sizes = [s if s is not None else (flat.shape[0] - known) // missing for s in sizes]
        if sum(sizes) != flat.shape[0]:
            raise ValueError(f"{len(edits)} edits cover {sum(sizes)} tokens, the projector produced {flat.shape[0]}")
        parts = edited_features(list(flat.split(sizes)), edits, mean)
        return torch.cat(parts).reshape(output.shape)

    handle = adapter.projector().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
