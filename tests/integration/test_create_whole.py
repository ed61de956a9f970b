"""A whole workflow in one transaction: created whole, or not at all."""

from __future__ import annotations

import pytest

from tests.conftest import ServerProcess
from tests.integration.test_worker import SEED
from torc_stress.client import TorcClient
from torc_stress.errors import ApiError
from torc_stress.spec import expand, load_spec
from torc_stress.submit import submit_plan, whole_body

pytestmark = pytest.mark.integration


def test_the_seed_is_created_and_initialized_in_one_request(server: ServerProcess) -> None:
    plan = expand(load_spec(SEED))
    with TorcClient(server.url) as client:
        workflow_id = submit_plan(client, plan, user="me")
        jobs = client.list_jobs(workflow_id, include_relationships=True)
        metrics = client.metrics()
    assert len(jobs) == 5005
    by_name = {job["name"]: job for job in jobs}
    barrier = by_name["barrier_stage1_complete"]
    assert len(barrier["depends_on_job_ids"]) == 1000
    assert barrier["status"] == "blocked" and by_name["stage1_0000"]["status"] == "ready"
    assert metrics["write_path"]["create_workflow_whole"]["count"] == 1
    assert "create_workflow" not in metrics["write_path"]


def test_a_whole_workflow_that_fails_half_way_leaves_nothing_behind(
        server: ServerProcess) -> None:
    body = whole_body(expand(load_spec(SEED)), user="me")
    del body["levels"][-1][0]["command"]  # the last job is bad: found after 5004 were written
    with TorcClient(server.url) as client:
        before = client.list_workflows()
        with pytest.raises(ApiError, match="command"):
            client.create_workflow_whole(body)
        assert client.list_workflows() == before
        # the server's memory was rebuilt: the next workflow is whole and runs from id 1 on
        workflow_id = submit_plan(client, expand(load_spec(SEED)), user="me")
        assert len(client.list_jobs(workflow_id)) == 5005
        assert client.get_workflow_status(workflow_id)
