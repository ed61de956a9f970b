"""Small, exact statistics helpers shared by the report's analysis (pure)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Returns the q-th percentile of ``values`` by linear interpolation (numpy's default).

    Args:
        values: the samples, in any order.
        q: the percentile, 0 to 100.

    Returns:
        The percentile, or None when there are no samples.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """Summarises samples the way the metrics document does: count, sum, p50, p90, p99, max.

    Args:
        values: the samples.

    Returns:
        A summary mapping; percentiles are None when there are no samples.
    """
    return {
        "count": len(values),
        "sum": float(sum(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
    }


def linear_slope(ys: Sequence[float]) -> float | None:
    """Returns the least-squares slope of ``ys`` against their index 0, 1, 2, ...

    Args:
        ys: the values, one per step.

    Returns:
        The fitted change per step, or None with fewer than two values.
    """
    n = len(ys)
    if n < 2:
        return None
    mean_x = (n - 1) / 2.0
    mean_y = sum(ys) / n
    num = sum((i - mean_x) * (y - mean_y) for i, y in enumerate(ys))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def rounded(value: float | None, digits: int = 3) -> float | None:
    """Rounds for output, keeping None; avoids ``-0.0`` so outputs compare equal."""
    if value is None:
        return None
    result = round(float(value), digits)
    return 0.0 if result == 0 else result
