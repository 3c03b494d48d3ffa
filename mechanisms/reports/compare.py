"""Compare two claims reports (a candidate checkpoint against a reference run), or merge shard reports.

    python -m mechanisms.reports.compare REFERENCE/report.json CANDIDATE/report.json [--out diff.md] [--subset]

The diff opens with the report's summary table for both runs side by side; with --out, the two forest plots
overlaid are written beside it (diff_forest.png).
    python -m mechanisms.reports.compare --merge shard1/report.json shard2/report.json ... --report-dir reports

Claims are compared by verdict (holds / does not hold / inconclusive). A regression is a claim that held
in the reference and does not hold in the candidate (or errored, or is missing); one that held and is now
inconclusive is "lost evidence" (too few samples to tell: reported apart, not a regression); inconclusive
on both sides is no change. Effect sizes "moved" when the two 95% intervals do not overlap. Exit status: 1 when there is
a regression, else 0, so the command can gate CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mechanisms.storage import atomic_write_text


@dataclass
class Comparison:
    regressions: list[str] = field(default_factory=list)
    lost_evidence: list[str] = field(default_factory=list)
    improvements: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    unchanged: int = 0
    subset: bool = False  # the candidate ran some claims only: the others are left out, not "missing"

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    def render(self, reference: dict, candidate: dict) -> str:
        def who(report):
            model = report.get("model") or {}
            return f"{report.get('profile')} `{model.get('checkpoint')}` ({model.get('fingerprint')})"

        lines = ["# Claims comparison", "", f"- reference: {who(reference)}", f"- candidate: {who(candidate)}",
                 f"- verdict: {'REGRESSION' if self.regressed else 'no regression'}", ""]
        lines += side_by_side(reference, candidate, self.subset) + [""]
        for title, items in (("Regressions (held before, does not hold now)", self.regressions),
                             ("Lost evidence (held before, inconclusive now: too few samples to tell)",
                              self.lost_evidence),
                             ("Improvements (now passing)", self.improvements),
                             ("Effect sizes that moved beyond their intervals", self.moved)):
            lines += [f"## {title}: {len(items)}", ""] + [f"- {item}" for item in items] + [""]
        lines.append(f"{self.unchanged} measurements within each other's intervals.")
        return "\n".join(lines) + "\n"


def _deciding(entry: dict | None) -> dict | None:
    """The deciding measurement of a claim (as the report's summary picks it), or None."""
    from mechanisms.reports.report import deciding_expectation

    decisive = deciding_expectation(entry) if entry else None
    return next((m for m in entry.get("measurements", []) if m["name"] == decisive["measurement"]), None) \
        if decisive else None


def side_by_side(reference: dict, candidate: dict, subset: bool = False) -> list[str]:
    """The report's summary table for both runs, claim by claim in the paper's order: each side's verdict and
    deciding effect, and what changed (regression, lost evidence, improvement, effect moved beyond its
    interval: by how much)."""
    from mechanisms.reports.report import _fmt, summary_rows

    ref_rows = {entry["nodeid"]: (row, entry) for row, entry in summary_rows(reference, with_entries=True)}
    new_rows = {entry["nodeid"]: (row, entry) for row, entry in summary_rows(candidate, with_entries=True)}
    order = [n for n in ref_rows if not subset or n in new_rows] + [n for n in new_rows if n not in ref_rows]
    lines = ["## Side by side", "", "| § | finding | reference | candidate | reference effect [95 % CI] | "
             "candidate effect [95 % CI] | change |", "|---|---|---|---|---|---|---|"]
    for nodeid in order:
        (row, before), (new_row, after) = ref_rows.get(nodeid, (None, None)), new_rows.get(nodeid, (None, None))
        shown = row or new_row
        was, now = verdict_of(before), verdict_of(after)
        change = ("regression" if was == "holds" and now not in ("holds", "inconclusive") else
                  "lost evidence" if was == "holds" and now == "inconclusive" else
                  "improvement" if was != "holds" and now == "holds" else "")
        m, n = _deciding(before), _deciding(after)
        if m and n and m["name"] == n["name"] and None not in (m["ci_low"], m["ci_high"], n["ci_low"], n["ci_high"]) \
                and (n["ci_low"] > m["ci_high"] or n["ci_high"] < m["ci_low"]):
            change = (change + "; " if change else "") + f"moved {n['value'] - m['value']:+.3f}"
        lines.append(f"| {shown['section']} | {shown['finding']} | {was} | {now} | "
                     f"{(row or {}).get('effect') or '–'} | {(new_row or {}).get('effect') or '–'} | {change or '–'} |")
    return lines


def write_overlaid_forest(reference: dict, candidate: dict, out: Path) -> Path | None:
    """Both runs' forest plots in one figure (reference hollow, candidate filled), beside the diff."""
    from mechanisms.reports.figures import forest_png
    from mechanisms.reports.report import forest_points
    from mechanisms.storage import atomic_write_bytes

    points, others = forest_points(reference), forest_points(candidate)
    if not points and not others:
        return None
    atomic_write_bytes(out, forest_png(points, candidate=others))
    return out


def _claims(report: dict) -> dict[str, dict]:
    return {entry["nodeid"]: entry for entry in report["claims"]}


def verdict_of(entry: dict | None) -> str:
    """holds / does not hold / inconclusive, or what else happened (error, skipped, missing); reports written
    before verdicts existed map passed -> holds, failed -> does not hold."""
    if entry is None:
        return "missing"
    if entry.get("verdict") and entry["outcome"] not in ("error", "skipped"):
        return entry["verdict"]
    return {"passed": "holds", "failed": "does not hold"}.get(entry["outcome"], entry["outcome"])


def compare_reports(reference: dict, candidate: dict, subset: bool = False) -> Comparison:
    """`subset`: the candidate ran only some claims (a quick check); compare those, not call the rest missing."""
    result = Comparison(subset=subset)
    ref_claims, new_claims = _claims(reference), _claims(candidate)
    if subset:
        ref_claims = {nodeid: entry for nodeid, entry in ref_claims.items() if nodeid in new_claims}
    for nodeid, before in sorted(ref_claims.items()):
        after = new_claims.get(nodeid)
        was, now = verdict_of(before), verdict_of(after)
        if was == "holds" and now == "inconclusive":
            needed = [e.get("samples_to_decide") for e in after.get("expectations", []) if e.get("verdict") == now]
            result.lost_evidence.append(f"`{nodeid}`: holds -> inconclusive"
                                        + (f" (~{max(n for n in needed if n)} samples would decide it)"
                                           if any(needed) else ""))
        elif was == "holds" and now != "holds":
            failed = [e for e in (after or {}).get("expectations", []) if not e["passed"]]
            why = "; ".join(f"{e['statement']} (margin {e['margin']:+.3f})" for e in failed) or now
            result.regressions.append(f"`{nodeid}`: holds -> {now}: {why}")
        elif was != "holds" and now == "holds":
            result.improvements.append(f"`{nodeid}`: {was} -> holds")
        if not after:
            continue
        new_measurements = {m["name"]: m for m in after["measurements"]}
        for m in before["measurements"]:
            other = new_measurements.get(m["name"])
            if other is None or any(v is None for v in (m["ci_low"], m["ci_high"], other["ci_low"], other["ci_high"])):
                continue
            if other["ci_low"] > m["ci_high"] or other["ci_high"] < m["ci_low"]:
                result.moved.append(f"`{nodeid}` {m['name']}: {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                                    f" -> {other['value']:.3f} [{other['ci_low']:.3f}, {other['ci_high']:.3f}]")
            else:
                result.unchanged += 1
    return result


def merge_reports(reports: list[dict]) -> dict:
    """One report from shard reports of the same profile and seed (each claim from the shard that ran it)."""
    from mechanisms.reports.report import build_report

    profiles = {r["profile"] for r in reports}
    seeds = {r["seed"] for r in reports}
    if len(profiles) != 1 or len(seeds) != 1:
        raise ValueError(f"shards disagree: profiles {sorted(profiles)}, seeds {sorted(seeds)}")
    entries: dict[str, dict] = {}
    for report in reports:
        for entry in report["claims"]:
            if entry["outcome"] == "deselected":
                continue
            if entry["nodeid"] in entries and entries[entry["nodeid"]] != entry:
                raise ValueError(f"{entry['nodeid']} was run by two shards with different results")
            entries[entry["nodeid"]] = entry
    run = {"merged_from": len(reports), "wall_s": sum((r.get("run") or {}).get("wall_s", 0) for r in reports)}
    return build_report(profiles.pop(), list(entries.values()), seeds.pop(), run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="also write the comparison as markdown here")
    parser.add_argument("--subset", action="store_true",
                        help="the candidate ran some of the claims only: compare those (the rest are not 'missing')")
    parser.add_argument("--merge", action="store_true", help="merge shard reports instead of comparing two")
    parser.add_argument("--report-dir", type=Path, default=Path("reports"), help="with --merge: where to write")
    args = parser.parse_args(argv)
    loaded = [json.loads(path.read_text()) for path in args.reports]
    if args.merge:
        from mechanisms.reports.report import write_report

        folder = write_report(args.report_dir, merge_reports(loaded))
        print(f"merged {len(loaded)} shard reports into {folder}")
        return 0
    if len(loaded) != 2:
        parser.error("compare takes exactly two reports: REFERENCE CANDIDATE")
    comparison = compare_reports(*loaded, subset=args.subset)
    text = comparison.render(*loaded)
    print(text)
    if args.out:
        forest = write_overlaid_forest(*loaded, args.out.with_name(args.out.stem + "_forest.png"))
        if forest is not None:
            text += f"\n![reference vs candidate: every claim's deciding effect]({forest.name})\n"
        atomic_write_text(args.out, text)
    return 1 if comparison.regressed else 0


if __name__ == "__main__":
    sys.exit(main())
