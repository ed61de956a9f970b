"""The CLI's contract without a real server: exit codes, one-line errors, JSON documents."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.unit.test_client import (
    Stub,
    stub_fixture,  # noqa: F401  (the `stub` fixture)
)
from torc_stress.cli import main, status_counts

SEED = Path(__file__).resolve().parents[2] / "workflows" / "database_contention.yaml"

TINY = """
name: tiny
description: two jobs
resource_requirements:
  - {name: small, num_cpus: 1, memory: 100m, runtime: PT1M}
jobs:
  - {name: a, command: "echo a", resource_requirements: small}
  - {name: b, command: "echo b", depends_on: [a]}
"""


def fake_torc(state: Stub, *, fail_bulk: bool = False) -> None:
    """Answers creation requests like a server would; optionally fails bulk_jobs."""
    counter = iter(range(100, 10**6))

    def route(method: str, path: str, query: Any, body: Any) -> tuple[int, Any]:
        tail = path.removeprefix("/torc-service/v1")
        if tail == "/workflows/create_whole":  # torc's server has no such route
            return 404, {"error": "Not Found"}
        if tail == "/bulk_jobs":
            if fail_bulk:
                return 500, {"error": "disk full"}
            return 200, {"jobs": [dict(j, id=next(counter)) for j in body["jobs"]]}
        if method == "POST" and tail in ("/workflows", "/resource_requirements"):
            return 200, dict(body, id=next(counter))
        return 200, {}

    state.route = route


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/torc-service/v1"


def test_a_bad_spec_exits_2_with_one_error_line_and_sends_nothing(
        tmp_path: Path, stub: tuple[Stub, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, url = stub
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\njobs:\n  - {name: a, command: x, depends_on: [nope]}\n")
    assert main(["--url", url, "workflows", "create", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torc-stress: error: ")
    assert err.count("\n") == 1
    assert "nope" in err
    assert state.requests == []


def test_an_unreachable_server_is_one_error_line_and_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", closed_port_url(), "workflows", "list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("torc-stress: error: cannot reach the torc server")
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_create_in_json_prints_one_document_with_id_name_and_jobs(
        tmp_path: Path, stub: tuple[Stub, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, url = stub
    fake_torc(state)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["--url", url, "-f", "json", "workflows", "create", str(spec), "--user", "u"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc == {"id": 100, "name": "tiny", "jobs": 2}
    paths = [r[1].removeprefix("/torc-service/v1") for r in state.requests]
    assert paths == ["/workflows/create_whole", "/workflows", "/resource_requirements",
                     "/bulk_jobs", "/bulk_jobs", "/workflows/100/initialize_jobs"]
    job_b = state.requests[4][3]["jobs"][0]
    assert job_b["depends_on_job_ids"] == [102]  # job a, created first
    assert state.requests[3][3]["jobs"][0]["resource_requirements_id"] == 101


def test_a_failed_creation_deletes_the_half_made_workflow(
        tmp_path: Path, stub: tuple[Stub, str], capsys: pytest.CaptureFixture[str]) -> None:
    state, url = stub
    fake_torc(state, fail_bulk=True)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    assert main(["--url", url, "workflows", "create", str(spec)]) == 1
    assert state.requests[-1][:2] == ("DELETE", "/torc-service/v1/workflows/100")
    assert "disk full" in capsys.readouterr().err


def test_the_url_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from torc_stress.cli import build_parser

    monkeypatch.setenv("TORC_API_URL", "http://example:1/torc-service/v1")
    assert build_parser().parse_args(["workflows", "list"]).url == \
        "http://example:1/torc-service/v1"
    monkeypatch.delenv("TORC_API_URL")
    assert build_parser().parse_args(["workflows", "list"]).url == \
        "http://localhost:8080/torc-service/v1"


def test_status_counts_list_every_status() -> None:
    counts = status_counts([{"status": "completed"}, {"status": "completed"},
                            {"status": "ready"}])
    assert counts["completed"] == 2
    assert counts["ready"] == 1
    assert counts["blocked"] == 0
    assert len(counts) == 11
