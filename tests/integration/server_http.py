"""A tiny keep-alive JSON client for server tests (one per thread)."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


class Http:
    """Sends JSON requests to one server over one keep-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.prefix = parts.path
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None
                ) -> tuple[int, Any]:
        """Returns ``(status, parsed JSON body)``."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        self.conn.request(method, self.prefix + path, body=data,
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else None

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """Like :meth:`request` but asserts a 200."""
        status, data = self.request(method, path, body)
        assert status == 200, (method, path, status, data)
        return data

    def close(self) -> None:
        """Closes the connection."""
        self.conn.close()


def result_body(job_id: int, workflow_id: int, node_id: int, run_id: int = 0,
                return_code: int = 0, status: str = "completed") -> dict[str, Any]:
    """A valid result_model body."""
    return {"job_id": job_id, "workflow_id": workflow_id, "run_id": run_id,
            "compute_node_id": node_id, "return_code": return_code, "exec_time_minutes": 0.01,
            "completion_time": "2026-01-01T00:00:00.000Z", "status": status}


def compute_node(workflow_id: int, name: str = "test") -> dict[str, Any]:
    """A valid compute_node_model body."""
    return {"workflow_id": workflow_id, "hostname": name, "pid": 1,
            "start_time": "2026-01-01T00:00:00Z", "num_cpus": 8, "memory_gb": 16.0,
            "num_gpus": 0, "num_nodes": 1, "compute_node_type": "local"}


def staged_workflow(http: Http, stages: int, width: int) -> tuple[int, list[list[int]], list[int]]:
    """Creates a seed-shaped workflow: ``stages`` x ``width`` jobs with a barrier after each."""
    wid = http.ok("POST", "/workflows", {"name": "staged", "user": "test"})["id"]
    stage_ids: list[list[int]] = []
    barriers: list[int] = []
    previous: list[int] = []
    for s in range(stages):
        jobs = [{"workflow_id": wid, "name": f"stage{s + 1}_{i:04d}", "command": "true",
                 "depends_on_job_ids": previous} for i in range(width)]
        ids = [j["id"] for j in http.ok("POST", "/bulk_jobs", {"jobs": jobs})["jobs"]]
        stage_ids.append(ids)
        barrier = http.ok("POST", "/jobs", {"workflow_id": wid, "name": f"barrier{s + 1}",
                                            "command": "true", "depends_on_job_ids": ids})["id"]
        barriers.append(barrier)
        previous = [barrier]
    return wid, stage_ids, barriers
