"""Each shipped model carries a reference report (fixtures/reference-reports/<profile>/), made by the README's
first command on that very checkpoint: `python -m mechanisms.reports.compare` against it is the regression
check a user runs on a new checkpoint of the same family. Here: the reference belongs to the checkpoint that
ships (same fingerprint: a retrained model without a regenerated reference fails), it was a full run
(every claim, no --max-samples), and the shipped model reproduces its verdicts on a small sample (held
claims may become inconclusive at few samples, never fail)."""

from __future__ import annotations

import json

import pytest

from mechanisms.models.registry import fingerprint_checkpoint, load_profiles
from mechanisms.reports.compare import compare_reports
from tests.test_claims_end_to_end import REPO, collected_claims, load_report, run_claims

REFERENCES = REPO / "fixtures" / "reference-reports"
PROFILES = load_profiles()
SHIPPED = [name for name, profile in PROFILES.items() if profile.shipped_path]


def reference(name: str) -> dict:
    return json.loads((REFERENCES / name / "report.json").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_the_reference_report_is_a_full_run_of_the_shipped_checkpoint(name):
    report = reference(name)
    shipped = REPO / PROFILES[name].shipped_path
    assert report["model"]["fingerprint"] == fingerprint_checkpoint(shipped), \
        f"{name}'s reference report was made on another checkpoint: regenerate it (fixtures/reference-reports/README.md)"
    assert "mutation" not in report["model"]
    assert len(report["claims"]) == len(collected_claims(name))
    assert all((entry.get("sampling") or {}).get("capped_by") != "--max-samples" for entry in report["claims"])
    assert (REFERENCES / name / "REPORT.md").is_file()


QUICK = ["claims/test_baseline_competence.py", "claims/test_object_token_ablation.py",
         "claims/test_hallucination_control.py"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_model_reproduces_its_reference_verdicts_on_a_small_sample(name, tmp_path):
    proc, reports = run_claims(*QUICK, "-m", name, "--max-samples", "48", "--inconclusive", "pass",
                               tmp_path=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    comparison = compare_reports(reference(name), load_report(reports, name), subset=True)
    assert not comparison.regressions, comparison.regressions
    assert not comparison.improvements, comparison.improvements  # a claim the reference failed does not pass now
