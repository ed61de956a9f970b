"""Writes junit.xml: one test case per check, failures with their message (CI systems read it)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from torc_stress.report.checks import Check, Status

SUITE_NAME = "torc-stress report"


def _fmt(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _summary(c: Check) -> str:
    bounds = f"lower={_fmt(c.lower)} upper={_fmt(c.upper)}"
    return f"measured={_fmt(c.measured)} {c.unit} reference={_fmt(c.reference)} {bounds}"


def build_junit(checks: Sequence[Check], run_id: str) -> ET.ElementTree:
    """Builds a JUnit document with one ``testsuite`` and one ``testcase`` per check.

    Args:
        checks: the evaluated checks.
        run_id: the run's id (a suite property).

    Returns:
        The XML tree; times are 0 so the file is reproducible.
    """
    failures = sum(1 for c in checks if c.status is Status.FAIL)
    skipped = sum(1 for c in checks if c.status is Status.SKIP)
    counts = {"tests": str(len(checks)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped), "time": "0"}
    root = ET.Element("testsuites", {"name": SUITE_NAME, **counts})
    suite = ET.SubElement(root, "testsuite", {"name": SUITE_NAME, **counts})
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", {"name": "run_id", "value": run_id})
    for check in checks:
        _testcase(suite, check)
    ET.indent(root)
    return ET.ElementTree(root)


def _testcase(suite: ET.Element, c: Check) -> None:
    case = ET.SubElement(suite, "testcase",
                         {"classname": "torc_stress.report", "name": c.name, "time": "0"})
    if c.status is Status.FAIL:
        failure = ET.SubElement(case, "failure", {"message": f"{c.title}: {c.detail}",
                                                  "type": "CheckFailed"})
        failure.text = (f"expected: {c.expected}\nmeasured: {c.detail}\n{_summary(c)}\n"
                        f"look at: {'; '.join(c.where)}")
    elif c.status is Status.SKIP:
        ET.SubElement(case, "skipped", {"message": c.detail})
    out = ET.SubElement(case, "system-out")
    out.text = f"{c.title}: {c.detail} ({_summary(c)})"


def junit_text(checks: Sequence[Check], run_id: str) -> str:
    """Returns the JUnit document as a UTF-8 XML string with declaration."""
    root = build_junit(checks, run_id).getroot()
    assert root is not None
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
