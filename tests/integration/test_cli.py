"""The torc-stress CLI as a user runs it, against a real server process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration.test_worker import ENV, OwnServer

pytestmark = pytest.mark.integration

TINY = """
name: tiny
resource_requirements:
  - {name: small, num_cpus: 1, memory: 100m, runtime: PT1M}
jobs:
  - {name: "a_{i}", command: "echo a {i}", resource_requirements: small, parameters: {i: "1:3"}}
  - {name: b, command: "echo b", depends_on_regexes: ["^a_"]}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnServer]:
    base = tmp_path_factory.mktemp("cli-server")
    own = OwnServer(db=base / "server.db", log=base / "server.log")
    own.start()
    try:
        yield own
    finally:
        assert own.proc is not None
        own.proc.terminate()
        try:
            own.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            own.kill()


def torc(server: OwnServer, *args: str,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "torc_stress.cli", "--url", server.url, *args],
                          env=ENV, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_a_bad_spec_exits_2_and_creates_nothing(server: OwnServer, tmp_path: Path) -> None:
    spec = tmp_path / "cycle.yaml"
    spec.write_text("name: c\njobs:\n  - {name: a, command: x, depends_on: [b]}\n"
                    "  - {name: b, command: x, depends_on: [a]}\n")
    before = orjson.loads(torc(server, "-f", "json", "workflows", "list").stdout)["workflows"]
    done = torc(server, "workflows", "create", str(spec))
    assert done.returncode == 2
    assert done.stderr.startswith("torc-stress: error: ")
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr
    after = orjson.loads(torc(server, "-f", "json", "workflows", "list").stdout)["workflows"]
    assert after == before


def test_create_status_jobs_run_and_cancel_as_a_user_would(server: OwnServer,
                                                            tmp_path: Path) -> None:
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    created = torc(server, "-f", "json", "workflows", "create", str(spec))
    assert created.returncode == 0, created.stderr
    doc = orjson.loads(created.stdout)
    assert doc["name"] == "tiny" and doc["jobs"] == 4
    wid = str(doc["id"])

    table = torc(server, "workflows", "list").stdout
    assert "tiny" in table and wid in table

    status = orjson.loads(torc(server, "-f", "json", "workflows", "status", wid).stdout)
    assert status["counts"]["ready"] == 3 and status["counts"]["blocked"] == 1
    ready = orjson.loads(torc(server, "-f", "json", "jobs", "list", wid, "--status",
                              "ready").stdout)["jobs"]
    assert sorted(job["name"] for job in ready) == ["a_1", "a_2", "a_3"]

    run = torc(server, "workflows", "run", wid, "--output-dir", str(tmp_path / "out"),
               "--max-parallel-jobs", "2")
    assert run.returncode == 0, run.stderr
    status = orjson.loads(torc(server, "-f", "json", "workflows", "status", wid).stdout)
    assert status["counts"]["completed"] == 4 and status["is_complete"] is True
    assert len(list((tmp_path / "out" / "job_stdio").glob("*.o"))) == 4

    canceled = torc(server, "-f", "json", "workflows", "cancel", wid)
    assert orjson.loads(canceled.stdout) == {"id": int(wid), "status": "canceled"}


def test_an_unknown_workflow_is_one_error_line(server: OwnServer) -> None:
    done = torc(server, "workflows", "status", "99999")
    assert done.returncode == 1
    assert done.stderr.startswith("torc-stress: error: ")
    assert "404" in done.stderr
    assert done.stderr.count("\n") == 1
