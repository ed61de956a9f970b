"""A testbed of real SSH hosts on one machine: network namespaces joined by a bridge.

Each testbed host is a network namespace with a veth pair into a bridge in the root namespace,
an address from the testbed subnet and its own ``sshd`` (own host key, own config, listening on
the host's address only). The controller talks to the hosts over the bridge with a testbed-only
client key, verifying host keys against a known_hosts file the testbed writes. Nothing in
``~/.ssh`` is touched. The namespaces have no default route: the hosts reach each other and the
controller (the bridge's gateway address), nothing else.

Planning (names, addresses, ``ip`` commands, configs, inventory) is pure and lives in
:mod:`torc_stress.cluster.testbed_plan` (re-exported here); :func:`testbed_up` and
:func:`testbed_down` run the plan as root and record what they made in ``state.json`` so that a
teardown removes exactly that, even after a half-finished ``testbed_up``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torc_stress.cluster.testbed_plan import (
    BENCHMARK_RANGE,
    CLIENT_KEY,
    FIRST_HOST_OFFSET,
    INVENTORY_HEADER,
    KNOWN_HOSTS,
    MAX_IFNAME,
    PRIVATE_RANGES,
    HostPlan,
    TestbedConfig,
    TestbedPlan,
    known_hosts_entry,
    plan_testbed,
    sshd_config_text,
    testbed_inventory,
    testbed_inventory_text,
)
from torc_stress.errors import TestbedError

# NOTE: the planning names are re-exported: tasks.py, the tests and callers import them from here.
__all__ = [
    "BENCHMARK_RANGE",
    "CLIENT_KEY",
    "FIRST_HOST_OFFSET",
    "INVENTORY_HEADER",
    "KNOWN_HOSTS",
    "MAX_IFNAME",
    "PRIVATE_RANGES",
    "HostPlan",
    "Testbed",
    "TestbedConfig",
    "TestbedHost",
    "TestbedPlan",
    "check_prerequisites",
    "known_hosts_entry",
    "plan_testbed",
    "rotate_host_key",
    "sshd_config_text",
    "testbed_down",
    "testbed_inventory",
    "testbed_inventory_text",
    "testbed_up",
    "write_testbed_inventory",
]

logger = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
STATE_FILE = "state.json"
AUTHORIZED_KEYS = "authorized_keys"


# --- the built testbed --------------------------------------------------------------------


@dataclass
class TestbedHost:
    """One running testbed host."""

    name: str
    namespace: str
    address: str
    port: int
    sshd_pid: int
    host_key: Path
    sshd_config: Path
    sshd_log: Path
    torc_root: Path


@dataclass
class Testbed:
    """A running testbed: what the controller needs to reach its hosts."""

    __test__ = False

    config: TestbedConfig
    plan: TestbedPlan
    state_dir: Path
    client_key: Path
    known_hosts: Path
    hosts: dict[str, TestbedHost] = field(default_factory=dict)

    @property
    def server(self) -> TestbedHost:
        """The server host (the first host)."""
        return self.hosts[self.config.hosts[0]]

    @property
    def workers(self) -> list[TestbedHost]:
        """The worker hosts (all hosts after the first)."""
        return [self.hosts[name] for name in self.config.hosts[1:]]


class _State:
    """``state.json``: what has been made so far, saved after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "schema": 1, "prefix": "", "namespaces": [], "links": [], "pids": {},
            "files": [], "dirs": [],
        }

    @classmethod
    def load(cls, path: Path) -> _State:
        state = cls(path)
        try:
            state.data.update(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable testbed state file path=%s error=%s", path, exc)
        return state

    def add(self, kind: str, value: str) -> None:
        if value not in self.data[kind]:
            self.data[kind].append(value)
        self.save()

    def set_pid(self, host: str, pid: int) -> None:
        self.data["pids"][host] = pid
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


def check_prerequisites() -> None:
    """Raise TestbedError saying what is missing to build a testbed (root, ip, sshd, ssh-keygen)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces need CAP_NET_ADMIN/CAP_SYS_ADMIN): run as root")
    if shutil.which("ip") is None:
        problems.append("'ip' from iproute2: apt-get install iproute2")
    if not os.access(SSHD, os.X_OK):
        problems.append(f"{SSHD} from openssh-server: apt-get install openssh-server")
    if shutil.which("ssh-keygen") is None:
        problems.append("'ssh-keygen' from openssh-client: apt-get install openssh-client")
    if problems:
        raise TestbedError("the testbed needs " + "; ".join(problems))


def _run(
    cmd: list[str], *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    logger.debug("testbed run cmd=%s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"cannot run {' '.join(cmd)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise TestbedError(
            f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}"
            + _hint(cmd, proc.stderr)
        )
    return proc


def _hint(cmd: list[str], stderr: str) -> str:
    if "netns" in cmd and ("Operation not permitted" in stderr or "Permission denied" in stderr):
        return (". Creating network namespaces needs root with CAP_SYS_ADMIN; in a container, "
                "run it privileged (docker run --privileged) or use inventory/local.yml instead")
    if "File exists" in stderr:
        return ". A leftover of an earlier testbed? Run 'invoke testbed-down' first"
    return ""


def _check_subnet_free(plan: TestbedPlan) -> None:
    """Refuse a subnet that overlaps an address already configured on this machine."""
    net = plan.config.network
    out = _run(["ip", "-4", "-o", "addr", "show"]).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        ifname, cidr = parts[1], parts[3]
        if ifname == plan.bridge:
            continue
        iface = ipaddress.ip_interface(cidr)
        if iface.network.overlaps(net):
            raise TestbedError(
                f"testbed subnet {net} overlaps {cidr} on interface {ifname}; "
                "choose another subnet inside 198.18.0.0/15"
            )


def _keygen(path: Path, comment: str, state: _State) -> str:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    state.add("files", str(path))
    state.add("files", str(path) + ".pub")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    path.chmod(0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


def _write(path: Path, text: str, state: _State, mode: int = 0o644) -> None:
    state.add("files", str(path))
    path.write_text(text)
    path.chmod(mode)


def _mkdir(path: Path, state: _State) -> None:
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        state.add("dirs", str(d))
        d.mkdir()


def _wait_for_ssh(address: str, port: int, timeout: float, host: str, log: Path) -> None:
    """Wait until ``address:port`` sends an SSH banner."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                if sock.recv(64).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
    raise TestbedError(
        f"sshd of testbed host {host} did not answer on {address}:{port} within {timeout:g} s "
        f"({last}); its log {log} ends with: {tail.strip()}"
    )


def _start_sshd(plan: HostPlan, config: Path, log: Path, pid_file: Path, port: int,
                timeout: float) -> int:
    _run(["ip", "netns", "exec", plan.namespace, SSHD, "-t", "-f", str(config)])
    pid_file.unlink(missing_ok=True)
    _run(["ip", "netns", "exec", plan.namespace, SSHD, "-f", str(config), "-E", str(log)])
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = pid_file.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text.isdigit() and pid_file.read_text().endswith("\n"):
            return int(text)
        if time.monotonic() > deadline:
            raise TestbedError(f"sshd of testbed host {plan.name} wrote no pid file {pid_file}; "
                               f"see {log}")
        time.sleep(0.02)


def testbed_up(config: TestbedConfig | None = None) -> Testbed:
    """Build the testbed (as root): namespaces, bridge, veths, sshd per host, keys, known_hosts.

    An existing testbed with the same prefix and state directory is torn down first. On any
    failure everything made so far is removed again before the error propagates.

    Args:
        config: the testbed to build (default: 1 server host and 3 worker hosts).

    Returns:
        The running testbed.

    Raises:
        TestbedError: not root, a tool is missing, or a step failed (the message says which).
    """
    config = config or TestbedConfig()
    check_prerequisites()
    plan = plan_testbed(config)
    testbed_down(config)
    _check_subnet_free(plan)
    state_dir = config.state_dir.resolve()
    try:
        return _build(config, plan, state_dir)
    except BaseException:
        logger.warning("testbed up failed; removing what was made state_dir=%s", state_dir)
        try:
            testbed_down(config)
        except TestbedError as exc:  # pragma: no cover - the original error matters more
            logger.error("testbed cleanup after a failed up also failed error=%s", exc)
        raise


def _build(config: TestbedConfig, plan: TestbedPlan, state_dir: Path) -> Testbed:
    started = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)  # kept if it held other files before
    state = _State(state_dir / STATE_FILE)
    state.data["prefix"] = config.prefix
    state.save()
    if not Path("/run/sshd").exists():  # sshd's privilege separation directory
        _mkdir(Path("/run/sshd"), state)

    # network
    for cmd in plan.up_commands():
        if cmd[1:3] == ["link", "add"]:
            state.add("links", cmd[3])
        elif cmd[1:3] == ["netns", "add"]:
            state.add("namespaces", cmd[3])
        _run(cmd)

    # keys
    client_key = state_dir / CLIENT_KEY
    client_pub = _keygen(client_key, "torc-stress-testbed-client", state)
    authorized_keys = state_dir / AUTHORIZED_KEYS
    _write(authorized_keys, client_pub + "\n", state, 0o600)

    testbed = Testbed(config=config, plan=plan, state_dir=state_dir, client_key=client_key,
                      known_hosts=state_dir / KNOWN_HOSTS)
    known: list[str] = []
    for h in plan.hosts:
        host_dir = state_dir / "hosts" / h.name
        _mkdir(host_dir, state)
        host_key = host_dir / "ssh_host_ed25519_key"
        host_pub = _keygen(host_key, f"testbed-{h.name}", state)
        known.append(known_hosts_entry(h.address, config.ssh_port, host_pub))
        sshd_config = host_dir / "sshd_config"
        pid_file = host_dir / "sshd.pid"
        log = host_dir / "sshd.log"
        _write(sshd_config, sshd_config_text(
            address=h.address, port=config.ssh_port, host_key=host_key, pid_file=pid_file,
            authorized_keys=authorized_keys), state)
        state.add("files", str(pid_file))
        state.add("files", str(log))
        pid = _start_sshd(h, sshd_config, log, pid_file, config.ssh_port, config.ready_timeout)
        state.set_pid(h.name, pid)
        testbed.hosts[h.name] = TestbedHost(
            name=h.name, namespace=h.namespace, address=h.address, port=config.ssh_port,
            sshd_pid=pid, host_key=host_key, sshd_config=sshd_config, sshd_log=log,
            torc_root=config.work_root / h.name)
    _write(testbed.known_hosts, "\n".join(known) + "\n", state)
    if not config.work_root.exists():
        _mkdir(config.work_root, state)
    for host in testbed.hosts.values():
        _wait_for_ssh(host.address, host.port, config.ready_timeout, host.name, host.sshd_log)
    logger.info("testbed up hosts=%d subnet=%s state_dir=%s seconds=%.2f", len(plan.hosts),
                config.subnet, state_dir, time.monotonic() - started)
    return testbed


