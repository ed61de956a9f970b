"""Transports: local commands and copies, SSH failures that are fast and clearly named."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from torc_stress.cluster.inventory import Host
from torc_stress.cluster.transport import (
    CmdResult,
    ConnectionCache,
    FakeTransport,
    LocalTransport,
    connect,
    map_ssh_errors,
)
from torc_stress.errors import CommandTimeout, HostError, HostKeyError, UnreachableError


def ssh_host(port: int, name: str = "h1") -> Host:
    return Host(name=name, address="127.0.0.1", port=port, user="nobody", key_file=None,
                connection="ssh", vars={}, groups=())


@contextlib.contextmanager
def listening(handler: object = None) -> Iterator[int]:
    """A loopback listener; ``handler(conn)`` runs per connection in a thread."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conns.append(conn)
            if handler is not None:
                threading.Thread(target=handler, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()
        for conn in conns:
            conn.close()


@pytest.fixture
def known(tmp_path: Path) -> Path:
    path = tmp_path / "known_hosts"
    path.write_text("")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_local_run_returns_exit_code_and_both_streams() -> None:
    result = LocalTransport("me").run("echo out; echo err >&2; exit 3", timeout=10)
    assert (result.host, result.exit_code, result.stdout, result.stderr) == ("me", 3, "out\n",
                                                                             "err\n")


def test_local_run_passes_env_quoted_and_stdin() -> None:
    result = LocalTransport().run('printf "%s|" "$A"; cat', timeout=10,
                                  env={"A": "it's $HOME"}, stdin="in")
    assert result.stdout == "it's $HOME|in"


def test_local_run_past_its_timeout_raises_command_timeout_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="timed out after 0.5 s: sleep 30"):
        LocalTransport().run("sleep 30", timeout=0.5)
    assert time.monotonic() - started < 5


def test_local_timeout_kills_background_children_holding_the_output_open() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout):
        LocalTransport().run("sleep 30 & sleep 30", timeout=0.5)
    assert time.monotonic() - started < 5


def test_closing_a_local_transport_ends_its_running_commands() -> None:
    transport = LocalTransport("me")
    errors: list[Exception] = []

    def run() -> None:
        try:
            transport.run("sleep 30 & sleep 30", timeout=60)
        except HostError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    time.sleep(0.3)
    transport.close()
    thread.join(10)
    assert time.monotonic() - started < 5
    assert [str(e) for e in errors] == ["me: interrupted (transport closed): sleep 30 & sleep 30"]


