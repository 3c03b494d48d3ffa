"""Reports: a fixed set of claim results renders to the same REPORT.md and report.json (syrupy snapshots)."""

from __future__ import annotations

import json

import numpy as np

from mechanisms.claims import ClaimRecorder
from mechanisms.reports import build_report, render_markdown, terminal_rows, write_report


def _entry(seed: int = 0) -> dict:
    props: list = []
    recorder = ClaimRecorder(props, seed=seed, max_samples=None)
    rng = np.random.default_rng(1)
    score = recorder.measure("localization_score", rng.random(50) > 0.3, paper=0.3534)
    recorder.difference("binary_minus_list_fpr", rng.random(50) > 0.4, rng.random(50) > 0.7,
                        paper=[0.11, 0.43])
    recorder.note("unparsed box answers (counted as misses)", ["a red thing"])
    recorder.expect_at_least(score, 0.4, "the model localizes above its floor")
    return {"nodeid": "claims/test_x.py::test_y[tiny_llava]", "profile": "tiny_llava", "title": "A claim",
            "finding": "A claim.\n\nWith a finding.", "reference": "Table 1", "outcome": "passed",
            "measurements": [v for k, v in props if k == "vlm_measurement"],
            "expectations": [v for k, v in props if k == "vlm_expectation"],
            "notes": [v for k, v in props if k == "vlm_note"],
            "context": {"model": {"profile": "tiny_llava", "family": "llava", "checkpoint": "ckpt",
                                  "fingerprint": "abc", "dtype": "float32", "device": "cpu"},
                        "dataset": {"name": "d", "fingerprint": "f", "n_samples": 50, "n_images": 20,
                                    "skipped": {}}}}


def _report() -> dict:
    report = build_report("tiny_llava", [_entry()], seed=0, run={"started": "T", "wall_s": 0})
    report["packages"] = {"python": "3.11"}  # versions vary between machines; the layout is what is pinned
    return report


def test_markdown_report_snapshot(snapshot):
    assert render_markdown(_report()) == snapshot


def test_json_claims_snapshot(snapshot):
    report = _report()
    assert json.dumps(report["claims"], indent=1, sort_keys=True) == snapshot


def test_same_seed_same_report_and_write_is_complete(tmp_path):
    """Determinism: the same seed gives identical measurements; both files are written."""
    assert _entry(seed=0) == _entry(seed=0)
    assert _entry(seed=0)["measurements"] != _entry(seed=1)["measurements"]
    folder = write_report(tmp_path, _report())
    assert json.loads((folder / "report.json").read_text())["claims"][0]["outcome"] == "passed"
    assert "## A claim — PASSED" in (folder / "REPORT.md").read_text()
    assert any("localization_score" in row for row in terminal_rows(_report()))
