"""The picture of a search: every measured candidate, latency against accuracy drop.

:func:`write_search_chart` draws the candidates (failed ones left out), the Pareto front as a
step line, the accuracy budget as a vertical line, the baseline and the chosen point, on
matplotlib's Agg canvas (no display), and writes the PNG through a temporary file.
"""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

from .space import SearchReport


def write_search_chart(report: SearchReport, path: str | Path) -> Path:
    """Write ``report`` as a PNG scatter plot at ``path``; returns the path.

    Raises
    ------
    ImportError
        matplotlib is not installed (``pip install 'hwcc[bench]'``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    top1 = report.metric == "top1"
    points = [c for c in [report.baseline, *report.candidates] if c.ok]
    front = report.pareto
    best = report.best
    fig = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    inside = [c for c in points if report.within(c)]
    outside = [c for c in points if not report.within(c)]
    for group, color, label in ((inside, "tab:blue", "within the budget"),
                                (outside, "tab:gray", "over the budget")):
        if group:
            ax.scatter([c.drop for c in group], [c.latency_ms for c in group], s=28,
                       color=color, label=label, zorder=3)
            if top1:
                ax.errorbar([c.drop for c in group], [c.latency_ms for c in group],
                            xerr=[c.drop_ci95 or 0.0 for c in group], fmt="none",
                            ecolor=color, alpha=0.35, zorder=2)
    ax.step([c.drop for c in front], [c.latency_ms for c in front], where="post",
            color="tab:orange", label="Pareto front", zorder=4)
    ax.scatter([report.baseline.drop], [report.baseline.latency_ms], marker="s", s=60,
               color="black", label="baseline", zorder=5)
    ax.scatter([best.drop], [best.latency_ms], marker="*", s=220, color="tab:red",
               label=f"chosen (#{best.id})", zorder=6)
    for c in points:
        ax.annotate(f"#{c.id}", (c.drop, c.latency_ms), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.axvline(report.max_accuracy_drop, color="tab:red", linestyle="--", linewidth=1,
               label="accuracy budget")
    ax.set_xlabel("top-1 drop (points)" if top1 else "largest relative output error")
    ax.set_ylabel("latency (ms, median)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    samples = f", {report.eval_samples} samples" if report.eval_samples else ""
    title = (f"{Path(report.model).name}: {report.strategy} search, {len(report.candidates)} "
             f"candidates{samples}\n{textwrap.fill(report.target, 100)}")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
