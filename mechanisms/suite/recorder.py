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

from mechanisms.suite.measurements import Measurement, mean_measurement, paired_difference, statistic_measurement

MEASUREMENT = "vlm_measurement"
EXPECTATION = "vlm_expectation"
NOTE = "vlm_note"
CONTEXT = "vlm_context"
CLAIM = "vlm_claim"
PROFILE = "vlm_profile"
TABLE = "vlm_table"


@dataclass(frozen=True)
class Expectation:
    statement: str
    measurement: str
    bound: str  # which number was compared: "ci_low", "ci_high" or "value"
    observed: float
    comparison: str  # ">=" or "<="
    threshold: float

    @property
    def margin(self) -> float:
        """How far the observed bound is on the passing side of the threshold (negative: failed by)."""
        return self.observed - self.threshold if self.comparison == ">=" else self.threshold - self.observed

    @property
    def passed(self) -> bool:
        return not math.isnan(self.observed) and self.margin >= 0

    def to_dict(self) -> dict:
        return {"statement": self.statement, "measurement": self.measurement, "bound": self.bound,
                "observed": self.observed, "comparison": self.comparison, "threshold": self.threshold,
                "margin": self.margin, "passed": self.passed}

    def describe(self) -> str:
        verdict = "holds" if self.passed else "FAILS"
        return (f"{self.statement}: {self.measurement}.{self.bound} = {self.observed:.4f} {self.comparison} "
                f"{self.threshold:.4f} {verdict} (margin {self.margin:+.4f})")


class ClaimRecorder:
    """The `claim` fixture: measure, note, expect."""

    def __init__(self, user_properties: list, seed: int, max_samples: int | None):
        self._props = user_properties
        self.seed = seed
        self.max_samples = max_samples
        self.measurements: dict[str, Measurement] = {}
        self.expectations: list[Expectation] = []

    def samples(self, dataset, pool=None, limit: int | None = None):
        """The claim's samples: the dataset's (or `pool`'s), cut deterministically to --max-samples, or to
        the claim's own `limit` (a profile setting for expensive sweeps) when that is smaller."""
        pool = dataset.samples if pool is None else pool
        bounds = [b for b in (self.max_samples, limit) if b is not None]
        n = min(bounds) if bounds else None
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
                                  comparison, float(threshold))
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

    def failure_message(self) -> str | None:
        failed = [e for e in self.expectations if not e.passed]
        if not self.expectations:
            return "the claim recorded no expectation: a claim that checks nothing cannot fail"
        if not failed:
            return None
        return "claim does not hold:\n" + "\n".join("  " + e.describe() for e in failed)
