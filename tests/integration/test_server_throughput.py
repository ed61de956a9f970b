"""A quick in-test driver: a seed-shaped workflow pushed through by 8 client threads."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from tests.integration.server_http import Http, compute_node, result_body, staged_workflow

pytestmark = pytest.mark.integration

STAGES = 5
#: 1000 reproduces the seed's shape (TORC_STRESS_DRIVER_WIDTH=1000); smaller keeps CI fast
WIDTH = int(os.environ.get("TORC_STRESS_DRIVER_WIDTH", "200"))
THREADS = 8


def drive(url: str, wid: int, node: int, stop: threading.Event, counter: list[int]) -> None:
    """claim(limit 10) / start / complete per job until the workflow is complete."""
    http = Http(url)
    while not stop.is_set():
        jobs = http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=10")["jobs"]
        if not jobs:
            if http.ok("GET", f"/workflows/{wid}/is_complete")["is_complete"]:
                break
            time.sleep(0.002)
            continue
        for job in jobs:
            http.ok("PUT", f"/jobs/{job['id']}/start_job/0/{node}")
            http.ok("POST", f"/jobs/{job['id']}/complete_job/completed/0",
                    result_body(job["id"], wid, node))
            counter[0] += 1
    http.close()


def test_a_seed_shaped_workflow_completes_with_every_job_done_once(server) -> None:
    http = Http(server.url)
    wid, stages, barriers = staged_workflow(http, STAGES, WIDTH)
    http.ok("POST", f"/workflows/{wid}/initialize_jobs")
    node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
    stop = threading.Event()
    counters = [[0] for _ in range(THREADS)]
    threads = [threading.Thread(target=drive, args=(server.url, wid, node, stop, counters[i]))
               for i in range(THREADS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - started
    stop.set()
    total = STAGES * (WIDTH + 1)
    assert sum(c[0] for c in counters) == total
    assert http.ok("GET", f"/workflows/{wid}/is_complete")["is_complete"] is True
    with sqlite3.connect(server.db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM job WHERE status = 5").fetchone()[0] == total
        assert conn.execute("SELECT COUNT(*) FROM result").fetchone()[0] == total
        hops = [row[0] * 1000 for row in conn.execute(
            "SELECT b.ready_time - (SELECT MAX(u.end_time) FROM job_depends_on d "
            "JOIN job u ON u.id = d.depends_on_job_id WHERE d.job_id = b.id) "
            f"FROM job b WHERE b.id IN ({','.join(str(b) for b in barriers)})")]
    metrics = http.ok("GET", "/metrics")
    print(f"\n{total} jobs, {THREADS} threads: {total / elapsed:.0f} completions/s "
          f"({elapsed:.2f} s); barrier hop ms max {max(hops):.2f} "
          f"p50 {sorted(hops)[len(hops) // 2]:.2f}; "
          f"txn batch p50 {metrics['transactions']['batch_size']['p50']}, "
          f"server cpu {metrics['server']['cpu_user_s'] + metrics['server']['cpu_system_s']:.1f} s")
    assert max(hops) < 1000
