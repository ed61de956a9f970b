"""What one connection or request may cost the server: sizes, counts, time, open connections.

Without limits a client can make the server buffer a body of any size, send headers forever,
or hold a socket open without ever completing a request; about a thousand such sockets use up
the process's file descriptors and lock every other client out. :class:`Limits` holds the
bounds and :class:`ConnectionCap` the one server-wide count; the HTTP protocol
(:mod:`torc_stress.server.protocol`) enforces them, answering with a JSON error and closing
the connection.
"""

from __future__ import annotations

import argparse
import logging
import resource
from dataclasses import dataclass
from typing import Any

import orjson

from torc_stress.errors import ConfigError
from torc_stress.logs import kv

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: file descriptors kept for everything but client sockets (database, WAL, logs, read pool)
RESERVED_FDS = 64


@dataclass(frozen=True)
class Limits:
    """Per-request and per-connection bounds (see ``torc-stress server run --help``).

    Attributes:
        max_body_bytes: a larger request body is refused with 413 (by its Content-Length
            before any of it is read, or once a chunked body passes it).
        max_header_bytes: a request head (request line and headers) larger than this is
            refused with 431.
        max_headers: a request with more header fields is refused with 431.
        idle_timeout: a connection that has not sent a complete request this many seconds
            after it opened or after its last response is closed (also the keep-alive
            timeout).
        max_connections: connections beyond this many are answered 503 and closed at once.
    """

    max_body_bytes: int = 64 * MIB
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    idle_timeout: float = 30.0
    max_connections: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_header_bytes", "max_headers", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.idle_timeout > 0:
            raise ConfigError("--idle-timeout must be > 0")


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raises this process's soft file-descriptor limit towards its hard limit.

    Returns:
        the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            logger.warning("cannot raise the file descriptor limit", extra=kv(soft=soft))
    return soft


def default_max_connections(fd_limit: int) -> int:
    """The connection cap that leaves :data:`RESERVED_FDS` descriptors for everything else."""
    return max(16, fd_limit - RESERVED_FDS)


def refusal(status: int, reason: str, message: str) -> bytes:
    """A complete ``connection: close`` response with torc's JSON error body."""
    body = orjson.dumps(
        {"error": {"status": status, "message": message}, "errorMessage": message, "code": status}
    )
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" \
        b"connection: close\r\n\r\n%s" % (status, reason.encode("ascii"), len(body), body)


class ConnectionCap:
    """The server-wide cap on open connections; logs one WARNING each time it is reached.

    The warning is not repeated for every refused connection: once the count has fallen back
    below 90% of the cap, an INFO line says how many were refused, and the next time the cap
    is reached warns again.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = 0
        self._warned = False

    def admits(self, open_now: int) -> bool:
        """Whether a new connection may stay, ``open_now`` counting it."""
        if open_now <= self.limit:
            if self._warned and open_now < self.limit * 0.9:
                logger.info("open connections are below the limit again",
                            extra=kv(open=open_now, limit=self.limit, refused=self.refused))
                self._warned = False
                self.refused = 0
            return True
        self.refused += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "connection limit reached: new connections are refused (503) until others "
                "close; raise --max-connections or the file descriptor limit if clients "
                "need more", extra=kv(limit=self.limit))
        return False


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the request and connection limit flags (``server run`` in both entry points)."""
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes,
                        help="larger request bodies are refused with 413 (default 64 MiB)")
    parser.add_argument("--max-header-bytes", type=int, default=Limits.max_header_bytes,
                        help="larger request heads are refused with 431 (default 64 KiB)")
    parser.add_argument("--max-headers", type=int, default=Limits.max_headers,
                        help="requests with more header fields are refused with 431")
    parser.add_argument("--idle-timeout", type=float, default=Limits.idle_timeout,
                        help="close a connection that sends no complete request for this many "
                             "seconds (since it opened or its last response; default 30)")
    parser.add_argument("--max-connections", type=int,
                        help="answer 503 to connections beyond this many (default: the file "
                             "descriptor limit minus 64)")


def limit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`ServerSettings` fields of :func:`add_limit_arguments`' flags."""
    return {name: getattr(args, name) for name in (
        "max_body_bytes", "max_header_bytes", "max_headers", "idle_timeout", "max_connections")}
