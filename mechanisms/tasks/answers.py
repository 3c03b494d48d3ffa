"""Reading the task-independent parts of answers: yes/no and "the class is named". A parse failure returns
None: the caller counts it as a miss and keeps the text. Box formats are family knowledge (the adapters)."""

from __future__ import annotations

import re


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
