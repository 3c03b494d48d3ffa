"""Scoring answers: unparseable answers are misses that are kept, never dropped."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mechanisms.tasks.scoring import LocalizationResult, score_binary, score_list


def test_unparseable_box_answer_is_a_recorded_miss():
    """A box answer that cannot be parsed scores IoU 0 and its raw text is listed among failures."""
    result = LocalizationResult(ious=np.array([0.95, 0.0]), answers=["[0.1, 0.1, 0.5, 0.5]", "a red thing"],
                                parsed=np.array([True, False]))
    assert result.failures() == ["a red thing"]
    assert result.score == (1 + 1 + 1) / 3 / 2


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_localization_score_is_mean_success_over_thresholds(ious):
    """The paper's score: mean over IoU 0.5/0.7/0.9 of the success rate; in [0, 1], monotone in IoU."""
    result = LocalizationResult(np.array(ious), [""] * len(ious), np.ones(len(ious), bool))
    expected = np.mean([(np.array(ious) >= t).mean() for t in (0.5, 0.7, 0.9)])
    assert abs(result.score - expected) < 1e-12
    better = LocalizationResult(np.minimum(np.array(ious) + 0.1, 1), [""] * len(ious), np.ones(len(ious), bool))
    assert better.score >= result.score


def test_binary_answers_neither_yes_nor_no_count_as_not_detected_and_are_kept():
    result = score_binary(["Yes", "No.", "I cannot tell", "yes, there is"])
    assert result.detected.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert result.unparsed == ["I cannot tell"]


def test_list_classification_counts_the_class_name_anywhere():
    result = score_list(["blue square, red circle", "green triangle", ""], ["red circle", "red circle", "cyan hexagon"])
    assert result.detected.tolist() == [1.0, 0.0, 0.0]
