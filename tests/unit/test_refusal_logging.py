"""The connection cap and the full-disk tracker log once per condition, with counts."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from torc_stress.server.disk_full import DiskFull, is_full_error
from torc_stress.server.limits import ConnectionCap

FULL = sqlite3.OperationalError("database or disk is full")


def test_the_connection_cap_warns_once_until_the_count_falls_well_below_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = ConnectionCap(10)
    with caplog.at_level(logging.INFO):
        assert cap.admits(10)
        assert [cap.admits(11) for _ in range(5)] == [False] * 5
        assert cap.admits(9)  # below the cap, not yet 10% below: still one episode
        assert not cap.admits(11)
        assert cap.admits(5)
        assert not cap.admits(11)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 2 and len(infos) == 1
    assert infos[0].torc_kv["refused"] == 6  # type: ignore[attr-defined]


def test_a_disk_that_fills_again_soon_is_reported_once_with_all_its_refusals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = DiskFull()
    with caplog.at_level(logging.INFO):
        assert full.failed(3, FULL).status == 503
        full.failed(2, FULL)
        full.recovered()
        full.failed(4, FULL)  # within REPEAT_S: counted, not logged
        full.recovered()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(errors) == 1 and len(infos) == 1
    assert infos[0].torc_kv["refused_ops"] == 5  # type: ignore[attr-defined]
    assert full.since is None and full.ops == 4


def test_only_sqlite_full_counts_as_a_full_disk() -> None:
    assert is_full_error(FULL)
    assert not is_full_error(sqlite3.OperationalError("database is locked"))
    assert not is_full_error(OSError("disk is full"))
