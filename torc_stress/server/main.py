"""The server process: settings, start-up recovery, uvicorn, metrics file, graceful shutdown."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from torc_stress.errors import ConfigError
from torc_stress.logs import configure_logging, kv
from torc_stress.server import ops
from torc_stress.server.app import Api, build_app, error_response
from torc_stress.server.auth import UNAUTHORIZED_MESSAGE, authorization_header, token_accepted
from torc_stress.server.checkpointer import Checkpointer, disable_autocheckpoint
from torc_stress.server.fast_lane import fast_lane_protocol
from torc_stress.server.leases import LeaseWatcher, expire_due
from torc_stress.server.limits import (
    Limits,
    add_limit_arguments,
    default_max_connections,
    limit_settings,
    raise_fd_limit,
)
from torc_stress.server.metrics import Metrics
from torc_stress.server.state import ServerState
from torc_stress.server.store import ReadPool, create_schema, open_writer_connection
from torc_stress.server.unblocker import UnblockerThread
from torc_stress.server.writer import Writer, is_lock_error

logger = logging.getLogger(__name__)

METRICS_INTERVAL_S = 2.0


@dataclass
class ServerSettings:
    """Everything ``torc-stress server run`` accepts (see docs/internals.md)."""

    database: Path
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_file: Path | None = None
    metrics_file: Path | None = None
    unblock_delay: float = 0.0
    lock_error_after: float = 45.0
    token_file: Path | None = None
    lease_s: float = 5.0
    max_body_bytes: int = Limits.max_body_bytes
    max_header_bytes: int = Limits.max_header_bytes
    max_headers: int = Limits.max_headers
    idle_timeout: float = Limits.idle_timeout
    max_connections: int | None = None  # None: the file descriptor limit minus a reserve

    def limits(self, fd_limit: int) -> Limits:
        """The request and connection limits (raises ConfigError for a bad value)."""
        cap = self.max_connections
        return Limits(max_body_bytes=self.max_body_bytes, max_header_bytes=self.max_header_bytes,
                      max_headers=self.max_headers, idle_timeout=self.idle_timeout,
                      max_connections=default_max_connections(fd_limit) if cap is None else cap)


def unblock_op(conn: sqlite3.Connection, state: ServerState) -> dict[str, Any]:
    """The writer op that runs one unblock pass over every pending completion."""
    return state.op_unblock(conn)


def write_metrics_file(metrics: Metrics, path: Path) -> None:
    """Writes the metrics document atomically (temp file + rename).

    The temp name is unique per thread, so a periodic dump and the final write can never
    swap each other's documents.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(orjson.dumps(metrics.document(), option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def _open_database(path: Path, lock_error_after: float) -> sqlite3.Connection:
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            conn = open_writer_connection(path)
            create_schema(conn)
            return conn
        except sqlite3.OperationalError as exc:
            if not is_lock_error(exc) or time.monotonic() - started > lock_error_after:
                raise
            attempt += 1
            logger.debug("database is locked, retrying", extra=kv(op="open", attempt=attempt))
            time.sleep(0.05)


def _token_middleware(app: Any, token: str) -> Any:
    token_bytes = token.encode("utf-8")

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        header = authorization_header(scope.get("headers") or [])
        if token_accepted(header, token_bytes) or scope.get("path", "").endswith("/ping"):
            await app(scope, receive, send)
            return
        response = error_response(401, UNAUTHORIZED_MESSAGE)
        await response(scope, receive, send)

    return middleware


