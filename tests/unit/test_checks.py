"""The boundary checks: path/query integers, body numbers and GiB sizes SQLite can store."""

from __future__ import annotations

import pytest

from torc_stress.errors import ApiError
from torc_stress.server.checks import (
    INT64_MAX,
    INT64_MIN,
    checked_number,
    gib_to_bytes,
    parse_int,
)


@pytest.mark.parametrize(("raw", "value"), [
    ("0", 0), ("-1", -1), (str(INT64_MAX), INT64_MAX), (str(INT64_MIN), INT64_MIN),
])
def test_an_integer_within_sqlites_range_is_parsed(raw: str, value: int) -> None:
    assert parse_int(raw, "path parameter 'id'") == value


@pytest.mark.parametrize(("raw", "says"), [
    (str(INT64_MAX + 1), "between"), (str(INT64_MIN - 1), "between"), ("9" * 5000, "integer"),
    ("1.5", "integer"), ("abc", "integer"), ("", "integer"),
])
def test_other_text_gets_a_400_naming_the_parameter(raw: str, says: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_int(raw, "query parameter 'offset'")
    assert caught.value.status == 400
    assert "'offset'" in str(caught.value) and says in str(caught.value)
    assert len(str(caught.value)) < 200  # a huge value is not echoed back whole


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, float("inf"), float("nan")])
def test_a_body_number_sqlite_cannot_store_gets_a_422_naming_the_field(value: float) -> None:
    with pytest.raises(ApiError) as caught:
        checked_number(value, "pid")
    assert caught.value.status == 422 and "'pid'" in str(caught.value)


def test_a_gib_size_that_overflows_bytes_gets_a_422() -> None:
    assert gib_to_bytes(1.5, "memory_gb") == 1.5 * 1024**3
    with pytest.raises(ApiError, match="memory_gb"):
        gib_to_bytes(1.5e308, "memory_gb")
