"""Job statuses as torc defines them: integers in storage, lowercase strings on the wire."""

from __future__ import annotations

from enum import IntEnum


class JobStatus(IntEnum):
    """A job's status; the integer is what the database stores."""

    UNINITIALIZED = 0
    BLOCKED = 1
    READY = 2
    PENDING = 3
    RUNNING = 4
    COMPLETED = 5
    FAILED = 6
    CANCELED = 7
    TERMINATED = 8
    DISABLED = 9
    PENDING_FAILED = 10

    @property
    def wire(self) -> str:
        """The lowercase name used in the REST API."""
        return self.name.lower()

    @classmethod
    def from_wire(cls, name: str) -> JobStatus:
        """Parses a wire name such as ``"completed"``.

        Raises:
            ValueError: the name is not a job status.
        """
        try:
            return cls[name.upper()]
        except KeyError:
            valid = ", ".join(s.wire for s in cls)
            raise ValueError(f"unknown job status {name!r}; expected one of {valid}") from None

    @property
    def satisfies_dependency(self) -> bool:
        """Whether a job in this status no longer blocks its dependents."""
        return self in DONE

    @property
    def is_failure(self) -> bool:
        """Whether this status cancels dependents that ask for it."""
        return self in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TERMINATED)


#: Statuses that satisfy a dependency (torc's "done": 5, 6, 7, 8).
DONE: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TERMINATED}
)

#: Statuses that count as finished for workflow completion (done plus disabled).
FINISHED: frozenset[JobStatus] = DONE | {JobStatus.DISABLED}

#: Statuses ``complete_job`` accepts as the new status.
COMPLETION_TARGETS: frozenset[JobStatus] = DONE | {JobStatus.PENDING_FAILED}