def test_local_put_and_get_copy_files_and_set_the_mode(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_text("data")
    LocalTransport().put(src, str(tmp_path / "b"), mode=0o600)
    assert (tmp_path / "b").read_text() == "data"
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o600
    LocalTransport().get(str(tmp_path / "b"), tmp_path / "sub" / "c")
    assert (tmp_path / "sub" / "c").read_text() == "data"


def test_local_put_into_a_missing_directory_is_a_host_error(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_text("x")
    with pytest.raises(HostError, match="cannot copy"):
        LocalTransport("me").put(src, str(tmp_path / "missing" / "b"))


def test_fake_transport_records_calls_and_answers_from_its_handler(tmp_path: Path) -> None:
    fake = FakeTransport(lambda cmd: (len(cmd), cmd.upper(), ""))
    assert fake.run("abc", timeout=1).stdout == "ABC"
    assert fake.run("abcd", timeout=1).exit_code == 4
    src = tmp_path / "f"
    src.write_text("hi")
    fake.put(src, "/r", mode=0o644)
    fake.get("/r", tmp_path / "g")
    assert (tmp_path / "g").read_text() == "hi"
    assert fake.calls == [("run", "abc"), ("run", "abcd"), ("put", "/r", 0o644), ("get", "/r")]


def test_connect_gives_a_local_transport_for_local_hosts() -> None:
    host = Host("me", "127.0.0.1", 22, None, None, "local", {}, ())
    assert isinstance(connect(host), LocalTransport)


def test_connection_cache_opens_each_host_once_across_threads() -> None:
    opened: list[str] = []

    def factory(host: Host) -> FakeTransport:
        opened.append(host.name)
        time.sleep(0.05)
        return FakeTransport(lambda cmd: (0, "", ""), host=host.name)

    cache = ConnectionCache(factory=factory)
    threads = [threading.Thread(target=cache.get, args=(ssh_host(1, f"h{i % 2}"),))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(opened) == ["h0", "h1"]
    transport = cache.get(ssh_host(1, "h0"))
    cache.close_all()
    assert ("close",) in transport.calls  # type: ignore[attr-defined]


def test_ssh_to_a_port_nobody_listens_on_is_unreachable_fast(known: Path) -> None:
    started = time.monotonic()
    with pytest.raises(UnreachableError, match="h1: cannot connect: .*refused") as info:
        connect(ssh_host(free_port()), known_hosts=known, connect_timeout=2)
    assert not isinstance(info.value, HostKeyError)
    assert time.monotonic() - started < 5


def test_a_missing_known_hosts_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(HostKeyError, match="known_hosts file .*/nope does not exist"):
        connect(ssh_host(free_port()), known_hosts=tmp_path / "nope", connect_timeout=2)


def test_ssh_to_a_socket_that_never_speaks_ssh_times_out_within_bounds(known: Path) -> None:
    with listening() as port:
        started = time.monotonic()
        with pytest.raises(UnreachableError, match="h1: SSH failed: .*(banner|handshake)"):
            connect(ssh_host(port), known_hosts=known, connect_timeout=1)
        assert time.monotonic() - started < 8


def _ssh_server(key: paramiko.PKey):  # type: ignore[no-untyped-def]
    """An in-process paramiko SSH server that only does key exchange (no sshd)."""
    def handle(conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.add_server_key(key)
        with contextlib.suppress(Exception):
            transport.start_server(server=paramiko.ServerInterface())
            transport.accept(timeout=3)
        transport.close()
        transport.join(5)  # NOTE: a thread left running logs into pytest's closed streams
    return handle


@pytest.fixture(scope="module")
def host_keys() -> tuple[paramiko.PKey, paramiko.PKey]:
    return paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)


def test_an_unknown_host_key_is_refused_with_the_keyscan_advice(
        tmp_path: Path, host_keys: tuple[paramiko.PKey, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with listening(_ssh_server(host_keys[0])) as port, pytest.raises(HostKeyError) as info:
        connect(ssh_host(port), known_hosts=known, connect_timeout=5)
    message = str(info.value)
    assert message.startswith("h1: ")
    assert str(known) in message
    assert f"ssh-keyscan -p {port} 127.0.0.1 >> {known}" in message
    assert known.read_text() == ""  # never added


def test_a_changed_host_key_is_refused_naming_host_and_file(
        tmp_path: Path, host_keys: tuple[paramiko.PKey, paramiko.PKey]) -> None:
    known = tmp_path / "known_hosts"
    with listening(_ssh_server(host_keys[0])) as port:
        old = host_keys[1]
        known.write_text(f"[127.0.0.1]:{port} {old.get_name()} {old.get_base64()}\n")
        before = known.read_text()
        with pytest.raises(HostKeyError, match="CHANGED") as info:
            connect(ssh_host(port), known_hosts=known, connect_timeout=5)
    assert "h1: " in str(info.value) and str(known) in str(info.value)
    assert known.read_text() == before


@pytest.mark.parametrize(("raised", "expected", "text"), [
    (socket.gaierror(-2, "Name or service not known"), UnreachableError, "cannot connect"),
    (ConnectionRefusedError(111, "Connection refused"), UnreachableError, "refused"),
    (paramiko.AuthenticationException("no"), UnreachableError, "authentication failed"),
    (paramiko.SSHException("Error reading SSH protocol banner"), UnreachableError, "banner"),
    (EOFError(), UnreachableError, "cannot connect"),
])
def test_map_ssh_errors_translates_third_party_errors(
        raised: Exception, expected: type[Exception], text: str) -> None:
    with pytest.raises(expected, match=text) as info, map_ssh_errors("h9"):
        raise raised
    assert str(info.value).startswith("h9: ")
    assert info.value.__cause__ is raised


def test_map_ssh_errors_turns_invoke_timeouts_into_command_timeouts() -> None:
    import invoke
    result = invoke.Result(command="sleep 9", exited=-1)
    with pytest.raises(CommandTimeout, match="timed out after 3 s: sleep 9"), \
            map_ssh_errors("h9", command="sleep 9", timeout=3):
        raise invoke.CommandTimedOut(result, 3)


def test_cmd_result_ok_means_exit_zero() -> None:
    assert CmdResult("h", "c", 0, "", "", 0.0).ok
    assert not CmdResult("h", "c", 1, "", "", 0.0).ok


class _ExecServer(paramiko.ServerInterface):
    """Accepts one client key and runs exec requests with /bin/sh on this machine."""

    def __init__(self, client_key: paramiko.PKey, procs: list[subprocess.Popen[bytes]]) -> None:
        self.client_key, self.procs = client_key, procs

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = key.get_base64() == self.client_key.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        proc = subprocess.Popen(["/bin/sh", "-c", command.decode()], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        self.procs.append(proc)
        threading.Thread(target=_serve_exec, args=(channel, proc), daemon=True).start()
        return True


class _Handle(paramiko.SFTPHandle):
    def stat(self) -> paramiko.SFTPAttributes:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))


class _LocalSFTP(paramiko.SFTPServerInterface):
    """SFTP onto this machine's filesystem (enough for Fabric's put and get)."""

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> object:
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        mode = "wb" if flags & os.O_WRONLY else "r+b" if flags & os.O_RDWR else "rb"
        handle = _Handle(flags)
        handle.readfile = handle.writefile = os.fdopen(fd, mode)
        return handle

    def stat(self, path: str) -> object:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        if attr._flags & attr.FLAG_PERMISSIONS:
            os.chmod(path, attr.st_mode)
        return paramiko.SFTP_OK

    def canonicalize(self, path: str) -> str:
        return os.path.normpath(path if os.path.isabs(path) else os.path.join("/", path))


def _serve_exec(channel: paramiko.Channel, proc: subprocess.Popen[bytes]) -> None:
    def pump() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError, EOFError):
            while data := channel.recv(4096):
                proc.stdin.write(data)
                proc.stdin.flush()
            proc.stdin.close()

    threading.Thread(target=pump, daemon=True).start()
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    code = proc.wait()
    with contextlib.suppress(OSError, EOFError):
        channel.sendall(out)
        channel.sendall_stderr(err)
        channel.send_exit_status(code if code >= 0 else 128 - code)
        channel.close()


@pytest.fixture
def ssh_server(tmp_path: Path, host_keys: tuple[paramiko.PKey, paramiko.PKey]
               ) -> Iterator[tuple[Host, Path]]:
    """An in-process SSH server on loopback (no sshd), its Host and known_hosts file."""
    server_key, client_key = host_keys
    key_file = tmp_path / "id_rsa"
    client_key.write_private_key_file(str(key_file))
    procs: list[subprocess.Popen[bytes]] = []
    transports: list[paramiko.Transport] = []

    def handle(conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transports.append(transport)
        transport.add_server_key(server_key)
        transport.set_subsystem_handler("sftp", paramiko.SFTPServer, _LocalSFTP)
        with contextlib.suppress(Exception):
            transport.start_server(server=_ExecServer(client_key, procs))

    with listening(handle) as port:
        known = tmp_path / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {server_key.get_name()} "
                         f"{server_key.get_base64()}\n")
        host = Host("h1", "127.0.0.1", port, "tester", key_file, "ssh", {}, ())
        try:
            yield host, known
        finally:
            for transport in transports:
                transport.close()
                transport.join(5)  # NOTE: a thread left running logs into closed streams
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_fabric_run_returns_streams_exit_code_env_and_stdin(
        ssh_server: tuple[Host, Path]) -> None:
    host, known = ssh_server
    transport = connect(host, known_hosts=known, connect_timeout=5, keepalive=7)
    try:
        result = transport.run('printf "%s|" "$A"; cat; echo err >&2; exit 4', timeout=10,
                               env={"A": "it's"}, stdin="in")
        assert (result.exit_code, result.stdout, result.stderr) == (4, "it's|in", "err\n")
        assert result.command.startswith("printf")
        assert transport._cxn.transport.default_window_size  # type: ignore[attr-defined]
        assert transport._cxn.transport.packetizer._Packetizer__keepalive_interval == 7  # type: ignore[attr-defined]
    finally:
        transport.close()


def test_fabric_run_past_its_timeout_raises_command_timeout(
        ssh_server: tuple[Host, Path]) -> None:
    host, known = ssh_server
    transport = connect(host, known_hosts=known, connect_timeout=5)
    try:
        started = time.monotonic()
        try:
            result = transport.run("sleep 20", timeout=1)
        except CommandTimeout as exc:
            assert str(exc) == "h1: command timed out after 1 s: sleep 20"
        else:
            pytest.fail(f"no CommandTimeout, the run returned {result}")
        assert time.monotonic() - started < 8
    finally:
        transport.close()


def test_a_wrong_key_file_is_unreachable_with_authentication_advice(
        ssh_server: tuple[Host, Path], tmp_path: Path) -> None:
    host, known = ssh_server
    other = tmp_path / "other_key"
    paramiko.RSAKey.generate(1024).write_private_key_file(str(other))
    wrong = Host(host.name, host.address, host.port, host.user, other, "ssh", {}, ())
    with pytest.raises(UnreachableError, match="authentication failed.*ansible_ssh_private_key"):
        connect(wrong, known_hosts=known, connect_timeout=5)


def test_fabric_put_and_get_copy_over_sftp_and_set_the_mode(
        ssh_server: tuple[Host, Path], tmp_path: Path) -> None:
    host, known = ssh_server
    src = tmp_path / "src.txt"
    src.write_text("payload")
    transport = connect(host, known_hosts=known, connect_timeout=5)
    try:
        transport.put(src, str(tmp_path / "remote.txt"), mode=0o640)
        transport.get(str(tmp_path / "remote.txt"), tmp_path / "back" / "copy.txt")
    finally:
        transport.close()
    assert (tmp_path / "remote.txt").read_text() == "payload"
    assert (tmp_path / "remote.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "back" / "copy.txt").read_text() == "payload"


def test_fabric_file_errors_are_host_errors_not_unreachable(
        ssh_server: tuple[Host, Path], tmp_path: Path) -> None:
    host, known = ssh_server
    src = tmp_path / "src.txt"
    src.write_text("x")
    transport = connect(host, known_hosts=known, connect_timeout=5)
    try:
        with pytest.raises(HostError, match="h1: cannot put .*/missing/f") as put_error:
            transport.put(src, str(tmp_path / "missing" / "f"))
        with pytest.raises(HostError, match="h1: cannot get .*/nope") as get_error:
            transport.get(str(tmp_path / "nope"), tmp_path / "x")
        assert transport.run("true", timeout=5).exit_code == 0  # the connection still works
    finally:
        transport.close()
    assert not isinstance(put_error.value, UnreachableError)
    assert not isinstance(get_error.value, UnreachableError)
    assert not (tmp_path / "x").exists()
