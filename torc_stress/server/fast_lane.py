"""The protocol's fast lane: hot-route requests answered from the HTTP parser's callbacks.

uvicorn's ASGI machinery (a RequestResponseCycle, an asyncio.Event, one Task and several
``send`` dicts per request) costs about 0.1 ms of CPU per request, as much as the work of a
``start_job``. :class:`FastLaneProtocol` answers the hot routes (:class:`HotRoutes`) itself:
``on_headers_complete`` matches the route, ``on_body`` collects the body, and
``on_message_complete`` calls the route's handler; the response (status line, uvicorn's default
headers, JSON body) leaves in one ``transport.write``, at once or from the writer future's
done-callback. No cycle, no task, no event.

Anything else takes uvicorn's normal path unchanged (and :class:`TorcApp` still serves hot
routes over ASGI there): requests to other routes, ``Expect: 100-continue``, upgrades,
percent-encoded paths, and any request that arrives while an earlier one on the connection is
still being answered. While a fast-lane request is in flight it stands in as uvicorn's
``cycle`` (not ``response_complete``), so uvicorn queues later pipelined requests behind it
(pausing reading) exactly as it does behind its own cycles, and answering it starts them in
order. ``shutdown()`` clears its ``keep_alive``: the answer still goes out, with
``connection: close``. A client that disconnects first is not written to.

Since the fast lane bypasses ASGI middleware, it checks the run token itself
(:func:`torc_stress.server.auth.token_accepted`, as the middleware does).
"""

from __future__ import annotations

import asyncio
from functools import partial
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from torc_stress.server.auth import UNAUTHORIZED_MESSAGE, authorization_header, token_accepted
from torc_stress.server.hot_routes import HotRoute, HotRoutes, error_body
from torc_stress.server.limits import ConnectionCap, Limits
from torc_stress.server.protocol import CoalescingHttpToolsProtocol

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_JSON_HEADERS = b"content-type: application/json\r\ncontent-length: %d\r\n"
_CLOSE = b"connection: close\r\n"


def status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n`` (an unknown status gets an empty reason)."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def response_bytes(
    status: int, default_headers: bytes, body: bytes, *, keep_alive: bool
) -> bytes:
    """A complete JSON response (pure).

    Args:
        status: the HTTP status.
        default_headers: uvicorn's default header lines, joined (``date``, ``server``).
        body: the JSON body.
        keep_alive: False adds ``connection: close``.
    """
    return b"".join(
        (
            status_line(status),
            default_headers,
            _JSON_HEADERS % len(body),
            b"\r\n" if keep_alive else _CLOSE + b"\r\n",
            body,
        )
    )


