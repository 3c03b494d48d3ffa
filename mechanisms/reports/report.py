"""Claim results -> `reports/<profile>/report.json` (for machines) and `REPORT.md` (for people).

The JSON is deterministic for a given seed: entries sorted by test id, no timestamps inside the claims;
run metadata (time, durations) sits under "run" so a comparison can ignore it.
"""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from mechanisms.reports.figures import figure_png, forest_png
from mechanisms.storage import atomic_write_bytes, atomic_write_json, atomic_write_text

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
    "view": "View", "global_tokens_pct": "of global (%)", "local_tokens_pct": "of local (%)",
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


# What a measured table reproduces, by the paper's table set the run read (`model.paper_tables`): on VOC
# the token-ablation table is the paper's Table 5, not Table 1.
REPRODUCED_TABLES = {"voc": {"table1": "Table 5: token ablation on Pascal VOC (accuracy %; the paper's rows: "
                                       "Object, and Gradients / Random with as many tokens as the object)"}}
PAPER_TABLES = {"coco": "the paper's filtered COCO subset (Tables 1-4 and the text; 2,248 objects)",
                "voc": "Pascal VOC (Table 5; 1,957 objects in 1,585 images)"}


def build_report(profile: str, entries: list[dict], seed: int, run: dict) -> dict:
    entries = sorted(entries, key=lambda e: e["nodeid"])
    contexts = [e["context"] for e in entries if e.get("context")]
    context = contexts[0] if contexts else {}
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["outcome"]] = counts.get(e["outcome"], 0) + 1
    tables = merge_tables(entries)
    for name, title in REPRODUCED_TABLES.get((context.get("model") or {}).get("paper_tables"), {}).items():
        if name in tables:
            tables[name]["title"] = title
    return {
        "format": REPORT_FORMAT,
        "profile": profile,
        "seed": seed,
        "model": context.get("model"),
        "dataset": context.get("dataset"),
        "packages": package_versions(),
        "summary": dict(sorted(counts.items())),
        "claims": entries,
        "tables": tables,
        "run": run,
    }


def provenance_lines(dataset: dict, model: dict) -> list[str]:
    """Where the objects come from and which of the paper's tables the `paper` columns are."""
    provenance = dataset.get("provenance") or {}
    source = provenance.get("source") or {}
    lines = []
    if source:
        where = ", ".join(f"{k} {v}" for k, v in source.items() if k != "kind" and v is not None)
        lines.append(f"- **Source**: {source.get('kind')}" + (f" ({where})" if where else ""))
    else:
        lines.append("- **Source**: not recorded (a folder not built by `python -m mechanisms.data`)")
    filters = provenance.get("filters")
    if filters:
        removed = "; ".join(f"{k} {v}" for k, v in (filters.get("removed") or {}).items()) or "none"
        lines.append(f"- **Filters (§6.1)**: {filters.get('annotations_in')} annotations in, removed: {removed}; "
                     f"kept {filters.get('annotations_out')} in {filters.get('images_out')} images")
    if provenance.get("inpainter"):
        lines.append(f"- **Object-removed images**: {provenance['inpainter']}")
    for key in ("subset_of", "intersection_of"):
        if provenance.get(key):
            lines.append(f"- **{key.replace('_', ' ').capitalize()}**: {provenance[key]}")
    tables = (model or {}).get("paper_tables")
    nearest = (model or {}).get("paper_model")
    if nearest:
        lines.append(f"- **Paper values**: this model is not in the paper; `paper` columns show the nearest paper "
                     f"model's, {nearest} on {PAPER_TABLES[tables or 'coco']}, for scale (not a target)")
    else:
        lines.append(f"- **Paper values**: {PAPER_TABLES[tables]}" if tables in PAPER_TABLES else
                     "- **Paper values**: none (the paper measured no dataset of this source; `paper` columns are empty)")
    return lines


def paper_label(report: dict) -> str:
    """The summary's `paper` column title: the nearest paper model's name where the model is not in the paper."""
    nearest = (report.get("model") or {}).get("paper_model")
    return f"paper ({nearest}, nearest)" if nearest else "paper"


