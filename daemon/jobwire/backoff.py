"""One backoff computation for every wait that grows: reconnects, store waits, job retries.

The delay after ``n`` failures grows as ``initial * factor**n`` up to ``maximum``. Jitter
spreads many waiters apart: "full" draws from ``[0, ceiling]`` (job retries, where spread
matters most), "equal" from ``[ceiling / 2, ceiling]`` (reconnects: never a near-zero
wait that would hammer a broker that just went down), "none" waits the ceiling itself.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Literal

Jitter = Literal["full", "equal", "none"]

# Failures past this many no longer change the ceiling: it keeps ``factor**n`` finite.
_MAX_EXPONENT = 64


def ceiling(initial: float, factor: float, maximum: float, failures: int) -> float:
    """Largest delay after ``failures`` failures: initial * factor**failures, capped."""
    exponent = min(max(failures, 0), _MAX_EXPONENT)
    return float(min(maximum, initial * factor**exponent))


def jittered(top: float, jitter: Jitter | bool, rng: random.Random | None = None) -> float:
    """A delay drawn below ``top`` the way ``jitter`` says (True: full, False: none)."""
    mode = _mode(jitter)
    if mode == "none":
        return top
    low = 0.0 if mode == "full" else top / 2
    return (rng or random).uniform(low, top)


def _mode(jitter: Jitter | bool) -> Jitter:
    if jitter is True:
        return "full"
    if jitter is False:
        return "none"
    return jitter


@dataclass
class Backoff:
    """Growing delays for one retry loop: ``next()`` after each failure, ``reset()`` after a
    success."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: Jitter | bool = "equal"
    attempt: int = 0  # failures since the last reset

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay after ``failures`` failures, without moving this loop's count."""
        top = ceiling(self.initial, self.factor, self.maximum, failures)
        return jittered(top, self.jitter, rng)

    def next(self) -> float:
        """The next delay to wait; each call counts one more failure."""
        delay = self.delay(self.attempt)
        self.attempt = min(self.attempt + 1, _MAX_EXPONENT)
        return delay

    def reset(self) -> None:
        """Start again from the initial delay."""
        self.attempt = 0

    async def sleep(self) -> float:
        """Wait the next delay; returns how long that was."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
