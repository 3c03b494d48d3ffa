"""The paper's token-level conditions, each a named recipe that builds one sample's `TokenEdit`.

A `Condition` is what claims pass to the tasks (`localize_under`, `classify_by_list_under`): a stable
name (it keys caches, so it carries every parameter and seed) and a function of the sample, the
adapter's views of its image and its visual tokens. Random draws use a generator seeded by
(seed, annotation id, salt), so a sample's edit does not depend on which other samples run with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.geometry import View
from mechanisms.interventions import tokens
from mechanisms.interventions.selection import object_tokens, random_tokens, register_tokens, top_k


@dataclass(frozen=True)
class Condition:
    """A named intervention on the visual tokens: `edit(sample, views, features)` -> TokenEdit."""

    name: str
    edit: Callable[[ObjectSample, list[View], torch.Tensor], tokens.TokenEdit]


def sample_rng(seed: int, sample: ObjectSample, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, sample.annotation_id, salt])


def unchanged() -> Condition:
    """The identity edit (what every intervention must reduce to when it selects nothing)."""
    return Condition("identity", lambda sample, views, features: tokens.identity(features.shape[0]))


def object_ablation(dataset: Dataset, padding: int = 0, kinds: tuple[str, ...] | None = None) -> Condition:
    """Object tokens (mask overlap >= 1 pixel), grown or shrunk by `padding` rings, set to the mean (Table 1);
    with `kinds`, only in the views of those kinds (Table 3: "global", "local")."""
    def edit(sample, views, features):
        return tokens.ablate(object_tokens(views, dataset.mask(sample), padding, kinds))
    where = "" if kinds is None else "@" + "+".join(kinds)
    return Condition(f"ablate:object{padding:+d}{where}", edit)


def matched_random_ablation(dataset: Dataset, seed: int, padding: int = 0) -> Condition:
    """As many random tokens as the object selection holds, per sample (the control for object ablation)."""
    def edit(sample, views, features):
        k = int(object_tokens(views, dataset.mask(sample), padding).sum())
        return tokens.ablate(random_tokens(features.shape[0], k, sample_rng(seed, sample, 1)))
    return Condition(f"ablate:random-matched{padding:+d}:seed{seed}", edit)


def random_ablation(k: int, seed: int) -> Condition:
    """k uniformly drawn tokens set to the mean (Table 1/4 random rows)."""
    def edit(sample, views, features):
        return tokens.ablate(random_tokens(features.shape[0], k, sample_rng(seed, sample, 2)))
    return Condition(f"ablate:random{k}:seed{seed}", edit)


def register_ablation(n_std: float = 2.0) -> Condition:
    """Tokens whose norm exceeds mean + n_std std of the image's token norms, set to the mean (§3.1 ii)."""
    def edit(sample, views, features):
        return tokens.ablate(register_tokens(features, n_std))
    return Condition(f"ablate:register{n_std:g}std", edit)


def top_k_ablation(label: str, scores: dict[int, np.ndarray], k: int) -> Condition:
    """The k tokens with the highest per-sample scores (e.g. Integrated Gradients), set to the mean."""
    def edit(sample, views, features):
        return tokens.ablate(top_k(scores[sample.annotation_id], k))
    return Condition(f"ablate:{label}-top{k}", edit)


def containerization(dataset: Dataset, rings: int, seed: int) -> Condition:
    """The object's container grown by `rings` rings of tokens copied from inside the object (§3.1.1)."""
    def edit(sample, views, features):
        return tokens.containerize(views, dataset.mask(sample), rings, sample_rng(seed, sample, 3))
    return Condition(f"container:+{rings}:seed{seed}", edit)


def full_shuffle(seed: int) -> Condition:
    """All image tokens permuted (Table 2, Full). The permutation depends on the image, not the object."""
    def edit(sample, views, features):
        rng = np.random.default_rng([seed, sample.image_id, 4])
        return tokens.permute(np.ones(features.shape[0], dtype=bool), rng)
    return Condition(f"shuffle:all:seed{seed}", edit)


def object_shuffle(dataset: Dataset, seed: int) -> Condition:
    """Only the object's tokens permuted among themselves (Table 2, Object)."""
    def edit(sample, views, features):
        return tokens.permute(object_tokens(views, dataset.mask(sample), 0), sample_rng(seed, sample, 5))
    return Condition(f"shuffle:object:seed{seed}", edit)
