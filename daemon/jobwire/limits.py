"""Flow-control values: rates as operators write them (``50/s``, ``10/m``, ``1000/h``), the
token bucket arithmetic every store applies in its claim, and queue names an operator
pauses."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
        "h": 3600.0, "hour": 3600.0, "d": 86400.0, "day": 86400.0}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
# A bucket holds this many seconds' worth of tokens when the config gives no burst: enough to
# claim in batches, small enough that a quiet queue cannot release a flood at once.
BURST_SECONDS = 0.1
MAX_QUEUE_NAME = 200


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``per_second`` tokens flow in, at most ``burst`` are held."""

    per_second: float
    burst: int

    def refill(self, tokens: float, elapsed: float) -> float:
        """The tokens held after ``elapsed`` seconds (never above the burst)."""
        return min(float(self.burst), tokens + self.per_second * max(0.0, elapsed))

    def wait_for_one(self, tokens: float) -> float:
        """Seconds until the bucket holds a whole token again."""
        return max(0.0, 1.0 - tokens) / self.per_second


def parse_rate(value: object) -> float:
    """Tokens a second for ``N/s``, ``N/m``, ``N/h`` or ``N/d``; ValueError if not one."""
    if not isinstance(value, str):
        raise ValueError(f"a rate is written like 50/s, 10/m or 1000/h, got {value!r}")
    match = _RATE.match(value.lower())
    if match is None or match.group(2) not in _PER:
        raise ValueError(f"invalid rate {value!r}: write it like 50/s, 10/m or 1000/h")
    per_second = float(match.group(1)) / _PER[match.group(2)]
    if per_second <= 0:
        raise ValueError(f"rate {value!r} must be more than zero")
    return per_second


def default_burst(per_second: float) -> int:
    """The burst of a rate that sets none: a tenth of a second's worth, at least one."""
    return max(1, math.ceil(per_second * BURST_SECONDS))


def make_rate(text: str, burst: int | None) -> Rate:
    """A Rate from the config's ``rate`` and optional ``burst``."""
    per_second = parse_rate(text)
    return Rate(per_second, burst if burst is not None else default_burst(per_second))


def check_rate(value: object) -> object:
    """Validate a config rate, keeping the text as written (for the schema and docs)."""
    if value is not None:
        parse_rate(value)
    return value


def queue_bucket(queue: str) -> str:
    """The token bucket name of a queue's rate."""
    return f"queue:{queue}"


def handler_bucket(handler: str) -> str:
    """The token bucket name of a handler's rate."""
    return f"handler:{handler}"


class Buckets:
    """The token buckets one flow claim reads, spends from and writes back."""

    def __init__(self, rates: dict[str, Rate], stored: dict[str, tuple[float, float]]) -> None:
        """``stored``: bucket name -> (tokens left, seconds since); a new bucket is full."""
        self.rates = rates
        self.tokens = {
            name: rate.refill(*stored[name]) if name in stored else float(rate.burst)
            for name, rate in rates.items()
        }
        self.granted: dict[str, int] = {}

    def allow(self, name: str, wanted: int) -> int:
        """How many of ``wanted`` jobs the bucket lets start now (noted, to spend later)."""
        granted = max(0, min(wanted, math.floor(self.tokens[name])))
        self.granted[name] = granted if wanted > granted else -1  # -1: the rate did not bind
        return granted

    def spend(self, spent: dict[str, int]) -> float | None:
        """Take the started jobs' tokens; returns the seconds until a bucket that held jobs
        back has a token again (claim then), or None when no rate held anything back."""
        due: float | None = None
        for name, count in spent.items():
            if name in self.tokens:
                self.tokens[name] -= count
        for name, granted in self.granted.items():
            if granted >= 0 and spent.get(name, 0) >= granted:
                wait = self.rates[name].wait_for_one(self.tokens[name])
                due = wait if due is None else min(due, wait)
        return due


def check_queue_name(name: str) -> str | None:
    """Why ``name`` cannot name a queue to pause or resume, or None when it can."""
    if not name.strip():
        return "a queue name cannot be empty"
    if len(name) > MAX_QUEUE_NAME:
        return f"a queue name is at most {MAX_QUEUE_NAME} characters"
    if "\x00" in name:
        return "a queue name cannot contain a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "a queue name must be valid UTF-8 text"
    return None
