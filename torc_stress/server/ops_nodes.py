"""Write operations on resource requirements, compute nodes and events."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

import orjson

from torc_stress.errors import NotFoundError
from torc_stress.server.leases import release_node
from torc_stress.server.ops_common import (
    _bad,
    _get,
    _row_id,
)
from torc_stress.server.state import (
    ServerState,
)
from torc_stress.server.store import (
    CN_COLUMNS,
    RR_COLUMNS,
    cn_row_to_model,
    duration_seconds,
    memory_bytes,
    rr_row_to_model,
)


# -- resource requirements ---------------------------------------------------------------------
def _insert_rr(
    conn: sqlite3.Connection,
    wid: int,
    name: str,
    cpus: int,
    gpus: int,
    nodes: int,
    memory: str,
    runtime: str,
) -> int:
    try:
        mem_b = memory_bytes(memory)
        run_s = duration_seconds(runtime)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return _row_id(
        conn.execute(
            "INSERT INTO resource_requirements (workflow_id, name, num_cpus, num_gpus, num_nodes, "
            "memory, runtime, memory_bytes, runtime_s) VALUES (?,?,?,?,?,?,?,?,?)",
            (wid, name, cpus, gpus, nodes, memory, runtime, mem_b, run_s),
        )
    )


def _remember_rr(conn: sqlite3.Connection, st: ServerState, rr_id: int) -> dict[str, Any]:
    row = conn.execute(
        f"SELECT {RR_COLUMNS} FROM resource_requirements WHERE id = ?", (rr_id,)
    ).fetchone()
    st.rr[rr_id] = (row[1], row[3], row[4], row[5], row[8], row[9])
    model = rr_row_to_model(row)
    st._rr_new[rr_id] = model
    return model


def create_resource_requirements(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /resource_requirements."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    name = _get(body, "name", str, required=True)
    cpus = _get(body, "num_cpus", int, 1)
    gpus = _get(body, "num_gpus", int, 0)
    nodes = _get(body, "num_nodes", int, 1)
    if cpus < 0 or gpus < 0 or nodes < 1:
        raise _bad("num_cpus and num_gpus must be >= 0 and num_nodes >= 1")
    rr_id = _insert_rr(
        conn,
        wid,
        name,
        cpus,
        gpus,
        nodes,
        _get(body, "memory", str, "1m"),
        _get(body, "runtime", str, "PT1M"),
    )
    return _remember_rr(conn, st, rr_id)


# -- compute nodes -----------------------------------------------------------------------------
_CN_FIELDS = (
    "hostname",
    "pid",
    "start_time",
    "num_cpus",
    "memory_gb",
    "num_gpus",
    "num_nodes",
    "compute_node_type",
)


#: the compute_node_model fields every node must have, with their JSON types
_NODE_REQUIRED: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("hostname", str),
    ("pid", int),
    ("start_time", str),
    ("num_cpus", int),
    ("memory_gb", (int, float)),
    ("num_gpus", int),
    ("num_nodes", int),
    ("compute_node_type", str),
)
#: the fields a PUT may change
_NODE_UPDATABLE = (
    *_NODE_REQUIRED,
    ("time_limit", str),
    ("duration_seconds", (int, float)),
    ("is_active", bool),
)


def create_compute_node(
    conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]
) -> dict[str, Any]:
    """POST /compute_nodes."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    for key, kind in _NODE_REQUIRED:
        _get(body, key, kind, required=True)
    active = _get(body, "is_active", bool, True)
    sched = body.get("scheduler")
    cid = _row_id(
        conn.execute(
            f"INSERT INTO compute_node ({CN_COLUMNS.replace('id, ', '', 1)}) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                wid,
                body["hostname"],
                body["pid"],
                body["start_time"],
                body.get("duration_seconds"),
                int(active),
                body["num_cpus"],
                body["memory_gb"],
                body["num_gpus"],
                body["num_nodes"],
                _get(body, "time_limit", str),
                _get(body, "scheduler_config_id", int),
                body["compute_node_type"],
                None if sched is None else orjson.dumps(sched).decode(),
            ),
        )
    )
    model = get_compute_node(conn, cid)
    st.nodes[cid] = wid  # last: memory changes only once nothing can fail
    return model


def get_compute_node(conn: sqlite3.Connection, node_id: int) -> dict[str, Any]:
    """Reads one compute node (any connection)."""
    row = conn.execute(f"SELECT {CN_COLUMNS} FROM compute_node WHERE id = ?", (node_id,)).fetchone()
    if row is None:
        raise NotFoundError(404, f"compute node {node_id} does not exist")
    model = cn_row_to_model(row)
    if isinstance(model.get("scheduler"), str):
        with contextlib.suppress(orjson.JSONDecodeError):
            model["scheduler"] = orjson.loads(model["scheduler"])
    return model


def update_compute_node(
    conn: sqlite3.Connection, st: ServerState, node_id: int, body: dict[str, Any]
) -> dict[str, Any]:
    """PUT /compute_nodes/{id}: updates is_active, duration_seconds and the other fields given."""
    current = get_compute_node(conn, node_id)
    changes = {}
    for key, kind in _NODE_UPDATABLE:
        value = _get(body, key, kind)
        if value is not None:
            changes[key] = int(value) if isinstance(value, bool) else value
    if changes:
        conn.execute(
            f"UPDATE compute_node SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
            (*changes.values(), node_id),
        )
    if current.get("is_active") and changes.get("is_active") == 0 and node_id in st.nodes \
            and node_id not in st.expired:
        # a worker leaving hands back what it still holds (claims it never ran)
        release_node(conn, st, node_id, reason="deactivated")
    return get_compute_node(conn, node_id)


def create_event(conn: sqlite3.Connection, st: ServerState, body: dict[str, Any]) -> dict[str, Any]:
    """POST /events."""
    wid = _get(body, "workflow_id", int, required=True)
    st.workflow(wid)
    ts = _get(body, "timestamp", int, int(time.time() * 1000))
    data = body.get("data")
    eid = _row_id(
        conn.execute(
            "INSERT INTO event (workflow_id, timestamp, data) VALUES (?,?,?)",
            (wid, ts, orjson.dumps(data).decode()),
        )
    )
    return {"id": eid, "workflow_id": wid, "timestamp": ts, "data": data}
