"""Bad input never gets a 5xx: schemathesis over every operation, and table-driven raw cases.

The schemathesis run fuzzes every operation of the server's own ``/openapi.json`` (its examples,
coverage and fuzzing phases, a few cases each) against a real server on loopback holding a
small workflow, with request timeouts, and checks that no answer is a server error and that
every answer matches its declared schema. The raw cases pin the inputs that used to crash a
route: out-of-range integers in paths, queries and bodies, and malformed JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess, start_server
from tests.integration.raw_http import RawConnection
from tests.integration.server_http import Http, compute_node, result_body

pytestmark = pytest.mark.integration

BIG = 2**63  # one past SQLite's largest INTEGER
#: the example each path or body id gets in the fuzzed document (the seeded workflow's)
EXAMPLES = {"id": 1, "workflow_id": 1, "job_id": 1, "compute_node_id": 1, "run_id": 0,
            "limit": 5}


def _seed(url: str) -> dict[str, Any]:
    """A workflow of 12 jobs in two stages, a compute node, 4 claimed and 2 of them running."""
    http = Http(url)
    try:
        wid = http.ok("POST", "/workflows", {"name": "fuzz", "user": "t"})["id"]
        first = [{"workflow_id": wid, "name": f"a{i}", "command": "true"} for i in range(6)]
        ups = [j["id"] for j in http.ok("POST", "/bulk_jobs", {"jobs": first})["jobs"]]
        second = [{"workflow_id": wid, "name": f"b{i}", "command": "true",
                   "depends_on_job_ids": ups} for i in range(6)]
        http.ok("POST", "/bulk_jobs", {"jobs": second})
        http.ok("POST", f"/workflows/{wid}/initialize_jobs")
        node = http.ok("POST", "/compute_nodes", compute_node(wid))["id"]
        claimed = [j["id"] for j in
                   http.ok("POST", f"/workflows/{wid}/claim_next_jobs?limit=4")["jobs"]]
        for jid in claimed[:2]:
            http.ok("PUT", f"/jobs/{jid}/start_job/0/{node}")
        return {"workflow_id": wid, "node": node, "claimed": claimed}
    finally:
        http.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict]]:
    """One real server holding :func:`_seed`'s workflow, shared by this module's tests."""
    srv = start_server(tmp_path_factory.mktemp("fuzz"))
    try:
        yield srv, _seed(srv.url)
    finally:
        srv.stop()


def _with_examples(node: Any) -> Any:
    """The document with ``EXAMPLES`` set on the path parameters and body properties they name,
    so that schemathesis also reaches the seeded workflow (not only 404s)."""
    if isinstance(node, dict):
        out = {k: _with_examples(v) for k, v in node.items()}
        if node.get("in") == "path" and node.get("name") in EXAMPLES:
            out["example"] = EXAMPLES[node["name"]]
        for name, schema in out.get("properties", {}).items():
            if name in EXAMPLES and isinstance(schema, dict) and "type" in schema:
                schema["example"] = EXAMPLES[name]
        return out
    if isinstance(node, list):
        return [_with_examples(v) for v in node]
    return node


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        reason = "schemathesis is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs the dev extras: never skip the fuzzing there
        pytest.skip(reason)
    return [exe]


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own holding :func:`_seed`'s workflow (the fuzzer deletes and cancels)."""
    srv = start_server(tmp_path)
    try:
        _seed(srv.url)
        yield srv
    finally:
        srv.stop()


def test_schemathesis_finds_no_server_error_no_hang_and_no_schema_mismatch(
    fuzzed: ServerProcess, tmp_path: Path
) -> None:
    srv = fuzzed
    http = Http(srv.url)
    document = _with_examples(http.ok("GET", "/openapi.json"))
    http.close()
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document), encoding="utf-8")
    junit = tmp_path / "junit.xml"
    run = subprocess.run(
        [*_schemathesis(), "run", str(spec), "--url", srv.url,
         "--checks", "not_a_server_error,response_schema_conformance",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "5", "--seed", "1",
         "--request-timeout", "5", "--workers", "1", "--generation-database", "none",
         "--no-color", "--report", "junit", "--report-junit-path", str(junit)],
        capture_output=True, text=True, timeout=110, cwd=tmp_path,
    )
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    operations = sum(len(ops) for ops in document["paths"].values())
    assert int(suite.get("tests", "0")) == operations, summary
    assert suite.get("failures") == "0" and suite.get("errors") == "0", summary
    assert "passed" in summary and "failed" not in summary.split("SUMMARY")[-1]
    assert srv.proc.poll() is None
    assert " ERROR " not in srv.log_text()


def _result(seed: dict[str, Any], **change: Any) -> dict[str, Any]:
    return result_body(seed["claimed"][0], seed["workflow_id"], seed["node"]) | change


