"""How commands and files reach a host: the Transport protocol and its implementations.

``FabricTransport`` is the only code in torc-stress that touches fabric or paramiko; every
third-party error is translated into :mod:`torc_stress.errors` by :func:`map_ssh_errors`.
``LocalTransport`` runs on this machine (``ansible_connection: local``), and ``FakeTransport``
answers from a function, for unit tests.

Commands are POSIX ``sh`` command lines. Callers quote their arguments (``shlex.join``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from torc_stress.errors import CommandTimeout, HostError, HostKeyError, UnreachableError

if TYPE_CHECKING:
    from torc_stress.cluster.inventory import Host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CmdResult:
    """The outcome of one command on one host."""

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.exit_code == 0


class Transport(Protocol):
    """One open connection to one host."""

    host: str

    def run(
        self,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CmdResult:
        """Run a sh command line; a non-zero exit is a result, not an error."""
        ...

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Copy a local file to the host."""
        ...

    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the host to a local path."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


def env_prefix(env: Mapping[str, str] | None) -> str:
    """Return ``export K='v'; `` for ``env`` (quoted, unlike Fabric's inline env)."""
    if not env:
        return ""
    pairs = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in env.items())
    return f"export {pairs}; "


# ---------------------------------------------------------------------------- local


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and everything it started (its own session), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=5)


