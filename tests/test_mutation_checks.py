"""Proof, negative: planted breakage in the shipped model makes the claims that depend on it fail.

Each mutant (`pytest claims --mutation NAME`, mechanisms/models/mutations.py) destroys one mechanism of
the shipped tiny-llava; the claims that rest on it must fail (by a recorded margin, not an error), and
`python -m mechanisms.compare` against the shipped model's reference report must call the mutant a
regression. What a mutation leaves upstream of itself must measure exactly as before (the vision tower's
own position code is untouched by permuting the projector's output). The untrained mutant's checks are in
test_claims_end_to_end.py. Small samples: a broken mechanism fails even there.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_claims_end_to_end import REPO, load_report, run_claims

REFERENCE = REPO / "fixtures" / "reference-reports" / "tiny_llava" / "report.json"
PROBES = ("--probe-train", "synthetic:31:64", "--probe-test", "synthetic:32:16")

POSITIONAL = "claims/test_positional_decoding.py"
MUTANTS = {
    # every claim that needs the image: the LM now reads tokens from a random tower
    "vision-reinit": {
        "claims": ["claims/test_baseline_competence.py", "claims/test_object_token_ablation.py",
                   "claims/test_containerization.py", "claims/test_token_shuffling.py"],
        "must_fail": ["test_model_localizes_and_classifies_objects",
                      "test_ablating_object_tokens_hurts_far_more_than_ablating_as_many_random_tokens",
                      "test_localization_suffers_more_than_classification_from_object_ablation",
                      "test_predicted_boxes_grow_with_the_token_container",
                      "test_shuffling_inside_the_object_keeps_localization_while_a_full_shuffle_destroys_it"],
        "options": ("--max-samples", "16"),
    },
    # the projector's output in a fixed shuffled order: the container and the position code are gone
    "token-permutation": {
        "claims": ["claims/test_containerization.py", POSITIONAL],
        "must_fail": ["test_predicted_boxes_grow_with_the_token_container", "test_the_projector_keeps_the_corners",
                      "test_the_language_model_rebuilds_position_to_a_peak"],
        "unchanged": ["test_position_is_decodable_early_in_the_backbone_and_fades_with_depth"],
        "options": ("--max-samples", "16", *PROBES),
    },
    # the first half of the LM cannot read the image: no early band, no early mediating heads
    "early-attention-off": {
        "claims": ["claims/test_attention_knockout.py", "claims/test_head_mediation.py",
                   "claims/test_cumulative_head_ablation.py"],
        "must_fail": ["test_knocking_out_the_object_in_all_layers_destroys_localization",
                      "test_the_localization_drop_is_concentrated_in_a_layer_band",
                      "test_mediation_is_concentrated_in_a_few_heads",
                      "test_ablating_localization_critical_heads_hurts_far_more_than_low_importance_heads"],
        "options": ("--max-samples", "8", *PROBES),
    },
}


def claim_name(entry: dict) -> str:
    return entry["nodeid"].split("::")[-1].split("[")[0]


@pytest.mark.parametrize("mutation", list(MUTANTS))
def test_a_mutant_fails_the_claims_resting_on_what_it_broke(mutation, tmp_path):
    spec = MUTANTS[mutation]
    proc, reports = run_claims(*spec["claims"], "-m", "tiny_llava", "--mutation", mutation, *spec["options"],
                               tmp_path=tmp_path / "mutant")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = load_report(reports, "tiny_llava")
    assert report["model"]["mutation"] == mutation
    entries = {claim_name(e): e for e in report["claims"]}
    for name in spec["must_fail"]:
        entry = entries[name]
        assert entry["outcome"] == "failed", (name, entry["outcome"], entry.get("reason"))
        assert entry["measurements"], name
    # the planted regression: against the shipped model's reference, compare exits 1 and names the claims
    # that held there and fail now
    out = tmp_path / "diff.md"
    compared = subprocess.run([sys.executable, "-m", "mechanisms.reports.compare", str(REFERENCE),
                               str(reports / "tiny_llava" / "report.json"), "--subset", "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    reference = {claim_name(e): e for e in load_report(REFERENCE.parent.parent, "tiny_llava")["claims"]}
    held = [n for n in spec["must_fail"] if reference[n].get("verdict", reference[n]["outcome"]) in ("holds", "passed")]
    text = out.read_text()
    if held:
        assert compared.returncode == 1, compared.stdout + compared.stderr
        assert all(name in text.split("## Lost evidence")[0] for name in held), text
    if spec.get("unchanged"):  # upstream of the mutation: measured exactly as on the unmutated model
        clean, clean_reports = run_claims(*[f"{POSITIONAL}::{n}" for n in spec["unchanged"]], "-m", "tiny_llava",
                                          *spec["options"], tmp_path=tmp_path / "clean")
        assert clean.returncode in (0, 1), clean.stdout[-3000:]
        unmutated = {claim_name(e): e for e in load_report(clean_reports, "tiny_llava")["claims"]}
        for name in spec["unchanged"]:
            assert entries[name]["measurements"] == unmutated[name]["measurements"], name
