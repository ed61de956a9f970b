"""The run token check shared by the ASGI middleware and the fast lane."""

from __future__ import annotations

import base64

import pytest

from torc_stress.server.auth import authorization_header, token_accepted

TOKEN = b"the-run-token"


def _basic(user_password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user_password)


@pytest.mark.parametrize(
    "header",
    [b"Bearer the-run-token", b"Bearer  the-run-token ", _basic(b"token:the-run-token"),
     _basic(b"anyone:the-run-token"), _basic(b":the-run-token")],
)
def test_a_bearer_or_basic_header_carrying_the_token_is_accepted(header: bytes) -> None:
    assert token_accepted(header, TOKEN)


@pytest.mark.parametrize(
    "header",
    [b"", b"Bearer", b"Bearer wrong", b"bearer the-run-token", b"Token the-run-token",
     _basic(b"the-run-token"), _basic(b"token:wrong"), b"Basic !!!not-base64",
     b"Bearer the-run-token\xff", _basic(b"user:the-run-token:extra")],
)
def test_a_missing_or_wrong_or_malformed_header_is_refused(header: bytes) -> None:
    assert not token_accepted(header, TOKEN)


def test_the_last_authorization_header_is_the_one_checked() -> None:
    headers = [(b"host", b"x"), (b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]
    assert authorization_header(headers) == b"Bearer b"
    assert authorization_header([(b"host", b"x")]) == b""
