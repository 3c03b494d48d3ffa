"""The report's figures: a table drawn as its `figure` spec says (heatmap, lines, grouped bars), as PNG bytes."""

from __future__ import annotations


CLIP_PERCENTILE = 99.0  # diverging heatmaps: colour scale up to this percentile of |value|, beyond it named


def _axis(values: set) -> list:
    """Heatmap axis ticks: numerically ordered when they are numbers (layer 2 before layer 10)."""
    return sorted(values) if all(isinstance(v, (int, float)) for v in values) else sorted(values, key=str)


def figure_png(table: dict) -> bytes:
    """Draw a table as its `figure` spec says: a heatmap (x, y, value[, std]), lines (x, y, series), or
    grouped bars (x, y, series[, panel])."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    spec, rows = table["figure"], table["rows"]
    if spec["kind"] == "heatmap":
        ys = _axis({r[spec["y"]] for r in rows})
        xs = _axis({r[spec["x"]] for r in rows})
        values = np.full((len(ys), len(xs)), np.nan)
        stds = np.zeros_like(values)
        for r in rows:
            values[ys.index(r[spec["y"]]), xs.index(r[spec["x"]])] = r[spec.get("value", "value")]
            stds[ys.index(r[spec["y"]]), xs.index(r[spec["x"]])] = r.get(spec.get("std") or "", None) or 0.0
        fig, ax = plt.subplots(figsize=(min(14, 0.9 * len(xs) + 2.5), min(12, 0.6 * len(ys) + 1.8)), dpi=100)
        finite = values[np.isfinite(values)]
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        high = max(1e-9, float(finite.max())) if finite.size else 1.0
        clipped_note = ""
        if spec.get("centered"):  # diverging values (e.g. MF): zero in the middle, robust to one outlier head
            scale = float(np.percentile(np.abs(finite), CLIP_PERCENTILE, method="lower")) if finite.size else 1.0
            scale = scale if scale > 0 else max(abs(low), high)
            low, high = -scale, scale
            outside = [(ys[i], xs[j], values[i, j]) for i, j in zip(*np.where(np.abs(np.nan_to_num(values)) > scale))]
            if outside:
                named = ", ".join(f"{y}/{x} = {v:.2f}" for y, x, v in sorted(outside, key=lambda o: -abs(o[2]))[:4])
                clipped_note = (f"\ncolour clipped at ±{scale:.3g} (the {CLIP_PERCENTILE:g}th percentile of |value|); "
                                f"{len(outside)} beyond: {named}" + (" …" if len(outside) > 4 else ""))
        image = ax.imshow(values, cmap=spec.get("cmap", "Blues"), vmin=low, vmax=high, aspect="auto")
        if len(xs) * len(ys) <= 64:
            for i in range(len(ys)):
                for j in range(len(xs)):
                    text = f"{values[i, j]:.3f}" + (f"\n±{stds[i, j]:.3f}" if spec.get("std") else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] > low + 0.6 * (high - low) else "black")
        fig.colorbar(image, ax=ax, fraction=0.05)
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
    elif spec["kind"] == "bars":  # grouped bars: x groups, one bar per series, one panel per `panel` value
        panels = list(dict.fromkeys(r[spec["panel"]] for r in rows)) if spec.get("panel") else [None]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1, 3.8), dpi=100, squeeze=False)
        for ax, panel in zip(axes[0], panels):
            chosen = [r for r in rows if panel is None or r[spec["panel"]] == panel]
            xs = list(dict.fromkeys(str(r[spec["x"]]) for r in chosen))
            series = list(dict.fromkeys(r[spec["series"]] for r in chosen))
            width = 0.8 / max(1, len(series))
            for k, name in enumerate(series):
                points = [r for r in chosen if r[spec["series"]] == name]
                ax.bar([xs.index(str(r[spec["x"]])) + (k - (len(series) - 1) / 2) * width for r in points],
                       [r[spec["y"]] for r in points], width=width, label=str(name))
            ax.set_xticks(range(len(xs)), xs)
            ax.axhline(0, color="black", linewidth=0.6)
            ax.grid(alpha=0.3, axis="y")
            if panel is not None:
                ax.set_title(str(panel), fontsize=9)
            ax.set_xlabel(spec.get("xlabel", spec["x"]))
            ax.set_ylabel(spec.get("ylabel", spec["y"]))
        axes[0][0].legend(fontsize=8)
        fig.suptitle(table.get("title", ""), fontsize=9)
    else:
        fig, ax = plt.subplots(figsize=(7, 3.8), dpi=100)
        numeric = all(isinstance(r[spec["x"]], (int, float)) for r in rows)
        xs = list(dict.fromkeys(str(r[spec["x"]]) for r in rows))  # the table's row order, not per series
        labels = spec.get("labels") or {}  # series -> legend label (e.g. with its normalized AUC)
        for series in dict.fromkeys(r[spec["series"]] for r in rows):
            points = [r for r in rows if r[spec["series"]] == series]
            where = [r[spec["x"]] if numeric else xs.index(str(r[spec["x"]])) for r in points]
            values = [r[spec["y"]] for r in points]
            (line,) = ax.plot(where, values, marker="o", label=labels.get(str(series), str(series)))
            if series in (spec.get("mark_max") or []) and values:  # the peak, marked and named (Figure 2)
                best = int(np.argmax(values))
                ax.plot([where[best]], [values[best]], marker="*", markersize=14, color=line.get_color(),
                        linestyle="")
                ax.annotate(f"peak {points[best][spec['x']]}: {values[best]:.1f}", (where[best], values[best]),
                            textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
        for reference in spec.get("hlines") or []:  # e.g. each task's unmodified accuracy (Figures 3, 12)
            ax.axhline(reference["y"], linestyle="--", linewidth=1, color=reference.get("color", "grey"))
            ax.annotate(reference["label"], (0, reference["y"]), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(3, 3), fontsize=7, color=reference.get("color", "grey"))
        if not numeric:
            ax.set_xticks(range(len(xs)), xs)
        ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    if spec["kind"] != "bars":  # bars label each panel themselves
        ax.set_xlabel(spec.get("xlabel", spec["x"]))
        ax.set_ylabel(spec.get("ylabel", spec.get("y", "")))
        ax.set_title(table.get("title", "") + (clipped_note if spec["kind"] == "heatmap" else ""), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


VERDICT_COLOURS = {"holds": "tab:green", "does not hold": "tab:red", "inconclusive": "tab:orange",
                   "contradicted": "tab:purple"}


def forest_png(points: list[dict], candidate: list[dict] | None = None) -> bytes:
    """The whole suite at a glance: each claim's deciding effect with its 95 % interval, as its distance
    from the threshold on the passing side (0 = the threshold; right of it holds), the paper's value for
    the same measurement as a diamond, colour by verdict. `points`: label, value, ci_low, ci_high,
    threshold, comparison, paper (number or None), verdict, nodeid. `candidate`: a second run's points,
    overlaid claim by claim (reference hollow above, candidate filled below: the regression diff)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def passing_side(p, x):
        return x - p["threshold"] if p["comparison"] == ">=" else p["threshold"] - x

    def draw(p, y, hollow=False):
        ends = sorted((passing_side(p, p["ci_low"]), passing_side(p, p["ci_high"])))
        colour = VERDICT_COLOURS.get(p["verdict"], "grey")
        ax.plot(ends, [y, y], color=colour, linewidth=1.2 if hollow else 2, linestyle=":" if hollow else "-")
        ax.plot([passing_side(p, p["value"])], [y], "o", color=colour, markersize=5,
                fillstyle="none" if hollow else "full")

    if candidate is not None:  # one row per claim of either run, in the reference's order
        by_id = {p.get("nodeid"): p for p in candidate}
        rows = [(p, by_id.pop(p.get("nodeid"), None)) for p in points] + [(None, p) for p in by_id.values()]
    else:
        rows = [(p, None) for p in points]
    fig, ax = plt.subplots(figsize=(10.5, max(2.4, (0.45 if candidate is not None else 0.32) * len(rows) + 1.4)),
                           dpi=100)
    for y, (p, q) in enumerate(reversed(rows)):
        if candidate is None:
            draw(p, y)
        else:
            if p is not None:
                draw(p, y + 0.17, hollow=True)
            if q is not None:
                draw(q, y - 0.17)
        shown = p or q
        if isinstance(shown.get("paper"), (int, float)):
            ax.plot([passing_side(shown, shown["paper"])], [y], "D", color="black", markersize=4, fillstyle="none")
    points = [p or q for p, q in rows]
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(points)), [p["label"] for p in reversed(points)], fontsize=7)
    ax.set_xlabel("deciding effect minus its threshold, passing side to the right (fractions; layers for locations)",
                  fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="-", label=v) for v, c in VERDICT_COLOURS.items()]
    handles.append(plt.Line2D([], [], color="black", marker="D", fillstyle="none", linestyle="", label="paper"))
    if candidate is not None:
        handles += [plt.Line2D([], [], color="grey", marker="o", fillstyle="none", linestyle=":", label="reference"),
                    plt.Line2D([], [], color="grey", marker="o", linestyle="-", label="candidate")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title("Every claim's deciding effect against its threshold"
                 + (": reference (hollow) vs candidate (filled)" if candidate is not None else ""), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