class LocalTransport:
    """Runs commands on this machine with ``/bin/sh -c`` and copies files locally."""

    def __init__(self, host: str = "localhost") -> None:
        self.host = host
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[str]] = set()
        self._closed = False

    def run(
        self,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CmdResult:
        """Run ``command`` under ``/bin/sh -c``; raise CommandTimeout past ``timeout``."""
        started = time.monotonic()
        proc = subprocess.Popen(
            ["/bin/sh", "-c", env_prefix(env) + command], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        with self._lock:
            self._running.add(proc)
        try:
            stdout, stderr = proc.communicate(stdin if stdin is not None else "", timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise CommandTimeout(self.host, command, timeout) from exc
        finally:
            with self._lock:
                self._running.discard(proc)
        if self._closed:
            raise HostError(self.host, f"interrupted (transport closed): {command}")
        return CmdResult(self.host, command, proc.returncode, stdout, stderr,
                         time.monotonic() - started)

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Copy ``local`` to ``remote`` (a path on this machine)."""
        try:
            shutil.copyfile(local, remote)
            if mode is not None:
                Path(remote).chmod(mode)
        except OSError as exc:
            raise HostError(self.host, f"cannot copy {local} to {remote}: {exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` (a path on this machine) to ``local``."""
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise HostError(self.host, f"cannot copy {remote} to {local}: {exc}") from exc

    def close(self) -> None:
        """Kill the commands still running (each with everything it started)."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- fake


Handler = Callable[[str], "CmdResult | tuple[int, str, str]"]


@dataclass
class FakeTransport:
    """A transport that answers every command from ``handler`` and records every call.

    ``handler(command)`` returns a CmdResult or ``(exit_code, stdout, stderr)``, or raises.
    ``calls`` holds ``("run", command)``, ``("put", remote, mode)`` and ``("get", remote)``;
    ``files`` maps remote paths to the bytes put there.
    """

    handler: Handler
    host: str = "fake"
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)

    def run(self, command: str, *, timeout: float, env: Mapping[str, str] | None = None,
            stdin: str | None = None) -> CmdResult:
        self.calls.append(("run", command))
        answer = self.handler(command)
        if isinstance(answer, CmdResult):
            return answer
        code, out, err = answer
        return CmdResult(self.host, command, code, out, err, 0.0)

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        self.calls.append(("put", remote, mode))
        self.files[remote] = Path(local).read_bytes()

    def get(self, remote: str, local: Path) -> None:
        self.calls.append(("get", remote))
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(self.files.get(remote, b""))

    def close(self) -> None:
        self.calls.append(("close",))


# ---------------------------------------------------------------------------- ssh


@contextlib.contextmanager
def map_ssh_errors(host: str, *, known_hosts: Path | None = None,
                   command: str = "", timeout: float = 0.0) -> Iterator[None]:
    """Translate paramiko, invoke and socket errors raised inside into torc-stress errors.

    Args:
        host: The host name used in messages.
        known_hosts: The known_hosts file in use, named in host-key messages.
        command: The command being run, if any (for CommandTimeout).
        timeout: The command timeout, if any (for CommandTimeout).

    Raises:
        HostKeyError: Unknown or changed host key.
        UnreachableError: Connect, authentication, DNS or lost-connection failures.
        CommandTimeout: The command ran past ``timeout``.
    """
    import invoke
    import paramiko

    where = str(known_hosts) if known_hosts else "the system known_hosts files"
    try:
        yield
    except HostError:
        raise
    except invoke.CommandTimedOut as exc:
        raise CommandTimeout(host, command, timeout) from exc
    except paramiko.BadHostKeyException as exc:
        raise HostKeyError(
            host,
            f"the host key of {exc.hostname} CHANGED: it does not match the key in {where}. "
            "This may be an attack or a reinstalled host; refusing to connect. If the change is "
            f"expected, remove the old entry (ssh-keygen -R HOST -f {where}) and add the new one "
            "after verifying it.",
        ) from exc
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        reasons = "; ".join(f"{addr[0]}:{addr[1]}: {err.strerror or err}"
                            for addr, err in exc.errors.items())
        raise UnreachableError(host, f"cannot connect: {reasons}. Is sshd running there and "
                                     "ansible_host/ansible_port right?") from exc
    except paramiko.AuthenticationException as exc:
        raise UnreachableError(host, f"authentication failed: {exc}. Check ansible_user and "
                                     "ansible_ssh_private_key_file.") from exc
    except (paramiko.SSHException, TimeoutError) as exc:
        detail = str(exc) or type(exc).__name__
        if detail == "No existing session":  # paramiko's words for a failed banner/handshake
            detail = ("no SSH session: the server did not send an SSH banner or finish the "
                      "handshake in time (is this port an SSH server?)")
        raise UnreachableError(host, f"SSH failed: {detail}") from exc
    except (OSError, EOFError) as exc:
        raise UnreachableError(host, f"cannot connect: {exc}") from exc


@contextlib.contextmanager
def _file_errors(host: str, op: str, remote: str) -> Iterator[None]:
    """SFTP file errors (missing path, permission) are host errors, not unreachability."""
    try:
        yield
    except (ConnectionError, TimeoutError, socket.gaierror):
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        raise HostError(host, f"cannot {op} {remote}: {exc.strerror or exc}") from exc


def _handshake_done(client: Any) -> bool:
    """Whether the SSH handshake finished but authentication did not."""
    transport = client.get_transport()
    return bool(transport is not None and transport.remote_version
                and not transport.is_authenticated())


class FabricTransport:
    """A Fabric connection with verified host keys, timeouts and keepalive."""

    def __init__(self, host: Host, *, known_hosts: Path | None = None,
                 connect_timeout: float = 10.0, keepalive: float = 15.0) -> None:
        self.host = host.name
        self._known_hosts = known_hosts
        self._address = host.address
        self._port = host.port
        self._lock = threading.Lock()
        self._cxn = self._open(host, connect_timeout, keepalive)

    def _open(self, host: Host, connect_timeout: float, keepalive: float) -> Any:
        import fabric
        import paramiko

        seconds = max(1, int(round(connect_timeout)))
        kwargs: dict[str, Any] = {"banner_timeout": connect_timeout,
                                  "auth_timeout": connect_timeout,
                                  "channel_timeout": connect_timeout}
        if host.key_file is not None:
            kwargs.update(key_filename=str(host.key_file), look_for_keys=False)
        with map_ssh_errors(self.host, known_hosts=self._known_hosts):
            cxn = fabric.Connection(host.address, user=host.user, port=host.port,
                                    connect_timeout=seconds, connect_kwargs=kwargs)
            if self._known_hosts is None:
                cxn.client.load_system_host_keys()
            elif not self._known_hosts.is_file():
                raise HostKeyError(self.host, f"the known_hosts file {self._known_hosts} does "
                                              "not exist; create it with the verified host keys "
                                              "(e.g. ssh-keyscan -p PORT HOST >> FILE)")
            else:
                cxn.client.load_host_keys(str(self._known_hosts))
            cxn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                cxn.open()
            except paramiko.BadHostKeyException:
                raise
            except paramiko.SSHException as exc:
                if "not found in known_hosts" in str(exc):
                    raise self._unknown_key() from exc
                if _handshake_done(cxn.client) and not isinstance(
                        exc, paramiko.AuthenticationException):
                    # NOTE: paramiko re-raises the last key-loading error when every key failed
                    raise paramiko.AuthenticationException(str(exc)) from exc
                raise
            cxn.transport.set_keepalive(int(keepalive))
        log.debug("connected host=%s address=%s port=%s", self.host, host.address, host.port)
        return cxn

    def _unknown_key(self) -> HostKeyError:
        where = str(self._known_hosts) if self._known_hosts else "~/.ssh/known_hosts"
        return HostKeyError(
            self.host,
            f"the host key of {self._address}:{self._port} is not in {where}; refusing to "
            f"connect. Verify the key, then add it: ssh-keyscan -p {self._port} {self._address} "
            f">> {where}",
        )

    def run(self, command: str, *, timeout: float, env: Mapping[str, str] | None = None,
            stdin: str | None = None) -> CmdResult:
        """Run ``command`` on the host; see :class:`Transport`."""
        started = time.monotonic()
        stream = io.StringIO(stdin) if stdin is not None else False
        with map_ssh_errors(self.host, command=command, timeout=timeout):
            result = self._cxn.run(env_prefix(env) + command, hide=True, warn=True,
                                   in_stream=stream, timeout=timeout)
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            # NOTE: invoke only raises CommandTimedOut if its timer thread has already ended
            # when it checks (a race under load); its timer closed the channel either way.
            raise CommandTimeout(self.host, command, timeout)
        return CmdResult(self.host, command, result.exited, result.stdout, result.stderr,
                         elapsed)

    def put(self, local: Path, remote: str, *, mode: int | None = None) -> None:
        """Copy ``local`` to ``remote`` over SFTP, then chmod when ``mode`` is given."""
        with self._lock, map_ssh_errors(self.host), _file_errors(self.host, "put", remote):
            self._cxn.put(str(local), remote, preserve_mode=False)
            if mode is not None:
                self._cxn.sftp().chmod(remote, mode)

    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to ``local`` over SFTP."""
        local.parent.mkdir(parents=True, exist_ok=True)
        existed = local.exists()
        try:
            with self._lock, map_ssh_errors(self.host), _file_errors(self.host, "get", remote):
                self._cxn.get(remote, str(local))
        except HostError:
            if not existed:  # do not leave the empty file SFTP created
                local.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Close the SSH connection."""
        with contextlib.suppress(Exception):
            self._cxn.close()


def connect(host: Host, *, known_hosts: Path | None = None, connect_timeout: float = 10.0,
            keepalive: float = 15.0) -> Transport:
    """Open a transport to ``host``: local for ``ansible_connection: local``, else SSH.

    Args:
        host: The inventory host.
        known_hosts: File the host key must be in (None: the system known_hosts files).
        connect_timeout: Seconds for TCP connect, SSH banner and authentication each.
        keepalive: Seconds between SSH keepalive packets.

    Raises:
        UnreachableError: The host cannot be reached or authenticated.
        HostKeyError: The host key is unknown or changed.
    """
    if host.connection == "local":
        return LocalTransport(host.name)
    return FabricTransport(host, known_hosts=known_hosts, connect_timeout=connect_timeout,
                           keepalive=keepalive)


class ConnectionCache:
    """One transport per host, opened on first use and reused; thread-safe."""

    def __init__(self, *, known_hosts: Path | None = None, connect_timeout: float = 10.0,
                 keepalive: float = 15.0,
                 factory: Callable[[Host], Transport] | None = None) -> None:
        self._factory = factory or (lambda host: connect(
            host, known_hosts=known_hosts, connect_timeout=connect_timeout, keepalive=keepalive))
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._open: dict[str, Transport] = {}

    def get(self, host: Host) -> Transport:
        """Return the open transport to ``host``, connecting on first use."""
        with self._lock:
            lock = self._host_locks.setdefault(host.name, threading.Lock())
        with lock:
            if host.name not in self._open:
                self._open[host.name] = self._factory(host)
            return self._open[host.name]

    def close_all(self) -> None:
        """Close every open transport."""
        with self._lock:
            transports, self._open = list(self._open.values()), {}
        for transport in transports:
            transport.close()

    def __enter__(self) -> ConnectionCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()
