"""Draws timeline.png: completions per time bin by stage, running jobs, barriers and faults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from torc_stress.report.overview import RunAnalysis  # noqa: E402

_TARGET_BINS = 80
_NICE = (1, 2, 2.5, 5, 10)
_FAULT_COLOUR = "darkorange"


@dataclass(frozen=True)
class FaultMark:
    """Where the plot marks one injected fault (seconds after the start); ``until``: a span."""

    at: float
    until: float | None
    label: str


def fault_marks(a: RunAnalysis) -> list[FaultMark]:
    """Returns a mark per injected fault: a line, and for a partition a span to its end."""
    marks = []
    for f in a.faults.faults:
        if f.injected_s is None:
            continue
        host = f.fault.host or (a.data.server_host if f.fault.kind == "restart-server" else "")
        span = f.fault.kind == "partition" and f.ended_s is not None and f.ended_s > f.injected_s
        marks.append(FaultMark(f.injected_s, f.ended_s if span else None,
                               f"{f.fault.kind} {host}".strip()))
    return marks


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


def running_per_bin(a: RunAnalysis, edges: list[float], width: float) -> list[float]:
    """Returns the average number of jobs running (started, not yet completed) in each bin."""
    busy = [0.0] * len(edges)
    horizon = len(edges) * width
    for job in a.data.jobs:
        if job.start_time is None:
            continue
        start = job.start_time - a.t0
        end = job.end_time - a.t0 if job.end_time is not None else horizon
        first, last = int(start / width), min(len(edges) - 1, int(end / width))
        for i in range(max(first, 0), last + 1):
            busy[i] += max(0.0, min(end, edges[i] + width) - max(start, edges[i]))
    return [b / width for b in busy]


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
        _fault_lines(ax, fault_marks(a))
        ax.legend(loc="upper left", title="jobs completed in", fontsize="small")
        _running_line(ax, edges, running_per_bin(a, edges, width), width)
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
    stages = [lv for lv in a.levels if lv.kind == "stage"]
    for index, lv in enumerate(stages):
        ax.bar(edges, counts[lv.label], width=width, bottom=bottom, align="edge",
               color=cmap(index % 10), label=lv.label if index < 12 else None, linewidth=0)
        bottom = [b + c for b, c in zip(bottom, counts[lv.label], strict=True)]
    ax.set_ylim(0, max(max(bottom, default=0), 1) * 1.3)


def _barrier_lines(ax: plt.Axes, a: RunAnalysis) -> None:
    jobs = {j.id: j for j in a.data.jobs}
    labelled = False
    for lv in a.levels:
        end = jobs[lv.job_ids[0]].end_time if lv.kind == "barrier" else None
        if end is None:
            continue
        x = end - a.t0
        ax.axvline(x, color="black", linestyle="--", linewidth=1,
                   label=None if labelled else "barrier completed")
        labelled = True
        ax.annotate(lv.label, xy=(x, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(-3, -4), textcoords="offset points", rotation=90,
                    va="top", ha="right", fontsize="x-small",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                          "alpha": 0.8})


def _fault_lines(ax: plt.Axes, marks: list[FaultMark]) -> None:
    spans = [m for m in marks if m.until is not None]
    for mark in marks:
        if mark.until is not None:
            ax.axvspan(mark.at, mark.until, color=_FAULT_COLOUR, alpha=0.15, linewidth=0, zorder=0,
                       label="partition (injected -> ended)" if mark is spans[0] else None)
        ax.axvline(mark.at, color=_FAULT_COLOUR, linestyle=":", linewidth=1.5,
                   label="fault injected" if mark is marks[0] else None)
        ax.annotate(mark.label, xy=(mark.at, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 4), textcoords="offset points", rotation=90, va="bottom",
                    ha="left", fontsize="x-small", color=_FAULT_COLOUR)


def _running_line(ax: plt.Axes, edges: list[float], running: list[float], width: float) -> None:
    right = ax.twinx()
    xs = [*edges, edges[-1] + width] if edges else []
    right.stairs(running, xs, color="crimson", linewidth=1.5, label="jobs running (average)",
                 baseline=None)
    right.set_ylabel("jobs running (average per bin)", color="crimson")
    right.tick_params(axis="y", colors="crimson")
    right.set_ylim(0, max(max(running, default=0), 1) * 1.3)
    right.legend(loc="upper right", fontsize="small")
