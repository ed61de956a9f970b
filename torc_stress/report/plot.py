"""Draws timeline.png: completions per time bin by stage, running jobs, barrier moments."""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from torc_stress.report.overview import RunAnalysis  # noqa: E402

_TARGET_BINS = 80
_NICE = (1, 2, 2.5, 5, 10)


def bin_width(span_s: float, target_bins: int = _TARGET_BINS) -> float:
    """Returns a round bin width (1, 2, 2.5 or 5 times a power of ten) giving ~target bins."""
    raw = max(span_s, 1e-3) / target_bins
    power = 10 ** math.floor(math.log10(raw))
    return next(n * power for n in _NICE if n * power >= raw)


def completion_bins(
    a: RunAnalysis, width: float
) -> tuple[list[float], dict[str, list[int]]]:
    """Counts completions per bin for each level (stage or barrier).

    Returns:
        The bin left edges (seconds after the start) and, per level label, one count per bin.
    """
    span = a.last_end_s or 0.0
    nbins = max(1, math.floor(span / width) + 1)
    edges = [i * width for i in range(nbins)]
    jobs = {j.id: j for j in a.data.jobs}
    counts: dict[str, list[int]] = {}
    for lv in a.levels:
        row = [0] * nbins
        for job_id in lv.job_ids:
            end = jobs[job_id].end_time
            if end is not None:
                row[min(nbins - 1, int((end - a.t0) / width))] += 1
        counts[lv.label] = row
    return edges, counts


def running_series(a: RunAnalysis, points: int = 400) -> tuple[list[float], list[int]]:
    """Samples how many jobs were running (started, not yet completed) over the run."""
    starts = sorted(j.start_time - a.t0 for j in a.data.jobs if j.start_time is not None)
    ends = sorted(j.end_time - a.t0 for j in a.data.jobs
                  if j.end_time is not None and j.start_time is not None)
    span = max(a.last_end_s or 0.0, starts[-1] if starts else 0.0)
    times = [span * i / (points - 1) for i in range(points)]
    running = [bisect.bisect_right(starts, t) - bisect.bisect_right(ends, t) for t in times]
    return times, running


def draw_timeline(a: RunAnalysis, path: Path) -> None:
    """Writes the timeline plot as a PNG.

    Args:
        a: the run's analysis.
        path: where to write the PNG.
    """
    width = bin_width(a.last_end_s or 1.0)
    edges, counts = completion_bins(a, width)
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=100)
    try:
        _bars(ax, a, edges, counts, width)
        _barrier_lines(ax, a)
        _running_line(ax, a)
        ax.set_xlabel("seconds since the first job was ready")
        ax.set_ylabel(f"jobs completed per {width:g} s")
        ax.set_title(f"Run {a.data.run.get('run_id', '?')}: {a.completed} of {a.jobs} jobs "
                     "completed, by stage")
        ax.set_xlim(left=0)
        fig.tight_layout()
        fig.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(fig)


def _bars(ax: plt.Axes, a: RunAnalysis, edges: list[float], counts: dict[str, list[int]],
          width: float) -> None:
    cmap = plt.get_cmap("tab10")
    bottom = [0] * len(edges)
    stage_index = 0
    barrier_labelled = False
    for lv in a.levels:
        color: str | tuple[float, float, float, float]
        label: str | None
        if lv.kind == "barrier":
            color, label = "black", None if barrier_labelled else "barriers"
            barrier_labelled = True
        else:
            color, label = cmap(stage_index % 10), lv.label
            stage_index += 1
        ax.bar(edges, counts[lv.label], width=width, bottom=bottom, align="edge",
               color=color, label=label if stage_index <= 12 else None, linewidth=0)
        bottom = [b + c for b, c in zip(bottom, counts[lv.label], strict=True)]
    ax.set_ylim(0, max(max(bottom, default=0), 1) * 1.25)
    ax.legend(loc="upper left", title="completions of", fontsize="small")


def _barrier_lines(ax: plt.Axes, a: RunAnalysis) -> None:
    jobs = {j.id: j for j in a.data.jobs}
    for lv in a.levels:
        end = jobs[lv.job_ids[0]].end_time if lv.kind == "barrier" else None
        if end is None:
            continue
        x = end - a.t0
        ax.axvline(x, color="dimgray", linestyle="--", linewidth=1)
        ax.annotate(lv.label, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -4), textcoords="offset points", rotation=90,
                    va="top", ha="left", fontsize="x-small", color="dimgray")


def _running_line(ax: plt.Axes, a: RunAnalysis) -> None:
    times, running = running_series(a)
    right = ax.twinx()
    right.plot(times, running, color="crimson", linewidth=1.2, label="jobs running")
    right.set_ylabel("jobs running", color="crimson")
    right.tick_params(axis="y", colors="crimson")
    right.set_ylim(0, max(max(running, default=0), 1) * 1.25)
    right.legend(loc="upper right", fontsize="small")