# (method, path template, body or raw bytes, expected status, a word the error names);
# "{wid}", "{job}" and "{node}" are the seeded workflow, a running job and the compute node
_CASES: list[tuple[str, str, Any, int, str]] = [
    ("GET", f"/jobs/{BIG}", None, 400, "'id'"),
    ("GET", f"/workflows/{BIG}", None, 400, "'id'"),
    ("GET", f"/compute_nodes/{BIG}", None, 400, "'id'"),
    ("PUT", f"/compute_nodes/{BIG}", {"is_active": False}, 400, "'id'"),
    ("GET", f"/jobs/{-BIG - 1}", None, 400, "'id'"),
    ("GET", "/jobs/" + "9" * 5000, None, 400, "'id'"),
    ("GET", f"/jobs?offset={BIG}", None, 400, "'offset'"),
    ("GET", f"/jobs?limit={BIG}", None, 400, "'limit'"),
    ("GET", f"/jobs?workflow_id={BIG}", None, 400, "'workflow_id'"),
    ("GET", f"/results?workflow_id={BIG}", None, 400, "'workflow_id'"),
    ("GET", f"/events?after_timestamp={BIG}", None, 400, "'after_timestamp'"),
    ("GET", f"/workflows/{{wid}}/job_dependencies?offset={BIG}", None, 400, "'offset'"),
    ("PUT", f"/jobs/{{job}}/start_job/0/{BIG}", None, 400, "'compute_node_id'"),
    ("PUT", f"/jobs/{BIG}/start_job/0/{{node}}", None, 400, "'id'"),
    ("POST", f"/jobs/{{job}}/complete_job/completed/{BIG}", ("result", {}), 400, "'run_id'"),
    ("POST", f"/workflows/{BIG}/claim_next_jobs", None, 400, "'id'"),
    ("POST", "/compute_nodes", ("node", {"pid": BIG}), 422, "'pid'"),
    ("POST", "/compute_nodes", ("node", {"num_cpus": BIG}), 422, "'num_cpus'"),
    ("POST", "/workflows/{wid}/claim_jobs_based_on_resources/5",
     {"num_cpus": 1, "memory_gb": 1.5e308, "num_gpus": 0, "num_nodes": 1}, 422, "memory_gb"),
    ("POST", "/resource_requirements",
     {"workflow_id": "{wid}", "name": "r", "memory": "9" * 400 + "g"}, 422, "memory"),
    ("POST", "/resource_requirements",
     {"workflow_id": "{wid}", "name": "r", "runtime": "P" + "9" * 400 + "D"}, 422, "duration"),
    ("POST", "/events", {"workflow_id": "{wid}", "timestamp": BIG, "data": 1}, 422,
     "'timestamp'"),
    ("PUT", "/workflows/{wid}/status", {"run_id": BIG}, 422, "'run_id'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", ("result", {"peak_memory_bytes": [1]}), 422,
     "'peak_memory_bytes'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", ("result", {"attempt_id": "a"}), 422,
     "'attempt_id'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", ("result", {"completion_time": ""}), 422,
     "'completion_time'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", ("result", {"avg_cpu_percent": "x"}), 422,
     "'avg_cpu_percent'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", ("result", {"return_code": BIG}), 422,
     "'return_code'"),
    ("POST", "/jobs/{job}/complete_job/completed/0", b'{"job_id": ', 400, "malformed JSON"),
    ("POST", "/jobs/{job}/complete_job/completed/0", b"NaN", 400, "malformed JSON"),
    ("POST", "/jobs/{job}/complete_job/completed/0", b'{"a": 1e999}', 400, "malformed JSON"),
    ("POST", "/jobs/{job}/complete_job/completed/0", b"\xff\xfe", 400, "malformed JSON"),
    ("POST", "/workflows", b"[1, 2", 400, "malformed JSON"),
    ("POST", "/workflows", b"[]", 422, "object"),
    ("POST", "/workflows/{wid}/batch_complete_jobs", b'{"completions": 5}', 422, "completions"),
]


def _body(spec: Any, seed: dict[str, Any]) -> Any:
    """A case's body: raw bytes, ``("result" | "node", changes)`` (a valid result or compute
    node body with ``changes``), or JSON with ``"{wid}"`` standing for the workflow id."""
    if isinstance(spec, tuple):
        kind, change = spec
        base = _result(seed) if kind == "result" else compute_node(seed["workflow_id"])
        return base | change
    if isinstance(spec, dict):
        return {k: seed["workflow_id"] if v == "{wid}" else v for k, v in spec.items()}
    return spec


@pytest.mark.parametrize(("method", "path", "body", "status", "names"), _CASES,
                         ids=[f"{m} {p[:50]} {str(b)[:30]}" for m, p, b, _, _ in _CASES])
def test_input_that_used_to_crash_a_route_gets_a_4xx_naming_what_is_wrong(
    seeded: tuple[ServerProcess, dict], method: str, path: str, body: Any, status: int,
    names: str,
) -> None:
    srv, seed = seeded
    path = path.format(wid=seed["workflow_id"], job=seed["claimed"][0], node=seed["node"])
    conn = RawConnection(srv.port)
    try:
        response = conn.request(method, path, _body(body, seed))
    finally:
        conn.close()
    message = response.json()["errorMessage"]
    assert (response.status, names in message) == (status, True), message
    assert len(message) < 400


def test_a_batch_completion_whose_status_is_a_list_is_refused_for_that_entry_alone(
    seeded: tuple[ServerProcess, dict],
) -> None:
    srv, seed = seeded
    job = seed["claimed"][1]
    entry = {"job_id": job, "run_id": 0, "status": [1],
             "result": result_body(job, seed["workflow_id"], seed["node"])}
    http = Http(srv.url)
    try:
        answer = http.ok("POST", f"/workflows/{seed['workflow_id']}/batch_complete_jobs",
                         {"completions": [entry]})
        assert answer["completed"] == []
        assert [e["job_id"] for e in answer["errors"]] == [job]
        assert http.ok("GET", f"/jobs/{job}")["status"] == "running"
    finally:
        http.close()
