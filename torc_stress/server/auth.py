"""The run token check, shared by the ASGI middleware and the protocol's fast lane."""

from __future__ import annotations

import base64
import binascii
import hmac

UNAUTHORIZED_MESSAGE = "missing or wrong token; pass the run's token"


def token_accepted(authorization: bytes, token: bytes) -> bool:
    """Whether an ``Authorization`` header value carries the run's token (pure).

    Accepted forms: ``Bearer <token>`` and ``Basic base64(<any user>:<token>)``. Comparisons
    are constant-time and on bytes, so a header with non-ASCII bytes is simply refused.

    Args:
        authorization: the raw header value (``b""`` when the request has none).
        token: the run's token, UTF-8 encoded.

    Returns:
        True when the header proves knowledge of the token.
    """
    if authorization.startswith(b"Bearer "):
        return hmac.compare_digest(authorization[7:].strip(), token)
    if authorization.startswith(b"Basic "):
        try:
            decoded = base64.b64decode(authorization[6:].strip())
        except (binascii.Error, ValueError):
            return False
        user_password = decoded.split(b":", 1)
        return len(user_password) == 2 and hmac.compare_digest(user_password[1], token)
    return False


def authorization_header(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The (last) ``authorization`` value among lower-cased ASGI headers, or ``b""``."""
    found = b""
    for name, value in headers:
        if name == b"authorization":
            found = value
    return found
