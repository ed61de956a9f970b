"""JSON responses, error bodies and request parsing shared by the HTTP routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from torc_stress.errors import ApiError
from torc_stress.server.checks import parse_int
from torc_stress.statuses import JobStatus

PREFIX = "/torc-service/v1"
MAX_LIMIT = 10000
Handler = Callable[[Request], Awaitable[Response]]


class JsonResponse(Response):
    """orjson-encoded JSON with ``None`` fields of top-level and nested models omitted."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encodes ``content`` with nulls dropped."""
        return orjson.dumps(_drop_nulls(content))


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def error_response(status: int, message: str) -> Response:
    """The JSON error body torc clients understand."""
    return JsonResponse(
        {"error": {"status": status, "message": message}, "errorMessage": message, "code": status},
        status_code=status,
    )


def _api_message(exc: ApiError) -> str:
    text = str(exc)
    prefix = f"HTTP {exc.status}: "
    return text.split(prefix, 1)[1] if prefix in text else text


# -- request parsing helpers --------------------------------------------------------------------
def path_int(request: Request, name: str) -> int:
    """An integer path parameter within SQLite's INTEGER range, or 400."""
    return parse_int(request.path_params[name], f"path parameter {name!r}")


def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    """An integer query parameter within SQLite's INTEGER range, or 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return parse_int(raw, f"query parameter {name!r}")


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    """A boolean query parameter (true/false/1/0), or 400."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"query parameter {name!r} must be true or false, got {raw!r}")


def status_param(raw: str, what: str) -> int:
    """A job status wire name, or 400."""
    try:
        return int(JobStatus.from_wire(raw))
    except ValueError as exc:
        raise ApiError(400, f"{what}: {exc}") from None


async def json_body(request: Request, *, required: bool = True) -> Any:
    """The parsed JSON body; 400 if malformed, ``{}`` if empty and not required."""
    try:
        raw = await request.body()
    except ClientDisconnect:  # gone, or refused over a limit (protocol.py): nobody to answer
        raise ApiError(400, "the client disconnected before sending the whole body") from None
    if not raw.strip():
        if required:
            raise ApiError(400, "the request needs a JSON body")
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON body: {exc}") from None


async def json_object(request: Request, *, required: bool = True) -> dict[str, Any]:
    """A JSON object body, or 400/422."""
    body = await json_body(request, required=required)
    if not isinstance(body, dict):
        raise ApiError(422, "the JSON body must be an object")
    return body


def paged(items: list[Any], offset: int, total: int) -> dict[str, Any]:
    """torc's list envelope."""
    return {
        "items": items,
        "offset": offset,
        "max_limit": MAX_LIMIT,
        "count": len(items),
        "total_count": total,
        "has_more": offset + len(items) < total,
    }


def page_params(request: Request) -> tuple[int, int]:
    """``offset`` and ``limit`` (default and maximum 10000)."""
    offset = query_int(request, "offset", 0) or 0
    limit = query_int(request, "limit", MAX_LIMIT)
    assert limit is not None
    if offset < 0 or limit < 0:
        raise ApiError(400, "offset and limit must be >= 0")
    if limit > MAX_LIMIT:
        raise ApiError(422, f"limit must be <= {MAX_LIMIT}")
    return offset, limit


def where_clause(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """Builds a list endpoint's ``WHERE`` from ``(condition, value)`` filters.

    A filter whose value is ``None`` is left out; the value is bound to the condition's ``?``
    (a condition without one, such as a subquery test, only needs a value that is not None).

    Returns:
        ``("WHERE a = ? AND ...", [values])``, or ``("", [])`` when no filter applies.
    """
    kept = [(sql, value) for sql, value in conditions if value is not None]
    if not kept:
        return "", []
    args = [value for sql, value in kept if "?" in sql]
    return "WHERE " + " AND ".join(sql for sql, _ in kept), args