def serve(settings: ServerSettings) -> int:
    """Runs the server until SIGTERM/SIGINT; returns the exit code.

    Prints ``TORC_SERVER_PORT=<port>`` as the first line on stdout once the socket is bound.
    """
    import uvicorn

    configure_logging(settings.log_level, settings.log_file)
    if settings.unblock_delay < 0 or settings.lock_error_after <= 0 or settings.lease_s < 0:
        raise ConfigError(
            "--unblock-delay and --lease-s must be >= 0 and --lock-error-after > 0"
        )
    fd_limit = raise_fd_limit()
    limits = settings.limits(fd_limit)
    token = None
    if settings.token_file is not None:
        token = Path(settings.token_file).read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"token file {settings.token_file} is empty")
    db_path = Path(settings.database)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    metrics = Metrics()
    conn = _open_database(db_path, settings.lock_error_after)
    state = ServerState(metrics, settings.unblock_delay, settings.lease_s)
    state.conn = conn
    state.load(conn)
    disable_autocheckpoint(conn)
    writer = Writer(conn, state, metrics, settings.lock_error_after)
    writer.start()
    checkpointer = Checkpointer(db_path, metrics, writer.exec_lock)
    checkpointer.start()
    if state.pending_unblock:
        logger.info("redoing unblocking lost at the last stop",
                    extra=kv(completions=len(state.pending_unblock)))
        writer.call("unblock", unblock_op, state)
    orphans = writer.call("ready_orphans", ops.ready_unblocked_orphans, state)["ready"]
    if orphans:
        logger.warning("blocked jobs with every dependency done are ready again",
                       extra=kv(jobs=orphans))
    released = writer.call("release_claims", ops.release_unstarted_claims, state)["released"]
    if released:
        logger.info("claimed jobs that never started are ready again", extra=kv(jobs=released))
    watcher = None
    if settings.lease_s > 0:
        watcher = LeaseWatcher(state, lambda: writer.call("expire_leases", expire_due, state))
    unblocker = None
    if settings.unblock_delay > 0:
        unblocker = UnblockerThread(settings.unblock_delay,
                                    lambda: writer.call("unblock", unblock_op, state))
        state.wake_unblocker = unblocker.wake
        unblocker.start()
    reads = ReadPool(db_path)
    api = Api(state, writer, reads, metrics)
    torc_app = build_app(api)
    app: Any = torc_app
    if token is not None:
        app = _token_middleware(app, token)

    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    sys.stdout.write(f"TORC_SERVER_PORT={port}\n")
    sys.stdout.flush()
    logger.info("server listening", extra=kv(host=settings.host, port=port, database=db_path,
                                             unblock_delay=settings.unblock_delay,
                                             lease_s=settings.lease_s,
                                             max_connections=limits.max_connections,
                                             fd_limit=fd_limit))

    stop_metrics = threading.Event()
    metrics_thread = None
    if settings.metrics_file is not None:
        metrics_path = Path(settings.metrics_file)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)

        def dump_loop() -> None:
            while not stop_metrics.wait(METRICS_INTERVAL_S):
                try:
                    write_metrics_file(metrics, metrics_path)
                except OSError:
                    logger.warning("cannot write the metrics file", extra=kv(path=metrics_path))

        metrics_thread = threading.Thread(target=dump_loop, name="metrics", daemon=True)
        metrics_thread.start()

    config = uvicorn.Config(app, loop="uvloop",
                            http=fast_lane_protocol(torc_app.hot, token, limits),
                            log_config=None, access_log=False, lifespan="off",
                            timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
                            backlog=1024, proxy_headers=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the captured signal after its graceful shutdown; with these no-op
    # handlers in place that re-raise is harmless and our own shutdown below still runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if watcher is not None:
        watcher.start()  # every lease runs from now: loading took none of it
    try:
        server.run(sockets=[sock])
    finally:
        logger.info("shutting down: finishing queued writes")
        if watcher is not None:
            watcher.stop()
        if unblocker is not None:
            unblocker.stop()
        writer.stop()
        checkpointer.stop()
        stop_metrics.set()
        if metrics_thread is not None:
            metrics_thread.join(10)  # a periodic dump in progress must not land after ours
        if settings.metrics_file is not None:
            write_metrics_file(metrics, Path(settings.metrics_file))
        reads.close()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.close()
        logger.info("server stopped", extra=kv(lock_errors=metrics.lock_errors))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``server run`` flags (also used by ``python -m torc_stress.server.main``)."""
    parser = argparse.ArgumentParser(prog="torc-stress server run",
                                     description="Run the torc-compatible workflow server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--database", type=Path, required=True)
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-file", type=Path)
    parser.add_argument("--metrics-file", type=Path)
    parser.add_argument("--unblock-delay", type=float, default=0.0)
    parser.add_argument("--lock-error-after", type=float, default=45.0)
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--lease-s", type=float, default=5.0,
                        help="seconds a compute node that heartbeats may miss heartbeats before "
                        "its jobs go back to ready (0: no leases; default 5)")
    add_limit_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Turns parsed flags into :class:`ServerSettings`."""
    return ServerSettings(database=args.database, host=args.host, port=args.port,
                          log_level=args.log_level, log_file=args.log_file,
                          metrics_file=args.metrics_file, unblock_delay=args.unblock_delay,
                          lock_error_after=args.lock_error_after, token_file=args.token_file,
                          lease_s=args.lease_s, **limit_settings(args))


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m torc_stress.server.main``."""
    args = build_parser().parse_args(argv)
    try:
        return serve(settings_from_args(args))
    except ConfigError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
