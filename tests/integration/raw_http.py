"""Raw HTTP/1.1 over a socket, for tests that need byte-level control (pipelining, splits)."""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any

PREFIX = "/torc-service/v1"


@dataclass
class RawResponse:
    """One parsed response: status, reason, lower-cased headers in order, body."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower-case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def request_bytes(method: str, path: str, body: bytes | Any = None, *,
                  headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
    """A complete request for ``PREFIX + path`` (a non-bytes body is sent as JSON)."""
    data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"{method} {PREFIX}{path} HTTP/{version}", "Host: 127.0.0.1"]
    if body is not None or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


class RawConnection:
    """One client socket to the server on ``port``; reads responses one by one."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        """Sends ``data`` as is."""
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def read_response(self) -> RawResponse:
        """Reads the next final response (skipping ``100 Continue``)."""
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    raise ConnectionError(f"connection closed mid-response: {self.buffer!r}")
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            status_line, *lines = head.decode("latin-1").split("\r\n")
            _, status, reason = (status_line.split(" ", 2) + [""])[:3]
            if 100 <= int(status) < 200:
                continue
            pairs = (line.split(":", 1) for line in lines)
            headers = [(name.strip().lower(), value.strip()) for name, value in pairs]
            length = int(dict(headers)["content-length"])
            while len(self.buffer) < length:
                if not self._fill():
                    raise ConnectionError("connection closed mid-body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return RawResponse(int(status), reason, headers, body)

    def request(self, method: str, path: str, body: bytes | Any = None, **kw: Any) -> RawResponse:
        """Sends one request and reads its response."""
        self.send(request_bytes(method, path, body, **kw))
        return self.read_response()

    def closed_by_server(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self, reset: bool = False) -> None:
        """Closes the socket (``reset``: with an RST, as a killed client would)."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()
