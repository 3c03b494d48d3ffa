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


# Plurals English forms irregularly for three COCO classes; every other class takes -s or -es on its last word.
IRREGULAR_PLURALS = {"person": ("people", "persons"), "knife": ("knives",), "mouse": ("mice",)}


def _name_pattern(class_name: str) -> str:
    name = class_name.lower()
    forms = [re.escape(name) + "(?:e?s)?", *(re.escape(p) for p in IRREGULAR_PLURALS.get(name, ()))]
    return r"(?<![a-z])(?:" + "|".join(forms) + r")(?![a-z])"


def mentions(text: str, class_name: str, vocabulary=()) -> bool:
    """The paper's classification rule: the class name appears anywhere in the answer. Read as:

    - whole words, case-insensitive: "category" does not name "cat";
    - a plural names the class: "two chairs" names "chair" (the answer named it; the paper's "appears
      anywhere" accepts it literally), as do "buses", "people" (person), "knives", "mice";
    - an occurrence inside a longer category name of `vocabulary` (the prompt's choices) does not: "hot
      dog" does not name "dog", nor "teddy bear" "bear", when those are categories.
    """
    text = text.lower()
    name = class_name.lower()
    for longer in vocabulary:
        longer = longer.lower()
        if longer != name and re.search(_name_pattern(name), longer):
            text = re.sub(_name_pattern(longer), " ", text)
    return re.search(_name_pattern(name), text) is not None