def rotate_host_key(config: TestbedConfig, host: str) -> str:
    """Give one running testbed host a new host key (to show that a changed key is refused).

    The key file is replaced and the host's sshd restarted; the known_hosts file is NOT updated.

    Args:
        config: the running testbed's config.
        host: the host whose key changes.

    Returns:
        The new public key line.
    """
    check_prerequisites()
    plan = plan_testbed(config).host(host)
    state_dir = config.state_dir.resolve()
    state = _State.load(state_dir / STATE_FILE)
    host_dir = state_dir / "hosts" / host
    old_pid = state.data["pids"].get(host)
    if old_pid:
        _terminate([int(old_pid)], host_dir / "sshd_config")
    new_pub = _keygen(host_dir / "ssh_host_ed25519_key", f"testbed-{host}-rotated", state)
    pid = _start_sshd(plan, host_dir / "sshd_config", host_dir / "sshd.log",
                      host_dir / "sshd.pid", config.ssh_port, config.ready_timeout)
    state.set_pid(host, pid)
    _wait_for_ssh(plan.address, config.ssh_port, config.ready_timeout, host,
                  host_dir / "sshd.log")
    logger.info("testbed host key rotated host=%s", host)
    return new_pub


# --- teardown -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive for our purposes
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate(pids: Iterable[int], must_mention: Path | None = None, grace: float = 5.0) -> None:
    """SIGTERM then SIGKILL the given pids (only those whose cmdline mentions ``must_mention``)."""
    targets = []
    for pid in pids:
        if pid <= 1 or pid == os.getpid() or not _alive(pid):
            continue
        if must_mention is not None and str(must_mention) not in _cmdline(pid):
            logger.warning("not killing pid=%d: it is no longer the testbed's sshd", pid)
            continue
        targets.append(pid)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in targets) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in targets:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _existing_namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _existing_links() -> list[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _namespace_pids(namespace: str) -> list[int]:
    out = _run(["ip", "netns", "pids", namespace], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def testbed_down(config: TestbedConfig | None = None) -> None:
    """Remove everything a testbed made: processes, namespaces, links, files, directories.

    Uses ``state.json`` (so a half-finished ``testbed_up`` is undone exactly) and also removes
    namespaces and links whose names start with ``<prefix>-`` left by a crashed earlier run.
    Every process still running inside the testbed's namespaces (sshd and anything started over
    SSH) is terminated. Safe to call when nothing exists.

    Args:
        config: the testbed to remove (default config if None).

    Raises:
        TestbedError: not root or ``ip`` missing while something is left to remove, or
            something could not be removed.
    """
    config = config or TestbedConfig()
    plan = plan_testbed(config)
    state_dir = config.state_dir.resolve()
    state = _State.load(state_dir / STATE_FILE)
    have_ip = shutil.which("ip") is not None
    namespaces = list(state.data["namespaces"])
    links = list(state.data["links"])
    if have_ip:
        mark = f"{config.prefix}-"
        namespaces += [n for n in _existing_namespaces() if n.startswith(mark)]
        links += [ln for ln in _existing_links() if ln.startswith(mark)]
        namespaces = [n for n in dict.fromkeys(namespaces) if n in _existing_namespaces()]
        links = [ln for ln in dict.fromkeys(links) if ln in _existing_links()]
    if (namespaces or links) and os.geteuid() != 0:
        raise TestbedError("removing the testbed needs root: run 'invoke testbed-down' as root")

    # processes: the recorded sshds (checked by cmdline), then anything left in our namespaces
    for host, pid in state.data["pids"].items():
        _terminate([int(pid)], state_dir / "hosts" / host / "sshd_config")
    for ns in namespaces:
        _terminate(_namespace_pids(ns))

    for ln in links:
        _run(["ip", "link", "del", ln], check=False)
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    _wait_gone(namespaces, links)

    for f in state.data["files"]:
        Path(f).unlink(missing_ok=True)
    # the per-host roots the testbed's inventory hands out (deploys and runs write there)
    for host in config.hosts:
        shutil.rmtree(config.work_root / host, ignore_errors=True)
    for d in sorted({*state.data["dirs"], str(config.work_root)}, key=len, reverse=True):
        with contextlib.suppress(OSError):
            Path(d).rmdir()
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    for d in (state_dir / "hosts", state_dir):
        with contextlib.suppress(OSError):
            d.rmdir()
    if namespaces or links or state.data["pids"]:
        logger.info("testbed down namespaces=%d links=%d bridge=%s", len(namespaces), len(links),
                    plan.bridge)


def _wait_gone(namespaces: list[str], links: list[str], timeout: float = 10.0) -> None:
    if not namespaces and not links:
        return
    deadline = time.monotonic() + timeout
    while True:
        left = [n for n in namespaces if n in _existing_namespaces()]
        left += [ln for ln in links if ln in _existing_links()]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TestbedError(f"testbed down could not remove {left}; remove them by hand "
                               "with 'ip netns del NAME' / 'ip link del NAME'")
        time.sleep(0.05)


def write_testbed_inventory(testbed: Testbed | TestbedConfig, path: Path,
                            workers_per_host: int = 1) -> Path:
    """Write the Ansible inventory of a testbed to ``path``.

    Args:
        testbed: the running testbed (or just its config).
        path: the inventory file to write (e.g. ``inventory/testbed.yml``).
        workers_per_host: ``torc_workers`` of each worker host.

    Returns:
        ``path``.
    """
    config = testbed.config if isinstance(testbed, Testbed) else testbed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(testbed_inventory_text(config, path.parent, workers_per_host))
    return path


# Names starting with "test" would be collected by pytest when imported into a test module.
for _fn in (testbed_up, testbed_down):
    setattr(_fn, "__test__", False)  # noqa: B010
del _fn
