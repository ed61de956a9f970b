"""The bytes of a fast-lane response."""

from __future__ import annotations

import http.client
import io

import pytest

from torc_stress.server.fast_lane import response_bytes, status_line

DEFAULTS = b"date: Sun, 01 Jan 2026 00:00:00 GMT\r\nserver: uvicorn\r\n"


class _Socket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def _parse(data: bytes) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(_Socket(data))  # type: ignore[arg-type]
    response.begin()
    return response


@pytest.mark.parametrize(("status", "reason"), [(200, "OK"), (401, "Unauthorized"),
                                                (422, "Unprocessable Entity"),
                                                (503, "Service Unavailable")])
def test_a_response_parses_with_its_reason_headers_and_whole_body(status: int, reason: str) -> None:
    body = b'{"a": [1, 2, 3]}'
    response = _parse(response_bytes(status, DEFAULTS, body, keep_alive=True))
    assert (response.status, response.reason) == (status, reason)
    assert [name for name, _ in response.getheaders()] == [
        "date", "server", "content-type", "content-length"]
    assert response.getheader("content-type") == "application/json"
    assert response.read() == body
    assert not response.will_close


def test_a_response_that_ends_the_connection_says_connection_close() -> None:
    response = _parse(response_bytes(200, DEFAULTS, b"{}", keep_alive=False))
    assert response.getheader("connection") == "close" and response.will_close
    assert response.read() == b"{}"


def test_an_unknown_status_gets_an_empty_reason() -> None:
    assert status_line(299) == b"HTTP/1.1 299 \r\n"
