"""Bootstrap intervals and paired differences (mechanisms.suite.measurements)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mechanisms.suite.measurements import Measurement, bootstrap_mean, mean_measurement, paired_difference

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)

values = st.lists(st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=60)
seeds = st.integers(0, 2**32 - 1)


@PROPERTY
@given(values, seeds)
def test_bootstrap_same_seed_same_result(data, seed):
    """The same data and seed give bit-identical (mean, low, high)."""
    assert bootstrap_mean(data, seed) == bootstrap_mean(list(data), seed)


def test_bootstrap_different_seeds_differ():
    """Another seed resamples differently (the interval is seeded, not fixed)."""
    data = np.random.default_rng(0).normal(size=50)
    assert bootstrap_mean(data, 1)[1:] != bootstrap_mean(data, 2)[1:]


@PROPERTY
@given(values, seeds)
def test_bootstrap_interval_contains_mean(data, seed):
    """For non-constant data the percentile interval is ordered and contains the sample mean."""
    assume(len(set(data)) > 1)
    mean, low, high = bootstrap_mean(data, seed)
    assert mean == pytest.approx(float(np.mean(data)))
    slack = 1e-9 * max(1.0, max(abs(v) for v in data))  # summation-order rounding of resampled means
    assert low - slack <= mean <= high + slack
    assert low <= high
    assert min(data) - slack <= low and high <= max(data) + slack


@PROPERTY
@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(1, 50), seeds)
def test_bootstrap_constant_data_zero_width(constant, n, seed):
    """Constant data gives a zero-width interval at that constant."""
    mean, low, high = bootstrap_mean([constant] * n, seed)
    assert low == mean == high
    assert mean == pytest.approx(constant, rel=1e-12, abs=1e-12)


def test_bootstrap_empty_is_nan():
    """No samples: mean and both bounds are nan."""
    assert all(math.isnan(v) for v in bootstrap_mean([], 0))


def test_bootstrap_interval_narrows_with_more_samples():
    """A sanity check on scale: 4x the samples roughly halves the interval width."""
    rng = np.random.default_rng(3)
    _, lo_small, hi_small = bootstrap_mean(rng.normal(size=100), 0)
    _, lo_big, hi_big = bootstrap_mean(rng.normal(size=400), 0)
    ratio = (hi_big - lo_big) / (hi_small - lo_small)
    assert 0.35 < ratio < 0.7


def test_mean_measurement_records_n_and_seed():
    """mean_measurement wraps bootstrap_mean with n and the seed it used."""
    m = mean_measurement("acc", [0, 1, 1, 1], seed=7, unit="fraction")
    assert isinstance(m, Measurement)
    assert (m.value, m.n, m.seeds) == (0.75, 4, (7,))
    assert (m.value, m.ci_low, m.ci_high) == bootstrap_mean([0, 1, 1, 1], 7)
    assert m.to_dict()["seeds"] == [7]


@PROPERTY
@given(values, seeds)
def test_paired_difference_of_identical_arrays_is_exactly_zero(data, seed):
    """mean(a - a) is exactly 0 with a zero-width interval."""
    m = paired_difference("diff", data, list(data), seed)
    assert (m.value, m.ci_low, m.ci_high) == (0.0, 0.0, 0.0)
    assert m.n == len(data)


def test_paired_difference_is_paired():
    """A constant shift between paired samples gives a zero-width interval at the shift, however noisy."""
    a = np.random.default_rng(1).normal(scale=10, size=40)
    m = paired_difference("shift", a + 0.5, a, seed=0)
    assert m.value == pytest.approx(0.5)
    assert m.ci_low == pytest.approx(0.5) and m.ci_high == pytest.approx(0.5)


@pytest.mark.parametrize("a,b", [([1, 2, 3], [1, 2]), ([[1, 2]], [1, 2]), ([], [0.0])])
def test_paired_difference_shape_mismatch_raises(a, b):
    """Unequal shapes raise ValueError naming the measurement."""
    with pytest.raises(ValueError, match="my_diff"):
        paired_difference("my_diff", a, b, seed=0)
