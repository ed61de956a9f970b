"""``torc-stress report RUN_DIR``: verdict, tables and the four report files of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TextIO

from torc_stress.errors import RunDirError
from torc_stress.report import jsonout, junit, plot, tables
from torc_stress.report.checks import Check, Status, Thresholds, build_checks
from torc_stress.report.overview import RunAnalysis, analyze
from torc_stress.report.rundir import load_run_dir

logger = logging.getLogger(__name__)

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNUSABLE = 2


def evaluate(run_dir: Path, thresholds: Thresholds | None = None
             ) -> tuple[RunAnalysis, tuple[Check, ...]]:
    """Loads a run directory, analyses it and evaluates the checks (no files written).

    Raises:
        RunDirError: the run directory is unusable.
    """
    limits = thresholds or Thresholds()
    analysis = analyze(load_run_dir(run_dir), stall_gap_s=limits.stall_s)
    return analysis, build_checks(analysis, limits)


def write_outputs(run_dir: Path, analysis: RunAnalysis, checks: tuple[Check, ...],
                  thresholds: Thresholds) -> str:
    """Writes report.txt, report.json, junit.xml and timeline.png into the run directory.

    Returns:
        The text report (what report.txt holds).
    """
    text = tables.render_report(analysis, checks)
    files = jsonout.OUTPUT_FILES
    (run_dir / files["text"]).write_text(text, encoding="utf-8")
    doc = jsonout.build_document(analysis, checks, thresholds)
    (run_dir / files["json"]).write_text(jsonout.dumps(doc), encoding="utf-8")
    run_id = str(analysis.data.run.get("run_id") or run_dir.name)
    (run_dir / files["junit"]).write_text(junit.junit_text(checks, run_id), encoding="utf-8")
    plot.draw_timeline(analysis, run_dir / files["timeline"])
    return text


def report_command(run_dir: Path, stream: TextIO, thresholds: Thresholds | None = None) -> int:
    """Reports on a run directory: prints the verdict and tables, writes the report files.

    Args:
        run_dir: the gathered run directory.
        stream: where the report text (or the reason the directory is unusable) is printed.
        thresholds: the limits; the seed's defaults when None.

    Returns:
        0 when every check passed, 1 when a check failed, 2 when the run directory is unusable.
    """
    limits = thresholds or Thresholds()
    try:
        analysis, checks = evaluate(run_dir, limits)
    except RunDirError as exc:
        print(f"torc-stress report: unusable run directory: {exc}", file=stream)
        return EXIT_UNUSABLE
    text = write_outputs(run_dir, analysis, checks, limits)
    stream.write(text)
    stream.write(f"Report files: {', '.join(jsonout.OUTPUT_FILES.values())} in {run_dir}\n")
    return EXIT_FAIL if any(c.status is Status.FAIL for c in checks) else EXIT_PASS
