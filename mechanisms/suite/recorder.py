"""What a claim writes down: measurements with intervals, and expectations checked against interval bounds.

A claim records everything it measures whether it passes or fails; expectations are all evaluated and
recorded, then the pytest plugin fails the test if any did not hold, saying by how much.
Records travel in `item.user_properties`, which pytest-xdist ships to the controller with each test
report, so the report written there holds every claim exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mechanisms.suite.measurements import (Measurement, mean_measurement, paired_difference, statistic_measurement,
                                           unpaired_statistic_measurement)

MEASUREMENT = "vlm_measurement"
EXPECTATION = "vlm_expectation"
NOTE = "vlm_note"
CONTEXT = "vlm_context"
CLAIM = "vlm_claim"
PROFILE = "vlm_profile"
TABLE = "vlm_table"
VERDICT = "vlm_verdict"
SAMPLING = "vlm_sampling"
CONTRADICTED = "vlm_contradicted"  # the profile says the paper's own numbers contradict this claim for the model


HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
OPPOSITE = {"ci_low": "ci_high", "ci_high": "ci_low", "value": "value"}


@dataclass(frozen=True)
class Expectation:
    """One checked statement. Three verdicts, by where the whole interval lies against the threshold:
    *holds* (the deciding bound is beyond it), *does not hold* (even the other bound is on the wrong side,
    or nothing was measurable), *inconclusive* (the interval straddles it: too few samples to tell)."""

    statement: str
    measurement: str
    bound: str  # which number must clear the threshold: "ci_low", "ci_high" or "value"
    observed: float
    comparison: str  # ">=" or "<="
    threshold: float
    opposite: float = math.nan  # the interval's other end (what must be on the wrong side to say "does not hold")
    value: float = math.nan  # the point estimate
    n: int = 0

    def _beyond(self, x: float) -> bool:
        return x >= self.threshold if self.comparison == ">=" else x <= self.threshold

    @property
    def margin(self) -> float:
        """How far the deciding bound is on the passing side of the threshold (negative: failed by)."""
        return self.observed - self.threshold if self.comparison == ">=" else self.threshold - self.observed

    @property
    def verdict(self) -> str:
        if math.isnan(self.observed):
            return DOES_NOT_HOLD
        if self._beyond(self.observed):
            return HOLDS
        if math.isnan(self.opposite) or not self._beyond(self.opposite):
            return DOES_NOT_HOLD
        return INCONCLUSIVE

    @property
    def passed(self) -> bool:
        return self.verdict == HOLDS

    def samples_to_decide(self) -> int | None:
        """For an inconclusive expectation: about how many samples would put the interval clear of the
        threshold at the observed effect and spread (interval half-width ~ 1/sqrt(n)); None otherwise."""
        if self.verdict != INCONCLUSIVE or not self.n or math.isnan(self.value) or self.value == self.threshold:
            return None
        edge = self.observed if self._beyond(self.value) else self.opposite  # the bound that must move across
        half_width, distance = abs(self.value - edge), abs(self.value - self.threshold)
        return int(math.ceil(self.n * (half_width / distance) ** 2))

    def to_dict(self) -> dict:
        data = {"statement": self.statement, "measurement": self.measurement, "bound": self.bound,
                "observed": self.observed, "comparison": self.comparison, "threshold": self.threshold,
                "margin": self.margin, "passed": self.passed, "verdict": self.verdict}
        if self.verdict == INCONCLUSIVE:
            data["samples_to_decide"] = self.samples_to_decide()
        return data

    def describe(self) -> str:
        verdict = {HOLDS: "holds", DOES_NOT_HOLD: "DOES NOT HOLD", INCONCLUSIVE: "INCONCLUSIVE"}[self.verdict]
        text = (f"{self.statement}: {self.measurement}.{self.bound} = {self.observed:.4f} {self.comparison} "
                f"{self.threshold:.4f} {verdict} (margin {self.margin:+.4f})")
        if self.verdict == INCONCLUSIVE:
            needed = self.samples_to_decide()
            text += (f"; the interval [{min(self.observed, self.opposite):.4f}, {max(self.observed, self.opposite):.4f}] "
                     f"straddles the threshold at n = {self.n}"
                     + (f", ~{needed} samples would decide it (at this estimate: "
                        f"{HOLDS if self._beyond(self.value) else DOES_NOT_HOLD})" if needed else ""))
        return text


def _ratio_of_means(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.mean() / b.mean()) if b.mean() > 0 else math.nan


def worst_verdict(verdicts) -> str:
    """A claim's verdict: any "does not hold" -> does not hold; else any inconclusive -> inconclusive."""
    verdicts = list(verdicts)
    if DOES_NOT_HOLD in verdicts or not verdicts:
        return DOES_NOT_HOLD
    return INCONCLUSIVE if INCONCLUSIVE in verdicts else HOLDS