class _JoinedHeaders:
    """uvicorn's default headers joined into lines, rejoined when the list object changes.

    uvicorn's server swaps in a new list (with a new ``date``) once a second.
    """

    __slots__ = ("_source", "_joined")

    def __init__(self) -> None:
        self._source: list[tuple[bytes, bytes]] | None = None
        self._joined = b""

    def get(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The header lines of ``headers``."""
        if headers is not self._source:
            self._joined = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers)
            self._source = headers
        return self._joined


class FastRequest:
    """A request in the fast lane; stands in as uvicorn's ``cycle`` until it is answered.

    Carries the attributes uvicorn's protocol reads from a cycle (``response_complete``,
    ``keep_alive``, ``disconnected``).
    """

    __slots__ = (
        "route",
        "parts",
        "query",
        "chunks",
        "keep_alive",
        "denied",
        "received",
        "response_complete",
        "disconnected",
    )

    def __init__(
        self, route: HotRoute, parts: list[str], query: bytes, keep_alive: bool, denied: bool
    ) -> None:
        self.route = route
        self.parts = parts
        self.query = query
        self.chunks: list[bytes] = []
        self.keep_alive = keep_alive
        self.denied = denied
        self.received = False
        self.response_complete = False
        self.disconnected = False


class FastLaneProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol with the hot routes answered in place.

    Use :func:`fast_lane_protocol` to get a subclass bound to a :class:`HotRoutes` and token.
    """

    hot_routes: ClassVar[HotRoutes | None] = None
    token: ClassVar[bytes | None] = None
    joined_headers: ClassVar[_JoinedHeaders] = _JoinedHeaders()

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        hot = self.hot_routes
        self._lane_open = hot is not None and not self.root_path and self.limit_concurrency is None
        self._prefix = b"" if hot is None else hot.prefix.encode("ascii")
        self._raw: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Sets up the connection, keeping the bare transport for fast-lane answers."""
        super().connection_made(transport)
        self._raw = transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Marks an unanswered fast-lane request disconnected, then lets uvicorn clean up."""
        cycle: Any = self.cycle
        if type(cycle) is FastRequest:
            if not cycle.response_complete:
                cycle.disconnected = True
            self.cycle = None  # type: ignore[assignment]
        super().connection_lost(exc)

    # -- parser callbacks -----------------------------------------------------------------------
    # NOTE: these call HttpToolsProtocol's callbacks, not super()'s: the limit checks of
    # CoalescingHttpToolsProtocol's run here once for both lanes.
    def on_headers_complete(self) -> None:
        """Takes the fast lane for an eligible hot-route request, else uvicorn's path."""
        if not self.head_accepted():
            return
        fast = self._fast_request() if self._lane_open else None
        if fast is None:
            HttpToolsProtocol.on_headers_complete(self)
        else:
            self.cycle = fast  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        """Collects a fast-lane request's body (uvicorn's path otherwise)."""
        if not self.body_fits(body):
            return
        cycle: Any = self.cycle
        if type(cycle) is FastRequest and not cycle.received:
            cycle.chunks.append(body)
        else:
            HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        """Answers a fast-lane request (uvicorn's path otherwise)."""
        if self._refused:
            return
        self._idle_since = None
        cycle: Any = self.cycle
        if type(cycle) is not FastRequest or cycle.received:
            HttpToolsProtocol.on_message_complete(self)
            return
        cycle.received = True
        body = b"".join(cycle.chunks)
        cycle.chunks = []
        if cycle.denied:
            self._answer(cycle, 401, error_body(401, UNAUTHORIZED_MESSAGE))
            return
        assert self.hot_routes is not None
        self.hot_routes.respond(
            cycle.route, cycle.parts, cycle.query, body, partial(self._answer, cycle)
        )

    # -- the fast lane --------------------------------------------------------------------------
    def _fast_request(self) -> FastRequest | None:
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.expect_100_continue:
            return None
        url = self.url
        if not url.startswith(self._prefix) or b"%" in url or b"#" in url or not url.isascii():
            return None
        parser = self.parser
        if parser.should_upgrade():
            return None
        path, _, query = url.partition(b"?")
        assert self.hot_routes is not None
        hit = self.hot_routes.match_path(parser.get_method().decode("ascii"), path.decode("ascii"))
        if hit is None:
            return None
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        token = self.token
        denied = token is not None and not token_accepted(
            authorization_header(self.headers), token
        )
        return FastRequest(hit[0], hit[1], query, keep_alive, denied)

    def _answer(self, request: FastRequest, status: int, body: bytes) -> None:
        """Writes a fast-lane response in one write, then does uvicorn's response bookkeeping."""
        request.response_complete = True
        transport = self._raw
        if request.disconnected or transport is None or transport.is_closing():
            return
        keep_alive = request.keep_alive
        headers = self.joined_headers.get(self.server_state.default_headers)
        transport.write(response_bytes(status, headers, body, keep_alive=keep_alive))
        if not keep_alive:
            transport.close()
        self.on_response_complete()


def fast_lane_protocol(
    hot: HotRoutes, token: str | None = None, limits: Limits | None = None
) -> type[FastLaneProtocol]:
    """A :class:`FastLaneProtocol` subclass bound to ``hot`` (pass it as uvicorn's ``http=``).

    Args:
        hot: the hot routes to answer in the fast lane (``TorcApp.hot``).
        token: the run token when the server checks one (``--token-file``), else None.
        limits: the request and connection limits (defaults: :class:`Limits`'); its
            ``idle_timeout`` is uvicorn's ``timeout_keep_alive``, set by the caller.
    """

    token_bytes = None if token is None else token.encode("utf-8")
    bound_limits = limits or Limits()

    class BoundFastLaneProtocol(FastLaneProtocol):
        hot_routes = hot
        token = token_bytes
        joined_headers = _JoinedHeaders()
        limits = bound_limits
        cap = ConnectionCap(bound_limits.max_connections)

    return BoundFastLaneProtocol
