"""The PLAY RECAP and live lines read like ansible-playbook's."""

from __future__ import annotations

import re

from torc_stress.cluster.executor import HostStats, PlaybookResult, TaskEvent
from torc_stress.report.recap import format_event, format_recap


def test_the_recap_has_one_aligned_line_per_host_sorted_then_the_reasons() -> None:
    result = PlaybookResult(
        stats={"w2": HostStats(ok=3, changed=1), "a-long-server-name": HostStats(ok=1, failed=1),
               "w1": HostStats(unreachable=1)},
        unreachable={"w1": "cannot connect: 10.0.0.1:22: Connection refused"},
        failures={"a-long-server-name": "play 'P', task 'T': boom\nstderr line"})
    lines = format_recap(result).splitlines()
    assert lines[0].startswith("PLAY RECAP ***")
    hosts = [line.split()[0] for line in lines[1:4]]
    assert hosts == ["a-long-server-name", "w1", "w2"]
    assert len({line.index(":") for line in lines[1:4]}) == 1  # the colons line up
    assert re.search(r"w2\s+:\s+ok=3\s+changed=1\s+unreachable=0\s+failed=0\s+skipped=0\s+"
                     r"rescued=0\s+ignored=0", lines[3])
    assert lines[4] == "UNREACHABLE w1: cannot connect: 10.0.0.1:22: Connection refused"
    assert lines[5] == "FAILED a-long-server-name: play 'P', task 'T': boom"
    assert lines[6] == "    stderr line"


def test_a_live_line_is_prefixed_with_the_host_and_shows_failure_details() -> None:
    ok = TaskEvent("w1", "P", "Start workers", "changed", "pid 42")
    failed = TaskEvent("w1", "P", "Start workers", "failed", "rc=1\nno such file")
    ignored = TaskEvent("w1", "P", "Probe", "failed", "rc=3", ignored=True)
    assert format_event(ok) == "[w1] TASK Start workers ... changed"
    assert format_event(failed).splitlines() == [
        "[w1] TASK Start workers ... failed", "[w1]   rc=1", "[w1]   no such file"]
    assert format_event(ignored).startswith("[w1] TASK Probe ... failed (ignored)")