class ClaimRecorder:
    """The `claim` fixture: measure, note, expect."""

    def __init__(self, user_properties: list, seed: int, max_samples: int | None):
        self._props = user_properties
        self.seed = seed
        self.max_samples = max_samples
        self.measurements: dict[str, Measurement] = {}
        self.expectations: list[Expectation] = []
        self.sampling: dict | None = None  # the last sample draw: how many were available and used, what capped it

    def samples(self, dataset, pool=None, limit: int | None = None):
        """The claim's samples: the dataset's (or `pool`'s), cut deterministically to --max-samples, or to
        the claim's own `limit` (a profile setting for expensive sweeps) when that is smaller."""
        pool = dataset.samples if pool is None else pool
        bounds = [b for b in (self.max_samples, limit) if b is not None]
        n = min(bounds) if bounds else None
        capped_by = None if n is None or n >= len(pool) else (
            "--max-samples" if n == self.max_samples else "the profile's limit")
        self.sampling = {"available": len(pool), "used": len(pool) if capped_by is None else n,
                         "capped_by": capped_by or "the dataset"}
        if n is None or n >= len(pool):
            return list(pool)
        keep = np.sort(np.random.default_rng(self.seed).choice(len(pool), n, replace=False))
        return [pool[i] for i in keep]

    def _add(self, measurement: Measurement) -> Measurement:
        if measurement.name in self.measurements:
            raise ValueError(f"measurement {measurement.name!r} recorded twice")
        self.measurements[measurement.name] = measurement
        self._props.append((MEASUREMENT, measurement.to_dict()))
        return measurement

    def measure(self, name: str, per_sample, paper=None, description: str = "", unit: str = "fraction",
                **extra) -> Measurement:
        """Mean over samples with a bootstrap interval."""
        return self._add(mean_measurement(name, per_sample, self.seed, paper=paper, description=description,
                                          unit=unit, extra=extra))

    def difference(self, name: str, a, b, paper=None, description: str = "", **extra) -> Measurement:
        """mean(a - b) over the same samples, with a paired bootstrap interval."""
        return self._add(paired_difference(name, a, b, self.seed, paper=paper, description=description,
                                           extra=extra))

    def statistic(self, name: str, statistic, arrays, paper=None, description: str = "", unit: str = "fraction",
                  **extra) -> Measurement:
        """`statistic(*arrays)` of per-sample arrays over the same objects, with a paired bootstrap interval."""
        return self._add(statistic_measurement(name, statistic, arrays, self.seed, paper=paper,
                                               description=description, unit=unit, extra=extra))

    def unpaired_statistic(self, name: str, statistic, groups, paper=None, description: str = "",
                           unit: str = "fraction", **extra) -> Measurement:
        """`statistic(*groups)` of independent samples (different objects), each resampled on its own."""
        return self._add(unpaired_statistic_measurement(name, statistic, groups, self.seed, paper=paper,
                                                        description=description, unit=unit, extra=extra))

    def note(self, key: str, value) -> None:
        """Anything a reader needs beside the numbers (raw unparsed answers, counts, settings)."""
        self._props.append((NOTE, {key: value}))

    def table(self, table: str, rows: list[dict], title: str = "", figure: dict | None = None) -> None:
        """Rows of one of the report's tables (`table` names it; rows from several claims are merged and
        ordered by their `order` key). A `figure` spec also draws it as a PNG: {"kind": "heatmap", "x",
        "y", "value", "std"?} or {"kind": "lines", "x", "y", "series"} (see `reports.figure_png`)."""
        self._props.append((TABLE, {"table": table, "title": title, "rows": rows, "figure": figure}))

    def _expect(self, measurement: Measurement, comparison: str, threshold: float, statement: str,
                bound: str) -> Expectation:
        expectation = Expectation(statement, measurement.name, bound, float(getattr(measurement, bound)),
                                  comparison, float(threshold), float(getattr(measurement, OPPOSITE[bound])),
                                  float(measurement.value), int(measurement.n))
        self.expectations.append(expectation)
        self._props.append((EXPECTATION, expectation.to_dict()))
        return expectation

    def expect_at_least(self, measurement: Measurement, threshold: float, statement: str,
                        bound: str = "ci_low") -> Expectation:
        """The effect is there beyond sampling noise: by default the interval's *lower* bound must clear it."""
        return self._expect(measurement, ">=", threshold, statement, bound)

    def expect_at_most(self, measurement: Measurement, threshold: float, statement: str,
                       bound: str = "ci_high") -> Expectation:
        return self._expect(measurement, "<=", threshold, statement, bound)

    def expect_minor(self, name: str, effect, reference, share: float, statement: str, two_sided: bool = False,
                     paper=None) -> list[Expectation]:
        """An equivalence test relative to the effect that gives "barely moves" its meaning: per sample,
        `effect` (e.g. drop under -1 padding) against `reference` (the drop under object ablation).

        Holds when mean(effect - share * reference) <= 0 at the interval's high end (and, `two_sided`,
        mean(effect + share * reference) >= 0 at its low end), so it is neither a test of sample size (an
        absolute band narrows with n) nor trivially passed where the reference effect is absent (then
        nothing but effect <= 0 passes; the claim also requires the reference itself). The ratio
        mean(effect) / mean(reference) is recorded beside the paper's (`paper`)."""
        effect, reference = np.asarray(effect, dtype=float), np.asarray(reference, dtype=float)
        self.statistic(f"{name}_share_of_reference", _ratio_of_means, [effect, reference], paper=paper,
                       description="mean(effect) / mean(reference effect)")
        upper = self.difference(f"{name}_minus_{share:g}_reference", effect, share * reference,
                                description=f"effect - {share:g} x reference, per sample")
        expectations = [self.expect_at_most(upper, 0.0, statement)]
        if two_sided:
            lower = self.difference(f"{name}_plus_{share:g}_reference", effect, -share * reference,
                                    description=f"effect + {share:g} x reference, per sample")
            expectations.append(self.expect_at_least(lower, 0.0, statement + " (nor gains more)"))
        return expectations

    def verdict(self) -> str:
        return worst_verdict(e.verdict for e in self.expectations)

    def failure_message(self) -> str | None:
        """None when the claim holds; else what did not hold or could not be decided, by how much."""
        if not self.expectations:
            return "the claim recorded no expectation: a claim that checks nothing cannot fail"
        verdict = self.verdict()
        if verdict == HOLDS:
            return None
        shown = [e for e in self.expectations if e.verdict != HOLDS]
        head = "claim does not hold" if verdict == DOES_NOT_HOLD else "claim is inconclusive (not enough evidence)"
        tail = ""
        if verdict == INCONCLUSIVE and self.sampling:
            tail = (f"\n  sampled {self.sampling['used']} of {self.sampling['available']} available, "
                    f"capped by {self.sampling['capped_by']}")
        return head + ":\n" + "\n".join("  " + e.describe() for e in shown) + tail
