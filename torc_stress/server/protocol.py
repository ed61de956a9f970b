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
left of the idle period, and closes the connection once it has been idle for
``timeout_keep_alive`` seconds, as uvicorn does.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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
    """:class:`HttpToolsProtocol` whose responses leave in one write (pass as ``http=``)."""

    _idle_since: float | None = None
    _idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Sets up the connection, then wraps its transport."""
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport)  # type: ignore[assignment]

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

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # bytes arrived, or a response is on its way: not idle
        super()._unset_keepalive_if_required()

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
