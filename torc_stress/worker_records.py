"""The worker's records: a running job and a report the reporter thread must deliver."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "RunningJob"]


@dataclass
class RunningJob:
    """A job whose process is running."""

    job: dict[str, Any]
    pid: int
    pidfd: int
    started: float
    killed: bool = False
    #: killed because the worker gave up its compute node: nothing is reported for it
    abandoned: bool = False


@dataclass
class Report:
    """A request the reporter must deliver: a job's start or its completion.

    Attributes:
        kind: ``"start"`` or ``"complete"``.
        job_id: the job.
        status: the completion's wire status (``completed``, ``failed``, ``terminated``).
        result: the completion's result model.
        failed_before: an earlier attempt failed in transit (it may have got through).
    """

    kind: str
    job_id: int
    status: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    failed_before: bool = False

