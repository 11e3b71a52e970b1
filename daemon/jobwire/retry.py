"""Backoff policy: exponential growth capped at a maximum, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from jobwire.config import RetryConfig


@dataclass(frozen=True)
class Backoff:
    """Delay before attempt ``n + 1`` after ``n`` failed attempts."""

    base: float = 2.0
    factor: float = 2.0
    maximum: float = 600.0
    jitter: bool = True

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> Backoff:
        """Build the policy from the ``retry:`` section."""
        return cls(base=cfg.base, factor=cfg.factor, maximum=cfg.max, jitter=cfg.jitter)

    def ceiling(self, attempt: int) -> float:
        """Largest delay after the given failed attempt (1-based): base * factor^(attempt-1)."""
        exponent = max(attempt - 1, 0)
        # Compare in log space would be exact; capping the exponent keeps floats finite.
        return float(min(self.maximum, self.base * self.factor ** min(exponent, 64)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay to wait; full jitter draws uniformly from [0, ceiling] so retries spread out."""
        ceiling = self.ceiling(attempt)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(0, ceiling)
