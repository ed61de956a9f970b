"""Everything that renders: verdict, tables, JSON, JUnit, timeline plot, playbook recap.

``report_command`` is imported lazily so that importing ``torc_stress.report.recap`` does not
pull in matplotlib.
"""

from __future__ import annotations

from typing import Any

__all__ = ["report_command"]


def __getattr__(name: str) -> Any:
    if name == "report_command":
        from torc_stress.report.command import report_command

        return report_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
