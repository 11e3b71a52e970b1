"""Job retry policy: the ``retry:`` section as a delay per failed attempt.

The arithmetic is ``jobwire.backoff``'s, shared with every other growing wait: exponential
growth capped at a maximum, with full jitter.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobwire.backoff import ceiling, jittered
from jobwire.config import RetryConfig

__all__ = ["Backoff", "RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Delay before attempt ``n + 1`` after ``n`` failed attempts."""

    base: float = 2.0
    factor: float = 2.0
    maximum: float = 600.0
    jitter: bool = True

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> RetryPolicy:
        """Build the policy from the ``retry:`` section."""
        return cls(base=cfg.base, factor=cfg.factor, maximum=cfg.max, jitter=cfg.jitter)

    def ceiling(self, attempt: int) -> float:
        """Largest delay after the given failed attempt (1-based): base * factor^(attempt-1)."""
        return ceiling(self.base, self.factor, self.maximum, attempt - 1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay to wait; full jitter draws uniformly from [0, ceiling] so retries spread out."""
        return jittered(self.ceiling(attempt), self.jitter, rng)


# The name this policy had before the reconnect backoff and it shared one computation.
Backoff = RetryPolicy
