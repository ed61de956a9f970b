"""Load and validate an Ansible YAML inventory (the subset torc-stress honours).

Groups nest under ``all`` via ``children``; variables merge ``all`` < parent group < child group
< host (groups at the same depth in ASCII order), and ``group_vars/<group>[.yml]`` and
``host_vars/<host>[.yml]`` next to the inventory file override the inline values. Everything is
validated before any host is contacted: group ``server`` has exactly one host, group ``workers``
one or more, known variables have the right types and unsupported ``ansible_*`` connection
variables are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torc_stress.cluster.yamlfile import read_yaml
from torc_stress.errors import InventoryError

log = logging.getLogger(__name__)

#: ansible_* variables we honour, or accept and pass through.
SUPPORTED_ANSIBLE_VARS = frozenset({
    "ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
    "ansible_connection", "ansible_python_interpreter",
})
CONNECTIONS = ("ssh", "local")
GROUP_KEYS = frozenset({"hosts", "children", "vars"})


@dataclass(frozen=True)
class Host:
    """One inventory host with its merged variables."""

    name: str
    address: str
    port: int
    user: str | None
    key_file: Path | None
    connection: str
    vars: Mapping[str, Any]
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    """The hosts and groups of one inventory file."""

    path: Path
    hosts: Mapping[str, Host]
    groups: Mapping[str, tuple[str, ...]]

    def select(self, pattern: str) -> list[Host]:
        """Return the hosts matching ``pattern``, in inventory order.

        Args:
            pattern: ``all``, a group name, a host name, or a ``:``/``,``-separated union.

        Raises:
            InventoryError: A part of the pattern names neither a group nor a host.
        """
        names: list[str] = []
        for part in pattern.replace(",", ":").split(":"):
            part = part.strip()
            if not part:
                continue
            if part in self.groups:
                found = list(self.groups[part])
            elif part in self.hosts:
                found = [part]
            else:
                raise InventoryError(
                    f"{self.path}: host pattern {pattern!r}: {part!r} is neither a group nor a "
                    f"host. Groups: {', '.join(sorted(self.groups))}"
                )
            names.extend(name for name in found if name not in names)
        return [self.hosts[name] for name in names]

    @property
    def server(self) -> Host:
        """The one host of group ``server``."""
        return self.hosts[self.groups["server"][0]]

    @property
    def workers(self) -> list[Host]:
        """The hosts of group ``workers``."""
        return [self.hosts[name] for name in self.groups["workers"]]


@dataclass
class _Group:
    name: str
    depth: int
    vars: dict[str, Any]
    hosts: dict[str, dict[str, Any]]
    children: list[str]


def load_inventory(path: Path) -> Inventory:
    """Read and validate an inventory file.

    Args:
        path: A YAML inventory in Ansible's format.

    Returns:
        The validated inventory.

    Raises:
        InventoryError: The file is missing, not YAML, or invalid; the message names the file,
            the group or host, and what to fix.
    """
    path = Path(path)
    data = read_yaml(path, InventoryError, "inventory")
    return build_inventory(path, data, vars_dir=path.parent)


def _vars_files(vars_dir: Path, kind: str, name: str) -> dict[str, Any]:
    """Variables of ``group_vars/<name>`` or ``host_vars/<name>`` (file or directory of files)."""
    base = vars_dir / kind
    files = [base / f"{name}{ext}" for ext in ("", ".yml", ".yaml")
             if (base / f"{name}{ext}").is_file()]
    if (base / name).is_dir():
        files += sorted(p for p in (base / name).iterdir() if p.suffix in (".yml", ".yaml"))
    merged: dict[str, Any] = {}
    for file in files:
        merged.update(_mapping(read_yaml(file, InventoryError, "inventory"), f"{file}"))
    return merged


def build_inventory(path: Path, data: Any, *, vars_dir: Path | None = None) -> Inventory:
    """Build an Inventory from already-parsed YAML ``data`` (see :func:`load_inventory`).

    Args:
        path: The inventory file, for messages and relative key files.
        data: The parsed YAML.
        vars_dir: Where ``group_vars/`` and ``host_vars/`` are read from (None: nowhere).
    """
    if not isinstance(data, dict) or set(data) != {"all"}:
        raise InventoryError(f"{path}: the inventory must be a mapping with the single top-level "
                             "key 'all' (Ansible YAML inventory format)")
    groups: dict[str, _Group] = {}
    _parse_group(path, "all", data["all"], 0, groups)
    if vars_dir is not None:
        for group in groups.values():
            group.vars.update(_vars_files(vars_dir, "group_vars", group.name))
            for host, host_vars in group.hosts.items():
                host_vars.update(_vars_files(vars_dir, "host_vars", host))
    members = _group_members(groups)
    members.setdefault("ungrouped", tuple(
        name for name in members["all"]
        if not any(name in hosts for group, hosts in members.items() if group != "all")
    ))
    hosts = {name: _build_host(path, name, groups, members) for name in members["all"]}
    _check_roles(path, members)
    return Inventory(path, MappingProxyType(hosts), MappingProxyType(members))


def _parse_group(path: Path, name: str, body: Any, depth: int, groups: dict[str, _Group]) -> None:
    where = f"{path}: group {name!r}"
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InventoryError(f"{where}: must be a mapping with hosts, children and vars")
    unknown = set(body) - GROUP_KEYS
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                             "a group has only 'hosts', 'children' and 'vars'")
    group = groups.setdefault(name, _Group(name, depth, {}, {}, []))
    group.depth = max(group.depth, depth)
    group.vars.update(_mapping(body.get("vars"), f"{where}: vars"))
    for host, host_vars in _mapping(body.get("hosts"), f"{where}: hosts").items():
        _check_host_name(path, name, host)
        group.hosts[str(host)] = _mapping(host_vars, f"{path}: host {host!r}")
    for child, child_body in _mapping(body.get("children"), f"{where}: children").items():
        if child == "all":
            raise InventoryError(f"{where}: 'all' cannot be a child group")
        if child not in group.children:
            group.children.append(str(child))
        _parse_group(path, str(child), child_body, depth + 1, groups)


def _check_host_name(path: Path, group: str, host: Any) -> None:
    if not isinstance(host, str) or not host or "[" in host:
        raise InventoryError(f"{path}: group {group!r}: bad host name {host!r}; give each host "
                             "by name (range patterns like node[01:04] are not supported)")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InventoryError(f"{where}: must be a mapping, got {type(value).__name__}")
    return dict(value)


def _group_members(groups: dict[str, _Group]) -> dict[str, tuple[str, ...]]:
    members: dict[str, tuple[str, ...]] = {}

    def collect(name: str, seen: tuple[str, ...]) -> tuple[str, ...]:
        if name in seen:
            raise InventoryError(f"group {name!r} is its own descendant: {' -> '.join(seen)}")
        if name not in members:
            names = list(groups[name].hosts)
            for child in groups[name].children:
                names.extend(h for h in collect(child, (*seen, name)) if h not in names)
            members[name] = tuple(names)
        return members[name]

    for name in groups:
        collect(name, ())
    return members


def _build_host(path: Path, name: str, groups: dict[str, _Group],
                members: Mapping[str, tuple[str, ...]]) -> Host:
    mine = sorted((g for g in groups.values() if name in members[g.name]),
                  key=lambda g: (g.depth, g.name))
    merged: dict[str, Any] = {}
    for group in mine:
        merged.update(group.vars)
    for group in mine:
        if name in group.hosts:
            merged.update(group.hosts[name])
    _validate_vars(path, name, merged)
    return Host(
        name=name,
        address=str(merged.get("ansible_host", name)),
        port=int(merged.get("ansible_port", 22)),
        user=merged.get("ansible_user"),
        key_file=_key_file(path, merged.get("ansible_ssh_private_key_file")),
        connection=merged.get("ansible_connection", "ssh"),
        vars=MappingProxyType(merged),
        groups=tuple(g.name for g in mine if g.name != "all"),
    )


def _key_file(path: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    key = Path(value).expanduser()
    return key if key.is_absolute() else (path.parent / key).resolve()


#: Known variables and the check each must pass: (predicate, what it must be).
_CHECKS: dict[str, tuple[Any, str]] = {
    "ansible_host": (lambda v: isinstance(v, str) and v, "a host name or IP address"),
    "ansible_port": (lambda v: type(v) is int and 0 < v < 65536, "an integer port 1-65535"),
    "ansible_user": (lambda v: isinstance(v, str) and v, "a user name"),
    "ansible_ssh_private_key_file": (lambda v: isinstance(v, str) and v, "a path to a key file"),
    "ansible_connection": (lambda v: v in CONNECTIONS, "'ssh' or 'local'"),
    "ansible_python_interpreter": (lambda v: isinstance(v, str) and v, "a path"),
    "torc_workers": (lambda v: type(v) is int and v >= 1, "an integer >= 1"),
    "torc_root": (lambda v: isinstance(v, str) and v, "a directory path"),
    "torc_port": (lambda v: type(v) is int and 0 <= v < 65536, "an integer port"),
    "testbed_link": (lambda v: isinstance(v, str) and v, "a network interface name"),
    "testbed_namespace": (lambda v: isinstance(v, str) and v, "a network namespace name"),
}


def _validate_vars(path: Path, host: str, merged: Mapping[str, Any]) -> None:
    for key, value in merged.items():
        where = f"{path}: host {host!r}: {key}"
        if key.startswith("ansible_") and key not in SUPPORTED_ANSIBLE_VARS:
            raise InventoryError(
                f"{where}: not supported by torc-stress (supported: "
                f"{', '.join(sorted(SUPPORTED_ANSIBLE_VARS))}); put SSH options in ~/.ssh/config "
                "or remove the variable")
        check = _CHECKS.get(key)
        if check and not check[0](value):
            raise InventoryError(f"{where}: must be {check[1]}, got {value!r}")


def _check_roles(path: Path, members: Mapping[str, tuple[str, ...]]) -> None:
    server = members.get("server", ())
    if len(server) != 1:
        raise InventoryError(
            f"{path}: group 'server' must have exactly one host, found {len(server)}"
            + (f" ({', '.join(server)})" if server else "")
            + "; add e.g. all: children: server: hosts: {myhost: {}}")
    if not members.get("workers"):
        raise InventoryError(f"{path}: group 'workers' must have at least one host; add e.g. "
                             "all: children: workers: hosts: {node1: {torc_workers: 4}}")
