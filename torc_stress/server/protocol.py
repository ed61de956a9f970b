"""uvicorn's httptools protocol, sending each response in one socket write.

uvicorn writes a response's status line and headers, then its body, with two
``transport.write`` calls, i.e. two ``send`` syscalls and two TCP segments per response. On
loopback the receiving side's TCP work runs in the sender's syscall, so the second write is a
large share of a small request's CPU cost. :class:`CoalescingHttpToolsProtocol` buffers what a
response writes and hands it to the socket once, when the response is complete (or the
connection closes).
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

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Sets up the connection, then wraps its transport."""
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        """Sends the finished response, then lets uvicorn start the next one."""
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
