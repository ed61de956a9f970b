"""The testbed for real: namespaces, bridge, one sshd per host, verified host keys, teardown."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko
import pytest
import yaml

from tests.testbed.conftest import require_testbed_prerequisites
from torc_stress.cluster import testbed as tb

pytestmark = pytest.mark.testbed


@contextmanager
def ssh(testbed: tb.Testbed, host: str) -> Iterator[paramiko.SSHClient]:
    """An SSH connection to a testbed host, verifying its key against the testbed's known_hosts."""
    h = testbed.hosts[host]
    client = paramiko.SSHClient()
    client.load_host_keys(str(testbed.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(h.address, port=h.port, username="root",
                       key_filename=str(testbed.client_key), look_for_keys=False,
                       allow_agent=False, timeout=5, banner_timeout=5, auth_timeout=5)
        yield client
    finally:
        client.close()


def run(client: paramiko.SSHClient, command: str, timeout: float = 15) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=timeout)
    code = out.channel.recv_exit_status()
    return code, out.read().decode(), err.read().decode()


def test_every_host_answers_ssh_with_the_testbed_key_inside_its_own_namespace(
    testbed: tb.Testbed,
) -> None:
    addresses = {h.address for h in testbed.hosts.values()}
    for name, host in testbed.hosts.items():
        with ssh(testbed, name) as client:
            code, out, _ = run(client, "ip -4 -o addr show")
        assert code == 0
        assert f"inet {host.address}/" in out
        assert not any(f"inet {other}/" in out for other in addresses - {host.address})


def test_hosts_reach_each_other_over_the_bridge(testbed: tb.Testbed) -> None:
    server = testbed.server
    listener = subprocess.Popen(
        ["ip", "netns", "exec", server.namespace, sys.executable, "-c",
         "import socket,sys\n"
         f"s=socket.create_server(('{server.address}',0)); print(s.getsockname()[1], flush=True)\n"
         "s.settimeout(20); c,_=s.accept(); c.sendall(b'hello from server'); c.close()"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None
        port = int(listener.stdout.readline())
        worker = testbed.workers[0].name
        probe = (f"python3 -c \"import socket; s=socket.create_connection(('{server.address}',"
                 f"{port}),5); print(s.recv(64).decode())\"")
        with ssh(testbed, worker) as client:
            code, out, err = run(client, probe)
        assert code == 0, err
        assert out.strip() == "hello from server"
    finally:
        listener.kill()
        listener.wait(timeout=5)


def test_the_namespaces_have_no_route_beyond_the_bridge_subnet(testbed: tb.Testbed) -> None:
    for host in testbed.hosts.values():
        routes = subprocess.run(["ip", "-n", host.namespace, "route", "show"],
                                capture_output=True, text=True, check=True).stdout
        assert "default" not in routes
        assert routes.strip().splitlines() == [
            line for line in routes.strip().splitlines() if line.startswith(testbed.config.subnet)
        ]
        # a route lookup only (no packet is sent): a public address is unreachable
        lookup = subprocess.run(["ip", "-n", host.namespace, "route", "get", "151.101.0.223"],
                                capture_output=True, text=True)
        assert lookup.returncode != 0
        assert "unreachable" in lookup.stderr.lower()


def test_the_written_inventory_names_the_running_hosts(
    testbed: tb.Testbed, tmp_path: Path
) -> None:
    path = tb.write_testbed_inventory(testbed, tmp_path / "inventory" / "testbed.yml")
    data = yaml.safe_load(path.read_text())["all"]
    key = (path.parent / data["vars"]["ansible_ssh_private_key_file"]).resolve()
    known = (path.parent / data["vars"]["known_hosts"]).resolve()
    assert key == testbed.client_key.resolve() and key.is_file()
    assert known == testbed.known_hosts.resolve() and known.is_file()
    hosts = {**data["children"]["server"]["hosts"], **data["children"]["workers"]["hosts"]}
    assert {n: hv["ansible_host"] for n, hv in hosts.items()} == {
        n: h.address for n, h in testbed.hosts.items()
    }


def test_nothing_in_the_users_ssh_directory_is_referenced(testbed: tb.Testbed) -> None:
    user_ssh = str(Path.home() / ".ssh")
    for host in testbed.hosts.values():
        assert user_ssh not in host.sshd_config.read_text()
    assert not str(testbed.client_key).startswith(user_ssh)
    assert not str(testbed.known_hosts).startswith(user_ssh)


def _leftovers(config: tb.TestbedConfig) -> list[str]:
    mark = f"{config.prefix}-"
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in ns.splitlines() if line.startswith(mark)]
    found += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
              if line.split(":")[1].strip().startswith(mark)]
    return found


def _pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def small_config(tmp_path: Path) -> Iterator[tb.TestbedConfig]:
    """A separate two-host testbed on another subnet and port (its own prefix and state dir)."""
    require_testbed_prerequisites()
    config = tb.TestbedConfig(hosts=("srv", "wrk"), subnet="198.18.1.0/28", prefix="tstbk",
                              state_dir=tmp_path / "state", ssh_port=2222,
                              work_root=tmp_path / "roots")
    try:
        yield config
    finally:
        tb.testbed_down(config)


def test_a_changed_host_key_is_refused_and_down_leaves_nothing_behind(
    small_config: tb.TestbedConfig,
) -> None:
    testbed = tb.testbed_up(small_config)
    assert "[198.18.1.10]:2222 ssh-ed25519 " in testbed.known_hosts.read_text()
    with ssh(testbed, "wrk") as client:
        assert run(client, "true")[0] == 0

    tb.rotate_host_key(small_config, "wrk")
    with pytest.raises(paramiko.BadHostKeyException), ssh(testbed, "wrk"):
        pass
    with ssh(testbed, "srv") as client:  # the other host is unaffected
        assert run(client, "true")[0] == 0

    for host in testbed.hosts.values():  # what a deploy would leave in the hosts' roots
        (host.torc_root / "venv").mkdir(parents=True)
    state = testbed.state_dir / "state.json"
    pids = [int(p.read_text()) for p in testbed.state_dir.glob("hosts/*/sshd.pid")]
    assert state.is_file() and len(pids) == 2 and all(_pid_alive(p) for p in pids)
    tb.testbed_down(small_config)
    assert _leftovers(small_config) == []
    assert not any(_pid_alive(p) for p in pids)
    assert not state.exists()
    assert not testbed.state_dir.exists()
    assert not small_config.work_root.exists()


def test_down_removes_leftovers_of_a_crashed_run_without_a_state_file(
    small_config: tb.TestbedConfig,
) -> None:
    namespace = f"{small_config.prefix}-crashed"
    link = f"{small_config.prefix}-v9"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0",
                    "netns", namespace], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", namespace, "sleep", "60"])
    try:
        assert sorted(_leftovers(small_config)) == sorted([namespace, link])
        tb.testbed_down(small_config)
        assert _leftovers(small_config) == []
        assert sleeper.wait(timeout=10) != 0  # the process left inside the namespace was ended
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()


def test_building_an_existing_testbed_again_replaces_it_cleanly(
    small_config: tb.TestbedConfig,
) -> None:
    first = tb.testbed_up(small_config)
    second = tb.testbed_up(small_config)
    old_pids = [h.sshd_pid for h in first.hosts.values()]
    assert not any(_pid_alive(p) for p in old_pids)
    assert all(_pid_alive(h.sshd_pid) for h in second.hosts.values())
    assert sorted(_leftovers(small_config)) == sorted(
        [h.namespace for h in second.plan.hosts] + [h.veth for h in second.plan.hosts]
        + [second.plan.bridge]
    )
    with ssh(second, "srv") as client:
        assert run(client, "true")[0] == 0
