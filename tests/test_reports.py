"""Reports: a fixed set of claim results renders to the same REPORT.md and report.json (syrupy snapshots)."""

from __future__ import annotations

import json

import numpy as np

from mechanisms.reports.report import build_report, render_markdown, terminal_rows, write_report
from mechanisms.suite.recorder import ClaimRecorder


def _entry(seed: int = 0) -> dict:
    props: list = []
    recorder = ClaimRecorder(props, seed=seed, max_samples=None)
    rng = np.random.default_rng(1)
    score = recorder.measure("localization_score", rng.random(50) > 0.3, paper=0.3534)
    recorder.difference("binary_minus_list_fpr", rng.random(50) > 0.4, rng.random(50) > 0.7,
                        paper=[0.11, 0.43])
    recorder.note("unparsed box answers (counted as misses)", ["a red thing"])
    recorder.expect_at_least(score, 0.4, "the model localizes above its floor")
    recorder.table("table1", [{"order": 3, "strategy": "Object", "k": None, "tokens_pct": 8.5, "localization": 0.7,
                               "localization_drop": 44.4, "paper_localization": 5.92},
                              {"order": 0, "strategy": "Baseline", "k": None, "tokens_pct": 0.0,
                               "localization": 45.1, "localization_drop": 0.0, "paper_localization": 35.34}],
                   title="Table 1: accuracy after token ablation (%)")
    recorder.table("figure1", [{"order": 10 * p + s, "padding": p, "scale": s, "value": 0.1 * (1 + p + s),
                                "std": 0.01} for p in range(2) for s in range(3)],
                   title="Figure 1", figure={"kind": "heatmap", "x": "scale", "y": "padding", "std": "std"})
    return {"nodeid": "claims/test_x.py::test_y[tiny_llava]", "profile": "tiny_llava", "title": "A claim",
            "finding": "A claim.\n\nWith a finding.", "reference": "Table 1", "outcome": "passed",
            "measurements": [v for k, v in props if k == "vlm_measurement"],
            "expectations": [v for k, v in props if k == "vlm_expectation"],
            "notes": [v for k, v in props if k == "vlm_note"],
            "tables": [v for k, v in props if k == "vlm_table"],
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
    csv = (folder / "tables" / "table1.csv").read_text().splitlines()
    assert csv[0].startswith("strategy,") and csv[1].startswith("Baseline,")  # merged rows come in order
    assert (folder / "figures" / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    assert "![figure1](figures/figure1.png)" in (folder / "REPORT.md").read_text()


def test_rows_recorded_by_two_claims_appear_once():
    entry = _entry()
    twice = build_report("tiny_llava", [entry, {**entry, "nodeid": entry["nodeid"] + "2"}], seed=0, run={})
    assert [r["strategy"] for r in twice["tables"]["table1"]["rows"]] == ["Baseline", "Object"]


def _claim(title, reference, outcome, expectations=(), measurements=(), reason=None):
    return {"nodeid": f"claims/x.py::test_{title.lower().replace(' ', '_')}[tiny_llava]", "title": title, "reference": reference, "outcome": outcome,
            "expectations": list(expectations), "measurements": list(measurements), "notes": [], "tables": [],
            **({"reason": reason} if reason else {})}


def test_the_summary_reads_in_the_papers_order_with_the_deciding_effect():
    """Claims by paper section (not file name); a failing claim shows what failed it, a holding one its own
    effect (not the competence precondition), a skipped one why; the forest plot has the measured ones."""
    from mechanisms.reports.figures import forest_png
    from mechanisms.reports.report import forest_points, summary_rows

    def expectation(name, observed, threshold, passed):
        return {"statement": name, "measurement": name, "bound": "ci_low", "observed": observed, "comparison": ">=",
                "threshold": threshold, "margin": observed - threshold, "passed": passed,
                "verdict": "holds" if passed else "does not hold"}

    def measurement(name, value, paper=None):
        return {"name": name, "value": value, "ci_low": value - 0.01, "ci_high": value + 0.01, "n": 10,
                "paper": paper}

    claims = [
        _claim("Heads", "§3.3.2, Figure 4", "failed", [expectation("share", 0.2, 0.5, False),
                                                       expectation("other", 0.9, 0.1, True)],
               [measurement("share", 0.21, paper=0.8), measurement("other", 0.91)]),
        _claim("Views", "§3.1.2, Table 3", "skipped", reason="this model sees each image through a single view"),
        _claim("Ablation", "§3.1, Table 1", "passed", [expectation("localization_baseline", 0.41, 0.4, True),
                                                       expectation("excess", 0.3, 0.1, True)],
               [measurement("localization_baseline", 0.42), measurement("excess", 0.31)]),
        _claim("Baseline", "Table 1, Baseline row", "passed", [expectation("score", 0.5, 0.4, True)],
               [measurement("score", 0.51)]),
    ]
    report = {"claims": claims}
    rows = summary_rows(report)
    assert [r["finding"] for r in rows] == ["Baseline", "Ablation", "Views", "Heads"]  # from the test names
    assert [r["title"] for r in rows] == ["Baseline", "Ablation", "Views", "Heads"]
    assert rows[1]["effect"].startswith("excess = 0.310")  # not the baseline precondition
    assert rows[2]["verdict"].startswith("– skipped") and "single view" in rows[2]["reason"]
    assert rows[3]["effect"].startswith("share = 0.210") and rows[3]["paper"] == "0.800"
    assert rows[3]["threshold"] == "ci_low >= 0.500"
    points = forest_points(report)
    assert [p["verdict"] for p in points] == ["holds", "holds", "does not hold"]
    assert forest_png(points).startswith(b"\x89PNG")


def test_the_html_report_is_one_self_contained_page(tmp_path):
    """REPORT.html beside REPORT.md: figures embedded as data, nothing fetched from elsewhere, the summary
    rows linking to each claim's section, measurements collapsed."""
    import re

    folder = write_report(tmp_path, _report())
    page = (folder / "REPORT.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources), sources
    assert page.count("data:image/png;base64,") == 2  # the forest plot and Figure 1
    for anchor in re.findall(r'href="#(claim-\d+)"', page):
        assert f'id="{anchor}"' in page
    assert "<details><summary>2 measurements</summary>" in page
    assert "localization_score = 0.740 [0.600, 0.860]" in page


def test_the_html_report_renders_in_a_browser(tmp_path):
    """Headless Chromium opens REPORT.html from disk and draws it (skips where no Chromium is installed)."""
    from PIL import Image

    from mechanisms.reports.screenshot import chromium, screenshot

    if chromium() is None:
        import pytest

        pytest.skip("no Chromium here (Debian: apt-get install chromium)")
    folder = write_report(tmp_path, _report())
    shot = Image.open(screenshot(folder / "REPORT.html", tmp_path / "shot.png", 1000, 900)).convert("L")
    assert shot.size == (1000, 900)
    histogram = shot.histogram()
    assert histogram[255] < 0.97 * sum(histogram)  # not a blank page: text, tables and figures drawn


def test_line_figures_mark_the_peak_the_baselines_and_the_aucs(tmp_path):
    """Figure 2's peak, Figures 3/12's unmodified-accuracy lines and Figure 5's AUCs in the legend."""
    from PIL import Image

    from mechanisms.reports.figures import figure_png

    rows = [{"mode": f"llm.{i:02d}", "kind": "llm", "value": v} for i, v in enumerate([20.0, 35.0, 42.5, 30.0])]
    rows.insert(0, {"mode": "projector", "kind": "projector", "value": 18.0})
    table = {"title": "Figure 2", "rows": rows,
             "figure": {"kind": "lines", "x": "mode", "y": "value", "series": "kind", "mark_max": ["llm"],
                        "hlines": [{"y": 45.0, "label": "box without knockout"}],
                        "labels": {"llm": "llm (normalized AUC 0.420)"}}}
    png = tmp_path / "f.png"
    png.write_bytes(figure_png(table))
    assert Image.open(png).size == (700, 380)
