"""Durations as operators write them: ``500ms``, ``30s``, ``5m``, ``1h``, ``2d``."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Return seconds for a duration string such as ``1h30m`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 5m or 1h, got a boolean")
    if isinstance(value, int | float):
        # YAML reads .nan and .inf as floats: a NaN passes every "< 0" check and then breaks
        # each loop that sleeps for it.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("a duration must be a finite number of seconds")
        if value < 0:
            raise ValueError("a duration cannot be negative")
        try:
            return float(value)
        except OverflowError:
            raise ValueError("a duration must be a finite number of seconds") from None
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 500ms, 30s, 5m or 1h, got {value!r}")
    text = value.strip().replace(" ", "")
    if not text:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)  # a string of 400 digits reads as inf
        if not math.isfinite(seconds):
            raise ValueError("a duration must be a finite number of seconds")
        return seconds
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit ms, s, m, h or d (e.g. 30s)"
        )
    if not math.isfinite(total):
        raise ValueError("a duration must be a finite number of seconds")
    return total
