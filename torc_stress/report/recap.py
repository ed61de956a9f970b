"""Render playbook runs: the per-host live line and the Ansible-style PLAY RECAP."""

from __future__ import annotations

from tabulate import tabulate

from torc_stress.cluster.executor import PlaybookResult, TaskEvent

_COUNTERS = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")


def host_prefix(host: str) -> str:
    """The prefix of every live output line of ``host``: ``[host]``."""
    return f"[{host}]"


def format_event(event: TaskEvent) -> str:
    """One live line, e.g. ``[w1] TASK Start workers ... changed``, plus indented details.

    Failed and unreachable tasks show their message; other statuses show nothing more.
    """
    status = "failed (ignored)" if event.ignored else event.status
    line = f"{host_prefix(event.host)} TASK {event.task} ... {status}"
    if event.status in ("failed", "unreachable") and event.message:
        details = "\n".join(f"{host_prefix(event.host)}   {text}"
                            for text in event.message.splitlines())
        line = f"{line}\n{details}"
    return line


def format_recap(result: PlaybookResult) -> str:
    """The PLAY RECAP: one aligned line per host (sorted), then unreachable and failure reasons.

    Columns follow ansible-playbook: ``host : ok=N changed=N unreachable=N failed=N skipped=N
    rescued=N ignored=N``.
    """
    rows = [[host, ":", *(f"{name}={getattr(stats, name)}" for name in _COUNTERS)]
            for host, stats in sorted(result.stats.items())]
    lines = ["PLAY RECAP " + "*" * 69]
    if rows:
        lines.append(tabulate(rows, tablefmt="plain", disable_numparse=True))
    for title, reasons in (("UNREACHABLE", result.unreachable), ("FAILED", result.failures)):
        for host, reason in sorted(reasons.items()):
            first, *rest = str(reason).splitlines() or [""]
            lines.append(f"{title} {host}: {first}")
            lines.extend(f"    {text}" for text in rest)
    return "\n".join(lines)