def write_report(report_dir: Path, report: dict) -> Path:
    """report.json, tables/*.csv, figures/*.png, REPORT.md and the self-contained REPORT.html."""
    from mechanisms.reports.html import render_html

    folder = Path(report_dir) / report["profile"]
    atomic_write_json(folder / "report.json", report)
    figures: dict[str, bytes] = {}
    for name, table in report.get("tables", {}).items():
        atomic_write_text(folder / "tables" / f"{name}.csv", table_csv(table))
        if table.get("figure"):
            figures[name] = figure_png(table)
    points = forest_points(report)
    if points:
        figures["summary_forest"] = forest_png(points)
    for name, png in figures.items():
        atomic_write_bytes(folder / "figures" / f"{name}.png", png)
    atomic_write_text(folder / "REPORT.md", render_markdown(report))
    atomic_write_text(folder / "REPORT.html", render_html(report, figures))
    return folder


def _columns(table: dict) -> list[str]:
    columns: list[str] = []
    for row in table["rows"]:
        columns += [k for k in row if k != "order" and k not in columns]
    return [c for c in columns if any(row.get(c) is not None for row in table["rows"])]


def table_csv(table: dict) -> str:
    import pandas as pd

    return pd.DataFrame(table["rows"], columns=_columns(table)).to_csv(index=False)


LONG_TABLE = 40  # rows beyond which a table with a figure is shown as the figure only (the rows go to CSV)


