"""Claim results -> `reports/<profile>/report.json` (for machines) and `REPORT.md` (for people).

The JSON is deterministic for a given seed: entries sorted by test id, no timestamps inside the claims;
run metadata (time, durations) sits under "run" so a comparison can ignore it.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from mechanisms.io import atomic_write_json, atomic_write_text
from mechanisms.measurements import format_paper

PACKAGES = ("torch", "torchvision", "transformers", "numpy", "pycocotools", "pandas", "pytest", "pytest-xdist")
REPORT_FORMAT = "vlm-mechanisms/report-v1"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def build_report(profile: str, entries: list[dict], seed: int, run: dict) -> dict:
    entries = sorted(entries, key=lambda e: e["nodeid"])
    contexts = [e["context"] for e in entries if e.get("context")]
    context = contexts[0] if contexts else {}
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    return {
        "format": REPORT_FORMAT,
        "profile": profile,
        "seed": seed,
        "model": context.get("model"),
        "dataset": context.get("dataset"),
        "packages": package_versions(),
        "summary": dict(sorted(counts.items())),
        "claims": entries,
        "run": run,
    }


def write_report(report_dir: Path, report: dict) -> Path:
    folder = Path(report_dir) / report["profile"]
    atomic_write_json(folder / "report.json", report)
    atomic_write_text(folder / "REPORT.md", render_markdown(report))
    return folder


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(report: dict) -> str:
    lines = [f"# Claims report: {report['profile']}", ""]
    model, dataset = report.get("model") or {}, report.get("dataset") or {}
    if model:
        lines.append(f"- **Model**: {model.get('profile')} ({model.get('family')}), checkpoint "
                     f"`{model.get('checkpoint')}`, fingerprint `{model.get('fingerprint')}`, {model.get('dtype')}")
    if dataset:
        lines.append(f"- **Dataset**: {dataset.get('name')} (fingerprint `{dataset.get('fingerprint')}`), "
                     f"{dataset.get('n_samples')} objects in {dataset.get('n_images')} images; "
                     f"skipped: {dataset.get('skipped') or 'none'}")
    lines.append(f"- **Seed**: {report['seed']}; packages: "
                 + ", ".join(f"{k} {v}" for k, v in report["packages"].items()))
    lines.append("- **Outcomes**: " + ", ".join(f"{v} {k}" for k, v in report["summary"].items()))
    lines += ["", "| claim | outcome | key measurement |", "|---|---|---|"]
    for entry in report["claims"]:
        first = entry["measurements"][0] if entry["measurements"] else None
        key = (f"{first['name']} = {_fmt(first['value'])} [{_fmt(first['ci_low'])}, {_fmt(first['ci_high'])}]"
               if first else entry.get("reason", "")[:120])
        lines.append(f"| {entry['title']} | {entry['outcome'].upper()} | {key} |")
    for entry in report["claims"]:
        lines += ["", f"## {entry['title']} — {entry['outcome'].upper()}", ""]
        if entry.get("reference"):
            lines.append(f"*Paper reference: {entry['reference']}*  ")
        lines.append(f"`{entry['nodeid']}`")
        if entry.get("finding"):
            lines += [""] + ["> " + line for line in entry["finding"].splitlines()]
        if entry.get("reason"):
            lines += ["", f"**Reason**: {entry['reason']}"]
        if entry["measurements"]:
            lines += ["", "| measurement | value | 95% CI | n | paper |", "|---|---|---|---|---|"]
            for m in entry["measurements"]:
                paper = format_paper(m["paper"]) if m.get("paper") is not None else "–"
                lines.append(f"| {m['name']} | {_fmt(m['value'])} | [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] "
                             f"| {m['n']} | {paper} |")
        if entry["expectations"]:
            lines += ["", "Expectations (checked on interval bounds):", ""]
            for e in entry["expectations"]:
                mark = "✓" if e["passed"] else "✗"
                lines.append(f"- {mark} {e['statement']}: {e['measurement']}.{e['bound']} = {_fmt(e['observed'], 4)} "
                             f"{e['comparison']} {_fmt(e['threshold'], 4)} (margin {e['margin']:+.4f})")
        for note in entry.get("notes", []):
            for key, value in note.items():
                if isinstance(value, list):
                    shown = "; ".join(repr(v) for v in value[:10]) or "none"
                    lines.append(f"- {key}: {len(value)} — {shown}")
                else:
                    lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def terminal_rows(report: dict) -> list[str]:
    rows = []
    for entry in report["claims"]:
        test = entry["nodeid"].split("::")[-1]
        rows.append(f"{entry['outcome'].upper():8} {test}")
        for m in entry["measurements"]:
            paper = f"  paper {format_paper(m['paper'])}" if m.get("paper") is not None else ""
            rows.append(f"           {m['name']:<34} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                        f" n={m['n']}{paper}")
        if entry["outcome"] == "skipped":
            rows.append(f"           {entry.get('reason', '')[:150]}")
    return rows
