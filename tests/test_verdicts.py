"""Three verdicts per expectation: holds / does not hold / inconclusive, from where the whole interval lies.

Claims built on synthetic effects of known size: a real effect holds at large n and is inconclusive at small
n (with an estimate of the n that would decide it); a reversed effect does not hold. The same for a "barely
moves" (equivalence) expectation. And `compare` tells lost evidence from a regression.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechanisms.reports.compare import compare_reports
from mechanisms.suite.recorder import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, ClaimRecorder, worst_verdict


def effect_claim(mean: float, n: int, threshold: float = 0.0, at_most: bool = False, seed: int = 1):
    z = np.random.default_rng(seed).normal(0, 1, n)
    values = mean + 0.3 * (z - z.mean()) / z.std()  # exactly the stated effect and spread: only n varies
    claim = ClaimRecorder([], seed=0, max_samples=None)
    measured = claim.measure("effect", values)
    if at_most:
        claim.expect_at_most(measured, threshold, "the effect is at most the threshold")
    else:
        claim.expect_at_least(measured, threshold, "the effect is at least the threshold")
    return claim


@pytest.mark.parametrize("at_most, effect, reversed_effect", [(False, 0.1, -0.1), (True, 0.0, 0.15)])
def test_an_effect_holds_at_large_n_is_inconclusive_at_small_n_and_reversed_does_not_hold(
        at_most, effect, reversed_effect):
    threshold = 0.05 if at_most else 0.0
    assert effect_claim(effect, 4000, threshold, at_most).verdict() == HOLDS
    small = effect_claim(effect, 12, threshold, at_most)
    assert small.verdict() == INCONCLUSIVE
    assert "inconclusive" in small.failure_message()
    assert effect_claim(reversed_effect, 4000, threshold, at_most).verdict() == DOES_NOT_HOLD


def test_the_sample_estimate_decides_the_claim():
    """At the estimated n (x2 for sampling noise in the estimate) a fresh sample of the same effect holds."""
    small = effect_claim(0.1, 30)
    (expectation,) = small.expectations
    assert expectation.verdict == INCONCLUSIVE
    needed = expectation.samples_to_decide()
    assert needed > 30
    assert effect_claim(0.1, 2 * needed, seed=7).verdict() == HOLDS


def test_nothing_measured_does_not_hold_and_the_worst_verdict_wins():
    claim = ClaimRecorder([], seed=0, max_samples=None)
    claim.expect_at_least(claim.measure("empty", []), 0.1, "something")
    assert claim.verdict() == DOES_NOT_HOLD
    assert worst_verdict([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert worst_verdict([INCONCLUSIVE, DOES_NOT_HOLD, HOLDS]) == DOES_NOT_HOLD
    assert worst_verdict([HOLDS, HOLDS]) == HOLDS


def _report(verdict: str) -> dict:
    outcome = {"holds": "passed", "does not hold": "failed", "inconclusive": "inconclusive"}[verdict]
    return {"profile": "p", "model": {}, "claims": [{"nodeid": "claims/x.py::test_a", "outcome": outcome,
                                                     "verdict": verdict, "measurements": [], "expectations": []}]}


@pytest.mark.parametrize("before, after, regression, lost", [
    ("holds", "inconclusive", False, True), ("holds", "does not hold", True, False),
    ("inconclusive", "inconclusive", False, False), ("inconclusive", "holds", False, False)])
def test_compare_tells_lost_evidence_from_a_regression(before, after, regression, lost):
    comparison = compare_reports(_report(before), _report(after))
    assert comparison.regressed == regression
    assert bool(comparison.lost_evidence) == lost
