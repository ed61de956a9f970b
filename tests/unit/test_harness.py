"""Pure helpers of the harness: run ids, server URLs, known_hosts paths, deploy flags."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from torc_stress.cluster.executor import PlaybookResult
from torc_stress.cluster.harness import (
    RunAborted,
    known_hosts_for,
    needs_deploy,
    new_run_id,
    registered_port,
    server_url,
)
from torc_stress.cluster.inventory import Host, load_inventory
from torc_stress.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def host(address: str = "10.0.0.5", **variables: Any) -> Host:
    return Host(name="srv", address=address, port=22, user=None, key_file=None,
                connection="ssh", vars=MappingProxyType(variables), groups=("server",))


def test_a_run_id_is_utc_time_plus_a_short_random_suffix() -> None:
    when = datetime(2026, 11, 28, 21, 30, 12, tzinfo=UTC)
    assert new_run_id(when, "4f2a") == "20261128T213012Z-4f2a"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", new_run_id())
    assert new_run_id(when) != new_run_id(when)


def test_the_server_url_uses_the_bind_address_or_the_host_address_for_a_wildcard() -> None:
    assert server_url(host(), 8080) == "http://10.0.0.5:8080/torc-service/v1"
    assert server_url(host(torc_bind="10.1.0.5"), 1) == "http://10.1.0.5:1/torc-service/v1"
    assert server_url(host(torc_bind="0.0.0.0"), 2) == "http://10.0.0.5:2/torc-service/v1"
    assert server_url(host("fd00::5"), 3) == "http://[fd00::5]:3/torc-service/v1"


def test_known_hosts_is_relative_to_the_inventory_file() -> None:
    inventory = load_inventory(ROOT / "inventory" / "lab.example.yml")
    assert known_hosts_for(inventory.server, inventory) == ROOT / "inventory" / "lab_known_hosts"
    assert known_hosts_for(host(known_hosts="/etc/kh"), inventory) == Path("/etc/kh")
    assert known_hosts_for(host(), inventory) is None


def test_every_host_is_deployed_unless_its_inventory_says_no() -> None:
    assert needs_deploy(host())
    assert not needs_deploy(host(torc_deploy=False))
    with pytest.raises(ConfigError, match="torc_deploy"):
        needs_deploy(host(torc_deploy="no"))


def test_the_server_port_is_read_from_the_registered_result() -> None:
    result = PlaybookResult(registered={"srv": {"server_port": {"stdout": "41234\n"}}})
    assert registered_port(result, "srv") == 41234
    with pytest.raises(RunAborted, match="server.out") as info:
        registered_port(PlaybookResult(registered={"srv": {}}), "srv")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("lease", "flag"), [(None, None), ("2", "--lease-s 2"),
                                             ("0", "--lease-s 0")])
def test_the_server_gets_lease_s_only_when_the_lease_setting_is_given(
        tmp_path: Path, lease: str | None, flag: str | None) -> None:
    from torc_stress.cluster.harness import Harness
    from torc_stress.cluster.settings import settings_from_config
    from torc_stress.cluster.transport import ConnectionCache, FakeTransport

    settings = settings_from_config({}, {"lease": lease, "runs_root": str(tmp_path)},
                                    project_root=ROOT)
    def answer(command: str) -> tuple[int, str, str]:
        return (1, "", "") if command.startswith("test -e") else (0, "8080\n", "")

    fake = FakeTransport(answer, host="localhost")
    harness = Harness(settings, run_id="R1")
    harness.play("start_server", ConnectionCache(factory=lambda host: fake))
    [start] = [c[1] for c in fake.calls if c[0] == "run" and "server run" in c[1]]
    assert ("--lease-s" in start) is (flag is not None)
    if flag:
        assert flag in start
