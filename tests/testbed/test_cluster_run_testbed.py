"""`invoke cluster-run` on the SSH testbed: deploy from the wheelhouse, run, gather per host."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tests.testbed.conftest import require_testbed_prerequisites
from torc_stress.cluster import testbed as tb
from torc_stress.cluster.wheelhouse import project_digest

pytestmark = pytest.mark.testbed

ROOT = Path(__file__).resolve().parents[2]
INVOKE = Path(sys.executable).parent / "invoke"


def invoke(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(INVOKE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (our leftovers, if any)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.timeout(1200)
def test_cluster_run_deploys_over_ssh_and_every_worker_host_completes_jobs(
        testbed: tb.Testbed, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = invoke("cluster-run", "--inventory", "inventory/testbed.yml", "--stages", "5",
                  "--jobs-per-stage", "200", "--runs-root", str(tmp_path), "--no-report")
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"testbed cluster-run 5x200: {seconds:.1f} s wall")  # shown with pytest -s
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["outcome"] == "completed"
    assert all(h["deployed"] and h["torc_stress"] for h in record["hosts"].values())

    server = testbed.server.name
    hosts = run_dir / "hosts"
    for name in ("server.db", "server.log", "metrics.json"):
        assert (hosts / server / name).is_file(), name
    with closing(sqlite3.connect(hosts / server / "server.db")) as db:
        per_host = dict(db.execute(
            "SELECT cn.hostname, COUNT(*) FROM result r JOIN compute_node cn "
            "ON cn.id = r.compute_node_id WHERE r.status = 5 GROUP BY cn.hostname"))
    workers = [w.name for w in testbed.workers]
    assert sorted(per_host) == sorted(workers)
    assert all(per_host[w] > 0 for w in workers)
    assert sum(per_host.values()) == record["workflow"]["jobs"] == 1005
    assert record["completed_per_host"] == per_host
    for worker in workers:
        assert list((hosts / worker).glob("worker-*.log")), worker
        assert list((hosts / worker).glob(f"worker_{worker}_*_metrics.json")), worker
        assert len(list((hosts / worker / "job_stdio").glob("*.o"))) == per_host[worker]
    assert processes_under(testbed.config.work_root.resolve()) == []

    # Deploying the same build again is a no-op: "ok", nothing changed, nothing installed.
    again = invoke("deploy", "--inventory", "inventory/testbed.yml")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    recap = again.stdout[again.stdout.rindex("PLAY RECAP"):]
    if project_digest(ROOT) == record["wheelhouse"]["digest"]:
        assert recap.count("changed=0") == len(testbed.hosts), recap
    else:  # NOTE: the sources were edited during the test: a new build must be installed
        assert recap.count("changed=0") == 0, recap


@pytest.fixture
def rotated(tmp_path: Path) -> Iterator[tuple[tb.TestbedConfig, Path]]:
    """A separate two-host testbed whose worker's host key changed after known_hosts was made."""
    require_testbed_prerequisites()
    config = tb.TestbedConfig(hosts=("srv", "wrk"), subnet="198.18.2.0/28", prefix="tstbr",
                              state_dir=tmp_path / "state", work_root=tmp_path / "roots")
    try:
        testbed = tb.testbed_up(config)
        inventory = tb.write_testbed_inventory(testbed, tmp_path / "inventory.yml")
        tb.rotate_host_key(config, "wrk")
        yield config, inventory
    finally:
        tb.testbed_down(config)


def test_a_host_whose_key_changed_is_refused_naming_the_host_and_known_hosts(
        rotated: tuple[tb.TestbedConfig, Path], tmp_path: Path) -> None:
    config, inventory = rotated
    proc = invoke("cluster-run", "--inventory", str(inventory), "--stages", "1",
                  "--jobs-per-stage", "2", "--runs-root", str(tmp_path / "runs"),
                  "--no-report", timeout=120)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "UNREACHABLE" in proc.stdout
    assert "wrk" in proc.stdout
    assert str((config.state_dir / "known_hosts").resolve()) in proc.stdout
    assert "Traceback" not in proc.stderr


def link_is_up(link: str) -> bool:
    """Whether ``link`` is administratively up (``UP`` among its flags)."""
    out = subprocess.run(["ip", "-o", "link", "show", link], capture_output=True, text=True,
                         check=True).stdout
    return "UP" in out.split("<", 1)[1].split(">", 1)[0].split(",")


@pytest.fixture
def worker2_link(testbed: tb.Testbed) -> Iterator[str]:
    """worker2's link; put back up afterwards whatever happened (the session testbed goes on)."""
    link = testbed.plan.host("worker2").veth
    try:
        yield link
    finally:
        subprocess.run(["ip", "link", "set", link, "up"], check=False)


@pytest.mark.timeout(1200)
def test_a_partition_takes_the_testbed_hosts_link_down_for_its_seconds_and_the_run_completes(
        testbed: tb.Testbed, worker2_link: str, tmp_path: Path) -> None:
    # (big enough stages that the other hosts cannot finish the run while worker2 is cut off)
    proc = invoke("cluster-run", "--inventory", "inventory/testbed.yml", "--stages", "4",
                  "--jobs-per-stage", "2500", "--fault", "partition:worker2:5@stage2",
                  "--runs-root", str(tmp_path))
    assert link_is_up(worker2_link)  # before the fixture's own clean-up: the harness restored it
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    [run_dir] = [p for p in tmp_path.iterdir() if p.is_dir()]
    record = json.loads((run_dir / "run.json").read_text())
    [fault] = record["faults"]
    assert (fault["method"], fault["targets"], fault["error"]) == ("link-down", [worker2_link],
                                                                   None)
    down_at, up_at = fault["injected_at"], fault["ended_at"]
    assert 5.0 <= up_at - down_at < 15.0
    assert f"fault partition:worker2:5@stage2: ended (link {worker2_link} up)" in proc.stdout
    assert record["outcome"] == "completed"
    with closing(sqlite3.connect(run_dir / "hosts" / testbed.server.name / "server.db")) as db:
        def worker2_completions(after: float, before: float) -> int:
            return int(db.execute(
                "SELECT COUNT(*) FROM result r JOIN job j ON j.id = r.job_id JOIN compute_node cn "
                "ON cn.id = r.compute_node_id WHERE cn.hostname = 'worker2' AND j.end_time > ? "
                "AND j.end_time < ?", (after, before)).fetchone()[0])

        # NOTE: server and controller share this machine's clock
        assert worker2_completions(0.0, down_at) > 0
        assert worker2_completions(down_at + 0.5, up_at - 0.5) == 0
    # worker2 fenced itself while cut off and came back with a new compute node once the link
    # was up (the others may well have finished the workflow by then)
    logs = (run_dir / "hosts" / "worker2").glob("worker-*.log")
    worker2_log = "".join(path.read_text() for path in logs)
    assert "fencing" in worker2_log and "new compute node registered" in worker2_log
    # the verdict: every check passes, the faults section is filled, every job ran exactly once
    report = json.loads((run_dir / "report.json").read_text())
    failed = [c["name"] for c in report["checks"] if c["status"] == "FAIL"]
    assert report["verdict"] == "PASS" and failed == [], failed
    assert report["faults"]["items"][0]["spec"] == "partition:worker2:5@stage2"
    assert next(c for c in report["checks"]
                if c["name"] == "every_job_completed_exactly_once")["status"] == "PASS"
    assert processes_under(testbed.config.work_root.resolve()) == []
