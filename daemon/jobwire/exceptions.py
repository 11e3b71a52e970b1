"""Exceptions a handler raises to steer its job: ``Retry`` and ``Reject``."""

from __future__ import annotations

from jobwire.durations import parse_duration


class Retry(Exception):
    """Ask for another attempt, optionally after a given delay (``after="30s"`` or seconds)."""

    def __init__(self, reason: str = "retry requested", *, after: str | float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.after = None if after is None else parse_duration(after)


class Reject(Exception):
    """Fail the job at once, whatever attempts remain."""

    def __init__(self, reason: str = "rejected"):
        super().__init__(reason)
        self.reason = reason
