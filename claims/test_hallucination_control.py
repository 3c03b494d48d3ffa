"""Prompt choice and hallucination: on object-removed images the binary query says yes more often than
the list query names the removed object (§6.2), which is why the paper classifies with the list prompt."""

import pytest

from mechanisms.tasks.specs import BINARY, LIST


def test_binary_prompt_hallucinates_more_than_list_prompt(vlm, dataset, claim):
    """The binary prompt's false-positive rate on object-removed images exceeds the list prompt's.

    FPR = P(detected | object absent), measured on each (image, object) pair's object-removed image;
    the two prompts are compared on the same pairs (paired bootstrap).
    Paper: §6.2, binary 0.56-0.70 vs list 0.27-0.45 across LLaVA-1.5 7B/13B and InternVL-3.5 8B
    """
    pairs = dataset.with_counterfactuals()
    if not pairs:
        pytest.skip(f"dataset {dataset.name} has no object-removed images (build them with the data command)")
    samples = claim.samples(dataset, pool=pairs)
    binary = vlm.ask(BINARY, dataset, samples, counterfactual=True)
    listed = vlm.ask(LIST, dataset, samples, counterfactual=True)
    claim.note("binary answers neither yes nor no (counted as not detected)", binary.unparsed)
    binary_prompt_hallucinates_more_than_list_prompt(claim, vlm.profile, binary.detected, listed.detected)


def binary_prompt_hallucinates_more_than_list_prompt(claim, profile, binary_detected, list_detected):
    """The rule, on per-pair detections (also run on the paper's own numbers by `tests/test_paper_tables.py`)."""
    claim.measure("binary_fpr", binary_detected, paper=profile.paper_value("hallucination", "binary_fpr"))
    claim.measure("list_fpr", list_detected, paper=profile.paper_value("hallucination", "list_fpr"))
    gap = claim.difference("binary_minus_list_fpr", binary_detected, list_detected)
    claim.expect_at_least(gap, profile.threshold("hallucination", "min_difference"),
                          "the binary prompt hallucinates more than the list prompt")
