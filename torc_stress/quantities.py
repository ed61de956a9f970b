"""Quantities in torc's notation: memory sizes (``100m``, ``1g``) and ISO-8601 durations (pure)."""

from __future__ import annotations

import re

from torc_stress.errors import SpecError

__all__ = ["duration_to_seconds", "is_duration", "is_memory_size", "memory_to_bytes"]

_MEMORY_RE = re.compile(r"([0-9]+)([kmgtKMGT]?)\Z")
_DURATION_RE = re.compile(
    r"P(?:([0-9]+)D)?(?:T(?=[0-9.])(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+(?:\.[0-9]+)?)S)?)?\Z"
)


def memory_to_bytes(memory: str) -> int:
    """Converts torc's memory strings (``"100m"``, ``"1g"``, ``"512"``) to bytes.

    Args:
        memory: digits with an optional unit ``k``, ``m``, ``g`` or ``t`` (powers of 1024).

    Returns:
        The size in bytes.

    Raises:
        SpecError: the string is not a memory size.
    """
    match = _MEMORY_RE.match(memory.strip())
    if not match:
        raise SpecError(f"{memory!r} is not a memory size like '100m' or '1g'", field="memory")
    return int(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " ")


def is_memory_size(text: str) -> bool:
    """Returns whether ``text`` is a memory size like ``100m`` (see :func:`memory_to_bytes`)."""
    return _MEMORY_RE.match(text) is not None


def is_duration(text: str) -> bool:
    """Returns whether ``text`` is an ISO-8601 duration like ``PT1M``."""
    return text not in ("P", "PT") and _DURATION_RE.match(text) is not None


def duration_to_seconds(duration: str) -> float:
    """Converts an ISO-8601 duration (``PT1M``, ``P0DT1M``, ``P1DT2H3M4.5S``) to seconds.

    Args:
        duration: the duration string.

    Returns:
        The duration in seconds.

    Raises:
        SpecError: the string is not such a duration.
    """
    match = _DURATION_RE.match(duration) if is_duration(duration) else None
    if match is None:
        raise SpecError(f"{duration!r} is not an ISO-8601 duration like 'PT1M'", field="runtime")
    days, hours, minutes, seconds = (float(part) if part else 0.0 for part in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 + seconds
