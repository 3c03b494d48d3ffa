"""The paper's token-level conditions as data: one frozen record per condition, each building a sample's
`TokenEdit`.

A condition is a value (recipe + parameters + seed), so claims compare conditions, effects are indexed by
them, and everything a report needs is derived from the record in one place: `name` (stable; it keys
result caches, so it carries every parameter and seed), `label` (the row of the paper's table), and
`paper` (where the paper's value for it lives in a profile). `BASELINE` is the unmodified model.
Random draws use a generator seeded by (seed, annotation id, salt), so a sample's edit does not depend
on which other samples run with it.
"""

from __future__ import annotations

import hashlib

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from mechanisms.data.dataset import Dataset, ObjectSample
from mechanisms.geometry import View
from mechanisms.interventions import tokens
from mechanisms.interventions.selection import object_tokens, random_tokens, register_tokens, top_k

VIEW_LABELS = {("global",): "Global", ("local",): "Local", None: "Both"}


@dataclass(frozen=True)
class Condition:
    """An intervention on the visual tokens, as data. `recipe` names it (see the constructors
    below); unused parameters stay None. `scores` (top-k only) is the per-sample ranking, excluded from
    equality: `ranking` names it."""

    recipe: str
    padding: int = 0
    seed: int | None = None
    views: tuple[str, ...] | None = None  # view kinds ("global", "local") an object ablation is limited to
    k: int | None = None
    n_std: float | None = None
    ranking: str | None = None
    scores: Mapping[int, np.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """Stable and unique per condition (it keys caches)."""
        if self.recipe == "baseline":
            return "baseline"
        if self.recipe == "object":
            where = "" if self.views is None else "@" + "+".join(self.views)
            return f"ablate:object{self.padding:+d}{where}"
        if self.recipe == "random-matched":
            return f"ablate:random-matched{self.padding:+d}:seed{self.seed}"
        if self.recipe == "random":
            return f"ablate:random{self.k}:seed{self.seed}"
        if self.recipe == "register":
            return f"ablate:register{self.n_std:g}std"
        if self.recipe == "top-k":
            return f"ablate:{self.ranking}-top{self.k}"
        if self.recipe == "top-matched":
            return f"ablate:{self.ranking}-top-matched{self.padding:+d}"
        if self.recipe == "container":
            return f"container:+{self.padding}:seed{self.seed}"
        if self.recipe == "shuffle-all":
            return f"shuffle:all:seed{self.seed}"
        if self.recipe == "shuffle-object":
            return f"shuffle:object:seed{self.seed}"
        raise ValueError(f"unknown condition recipe {self.recipe!r}")

    @property
    def label(self) -> str:
        """The row label the paper's tables give this condition (seeds are pooled under one label)."""
        labels = {"baseline": "Baseline", "random-matched": "Random (as many as object)", "random": "Random",
                  "register": "Register", "top-k": "Integrated Gradients",
                  "top-matched": "Integrated Gradients (as many as object)", "container": f"+{self.padding} rings",
                  "shuffle-all": "Full", "shuffle-object": "Object"}
        if self.recipe == "object":
            return "Object" if self.padding == 0 else f"{self.padding:+d} Padding"
        return labels[self.recipe]

    @property
    def view_label(self) -> str:
        """Which views an object ablation touches, as Table 3 says it: Global, Local or Both."""
        return VIEW_LABELS[self.views]

    @property
    def paper(self) -> tuple[str, str] | None:
        """(section, key) of the paper's value for this condition in a profile's [paper.*] tables."""
        if self.recipe == "baseline":
            return ("ablation", "baseline")
        if self.recipe == "object":
            if self.views is None:
                return ("ablation", f"object{self.padding:+d}")
            return ("view_ablation", f"{'+'.join(self.views)}{self.padding:+d}")
        if self.recipe == "register":
            return ("ablation", "register")
        if self.recipe == "random":
            return ("ablation", f"random-{self.k}")
        if self.recipe == "random-matched" and self.padding == 0:
            return ("ablation", "random-matched")
        if self.recipe == "top-matched" and self.padding == 0 and self.ranking and self.ranking.startswith("ig-"):
            return ("ablation", "integrated-gradients-matched")
        if self.recipe == "top-k" and self.ranking and self.ranking.startswith("ig-"):
            return ("ablation", f"integrated-gradients-{self.k}")
        if self.recipe == "shuffle-all":
            return ("shuffling", "full")
        if self.recipe == "shuffle-object":
            return ("shuffling", "object")
        return None

    def edit(self, sample: ObjectSample, views: list[View], features: torch.Tensor,
             dataset: Dataset) -> tokens.TokenEdit | None:
        """This sample's edit of its visual tokens `features` [n, d] (None: the unmodified model)."""
        n = features.shape[0]
        if self.recipe == "baseline":
            return None
        if self.recipe == "object":
            return tokens.ablate(object_tokens(views, dataset.mask(sample), self.padding, self.views))
        if self.recipe == "random-matched":
            k = int(object_tokens(views, dataset.mask(sample), self.padding).sum())
            return tokens.ablate(random_tokens(n, k, _sample_rng(self.seed, sample, 1)))
        if self.recipe == "random":
            return tokens.ablate(random_tokens(n, self.k, _sample_rng(self.seed, sample, 2)))
        if self.recipe == "register":
            return tokens.ablate(register_tokens(features, self.n_std))
        if self.recipe == "top-k":
            return tokens.ablate(top_k(self.scores[sample.annotation_id], self.k))
        if self.recipe == "top-matched":
            k = int(object_tokens(views, dataset.mask(sample), self.padding).sum())
            return tokens.ablate(top_k(self.scores[sample.annotation_id], k))
        if self.recipe == "container":
            return tokens.containerize(views, dataset.mask(sample), self.padding, _sample_rng(self.seed, sample, 3))
        if self.recipe == "shuffle-all":  # the permutation depends on the image, not the object
            rng = np.random.default_rng([self.seed, sample.image_id, 4])
            return tokens.permute(np.ones(n, dtype=bool), rng)
        if self.recipe == "shuffle-object":
            return tokens.permute(object_tokens(views, dataset.mask(sample), 0), _sample_rng(self.seed, sample, 5))
        raise ValueError(f"unknown condition recipe {self.recipe!r}")


def _sample_rng(seed: int, sample: ObjectSample, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, sample.annotation_id, salt])


