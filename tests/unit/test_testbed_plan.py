"""The testbed's pure parts: config validation, names, addresses, commands, configs, inventory."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from torc_stress.cluster.testbed import (
    MAX_IFNAME,
    TestbedConfig,
    known_hosts_entry,
    plan_testbed,
    sshd_config_text,
    testbed_inventory,
    testbed_inventory_text,
)
from torc_stress.errors import TestbedError

ROOT = Path(__file__).resolve().parents[2]


def test_the_default_testbed_is_one_server_and_three_workers_in_the_benchmark_range() -> None:
    config = TestbedConfig()
    plan = plan_testbed(config)
    assert [h.name for h in plan.hosts] == ["server", "worker1", "worker2", "worker3"]
    net = ipaddress.ip_network(config.subnet)
    assert net.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    assert plan.gateway == str(net.network_address + 1)
    assert [h.address for h in plan.hosts] == [
        str(net.network_address + 10 + i) for i in range(4)
    ]


def test_every_interface_name_fits_the_kernel_limit_even_with_the_longest_prefix() -> None:
    hosts = tuple(f"h{i}" for i in range(200))
    plan = plan_testbed(TestbedConfig(hosts=hosts, prefix="abcdef", subnet="198.18.0.0/23"))
    names = [plan.bridge] + [h.veth for h in plan.hosts] + [h.peer for h in plan.hosts]
    assert max(len(n) for n in names) <= MAX_IFNAME
    assert len({h.veth for h in plan.hosts}) == len(plan.hosts)


def test_every_name_the_testbed_makes_starts_with_its_prefix() -> None:
    plan = plan_testbed(TestbedConfig(prefix="tb9"))
    made = [plan.bridge] + [h.veth for h in plan.hosts] + [h.namespace for h in plan.hosts]
    assert all(name.startswith("tb9-") for name in made)


def test_addresses_are_unique_inside_the_subnet_and_avoid_the_gateway() -> None:
    config = TestbedConfig(subnet="198.19.4.0/26", hosts=tuple(f"w{i}" for i in range(20)))
    plan = plan_testbed(config)
    net = ipaddress.ip_network(config.subnet)
    addrs = [ipaddress.ip_address(h.address) for h in plan.hosts]
    assert len(set(addrs)) == len(addrs)
    assert all(a in net and a != net.broadcast_address for a in addrs)
    assert ipaddress.ip_address(plan.gateway) not in addrs


def test_up_commands_build_bridge_then_one_namespace_and_veth_per_host() -> None:
    plan = plan_testbed(TestbedConfig(hosts=("server", "worker1")))
    cmds = plan.up_commands()
    assert cmds[0] == ["ip", "link", "add", plan.bridge, "type", "bridge"]
    assert ["ip", "addr", "add", f"{plan.gateway}/24", "dev", plan.bridge] in cmds
    for h in plan.hosts:
        add_ns = cmds.index(["ip", "netns", "add", h.namespace])
        add_veth = next(i for i, c in enumerate(cmds) if c[:4] == ["ip", "link", "add", h.veth])
        assert add_ns < add_veth
        assert cmds[add_veth][-2:] == ["netns", h.namespace]
        assert ["ip", "link", "set", h.veth, "master", plan.bridge] in cmds
        assert ["ip", "-n", h.namespace, "link", "set", "lo", "up"] in cmds
        assert ["ip", "-n", h.namespace, "addr", "add", f"{h.address}/24", "dev", h.peer] in cmds
    assert not any("route" in c for c in cmds), "namespaces must get no default route"


def test_down_commands_remove_every_link_and_namespace_the_up_commands_add() -> None:
    plan = plan_testbed(TestbedConfig())
    added = {
        (c[1], c[3]) for c in plan.up_commands() if c[2] == "add" and c[1] in ("link", "netns")
    }
    removed = {(c[1], c[3]) for c in plan.down_commands()}
    assert added == removed


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"subnet": "8.8.8.0/24"}, "198.18.0.0/15"),
        ({"subnet": "10.1.0.0/24"}, "198.18.0.0/15"),
        ({"subnet": "127.0.0.0/24", "allow_private_subnet": True}, "RFC 1918"),
        ({"subnet": "198.18.0.0/29"}, "larger subnet"),
        ({"subnet": "198.18.0.1/24"}, "bad testbed subnet"),
        ({"subnet": "fd00::/64"}, "IPv4"),
        ({"hosts": ()}, "at least one host"),
        ({"hosts": ("server", "server")}, "unique"),
        ({"hosts": ("Server",)}, "bad testbed host name"),
        ({"hosts": ("a;rm -rf /",)}, "bad testbed host name"),
        ({"prefix": "toolongprefix"}, "bad testbed prefix"),
        ({"prefix": "a-b"}, "bad testbed prefix"),
        ({"ssh_port": 0}, "ssh_port"),
        ({"work_root": Path("/tmp")}, "work_root"),
        ({"work_root": Path("relative/roots")}, "work_root"),
    ],
)
def test_a_bad_config_is_refused_with_what_to_do(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(TestbedError, match=needle):
        TestbedConfig(**kwargs)  # type: ignore[arg-type]


def test_a_private_subnet_is_accepted_only_when_explicitly_allowed() -> None:
    config = TestbedConfig(subnet="10.99.0.0/24", allow_private_subnet=True)
    assert plan_testbed(config).gateway == "10.99.0.1"


def test_sshd_config_listens_only_on_the_host_address_and_allows_only_keys() -> None:
    text = sshd_config_text(address="198.18.0.11", port=2222, host_key=Path("/s/k"),
                            pid_file=Path("/s/p"), authorized_keys=Path("/s/a"))
    lines = set(text.splitlines())
    for expected in ("ListenAddress 198.18.0.11", "Port 2222", "HostKey /s/k", "PidFile /s/p",
                     "AuthorizedKeysFile /s/a", "PermitRootLogin prohibit-password",
                     "PasswordAuthentication no", "UsePAM no", "StrictModes no", "UseDNS no"):
        assert expected in lines
    assert any(line.startswith("LogLevel ") for line in lines)


def test_known_hosts_entries_use_brackets_only_for_a_non_default_port() -> None:
    key = "ssh-ed25519 AAAAC3Nza comment"
    assert known_hosts_entry("198.18.0.10", 22, key) == "198.18.0.10 ssh-ed25519 AAAAC3Nza"
    assert known_hosts_entry("198.18.0.10", 2222, key) == "[198.18.0.10]:2222 ssh-ed25519 AAAAC3Nza"


def test_the_committed_testbed_inventory_matches_the_default_testbed() -> None:
    config = TestbedConfig(state_dir=ROOT / ".testbed")
    committed = (ROOT / "inventory" / "testbed.yml").read_text()
    assert committed == testbed_inventory_text(config, ROOT / "inventory")


def test_the_testbed_inventory_has_server_and_worker_groups_with_own_roots() -> None:
    inv = testbed_inventory(TestbedConfig(state_dir=Path("/x/.testbed")), Path("/x/inventory"))
    all_ = inv["all"]
    assert all_["vars"]["ansible_user"] == "root"
    assert all_["vars"]["ansible_ssh_private_key_file"] == "../.testbed/id_ed25519"
    assert all_["vars"]["known_hosts"] == "../.testbed/known_hosts"
    server = all_["children"]["server"]["hosts"]
    workers = all_["children"]["workers"]["hosts"]
    assert list(server) == ["server"] and list(workers) == ["worker1", "worker2", "worker3"]
    roots = [hv["torc_root"] for hv in [*server.values(), *workers.values()]]
    assert len(set(roots)) == 4
    assert all(hv["torc_workers"] >= 1 for hv in workers.values())
    plan = plan_testbed(TestbedConfig())
    assert {n: hv["ansible_host"] for n, hv in {**server, **workers}.items()} == {
        h.name: h.address for h in plan.hosts
    }


def test_the_inventory_text_is_valid_yaml_with_a_port_when_not_22() -> None:
    text = testbed_inventory_text(TestbedConfig(ssh_port=2200), Path("inventory"))
    data = yaml.safe_load(text)
    assert data["all"]["children"]["server"]["hosts"]["server"]["ansible_port"] == 2200
