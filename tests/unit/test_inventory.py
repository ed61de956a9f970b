"""Inventory loading: merge order, connection variables, selection and validation errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from torc_stress.cluster.inventory import Inventory, load_inventory
from torc_stress.errors import InventoryError

BASE: dict[str, Any] = {"all": {
    "vars": {"level": "all", "torc_root": "/srv/all", "only_all": 1},
    "children": {
        "site": {
            "vars": {"level": "site", "site_var": "s"},
            "children": {
                "server": {"hosts": {"srv": {"ansible_host": "10.0.0.10"}},
                           "vars": {"level": "server"}},
                "workers": {"hosts": {"w1": {"torc_workers": 2, "level": "host"}, "w2": None},
                            "vars": {"level": "workers", "torc_workers": 8}},
            },
        },
    },
}}


def write(tmp_path: Path, data: Any, name: str = "inv.yml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    return load_inventory(write(tmp_path, BASE))


@pytest.mark.parametrize(("host", "var", "value"), [
    ("srv", "level", "server"),        # child group beats parent and all
    ("w1", "level", "host"),           # host beats every group
    ("w2", "level", "workers"),
    ("w2", "site_var", "s"),           # inherited from the parent group
    ("w2", "only_all", 1),             # inherited from all
    ("w1", "torc_workers", 2),
    ("w2", "torc_workers", 8),
])
def test_variables_merge_all_then_parent_then_child_then_host(
        inventory: Inventory, host: str, var: str, value: Any) -> None:
    assert inventory.hosts[host].vars[var] == value


def test_groups_list_their_hosts_including_those_of_children(inventory: Inventory) -> None:
    assert inventory.groups["site"] == ("srv", "w1", "w2")
    assert inventory.hosts["w1"].groups == ("site", "workers")
    assert inventory.server.name == "srv"
    assert [h.name for h in inventory.workers] == ["w1", "w2"]


@pytest.mark.parametrize(("pattern", "hosts"), [
    ("all", ["srv", "w1", "w2"]),
    ("workers", ["w1", "w2"]),
    ("w2", ["w2"]),
    ("server:workers", ["srv", "w1", "w2"]),
    ("w2:workers", ["w2", "w1"]),
])
def test_select_takes_groups_hosts_and_unions(
        inventory: Inventory, pattern: str, hosts: list[str]) -> None:
    assert [h.name for h in inventory.select(pattern)] == hosts


def test_select_of_an_unknown_name_lists_the_groups(inventory: Inventory) -> None:
    with pytest.raises(InventoryError, match="'nope' is neither a group nor a host.*workers"):
        inventory.select("workers:nope")


def test_group_vars_and_host_vars_files_override_inline_values(tmp_path: Path) -> None:
    (tmp_path / "group_vars" / "workers").mkdir(parents=True)
    (tmp_path / "group_vars" / "workers" / "a.yml").write_text("level: gv-dir\nx: 1\n")
    (tmp_path / "group_vars" / "all.yml").write_text("only_all: 2\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "w1.yaml").write_text("level: hv\ntorc_workers: 5\n")
    inv = load_inventory(write(tmp_path, BASE))
    assert inv.hosts["w2"].vars["level"] == "gv-dir"
    assert (inv.hosts["w1"].vars["level"], inv.hosts["w1"].vars["torc_workers"]) == ("hv", 5)
    assert (inv.hosts["srv"].vars["only_all"], inv.hosts["srv"].vars["level"]) == (2, "server")


def test_invalid_values_in_host_vars_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "w2.yml").write_text("torc_workers: many\n")
    with pytest.raises(InventoryError, match="host 'w2': torc_workers: must be an integer"):
        load_inventory(write(tmp_path, BASE))


def test_connection_variables_become_host_fields(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["vars"].update(ansible_user="stress", ansible_ssh_private_key_file="keys/id")
    data["all"]["children"]["site"]["children"]["server"]["hosts"]["srv"].update(
        ansible_port=2222, ansible_connection="local")
    inv = load_inventory(write(tmp_path, data))
    srv, w1 = inv.hosts["srv"], inv.hosts["w1"]
    assert (srv.address, srv.port, srv.user, srv.connection) == ("10.0.0.10", 2222, "stress",
                                                                  "local")
    assert srv.key_file == (tmp_path / "keys" / "id").resolve()
    assert (w1.address, w1.port, w1.connection) == ("w1", 22, "ssh")


def test_a_key_file_with_tilde_is_expanded(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    data["all"]["vars"]["ansible_ssh_private_key_file"] = "~/.ssh/lab"
    inv = load_inventory(write(tmp_path, data))
    assert inv.hosts["w1"].key_file == Path("~/.ssh/lab").expanduser()


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


W1 = ("all", "children", "site", "children", "workers", "hosts", "w1")
SERVER = ("all", "children", "site", "children", "server")


@pytest.mark.parametrize(("data", "message"), [
    ({"hosts": {}}, "single top-level key 'all'"),
    (_with((*SERVER, "hosts"), {}), "group 'server' must have exactly one host, found 0"),
    (_with((*SERVER, "hosts"), {"a": {}, "b": {}}), "exactly one host, found 2 \\(a, b\\)"),
    (_with(("all", "children", "site", "children", "workers", "hosts"), None),
     "group 'workers' must have at least one host"),
    (_with(W1, {"torc_workers": 0}), "host 'w1': torc_workers: must be an integer >= 1"),
    (_with(W1, {"torc_workers": "4"}), "torc_workers: must be an integer >= 1, got '4'"),
    (_with(W1, {"ansible_port": "22"}), "ansible_port: must be an integer port"),
    (_with(W1, {"ansible_connection": "paramiko"}), "ansible_connection: must be 'ssh' or"),
    (_with(W1, {"ansible_password": "x"}), "ansible_password: not supported"),
    (_with(W1, {"ansible_ssh_common_args": "-o X"}), "ansible_ssh_common_args: not supported"),
    (_with(W1, {"torc_root": 5}), "torc_root: must be a directory path"),
    (_with((*SERVER, "hostz"), {}), "group 'server': unknown key\\(s\\) hostz"),
    (_with(("all", "children", "site", "children", "workers", "hosts"), {"node[01:04]": None}),
     "range patterns"),
    (_with((*SERVER, "vars"), ["a"]), "group 'server': vars: must be a mapping"),
])
def test_invalid_inventories_are_refused_with_what_to_fix(
        tmp_path: Path, data: Any, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(InventoryError, match=message) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


def test_bad_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "all:\n  children:\n    server: {hosts: [\n")
    with pytest.raises(InventoryError, match=r"inv.yml: line \d+, column \d+: not valid YAML"):
        load_inventory(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="nope.yml: cannot read"):
        load_inventory(tmp_path / "nope.yml")


@pytest.mark.parametrize("name", ["local.yml", "testbed.yml", "lab.example.yml"])
def test_the_shipped_inventories_load(name: str) -> None:
    path = Path(__file__).parents[2] / "inventory" / name
    if not path.exists():
        pytest.skip(f"{path} not shipped yet")
    inv = load_inventory(path)
    assert inv.server.name in inv.hosts
    assert inv.workers
