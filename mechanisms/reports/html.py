"""REPORT.html: the Markdown report's content as one self-contained page (figures embedded, the summary
sortable and linked to each claim, measurements and notes collapsed), openable from disk with no server."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markupsafe import Markup, escape

TEMPLATE = Path(__file__).with_name("report.html.jinja")


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def inline_markdown(text: str) -> Markup:
    """The few inline marks the report's header lines use (**bold**, `code`), escaped otherwise."""
    html = str(escape(text.removeprefix("- ")))
    html = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html)
    return Markup(re.sub(r"`(.+?)`", r"<code>\1</code>", html))


def render_html(report: dict, figures: dict[str, bytes]) -> str:
    """`figures`: PNG bytes by table name (and "summary_forest"), as `write_report` renders them."""
    import jinja2

    from mechanisms.reports.report import (
        COLUMN_TITLES,
        _columns,
        _fmt,
        expectation_line,
        format_paper,
        header_lines,
        paper_label,
        summary_rows,
    )

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    template = environment.from_string(TEMPLATE.read_text())
    summary = [{**row, "order": order, "outcome": entry["outcome"], "reason": row["reason"] or ""}
               for order, (row, entry) in enumerate(summary_rows(report, with_entries=True))]
    tables = []
    for name, table in (report.get("tables") or {}).items():
        columns = _columns(table)
        tables.append({"name": name, "title": table.get("title") or name,
                       "figure": data_uri(figures[name]) if name in figures else None,
                       "columns": [COLUMN_TITLES.get(c, c) for c in columns],
                       "rows": [[_fmt(row.get(c), 2) for c in columns] for row in table["rows"]]})
    claims = []
    for index, entry in enumerate(report["claims"]):
        expectations = []
        for e in entry.get("expectations") or []:
            verdict = e.get("verdict", "holds" if e["passed"] else "does not hold")
            css = {"holds": "passed", "does not hold": "failed", "inconclusive": "inconclusive"}[verdict]
            expectations.append({"css": css, "text": expectation_line(e)})
        notes = []
        for note in entry.get("notes", []):
            for key, value in note.items():
                notes.append(f"{key}: {len(value)} — " + ("; ".join(repr(v) for v in value[:10]) or "none")
                             if isinstance(value, list) else f"{key}: {value}")
        claims.append({
            "anchor": f"claim-{index + 1}", "title": entry["title"], "outcome": entry["outcome"],
            "reference": entry.get("reference"), "nodeid": entry["nodeid"], "finding": entry.get("finding"),
            "reason": entry.get("reason"), "expectations": expectations, "notes": notes,
            "measurements": [{"name": m["name"], "value": _fmt(m["value"]), "n": m["n"],
                              "ci": f"[{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]",
                              "paper": format_paper(m["paper"]) if m.get("paper") is not None else "–"}
                             for m in entry.get("measurements", [])]})
    forest = figures.get("summary_forest")
    return template.render(report=report, header=[inline_markdown(line) for line in header_lines(report)],
                           summary=summary, forest=data_uri(forest) if forest else None, tables=tables,
                           claims=claims, paper_label=paper_label(report))
