"""Claim results -> `reports/<profile>/report.json` (for machines) and `REPORT.md` (for people).

The JSON is deterministic for a given seed: entries sorted by test id, no timestamps inside the claims;
run metadata (time, durations) sits under "run" so a comparison can ignore it.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from mechanisms.io import atomic_write_bytes, atomic_write_json, atomic_write_text
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


# Readable column headers for the tables claims record (anything else is shown under its own name).
COLUMN_TITLES = {
    "strategy": "Ablation strategy", "k": "k", "tokens_pct": "Token (%)", "paper_tokens_pct": "paper Token (%)",
    "localization": "Loc. (%)", "localization_std": "± (seeds)", "localization_drop": "↓ Loc.",
    "paper_localization": "paper Loc.", "classification": "Cls. (%)", "classification_std": "± (seeds)",
    "classification_drop": "↓ Cls.", "paper_classification": "paper Cls.", "task": "Task", "mode": "Mode",
    "value": "Value", "std": "± (seeds)", "drop": "↓", "paper": "paper", "padding": "Padding p",
    "scale": "GT scaling s",
}
IDENTITY = ("order", "strategy", "k", "task", "mode", "padding", "scale")


def merge_tables(entries: list[dict]) -> dict[str, dict]:
    """Tables by id, rows from every claim merged (a row recorded by two claims appears once), in order."""
    tables: dict[str, dict] = {}
    for entry in entries:
        for part in entry.get("tables", []):
            table = tables.setdefault(part["table"], {"title": part.get("title", ""), "figure": part.get("figure"),
                                                      "rows": {}})
            for row in part["rows"]:
                table["rows"].setdefault(tuple(row.get(k) for k in IDENTITY), row)
    return {name: {**t, "rows": [t["rows"][k] for k in sorted(t["rows"], key=lambda k: (k[0], str(k)))]}
            for name, t in sorted(tables.items())}


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
        "tables": merge_tables(entries),
        "run": run,
    }


def write_report(report_dir: Path, report: dict) -> Path:
    folder = Path(report_dir) / report["profile"]
    atomic_write_json(folder / "report.json", report)
    for name, table in report.get("tables", {}).items():
        atomic_write_text(folder / "tables" / f"{name}.csv", table_csv(table))
        if table.get("figure") == "heatmap":
            atomic_write_bytes(folder / "figures" / f"{name}.png", heatmap_png(table))
    atomic_write_text(folder / "REPORT.md", render_markdown(report))
    return folder


def _columns(table: dict) -> list[str]:
    columns: list[str] = []
    for row in table["rows"]:
        columns += [k for k in row if k != "order" and k not in columns]
    return [c for c in columns if any(row.get(c) is not None for row in table["rows"])]


def table_csv(table: dict) -> str:
    import pandas as pd

    return pd.DataFrame(table["rows"], columns=_columns(table)).to_csv(index=False)


def heatmap_png(table: dict) -> bytes:
    """Figure 1 style: rows = padding p, columns = GT scaling s, cell = mean ± std over seeds."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted({r["padding"] for r in table["rows"]})
    cols = sorted({r["scale"] for r in table["rows"]})
    values = np.full((len(rows), len(cols)), np.nan)
    stds = np.zeros_like(values)
    for r in table["rows"]:
        values[rows.index(r["padding"]), cols.index(r["scale"])] = r["value"]
        stds[rows.index(r["padding"]), cols.index(r["scale"])] = r.get("std") or 0.0
    fig, ax = plt.subplots(figsize=(1.4 * len(cols) + 1.5, 1.1 * len(rows) + 1.2), dpi=100)
    ax.imshow(values, cmap="Blues", vmin=0, vmax=max(1e-9, float(np.nanmax(values))))
    for i in range(len(rows)):
        for j in range(len(cols)):
            dark = values[i, j] > 0.6 * np.nanmax(values)
            ax.text(j, i, f"{values[i, j]:.3f}\n±{stds[i, j]:.3f}", ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [f"GT +{c}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"p = {r}" for r in rows])
    ax.set_xlabel("ground-truth box scaled by s token cells")
    ax.set_ylabel("container padding p")
    ax.set_title(table.get("title", ""), fontsize=9, wrap=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def render_table(name: str, table: dict) -> list[str]:
    columns = _columns(table)
    lines = [f"### {table.get('title') or name}", ""]
    if table.get("figure") == "heatmap":
        lines += [f"![{name}](figures/{name}.png)", ""]
    lines.append("| " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in table["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(c), 2) for c in columns) + " |")
    lines.append("")
    return lines


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
    if report.get("tables"):
        lines += ["", "## Tables and figures", "",
                  "Measured on this model; `paper` columns are the paper's values for the same model where it has "
                  "them. CSVs under `tables/`.", ""]
        for name, table in report["tables"].items():
            lines += render_table(name, table)
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
