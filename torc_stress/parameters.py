"""Parameter values in torc's format: parsing, expansion, Rust-style display, substitution.

Parameter expansion copies torc's client (``src/client/parameter_expansion.rs``) including its
quirks: inclusive range ends, float ranges with a 1e-10 end epsilon, Rust float display without a
trailing ``.0``, and ``{p:fmt}`` suppressing a plain ``{p}`` in the same string. One deliberate
difference: torc iterates parameters in ``HashMap`` order (random per process); we use spec order,
last parameter varying fastest, so job order is deterministic.

Everything here is pure; bad values raise :class:`~torc_stress.errors.SpecError` (from
:func:`expand_parameters`) or ValueError (from :func:`parse_parameter_value`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal

from torc_stress.errors import SpecError

__all__ = [
    "MAX_EXPANDED",
    "ParamValue",
    "display_value",
    "expand_parameters",
    "format_value",
    "parse_parameter_value",
    "substitute",
]

ParamValue = int | float | str

#: Upper bound on the values of one parameter and the jobs of one spec entry (a typo guard).
MAX_EXPANDED = 1_000_000

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\Z", re.IGNORECASE
)
_INT_FORMAT_RE = re.compile(r"0([0-9]+)d\Z")
_FLOAT_FORMAT_RE = re.compile(r"\.([0-9]+)f\Z")

#: One job's parameter assignment: ``[(name, value), ...]`` in spec order.
Assignment = list[tuple[str, ParamValue]]


def parse_parameter_value(raw: str) -> list[ParamValue]:
    """Parses one parameter value into its list of values, by torc's rules.

    Args:
        raw: ``"start:end[:step]"`` (inclusive, int or float), ``"[a,b,c]"``, or a scalar;
            a ``{...}`` wrapper without a comma is stripped.

    Returns:
        The values in order.

    Raises:
        ValueError: a bad range or step (the caller turns it into a SpecError).
    """
    text = raw.strip()
    if text.startswith("{") and text.endswith("}") and "," not in text:
        text = text[1:-1].strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_parse_list_item(item.strip()) for item in inner.split(",")] if inner else []
    if ":" in text:
        return _parse_range(text)
    return [_parse_scalar(text)]


def _parse_int(text: str) -> int | None:
    if _INT_RE.match(text):
        value = int(text)
        if -(2**63) <= value < 2**63:
            return value
    return None


def _parse_float(text: str) -> float | None:
    return float(text) if _FLOAT_RE.match(text) else None


def _parse_scalar(text: str) -> ParamValue:
    number = _parse_int(text)
    if number is not None:
        return number
    real = _parse_float(text)
    return real if real is not None else text


def _parse_list_item(text: str) -> ParamValue:
    value = _parse_scalar(text)
    return value.strip("'\"") if isinstance(value, str) else value


def _parse_range(text: str) -> list[ParamValue]:
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (2, 3):
        raise ValueError(f"invalid range {text!r}: expected start:end or start:end:step")
    start, end = _parse_int(parts[0]), _parse_int(parts[1])
    if start is not None and end is not None:
        step = _parse_int(parts[2]) if len(parts) == 3 else 1
        if step is None:
            raise ValueError(f"invalid range {text!r}: step {parts[2]!r} is not an integer")
        return list(_int_range(text, start, end, step))
    fstart, fend = _parse_float(parts[0]), _parse_float(parts[1])
    if fstart is None or fend is None:
        raise ValueError(f"invalid range {text!r}: start and end must be numbers")
    fstep = _parse_float(parts[2]) if len(parts) == 3 else 1.0
    if fstep is None:
        raise ValueError(f"invalid range {text!r}: step {parts[2]!r} is not a number")
    return list(_float_range(text, fstart, fend, fstep))


def _int_range(text: str, start: int, end: int, step: int) -> range:
    if step == 0:
        raise ValueError(f"invalid range {text!r}: step must not be 0")
    values = range(start, end + 1, step) if step > 0 else range(start, end - 1, step)
    if len(values) > MAX_EXPANDED:
        raise ValueError(f"range {text!r} has {len(values)} values, more than {MAX_EXPANDED}")
    return values


def _float_range(text: str, start: float, end: float, step: float) -> Iterator[float]:
    if step == 0 or math.isnan(step):
        raise ValueError(f"invalid range {text!r}: step must be a non-zero number")
    count = (end - start) / step
    if not math.isfinite(count) or count > MAX_EXPANDED:
        raise ValueError(f"range {text!r} has too many values (more than {MAX_EXPANDED})")
    current = start
    # NOTE: torc adds the step repeatedly, so rounding errors accumulate; copy that.
    while (current <= end + 1e-10) if step > 0 else (current >= end - 1e-10):
        yield current
        current += step


def display_value(value: ParamValue) -> str:
    """Returns a value as Rust's ``Display`` prints it (floats without a trailing ``.0``).

    Args:
        value: an int, float or string parameter value.

    Returns:
        The text: ``7`` -> ``"7"``, ``1.0`` -> ``"1"``, ``0.1`` -> ``"0.1"``,
        ``1e20`` -> ``"100000000000000000000"`` (never an exponent).
    """
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def format_value(value: ParamValue, spec: str) -> str:
    """Formats a value with a ``{p:SPEC}`` spec the way torc does.

    Only ``0Nd`` for integers and ``.Nf`` for finite floats are honoured; anything else falls
    back to :func:`display_value`.
    """
    if isinstance(value, int) and (match := _INT_FORMAT_RE.match(spec)):
        return f"{value:0{int(match[1])}d}"
    match = _FLOAT_FORMAT_RE.match(spec)
    if isinstance(value, float) and math.isfinite(value) and match:
        return f"{value:.{int(match[1])}f}"
    return display_value(value)


def substitute(text: str, values: Sequence[tuple[str, ParamValue]]) -> str:
    """Substitutes parameter values into a string with torc's rules.

    For each parameter ``p`` in order: if ``{p:`` occurs, the first ``{p:SPEC}`` is formatted
    and every identical occurrence replaced, and a plain ``{p}`` is left alone (torc's quirk);
    otherwise every ``{p}`` becomes the display form.
    """
    for name, value in values:
        prefix = "{" + name + ":"
        start = text.find(prefix)
        if start >= 0:
            end = text.find("}", start + len(prefix))
            if end >= 0:
                spec = text[start + len(prefix):end]
                text = text.replace(text[start:end + 1], format_value(value, spec))
            continue
        text = text.replace("{" + name + "}", display_value(value))
    return text


def expand_parameters(params: Sequence[tuple[str, str]], mode: str | None,
                      job: str) -> list[Assignment]:
    """Expands raw parameter values into one assignment per job to create.

    Args:
        params: ``(name, raw value)`` pairs in spec order.
        mode: ``"zip"`` pairs the i-th values; anything else takes the product, last parameter
            varying fastest.
        job: the spec entry's name, for error messages.

    Returns:
        The assignments in order.

    Raises:
        SpecError: a value does not parse, zip lengths differ, or the product is too large.
    """
    names = [name for name, _ in params]
    value_lists = [_parse_named(name, raw, job) for name, raw in params]
    if mode == "zip":
        _check_zip_lengths(names, value_lists, job)
        rows: Iterable[tuple[ParamValue, ...]] = zip(*value_lists, strict=True)
    else:
        total = math.prod(len(values) for values in value_lists)
        if total > MAX_EXPANDED:
            raise SpecError(f"the parameters expand to {total} jobs, more than {MAX_EXPANDED}",
                            job=job, field="parameters")
        rows = itertools.product(*value_lists)
    return [list(zip(names, row, strict=True)) for row in rows]


def _parse_named(name: str, raw: str, job: str) -> list[ParamValue]:
    try:
        return parse_parameter_value(raw)
    except ValueError as exc:
        raise SpecError(str(exc), job=job, field=f"parameters.{name}") from exc


def _check_zip_lengths(names: Sequence[str], value_lists: Sequence[list[ParamValue]],
                       job: str) -> None:
    for name, values in zip(names[1:], value_lists[1:], strict=True):
        if len(values) != len(value_lists[0]):
            raise SpecError(
                "All parameters must have the same number of values when using 'zip' mode. "
                f"Parameter '{names[0]}' has {len(value_lists[0])} values, but '{name}' has "
                f"{len(values)} values.", job=job, field="parameters",
            )
