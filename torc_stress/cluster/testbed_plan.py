"""The testbed's pure side: config validation, names, addresses, ``ip`` commands, configs.

Nothing here touches the system: :func:`plan_testbed` says what
:func:`torc_stress.cluster.testbed.testbed_up` will build, :func:`sshd_config_text` and
:func:`known_hosts_entry` say what it writes, and :func:`testbed_inventory` is the Ansible
inventory that reaches the hosts. The root-only runtime lives in
:mod:`torc_stress.cluster.testbed`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from torc_stress.errors import TestbedError

BENCHMARK_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
"""RFC 2544's range for network benchmarking: the default home of testbed subnets."""

PRIVATE_RANGES = tuple(
    ipaddress.IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
"""RFC 1918 ranges, accepted only with ``allow_private_subnet=True``."""

FIRST_HOST_OFFSET = 10
"""Host addresses start at subnet + 10; subnet + 1 is the bridge (the controller's address)."""

MAX_IFNAME = 15
"""Linux interface names are at most 15 characters (IFNAMSIZ - 1)."""

HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
CLIENT_KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"


@dataclass(frozen=True)
class TestbedConfig:
    """What testbed to build.

    Attributes:
        hosts: host names; the first is the server host, the rest are worker hosts.
        subnet: IPv4 subnet of the bridge (default inside 198.18.0.0/15).
        prefix: prefix of every namespace and link name (1-6 lowercase letters/digits).
        state_dir: where keys, configs, logs and ``state.json`` live.
        ssh_port: the port every sshd listens on (on the host's own address).
        work_root: per-host install roots are ``work_root/<host>`` (hosts share this filesystem).
        allow_private_subnet: also accept RFC 1918 subnets (10/8, 172.16/12, 192.168/16).
        ready_timeout: seconds to wait for each sshd to answer.
    """

    __test__ = False  # not a pytest test class

    hosts: tuple[str, ...] = ("server", "worker1", "worker2", "worker3")
    subnet: str = "198.18.0.0/24"
    prefix: str = "tstb"
    state_dir: Path = Path(".testbed")
    ssh_port: int = 22
    work_root: Path = Path("/tmp/torc-testbed")
    allow_private_subnet: bool = False
    ready_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not self.hosts:
            raise TestbedError("a testbed needs at least one host (the server host)")
        for host in self.hosts:
            if not HOST_NAME_RE.match(host):
                raise TestbedError(
                    f"bad testbed host name {host!r}: use 1-32 lowercase letters, digits or '-', "
                    "starting with a letter"
                )
        if len(set(self.hosts)) != len(self.hosts):
            raise TestbedError(f"testbed host names must be unique: {list(self.hosts)}")
        if not PREFIX_RE.match(self.prefix):
            raise TestbedError(
                f"bad testbed prefix {self.prefix!r}: use 1-6 lowercase letters or digits, "
                "starting with a letter (it starts every namespace and link name)"
            )
        if not self.work_root.is_absolute() or len(self.work_root.parts) < 3:
            raise TestbedError(
                f"testbed work_root {self.work_root} must be an absolute path at least two "
                "levels deep (e.g. /tmp/torc-testbed): testbed-down deletes <work_root>/<host>"
            )
        if not 1 <= self.ssh_port <= 65535:
            raise TestbedError(f"bad testbed ssh_port {self.ssh_port}: use 1-65535")
        net = self.network
        allowed = (BENCHMARK_RANGE, *PRIVATE_RANGES) if self.allow_private_subnet else (
            BENCHMARK_RANGE,
        )
        if not any(net.subnet_of(space) for space in allowed):
            what = "198.18.0.0/15 or an RFC 1918 range" if self.allow_private_subnet else (
                "198.18.0.0/15 (the range reserved for network benchmarking)"
            )
            raise TestbedError(
                f"testbed subnet {self.subnet} is outside {what}; pick e.g. 198.18.0.0/24"
            )
        needed = FIRST_HOST_OFFSET + len(self.hosts) + 1  # + broadcast
        if net.num_addresses < needed:
            raise TestbedError(
                f"testbed subnet {self.subnet} has {net.num_addresses} addresses, "
                f"{len(self.hosts)} hosts need at least {needed}; use a larger subnet (e.g. /24)"
            )
        if len(f"{self.prefix}-v{len(self.hosts) - 1}") > MAX_IFNAME:
            raise TestbedError(f"too many testbed hosts for prefix {self.prefix!r}")

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The subnet as an :class:`ipaddress.IPv4Network` (raises TestbedError if invalid)."""
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as exc:
            raise TestbedError(
                f"bad testbed subnet {self.subnet!r}: {exc}; write it like 198.18.0.0/24"
            ) from exc
        if not isinstance(net, ipaddress.IPv4Network):
            raise TestbedError(f"testbed subnet {self.subnet} must be IPv4")
        return net


@dataclass(frozen=True)
class HostPlan:
    """Names and address of one testbed host."""

    name: str
    namespace: str
    veth: str  # root-namespace end, attached to the bridge
    peer: str  # namespace end
    address: str


@dataclass(frozen=True)
class TestbedPlan:
    """Everything :func:`testbed_up` will make, computed without touching the system."""

    __test__ = False

    config: TestbedConfig
    bridge: str
    gateway: str
    prefixlen: int
    hosts: tuple[HostPlan, ...]

    def host(self, name: str) -> HostPlan:
        """The plan of the host called ``name``."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise TestbedError(f"no testbed host {name!r}; hosts are {[h.name for h in self.hosts]}")

    def up_commands(self) -> list[list[str]]:
        """The ``ip`` commands that build the network, in order."""
        cidr = f"/{self.prefixlen}"
        cmds: list[list[str]] = [
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", self.gateway + cidr, "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ]
        for h in self.hosts:
            cmds += [
                ["ip", "netns", "add", h.namespace],
                ["ip", "-n", h.namespace, "link", "set", "lo", "up"],
                ["ip", "link", "add", h.veth, "type", "veth", "peer", "name", h.peer,
                 "netns", h.namespace],
                ["ip", "link", "set", h.veth, "master", self.bridge],
                ["ip", "link", "set", h.veth, "up"],
                ["ip", "-n", h.namespace, "addr", "add", h.address + cidr, "dev", h.peer],
                ["ip", "-n", h.namespace, "link", "set", h.peer, "up"],
            ]
        return cmds

    def down_commands(self) -> list[list[str]]:
        """The ``ip`` commands that remove the network (each may fail if already gone)."""
        cmds: list[list[str]] = []
        for h in self.hosts:
            cmds += [["ip", "link", "del", h.veth], ["ip", "netns", "del", h.namespace]]
        cmds.append(["ip", "link", "del", self.bridge])
        return cmds


def plan_testbed(config: TestbedConfig) -> TestbedPlan:
    """Compute names and addresses of a testbed (pure).

    Args:
        config: the testbed to plan.

    Returns:
        The plan: bridge ``<prefix>-br`` at subnet + 1, host *i* in namespace ``<prefix>-<host>``
        at subnet + 10 + *i*, joined by veth ``<prefix>-v<i>`` (root end) / ``eth0`` (inside).
    """
    net = config.network
    hosts = tuple(
        HostPlan(
            name=name,
            namespace=f"{config.prefix}-{name}",
            veth=f"{config.prefix}-v{i}",
            peer="eth0",
            address=str(net.network_address + FIRST_HOST_OFFSET + i),
        )
        for i, name in enumerate(config.hosts)
    )
    return TestbedPlan(
        config=config,
        bridge=f"{config.prefix}-br",
        gateway=str(net.network_address + 1),
        prefixlen=net.prefixlen,
        hosts=hosts,
    )


def sshd_config_text(
    *, address: str, port: int, host_key: Path, pid_file: Path, authorized_keys: Path
) -> str:
    """The sshd_config of one testbed host (pure).

    Args:
        address: the only address sshd listens on.
        port: its port.
        host_key: absolute path of the host's private ed25519 key.
        pid_file: absolute path of sshd's pid file.
        authorized_keys: absolute path of the testbed's authorized_keys file.

    Returns:
        The file's text.
    """
    return "\n".join([
        "# written by torc_stress.cluster.testbed; removed by testbed-down",
        f"ListenAddress {address}",
        f"Port {port}",
        f"HostKey {host_key}",
        f"PidFile {pid_file}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "LogLevel INFO",
        "PrintMotd no",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "ClientAliveInterval 15",
        "Subsystem sftp internal-sftp",
        "",
    ])


def known_hosts_entry(address: str, port: int, public_key: str) -> str:
    """One known_hosts line: ``addr key`` on port 22, ``[addr]:port key`` otherwise (pure)."""
    key_type, key_b64 = public_key.split()[:2]
    where = address if port == 22 else f"[{address}]:{port}"
    return f"{where} {key_type} {key_b64}"


def testbed_inventory(testbed_config: TestbedConfig, inventory_dir: Path,
                      workers_per_host: int = 1) -> dict[str, Any]:
    """The Ansible YAML inventory of a testbed, as a dict (pure).

    Args:
        testbed_config: the testbed.
        inventory_dir: the directory the inventory file will live in; key and known_hosts paths
            are written relative to it.
        workers_per_host: ``torc_workers`` of each worker host.

    Returns:
        ``{"all": {"vars": ..., "children": {"server": ..., "workers": ...}}}``.
    """
    plan = plan_testbed(testbed_config)
    state_dir = Path(os.path.abspath(testbed_config.state_dir))
    rel = Path(os.path.relpath(state_dir, os.path.abspath(inventory_dir)))

    def host_vars(h: HostPlan, workers: int | None) -> dict[str, Any]:
        hv: dict[str, Any] = {"ansible_host": h.address}
        if testbed_config.ssh_port != 22:
            hv["ansible_port"] = testbed_config.ssh_port
        hv["torc_root"] = str(testbed_config.work_root / h.name)
        # NOTE: what a partition fault takes down: the host's link in this machine's namespace
        hv["testbed_namespace"] = h.namespace
        hv["testbed_link"] = h.veth
        if workers is not None:
            hv["torc_workers"] = workers
        return hv

    server, *workers = plan.hosts
    return {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(rel / CLIENT_KEY),
                "known_hosts": str(rel / KNOWN_HOSTS),
                "ansible_python_interpreter": "python3",
            },
            "children": {
                "server": {"hosts": {server.name: host_vars(server, None)}},
                "workers": {"hosts": {w.name: host_vars(w, workers_per_host) for w in workers}},
            },
        }
    }


INVENTORY_HEADER = """\
# The network-namespace testbed on this machine (see torc_stress/cluster/testbed.py).
# Build it with `invoke testbed-up` (as root), remove it with `invoke testbed-down`.
# Generated by write_testbed_inventory() from the default TestbedConfig; tests check it matches.
# Paths are relative to this file. Hosts share this machine's filesystem, so each has its own
# torc_root. The namespaces reach only the bridge subnet: no package index, no internet.
"""


def testbed_inventory_text(testbed_config: TestbedConfig, inventory_dir: Path,
                           workers_per_host: int = 1) -> str:
    """The inventory file's text (pure); see :func:`testbed_inventory`."""
    data = testbed_inventory(testbed_config, inventory_dir, workers_per_host)
    return INVENTORY_HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# Names starting with "test" would be collected by pytest when imported into a test module.
for _fn in (testbed_inventory, testbed_inventory_text):
    setattr(_fn, "__test__", False)  # noqa: B010
del _fn
