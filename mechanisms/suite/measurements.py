"""Effect sizes with their uncertainty: every number a claim records is a `Measurement`.

Intervals are percentile bootstraps over samples (objects), seeded, so the same seed gives the same
interval. Differences between two conditions measured on the same samples are bootstrapped *paired*
(the same resampled objects on both sides), which is what makes a small but consistent effect visible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Measurement:
    name: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    seeds: tuple[int, ...] = ()
    paper: float | list[float] | None = None
    unit: str = "fraction"
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        return data


def _resample_indices(n: int, seed: int, n_boot: int = N_BOOTSTRAP) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean(values, seed: int, n_boot: int = N_BOOTSTRAP) -> tuple[float, float, float]:
    """(mean, low, high) of a percentile bootstrap interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    means = x[_resample_indices(x.size, seed, n_boot)].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(x.mean()), float(low), float(high)


def mean_measurement(name: str, per_sample, seed: int, **kwargs) -> Measurement:
    value, low, high = bootstrap_mean(per_sample, seed)
    return Measurement(name, value, low, high, int(np.asarray(per_sample).size), (seed,), **kwargs)


def paired_difference(name: str, a, b, seed: int, **kwargs) -> Measurement:
    """mean(a - b) over the same samples, with a paired bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"{name}: paired measurements need equal shapes, got {a.shape} and {b.shape}")
    return mean_measurement(name, a - b, seed, **kwargs)


def statistic_measurement(name: str, statistic, arrays, seed: int, n_boot: int = N_BOOTSTRAP,
                          **kwargs) -> Measurement:
    """Any statistic of per-sample arrays measured on the same samples (e.g. a ratio of means), with a
    paired percentile bootstrap: every resample draws the same objects for all arrays."""
    arrays = [np.asarray(a, dtype=float) for a in arrays]
    n = len(arrays[0])  # samples run along the first axis (an array may carry more axes per sample)
    if any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"{name}: paired arrays need equal shapes")
    if n == 0:
        return Measurement(name, math.nan, math.nan, math.nan, 0, (seed,), **kwargs)
    value = float(statistic(*arrays))
    resampled = [float(statistic(*(a[idx] for a in arrays))) for idx in _resample_indices(n, seed, n_boot)]
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(resampled, [alpha, 1 - alpha])
    return Measurement(name, value, float(low), float(high), n, (seed,), **kwargs)


def unpaired_statistic_measurement(name: str, statistic, groups, seed: int, n_boot: int = N_BOOTSTRAP,
                                   **kwargs) -> Measurement:
    """A statistic of several *independent* samples (e.g. each task's own mediation pairs, which are not the
    same objects): every resample draws each group's rows on its own. `n` is the smallest group's size."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    sizes = [len(g) for g in groups]
    if min(sizes, default=0) == 0:
        return Measurement(name, math.nan, math.nan, math.nan, 0, (seed,), **kwargs)
    value = float(statistic(*groups))
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, size, size=(n_boot, size)) for size in sizes]
    resampled = [float(statistic(*(g[d[b]] for g, d in zip(groups, draws)))) for b in range(n_boot)]
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.nanquantile(resampled, [alpha, 1 - alpha])
    return Measurement(name, value, float(low), float(high), min(sizes), (seed,), **kwargs)
