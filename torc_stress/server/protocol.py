"""uvicorn's httptools protocol, sending each response in one socket write.

uvicorn writes a response's status line and headers, then its body, with two
``transport.write`` calls, i.e. two ``send`` syscalls and two TCP segments per response. On
loopback the receiving side's TCP work runs in the sender's syscall, so the second write is a
large share of a small request's CPU cost. :class:`CoalescingHttpToolsProtocol` buffers what a
response writes and hands it to the socket once, when the response is complete (or the
connection closes).

It also keeps one idle timer per connection rather than one per response: uvicorn arms a new
keep-alive timer after every response and cancels it when the next request's bytes arrive
(3.4 us per request measured with uvloop, about 2% of a completion's server CPU). Here the
response only notes the time; a timer that is already running re-arms itself for whatever is
left of the idle period. A connection counts as idle from when it opens or its last response
went out until a complete request has arrived, so one that never completes a request (sends
nothing, or half a head) is closed after ``timeout_keep_alive`` seconds too; uvicorn would
keep it forever.

And it enforces :class:`~torc_stress.server.limits.Limits`: the size of a request's head and
body, the number of its header fields, and the server-wide cap on open connections. A request
over a limit is answered with a JSON error (413, 431 or 503) and the connection is closed;
nothing more of it is read or buffered.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from torc_stress.server.limits import ConnectionCap, Limits, refusal

_CONTINUE = b"HTTP/1.1 100 Continue"


class _CoalescingTransport:
    """Wraps a transport: ``write`` buffers until :meth:`flush`; everything else delegates."""

    __slots__ = ("_transport", "_buffer")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._buffer: list[bytes] = []

    def write(self, data: bytes) -> None:
        """Buffers ``data`` (an interim ``100 Continue`` goes out at once)."""
        if data.startswith(_CONTINUE):
            self.flush()
            self._transport.write(data)
            return
        self._buffer.append(data)

    def flush(self) -> None:
        """Writes everything buffered in one call."""
        buffer = self._buffer
        if buffer:
            self._buffer = []
            self._transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def close(self) -> None:
        """Flushes, then closes."""
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        """Whether the underlying transport is closing."""
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` whose responses leave in one write (pass as ``http=``).

    ``limits`` and ``cap`` are set on a subclass (:func:`fast_lane_protocol`).
    """

    limits: ClassVar[Limits] = Limits()
    cap: ClassVar[ConnectionCap | None] = None

    _idle_since: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None
    _head_open = False  # a request head has begun and is not complete yet
    _head_bytes = 0  # bytes of the open head received after the chunk it began in (-1: in it)
    _body_bytes = 0  # body bytes of the current request so far
    _refused = False  # a limit was hit: the connection is closing, the rest is ignored

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Sets up the connection, wraps its transport, and starts its idle timer.

        A connection beyond the cap is answered 503 and closed at once.
        """
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport)  # type: ignore[assignment]
        cap = self.cap
        if cap is not None and not cap.admits(len(self.connections)):
            self.refuse(503, "Service Unavailable",
                        "too many open connections; try again in a moment")
            return
        self._idle_since = self.loop.time()
        self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        """Stops the idle timer, then lets uvicorn clean up."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        """Sends the finished response, then starts the next pipelined one or goes idle.

        uvicorn's own ``on_response_complete`` minus its per-response timer (see the module).
        """
        self.transport.flush()  # type: ignore[attr-defined]
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    # -- limits -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        """Feeds the parser, then refuses a head that has grown past ``max_header_bytes``.

        Counts the reads that continue an open head (the one it began in is measured
        exactly once the head is complete, :meth:`head_accepted`), so a head that never ends
        is refused within one read of the limit.
        """
        if self._refused:
            return
        super().data_received(data)
        if self._head_open and not self._refused:
            if self._head_bytes < 0:
                self._head_bytes = 0
            else:
                self._head_bytes += len(data)
                if self._head_bytes > self.limits.max_header_bytes:
                    self._refuse_head()

    def on_message_begin(self) -> None:
        """Starts a request: its head is open, no body yet."""
        super().on_message_begin()
        self._head_open = True
        self._head_bytes = -1
        self._body_bytes = 0

    def on_headers_complete(self) -> None:
        """Refuses a request over a head or body limit, else hands it to uvicorn."""
        if self.head_accepted():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """Refuses a body once it passes ``max_body_bytes``, else hands it to uvicorn."""
        if self.body_fits(body):
            super().on_body(body)

    def on_message_complete(self) -> None:
        """A complete request: the connection is no longer idle."""
        if self._refused:
            return
        self._idle_since = None
        super().on_message_complete()

    def head_accepted(self) -> bool:
        """Closes the head; False (having refused the request) if it is over a limit.

        Checks the header count, the head's size (request target plus header fields; a head
        that arrives in several reads is also counted as it comes, see :meth:`data_received`)
        and a declared ``content-length`` against ``max_body_bytes`` (so such a body is
        refused before any of it is read).
        """
        self._head_open = False
        if self._refused:
            return False
        limits = self.limits
        headers = self.headers
        if len(headers) > limits.max_headers:
            self.refuse(431, "Request Header Fields Too Large",
                        f"the request has more than {limits.max_headers} header fields")
            return False
        size = len(self.url)
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"content-length" and int(value) > limits.max_body_bytes:
                self.refuse(413, "Content Too Large", self._body_message())
                return False
        if size > limits.max_header_bytes:
            self._refuse_head()
            return False
        return True

    def _refuse_head(self) -> None:
        self.refuse(431, "Request Header Fields Too Large",
                    f"the request head is larger than {self.limits.max_header_bytes} bytes")

    def body_fits(self, body: bytes) -> bool:
        """Counts ``body``; False (having refused the request) once it passes the limit."""
        if self._refused:
            return False
        size = self._body_bytes + len(body)
        self._body_bytes = size
        if size <= self.limits.max_body_bytes:
            return True
        self.refuse(413, "Content Too Large", self._body_message())
        return False

    def _body_message(self) -> str:
        return (f"the request body is larger than the server's limit of "
                f"{self.limits.max_body_bytes} bytes (--max-body-bytes)")

    def refuse(self, status: int, reason: str, message: str) -> None:
        """Answers ``status`` with a JSON error, closes the connection, ignores the rest.

        The request being read (if any) is marked disconnected, so its handler, should it
        have started, stops waiting for the body.
        """
        self._refused = True
        self._idle_since = None
        cycle: Any = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            event = getattr(cycle, "message_event", None)
            if event is not None:
                event.set()
        transport: Any = self.transport
        if not transport.is_closing():
            transport.write(refusal(status, reason, message))
            transport.close()

    def _idle_check(self) -> None:
        self._idle_timer = None
        since = self._idle_since
        if since is None:
            return  # busy; the next response arms the timer again
        left = since + self.timeout_keep_alive - self.loop.time()
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
        else:
            self.timeout_keep_alive_handler()
