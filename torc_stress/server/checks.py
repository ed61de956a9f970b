"""Range and type checks for the numbers and ids a request carries.

SQLite stores an INTEGER in a signed 64-bit field, and the sqlite3 module raises
``OverflowError`` for a Python int outside it; JSON (and orjson) allow larger ones. So every
integer from a path, a query string or a body is checked against that range here, at the
boundary, and answered with a 4xx naming the field: 400 for path and query text, 422 for body
fields (the codes the routes already use for unparsable and invalid values).
These checks run on the per-job routes, so each is a few type and range tests.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from torc_stress.errors import ApiError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_SHOWN = 40  # characters of a bad value quoted back in an error message


def shown(raw: str) -> str:
    """``raw`` quoted for an error message, cut short when long."""
    return repr(raw) if len(raw) <= _SHOWN else repr(raw[:_SHOWN]) + f"... ({len(raw)} chars)"


def parse_int(raw: str, what: str) -> int:
    """The integer in path or query text ``raw``, within SQLite's INTEGER range.

    Args:
        raw: the text.
        what: how the error names it (``path parameter 'id'``).

    Raises:
        ApiError: 400 when ``raw`` is not an integer or lies outside the range.
    """
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{what} must be an integer, got {shown(raw)}") from None
    if INT64_MIN <= value <= INT64_MAX:
        return value
    raise ApiError(400, f"{what} must be between {INT64_MIN} and {INT64_MAX}, got {shown(raw)}")


def int64_error(field: str) -> ApiError:
    """The 422 for a body integer outside SQLite's INTEGER range."""
    return ApiError(422, f"field {field!r} must be between {INT64_MIN} and {INT64_MAX}")


def checked_int(value: int, field: str) -> int:
    """``value`` if SQLite can store it, else a 422 naming ``field``."""
    if INT64_MIN <= value <= INT64_MAX:
        return value
    raise int64_error(field)


def checked_number(value: float, field: str) -> float:
    """A body number (int or float) SQLite can store: finite, integers within int64.

    Raises:
        ApiError: 422 naming ``field``.
    """
    if type(value) is not float:
        return checked_int(int(value), field)
    if math.isfinite(value):
        return value
    raise ApiError(422, f"field {field!r} must be a finite number")


def is_timestamp(value: Any) -> bool:
    """Whether ``value`` is an ISO 8601 date-time string (``2026-11-28T21:30:12.123Z``)."""
    if type(value) is not str or not value:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True



_GIB = 1024**3


def gib_to_bytes(gib: float, field: str) -> int:
    """A size in GiB (a body number) as bytes, or a 422 naming ``field`` when that overflows."""
    size = gib * _GIB
    if -INT64_MAX <= size <= INT64_MAX:  # also False for inf (and NaN)
        return int(size)
    raise ApiError(422, f"field {field!r} is too large: {gib!r} GiB")


#: a result_model's integer fields, all required
_RESULT_INTS = ("job_id", "workflow_id", "run_id", "compute_node_id", "return_code")
#: a result_model's optional fields: name and whether it may be a float
_RESULT_OPTIONAL = (
    ("attempt_id", False),
    ("peak_memory_bytes", False),
    ("avg_memory_bytes", False),
    ("peak_cpu_percent", True),
    ("avg_cpu_percent", True),
)


def checked_result(body: dict[str, Any]) -> dict[str, Any]:
    """A result_model body whose required fields have the right types, range-checked.

    Checks the integers against SQLite's range, ``exec_time_minutes``, ``completion_time``
    (an ISO 8601 date-time) and the optional fields' types and ranges.

    Raises:
        ApiError: 422 naming the first bad field.
    """
    for key in _RESULT_INTS:
        if not INT64_MIN <= body[key] <= INT64_MAX:
            raise int64_error(key)
    minutes = body["exec_time_minutes"]
    if type(minutes) is not float or minutes - minutes != 0.0:  # inf - inf and nan are nan
        checked_number(minutes, "exec_time_minutes")
    if not is_timestamp(body["completion_time"]):
        raise ApiError(
            422, "field 'completion_time' must be an ISO 8601 date-time such as "
            f"'2026-11-28T21:30:12.123Z', got {shown(str(body['completion_time']))}"
        )
    extra = len(body) - len(_RESULT_INTS) - 3  # fields beyond the required ones
    if extra == 1 and type(attempt := body.get("attempt_id")) is int \
            and INT64_MIN <= attempt <= INT64_MAX:
        return body  # the common case: our worker and torc's send attempt_id alone
    if extra > 0:
        for key, real in _RESULT_OPTIONAL:
            value = body.get(key)
            if value is not None:
                _optional_number(value, key, real)
    return body


def _optional_number(value: Any, field: str, real: bool) -> None:
    kind = type(value)
    if kind is int or (real and kind is float):
        checked_number(value, field)
        return
    wanted = "a number" if real else "an integer"
    raise ApiError(422, f"field {field!r} must be {wanted}, got {kind.__name__}")
