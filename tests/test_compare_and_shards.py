"""Regression across checkpoints and sharded runs, end to end (`pytest claims` in subprocesses).

- two runs of the same checkpoint compare clean (exit 0); a checkpoint with heads zeroed is flagged
  (exit 1) with the claim that regressed and the effect sizes that moved;
- `--shard 1/2` + `--shard 2/2`, merged, equal the unsharded report.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechanisms.reports.compare import compare_reports, main, merge_reports
from tests.test_claims_end_to_end import REPO, load_report, run_claims

BASELINE = ["claims/test_baseline_competence.py", "-m", "tiny_llava", "--max-samples", "200"]


def _zero_heads(source, target, layers=(0, 1, 2)):
    """A planted regression: the shipped checkpoint with every head of some LM layers zeroed (W_O columns)."""
    shutil.copytree(source, target)
    weights_file = next(target.glob("*.safetensors"))
    weights = load_file(weights_file)
    for layer in layers:
        name = next(k for k in weights if k.endswith(f"layers.{layer}.self_attn.o_proj.weight"))
        weights[name] = torch.zeros_like(weights[name])
    save_file(weights, weights_file, metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    proc, folder = run_claims(*BASELINE, tmp_path=tmp_path_factory.mktemp("reference"))
    assert proc.returncode == 0, proc.stdout[-3000:]
    return folder / "tiny_llava" / "report.json"


def test_identical_runs_compare_clean(reference, tmp_path):
    proc, folder = run_claims(*BASELINE, tmp_path=tmp_path)
    assert proc.returncode == 0
    assert main([str(reference), str(folder / "tiny_llava" / "report.json")]) == 0
    comparison = compare_reports(json.loads(reference.read_text()), load_report(folder, "tiny_llava"))
    assert not comparison.regressions and not comparison.moved and comparison.unchanged > 0


def test_a_checkpoint_with_heads_zeroed_is_flagged(reference, tmp_path):
    broken = _zero_heads(REPO / "fixtures/models/tiny-llava", tmp_path / "broken")
    proc, folder = run_claims(*BASELINE, "--model-path", str(broken), tmp_path=tmp_path)
    assert proc.returncode == 1
    out = tmp_path / "diff.md"
    assert main([str(reference), str(folder / "tiny_llava" / "report.json"), "--out", str(out)]) == 1
    text = out.read_text()
    assert "REGRESSION" in text and "test_model_localizes_and_classifies_objects" in text
    assert "localization_score" in text  # the effect size that moved, with both intervals


def test_shards_merge_into_the_unsharded_report(tmp_path):
    claims = ["claims/test_baseline_competence.py", "claims/test_hallucination_control.py",
              "-m", "tiny_llava", "--max-samples", "24"]
    whole, whole_dir = run_claims(*claims, tmp_path=tmp_path / "whole")
    parts = []
    for index in (1, 2):
        proc, folder = run_claims(*claims, "--shard", f"{index}/2", tmp_path=tmp_path / f"shard{index}")
        assert proc.returncode in (0, 1), proc.stdout[-3000:]
        parts.append(load_report(folder, "tiny_llava"))
    assert all(len(p["claims"]) == 1 for p in parts)
    merged = merge_reports(parts)
    assert merged["claims"] == load_report(whole_dir, "tiny_llava")["claims"]


def test_a_subset_run_compares_only_the_claims_it_ran():
    """A quick check of some claims against a full reference: without --subset the others are 'missing'
    (a regression); with it, only the claims the candidate ran are compared."""
    def entry(name, outcome):
        return {"nodeid": f"claims/x.py::{name}", "outcome": outcome, "verdict": None, "measurements": [],
                "expectations": []}

    reference = {"claims": [entry("a", "passed"), entry("b", "passed")]}
    candidate = {"claims": [entry("a", "passed")]}
    assert compare_reports(reference, candidate).regressions == ["`claims/x.py::b`: holds -> missing: missing"]
    assert not compare_reports(reference, candidate, subset=True).regressions
    candidate = {"claims": [entry("a", "failed")]}
    assert len(compare_reports(reference, candidate, subset=True).regressions) == 1


def test_the_diff_shows_both_runs_side_by_side_with_the_forests_overlaid(tmp_path):
    """A planted regression in a fixed report: the diff's table lists the claim with both verdicts, both
    deciding effects and how far it moved; --out writes the overlaid forest plot beside the diff."""
    import copy

    from PIL import Image

    from tests.test_reports import _report

    reference = _report()
    candidate = copy.deepcopy(reference)
    entry = candidate["claims"][0]
    entry["outcome"], entry["verdict"] = "failed", "does not hold"
    score = next(m for m in entry["measurements"] if m["name"] == "localization_score")
    score.update(value=0.1, ci_low=0.05, ci_high=0.15)
    for e in entry["expectations"]:
        e.update(passed=False, verdict="does not hold", observed=0.05, margin=0.05 - 0.4)
    (tmp_path / "a.json").write_text(json.dumps(reference))
    (tmp_path / "b.json").write_text(json.dumps(candidate))
    out = tmp_path / "diff.md"
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(out)]) == 1
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ") and "| Y |" in line)  # test_y
    assert "| holds | does not hold |" in row and "[0.600, 0.860]" in row and "[0.050, 0.150]" in row
    assert "regression; moved -0.640" in row
    forest = tmp_path / "diff_forest.png"
    assert "diff_forest.png" in text and Image.open(forest).size[0] == 1050
