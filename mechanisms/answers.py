"""Parsing model answers. A parse failure returns None: the caller counts it as a miss and keeps the text."""

from __future__ import annotations

import re

_NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(r"\[\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*,\s*("
                           + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*\]")
_INTERNVL_BOX = re.compile(r"<box>\s*\[\s*\[\s*(" + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*,\s*("
                           + _NUMBER + r")\s*,\s*(" + _NUMBER + r")\s*\]\s*\]\s*</box>")


def parse_float_box(text: str) -> tuple[float, float, float, float] | None:
    """LLaVA's `[x0, y0, x1, y1]` with coordinates in [0, 1]; the first such list in the text."""
    match = _FOUR_NUMBERS.search(text)
    if not match:
        return None
    values = tuple(float(v) for v in match.groups())
    if not all(0.0 <= v <= 1.0 for v in values) or values[2] <= values[0] or values[3] <= values[1]:
        return None
    return values  # type: ignore[return-value]


def parse_internvl_box(text: str) -> tuple[float, float, float, float] | None:
    """InternVL's `<box>[[x0, y0, x1, y1]]</box>` on the 0-1000 scale, returned in [0, 1]."""
    match = _INTERNVL_BOX.search(text)
    if not match:
        return None
    values = tuple(float(v) / 1000.0 for v in match.groups())
    if not all(0.0 <= v <= 1.0 for v in values) or values[2] <= values[0] or values[3] <= values[1]:
        return None
    return values  # type: ignore[return-value]


def parse_yes_no(text: str) -> bool | None:
    """True for yes, False for no, None when the answer says neither (or both) first."""
    words = re.findall(r"[a-z]+", text.lower())
    for word in words[:3]:
        if word == "yes":
            return True
        if word == "no":
            return False
    return None


def mentions(text: str, class_name: str) -> bool:
    """The paper's classification rule: the class name appears anywhere in the answer (whole words)."""
    pattern = r"(?<![a-z])" + re.escape(class_name.lower()) + r"(?![a-z])"
    return re.search(pattern, text.lower()) is not None
