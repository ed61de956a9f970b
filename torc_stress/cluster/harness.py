"""The harness's shared parts: one run id's inventory, playbooks and variables.

:class:`Harness` loads and validates the inventory and every playbook before any host is
touched, computes the extra vars the playbooks expect (see the comments at the top of each
playbook), and runs single playbooks over one connection per host. :func:`run_step` is what the
``deploy``, ``start-server``, ``start-workers``, ``stop`` and ``gather`` tasks call;
:mod:`torc_stress.cluster.run` builds the whole ``cluster-run`` on top.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from torc_stress.cluster import gather
from torc_stress.cluster.executor import PlaybookResult, TaskEvent, run_playbook
from torc_stress.cluster.inventory import Host, Inventory, load_inventory
from torc_stress.cluster.playbook import Playbook, load_playbook
from torc_stress.cluster.settings import RunSettings
from torc_stress.cluster.transport import ConnectionCache, Transport, connect
from torc_stress.errors import ConfigError, StressError

log = logging.getLogger(__name__)

PLAYBOOKS = ("deploy", "start_server", "start_workers", "stop", "gather")
API_PATH = "/torc-service/v1"
LOCAL_ROOT = "runs/.local"

#: Exit codes of a run (ansible-playbook's where they overlap).
EXIT_OK, EXIT_FAILED, EXIT_PLAYBOOK, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 4, 130

EventCallback = Callable[[TaskEvent], None]
PlaybookCallback = Callable[[str, PlaybookResult], None]


class RunAborted(StressError):
    """The run stopped before the workflow finished; ``exit_code`` says why."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        self.exit_code = exit_code
        super().__init__(message)


def new_run_id(now: datetime | None = None, suffix: str | None = None) -> str:
    """A run id: UTC time plus a short random suffix, e.g. ``20261128T213012Z-4f2a``."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{suffix or secrets.token_hex(2)}"


def known_hosts_for(host: Host, inventory: Inventory) -> Path | None:
    """The known_hosts file for ``host``: its ``known_hosts`` var, relative to the inventory."""
    value = host.vars.get("known_hosts")
    if not value:
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else (inventory.path.parent / path).resolve()


def connection_cache(inventory: Inventory, *, connect_timeout: float = 10.0,
                     keepalive: float = 15.0) -> ConnectionCache:
    """One connection per host, each verified against that host's known_hosts file."""
    def factory(host: Host) -> Transport:
        return connect(host, known_hosts=known_hosts_for(host, inventory),
                       connect_timeout=connect_timeout, keepalive=keepalive)
    return ConnectionCache(factory=factory)


def needs_deploy(host: Host) -> bool:
    """Whether ``host`` gets the wheelhouse (every host unless ``torc_deploy: false``)."""
    value = host.vars.get("torc_deploy", True)
    if not isinstance(value, bool):
        raise ConfigError(f"host {host.name}: torc_deploy must be true or false, got {value!r}")
    return value


def controller_torc_bin() -> str:
    """The ``torc-stress`` script of the interpreter running the harness (for local hosts)."""
    beside = Path(sys.executable).parent / "torc-stress"
    if beside.is_file():
        return str(beside)
    found = shutil.which("torc-stress")
    if found:
        return found
    raise ConfigError("no torc-stress script next to this Python; install the project first: "
                      f"{sys.executable} -m pip install -e .")


def load_playbooks(project_root: Path) -> dict[str, Playbook]:
    """Loads and validates every harness playbook (raises PlaybookError before any host)."""
    return {name: load_playbook(project_root / "playbooks" / f"{name}.yml") for name in PLAYBOOKS}


def server_url(server: Host, port: int) -> str:
    """The URL workers and the controller use: the server host's bind address and port."""
    address = str(server.vars.get("torc_bind") or server.address)
    if address in ("0.0.0.0", "::"):
        address = server.address
    if ":" in address:
        address = f"[{address}]"
    return f"http://{address}:{port}{API_PATH}"


def registered_port(result: PlaybookResult, server: str) -> int:
    """The port start_server.yml read back from the server's first stdout line."""
    try:
        return int(str(result.registered[server]["server_port"]["stdout"]).strip())
    except (KeyError, ValueError) as exc:
        raise RunAborted(f"{server}: the server did not report its port; see "
                         "server.out in its run directory", EXIT_PLAYBOOK) from exc