BASELINE = Condition("baseline")


def object_ablation(padding: int = 0, views: tuple[str, ...] | None = None) -> Condition:
    """Object tokens (mask overlap >= 1 pixel), grown or shrunk by `padding` rings, set to the mean (Table 1);
    with `views`, only in the views of those kinds (Table 3: ("global",), ("local",))."""
    return Condition("object", padding=padding, views=views)


def matched_random_ablation(seed: int, padding: int = 0) -> Condition:
    """As many random tokens as the object selection holds, per sample (the control for object ablation)."""
    return Condition("random-matched", padding=padding, seed=seed)


def random_ablation(k: int, seed: int) -> Condition:
    """k uniformly drawn tokens set to the mean (Table 1/4 random rows)."""
    return Condition("random", k=k, seed=seed)


def register_ablation(n_std: float = 2.0) -> Condition:
    """Tokens whose norm exceeds mean + n_std std of the image's token norms, set to the mean (§3.1 ii)."""
    return Condition("register", n_std=n_std)


def _ranking_name(ranking: str, scores: Mapping[int, np.ndarray]) -> str:
    """`ranking` with a digest of its scores: the name keys cached answers, so a ranking computed another
    way (another IG target, steps or baseline) must not reuse answers ablated by the old one."""
    if not scores:
        return ranking
    digest = hashlib.sha256()
    for annotation_id in sorted(scores):
        digest.update(str(annotation_id).encode())
        digest.update(np.ascontiguousarray(scores[annotation_id], dtype=np.float32).tobytes())
    return f"{ranking}@{digest.hexdigest()[:10]}"


def top_k_ablation(ranking: str, scores: Mapping[int, np.ndarray], k: int) -> Condition:
    """The k tokens with the highest per-sample `scores` (named `ranking`, e.g. "ig-localization", plus a
    digest of the scores), set to the mean."""
    return Condition("top-k", k=k, ranking=_ranking_name(ranking, scores), scores=scores)


def top_matched_ablation(ranking: str, scores: Mapping[int, np.ndarray]) -> Condition:
    """As many top-`scores` tokens as the object selection holds, per sample (Table 5's Gradients row:
    "an equal number of high-gradient tokens")."""
    return Condition("top-matched", ranking=_ranking_name(ranking, scores), scores=scores)


def containerization(rings: int, seed: int) -> Condition:
    """The object's container grown by `rings` rings of tokens copied from inside the object (§3.1.1)."""
    return Condition("container", padding=rings, seed=seed)


def full_shuffle(seed: int) -> Condition:
    """All image tokens permuted (Table 2, Full)."""
    return Condition("shuffle-all", seed=seed)


def object_shuffle(seed: int) -> Condition:
    """Only the object's tokens permuted among themselves (Table 2, Object)."""
    return Condition("shuffle-object", seed=seed)
