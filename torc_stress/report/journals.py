"""Parses the workers' execution journals (``executions_<node>_<pid>.jsonl``; pure, no I/O).

A worker writes one JSON object per line as things happen (docs/internals.md, "Worker
execution journal"): a ``spawn`` line when it starts a job's attempt, an ``exit`` line when that
process ended. A spawn without an exit means the worker died (or was fenced) while the job ran.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_FILE_NAME = re.compile(r"^executions_(?P<node>.+)_(?P<pid>\d+)\.jsonl$")


@dataclass(frozen=True)
class JournalEvent:
    """One journal line: ``kind`` is ``spawn`` or ``exit``; ``t`` is epoch seconds (worker clock).

    ``rc`` and ``killed`` are set on exits only; ``compute_node_id`` on spawns only.
    """

    kind: str
    job_id: int
    attempt: int
    t: float
    rc: int | None = None
    killed: bool = False
    compute_node_id: int | None = None


@dataclass(frozen=True)
class ExecutionJournal:
    """One worker process's journal.

    Attributes:
        host: the host directory it was gathered into.
        path: its path relative to the run directory.
        node: the worker's node name (from its lines, else from the file name).
        pid: the worker's pid (from its lines, else from the file name).
        events: the well-formed lines, in file order.
        bad_lines: lines that are not journal events (a torn last line, say).
    """

    host: str
    path: str
    node: str | None
    pid: int | None
    events: tuple[JournalEvent, ...]
    bad_lines: int = 0

    @property
    def last_t(self) -> float | None:
        """The time of the journal's last event (the worker's last sign of life in it)."""
        return max((e.t for e in self.events), default=None)


def parse_journal(host: str, path: str, lines: Iterable[str]) -> ExecutionJournal:
    """Parses a journal's lines; blank lines are ignored, malformed ones counted.

    Args:
        host: the host directory the file was found in.
        path: the file's path relative to the run directory.
        lines: the file's lines.

    Returns:
        The journal.
    """
    events: list[JournalEvent] = []
    bad = 0
    node: str | None = None
    pid: int | None = None
    for line in lines:
        if not line.strip():
            continue
        doc = _object(line)
        event = _event(doc) if doc is not None else None
        if event is None:
            bad += 1
            continue
        events.append(event)
        if event.kind == "spawn" and doc is not None:
            node = node or _str(doc.get("node"))
            pid = pid or _int(doc.get("pid"))
    named = _FILE_NAME.match(path.rsplit("/", 1)[-1])
    if named:
        node = node or named["node"]
        pid = pid or int(named["pid"])
    return ExecutionJournal(host, path, node, pid, tuple(events), bad)


def _object(line: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _event(doc: dict[str, Any]) -> JournalEvent | None:
    kind, t = doc.get("e"), doc.get("t")
    job, attempt = _int(doc.get("job_id")), _int(doc.get("attempt"))
    if kind not in ("spawn", "exit") or job is None or attempt is None:
        return None
    if not isinstance(t, int | float) or isinstance(t, bool):
        return None
    if kind == "spawn":
        return JournalEvent("spawn", job, attempt, float(t),
                            compute_node_id=_int(doc.get("compute_node_id")))
    return JournalEvent("exit", job, attempt, float(t), rc=_int(doc.get("rc")),
                        killed=doc.get("killed") is True)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