class Harness:
    """The inventory, playbooks and variables of one run id; runs single playbooks.

    Args:
        settings: validated settings.
        run_id: the run's id (a new one when None).
        on_event: called for each task result on each host.
        on_playbook: called with each playbook's name and result.

    Raises:
        InventoryError, PlaybookError, ConfigError: before any host is touched.
    """

    def __init__(self, settings: RunSettings, *, run_id: str | None = None,
                 on_event: EventCallback | None = None,
                 on_playbook: PlaybookCallback | None = None) -> None:
        self.settings = settings
        self.on_event, self.on_playbook = on_event, on_playbook
        self.started_at = datetime.now(UTC)
        self.run_id = run_id or new_run_id(self.started_at)
        self.inventory = load_inventory(settings.inventory)
        self.playbooks = load_playbooks(settings.project_root)
        if not self.inventory.workers:
            raise ConfigError(f"{settings.inventory}: group workers has no hosts")
        self.deploy_hosts = [h.name for h in self.inventory.hosts.values() if needs_deploy(h)]
        self.run_dir = settings.run_dir or settings.runs_root / self.run_id
        self.extra_vars: dict[str, Any] = self._base_vars()
        self.excluded: set[str] = set()
        self.results: dict[str, PlaybookResult] = {}
        self.wheelhouse: dict[str, Any] | None = None

    def _base_vars(self) -> dict[str, Any]:
        s = self.settings
        variables: dict[str, Any] = {
            "run_id": self.run_id,
            "torc_default_root": str(s.project_root / LOCAL_ROOT),
            "controller_run_dir": str(self.run_dir.resolve()),
            "log_level": s.log_level,
            "max_parallel_jobs": s.max_parallel_jobs,
            "workers_per_host": s.workers_per_host,
            "stop_grace_s": int(max(1, round(s.stop_grace_s))),
            "lease_s": "" if s.lease_s is None else f"{s.lease_s:g}",
            "wheelhouse_tarball": "",
            "wheelhouse_digest": "none",
        }
        if len(self.deploy_hosts) < len(self.inventory.hosts):
            variables["torc_bin"] = controller_torc_bin()
            variables["torc_controller_python"] = sys.executable
        return variables

    def connections(self) -> ConnectionCache:
        """A connection cache verifying each host against its known_hosts file."""
        return connection_cache(self.inventory)

    def build_wheelhouse(self) -> None:
        """Builds (or reuses) the wheelhouse when a host needs it; sets the deploy vars."""
        if not [h for h in self.deploy_hosts if h not in self.excluded]:
            return
        from torc_stress.cluster.wheelhouse import build_wheelhouse

        wheelhouse = build_wheelhouse(self.settings.project_root, self.settings.wheelhouse_cache)
        self.extra_vars["wheelhouse_tarball"] = str(wheelhouse.tarball)
        self.extra_vars["wheelhouse_digest"] = wheelhouse.digest
        self.wheelhouse = {"digest": wheelhouse.digest, "cached": wheelhouse.cached,
                           "wheels": len(wheelhouse.wheels),
                           "seconds": round(wheelhouse.seconds, 3)}

    def play(self, name: str, connections: ConnectionCache, *, playbook: Playbook | None = None,
             label: str | None = None, **extra: Any) -> PlaybookResult:
        """Runs one harness playbook (or ``playbook``) on the hosts still in the run."""
        hosts = [h for h in self.inventory.hosts if h not in self.excluded]
        result = run_playbook(
            playbook or self.playbooks[name], self.inventory,
            extra_vars={**self.extra_vars, **extra}, connections=connections,
            on_event=self.on_event, forks=self.settings.forks,
            limit=hosts if self.excluded else None)
        self.results[label or name] = result
        if self.on_playbook is not None:
            self.on_playbook(label or f"{name}.yml", result)
        return result

    def host_check(self, connections: ConnectionCache) -> PlaybookResult:
        """Runs only the first play of deploy.yml: does every host answer?"""
        deploy = self.playbooks["deploy"]
        return self.play("deploy", connections, playbook=replace(deploy, plays=deploy.plays[:1]),
                         label="deploy.yml (host check)")


def run_step(settings: RunSettings, name: str, *, run_id: str,
             on_event: EventCallback | None = None,
             on_playbook: PlaybookCallback | None = None, **extra: Any) -> PlaybookResult:
    """Runs one harness playbook on its own (the step tasks: ``deploy``, ``stop``...).

    ``deploy`` builds the wheelhouse first; ``gather`` unpacks the fetched tarballs into
    ``<runs_root>/<run_id>/hosts/<host>/`` afterwards.

    Args:
        settings: validated settings (inventory, runs root...).
        name: one of :data:`PLAYBOOKS`.
        run_id: the run the processes and files belong to.
        on_event: called for each task result on each host.
        on_playbook: called with the playbook's name and result.
        **extra: more extra vars (``server_url``, ``workflow_id`` for ``start_workers``).

    Returns:
        The playbook's result (``exit_code`` 0/2/4 as ansible-playbook's).
    """
    if name not in PLAYBOOKS:
        raise ConfigError(f"unknown step {name!r}; steps: {', '.join(PLAYBOOKS)}")
    harness = Harness(settings, run_id=run_id, on_event=on_event, on_playbook=on_playbook)
    if name == "deploy":
        harness.build_wheelhouse()
    if name == "gather":
        (harness.run_dir / gather.HOSTS_DIR).mkdir(parents=True, exist_ok=True)
    with harness.connections() as connections:
        result = harness.play(name, connections, **extra)
    if name == "gather":
        gather.unpack_host_tarballs(harness.run_dir, list(harness.inventory.hosts))
    return result