def render_table(name: str, table: dict) -> list[str]:
    columns = _columns(table)
    lines = [f"### {table.get('title') or name}", ""]
    if table.get("figure"):
        lines += [f"![{name}](figures/{name}.png)", ""]
        if len(table["rows"]) > LONG_TABLE:
            return lines + [f"{len(table['rows'])} rows: [`tables/{name}.csv`](tables/{name}.csv)", ""]
    lines.append("| " + " | ".join(COLUMN_TITLES.get(c, c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in table["rows"]:
        lines.append("| " + " | ".join(_fmt(row.get(c), 2) for c in columns) + " |")
    lines.append("")
    return lines


def format_paper(paper) -> str:
    """The paper's value as the report prints it (a range as low–high)."""
    if isinstance(paper, (list, tuple)):
        return "–".join(f"{v:.2f}" for v in paper)
    return f"{paper:.3f}"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def header_lines(report: dict) -> list[str]:
    """What was measured on what: model, dataset and its provenance, seed, packages, outcome counts
    (Markdown bullets; the HTML report renders the same lines)."""
    lines = []
    model, dataset = report.get("model") or {}, report.get("dataset") or {}
    if model:
        lines.append(f"- **Model**: {model.get('profile')} ({model.get('family')}), checkpoint "
                     f"`{model.get('checkpoint')}`, fingerprint `{model.get('fingerprint')}`, {model.get('dtype')}")
        if model.get("mutation"):
            lines.append(f"- **Mutation**: `{model['mutation']}` (planted breakage: this is not the model as shipped)")
        if model.get("system_prompt"):
            lines.append(f"- **System prompt**: {model['system_prompt']}")
        if model.get("reference_images_note"):
            lines.append(f"- **Mean embedding**: {model['reference_images_note']}")
    if dataset:
        lines.append(f"- **Dataset**: {dataset.get('name')} (fingerprint `{dataset.get('fingerprint')}`), "
                     f"{dataset.get('n_samples')} objects in {dataset.get('n_images')} images; "
                     f"skipped: {dataset.get('skipped') or 'none'}")
        lines += provenance_lines(dataset, model)
        if dataset.get("control_criterion"):
            lines.append(f"- **Control set**: pairs the model finds with the {dataset['control_criterion']} prompt on the "
                         "original image and misses once the object is removed")
    lines.append(f"- **Seed**: {report['seed']}; packages: "
                 + ", ".join(f"{k} {v}" for k, v in report["packages"].items()))
    lines.append("- **Outcomes**: " + ", ".join(f"{v} {k}" for k, v in report["summary"].items()))
    return lines


def render_markdown(report: dict) -> str:
    lines = [f"# Claims report: {report['profile']}", ""] + header_lines(report)
    lines += [""] + render_summary(report)
    if report.get("tables"):
        lines += ["", "## Tables and figures", "",
                  "Measured on this model; `paper` columns are the paper's values for the same model where it has "
                  "them. CSVs under `tables/`.", ""]
        for name, table in report["tables"].items():
            lines += render_table(name, table)
    for index, entry in enumerate(report["claims"]):
        lines += ["", f'<a id="claim-{index + 1}"></a>', "", f"## {entry['title']} — {entry['outcome'].upper()}", ""]
        if entry.get("reference"):
            lines.append(f"*Paper reference: {entry['reference']}*  ")
        lines.append(f"`{entry['nodeid']}`")
        if entry.get("finding"):
            lines += [""] + ["> " + line for line in entry["finding"].splitlines()]
        if entry.get("reason"):
            lines += ["", f"**Reason**: {entry['reason']}"]
        if entry.get("outcome") == "inconclusive" and entry.get("sampling"):
            s = entry["sampling"]
            lines += ["", f"**Sampling**: {s['used']} of {s['available']} available objects, capped by {s['capped_by']}"]
        if entry["measurements"]:
            lines += ["", "| measurement | value | 95% CI | n | paper |", "|---|---|---|---|---|"]
            for m in entry["measurements"]:
                paper = format_paper(m["paper"]) if m.get("paper") is not None else "–"
                lines.append(f"| {m['name']} | {_fmt(m['value'])} | [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] "
                             f"| {m['n']} | {paper} |")
        if entry["expectations"]:
            lines += ["", "Expectations (checked on interval bounds):", ""]
            lines += [f"- {expectation_line(e)}" for e in entry["expectations"]]
        for note in entry.get("notes", []):
            for key, value in note.items():
                if isinstance(value, list):
                    shown = "; ".join(repr(v) for v in value[:10]) or "none"
                    lines.append(f"- {key}: {len(value)} — {shown}")
                else:
                    lines.append(f"- {key}: {value}")
    return "\n".join(lines) + "\n"


def expectation_line(e: dict) -> str:
    """One expectation as the reports print it: mark, statement, the bound against its threshold, verdict."""
    verdict = e.get("verdict", "holds" if e["passed"] else "does not hold")
    mark = {"holds": "✓", "does not hold": "✗", "inconclusive": "?"}[verdict]
    needed = f"; ~{e['samples_to_decide']} samples would decide it" if e.get("samples_to_decide") else ""
    return (f"{mark} {e['statement']}: {e['measurement']}.{e['bound']} = {_fmt(e['observed'], 4)} "
            f"{e['comparison']} {_fmt(e['threshold'], 4)} (margin {e['margin']:+.4f}): {verdict}{needed}")


def paper_section(reference: str) -> tuple:
    """Sort key of a claim by the paper section its reference names first ("§3.1.2" -> (3, 1, 2)); a claim
    citing no section (the baseline, Table 1's first row) comes first."""
    import re

    found = re.search(r"§(\d+(?:\.\d+)*)", reference or "")
    return tuple(int(x) for x in found.group(1).split(".")) if found else (0,)


def deciding_expectation(entry: dict) -> dict | None:
    """The expectation that decided the verdict: of a claim that does not hold, the one failing by most;
    of one that holds, the finding's own effect with the smallest margin (the baseline-competence
    preconditions are not the finding)."""
    expectations = entry.get("expectations") or []
    failing = [e for e in expectations if e.get("verdict", "holds" if e["passed"] else "does not hold") != "holds"]
    own = [e for e in expectations if not e["measurement"].endswith("_baseline")]
    return min(failing or own or expectations, key=lambda e: e["margin"], default=None)


MARKS = {"passed": "✓ holds", "failed": "✗ does not hold", "inconclusive": "? inconclusive",
         "skipped": "– skipped", "contradicted": "✗ contradicted by the paper", "error": "! error"}


def summary_rows(report: dict, with_entries: bool = False) -> list:
    """One row per claim in the paper's order: finding, verdict, the deciding effect with its interval,
    the threshold it was held to, the paper's value for it (where the paper has one). `with_entries`:
    (row, claim entry) pairs."""
    rows = []
    ordered = sorted(enumerate(report["claims"]), key=lambda ie: (paper_section(ie[1].get("reference", "")), ie[0]))
    for index, entry in ordered:
        decisive = deciding_expectation(entry)
        measured = {m["name"]: m for m in entry.get("measurements", [])}
        m = measured.get(decisive["measurement"]) if decisive else None
        rows.append({
            "anchor": f"claim-{index + 1}", "section": ".".join(map(str, paper_section(entry.get("reference", ""))))
            if paper_section(entry.get("reference", "")) != (0,) else "", "finding": short_finding(entry),
            "title": entry["title"],
            "verdict": MARKS.get(entry["outcome"], entry["outcome"]),
            "effect": None if m is None else f"{decisive['measurement']} = {_fmt(m['value'])} "
                                             f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]",
            "threshold": None if decisive is None else f"{decisive['bound']} {decisive['comparison']} "
                                                       f"{_fmt(decisive['threshold'])}",
            "paper": None if m is None or m.get("paper") is None else format_paper(m["paper"]),
            "reason": entry.get("reason") if entry["outcome"] in ("skipped", "error", "contradicted") else None})
        if with_entries:
            rows[-1] = (rows[-1], entry)
    return rows


def short_finding(entry: dict) -> str:
    """The finding in a few words: the claim's test name, which reads as the paper's sentence
    (`test_ablating_register_tokens_barely_moves_accuracy` -> "Ablating register tokens barely moves accuracy")."""
    words = entry["nodeid"].split("::")[-1].split("[")[0].removeprefix("test_").replace("_", " ")
    return words[:1].upper() + words[1:]


def forest_points(report: dict) -> list[dict]:
    """The summary's measured rows as points of the forest plot (claims with a deciding measurement)."""
    points = []
    for row, entry in zip(summary_rows(report), _in_paper_order(report)):
        decisive = deciding_expectation(entry)
        measured = {m["name"]: m for m in entry.get("measurements", [])}
        m = measured.get(decisive["measurement"]) if decisive else None
        if m is None or any(v is None or v != v for v in (m["value"], m["ci_low"], m["ci_high"])):
            continue
        verdict = {"passed": "holds", "failed": "does not hold"}.get(entry["outcome"], entry["outcome"])
        points.append({"label": f"{row['section'] or '2.3'} {row['finding'][:60]}", "value": m["value"],
                       "ci_low": m["ci_low"], "ci_high": m["ci_high"], "threshold": decisive["threshold"],
                       "comparison": decisive["comparison"], "paper": m.get("paper"), "verdict": verdict,
                       "nodeid": entry["nodeid"]})
    return points


def _in_paper_order(report: dict) -> list[dict]:
    return [e for _, e in sorted(enumerate(report["claims"]),
                                 key=lambda ie: (paper_section(ie[1].get("reference", "")), ie[0]))]


def render_summary(report: dict) -> list[str]:
    lines = ["## Summary: which findings hold here", "",
             "In the paper's order. The deciding effect is the expectation with the smallest margin, with its "
             "95 % interval; `paper` is the paper's value for that measurement on this model (or, for a model the "
             "paper did not measure, on the nearest paper model, labelled), where it has one.",
             "", f"| § | finding | verdict | deciding effect [95 % CI] | threshold | {paper_label(report)} |",
             "|---|---|---|---|---|---|"]
    for row in summary_rows(report):
        effect = row["effect"] or (row["reason"] or "")[:160]
        if row["effect"] and row["reason"]:
            effect += f" ({row['reason'][:120]})"
        lines.append(f"| {row['section']} | [{row['finding']}](#{row['anchor']}) | {row['verdict']} | {effect} | "
                     f"{row['threshold'] or '–'} | {row['paper'] or '–'} |")
    if forest_points(report):
        lines += ["", "![every claim's deciding effect against its threshold](figures/summary_forest.png)"]
    return lines


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
