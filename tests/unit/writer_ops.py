"""Running ops through a real :class:`Writer` as one batch, on the calling thread (no loop)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from typing import Any

from torc_stress.errors import ApiError
from torc_stress.server.writer import Op, Writer


def run_batch_of(writer: Writer, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]
                 ) -> list[Any]:
    """Runs ``(fn, args)`` calls in one transaction; each outcome is the op's result, or the
    HTTP status of the :class:`ApiError` it ended with."""
    batch = [Op(fn.__name__, fn, args, time.perf_counter(), None, concurrent.futures.Future(),
                savepoint=not getattr(fn, "checks_first", False)) for fn, args in calls]
    writer._run_now(batch)
    outcomes = []
    for op in batch:
        try:
            outcomes.append(op.future.result(timeout=5))
        except ApiError as exc:
            outcomes.append(exc.status)
    return outcomes
