"""Job retry policy: the ``retry:`` section as a delay per failed attempt.

The arithmetic is ``jobwire.backoff``'s, shared with every other growing wait: exponential
growth capped at a maximum, with full jitter.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from jobwire.backoff import ceiling, jittered
from jobwire.config import Config, HandlerDefaultsConfig, RetryConfig

__all__ = ["Backoff", "HandlerDefaults", "HandlerRules", "RetryPolicy"]


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


@dataclass(frozen=True)
class HandlerRules:
    """One handler's defaults, merged over the global ``retry:``."""

    policy: RetryPolicy
    max_attempts: int | None  # None: the job's stored max_attempts stands
    timeout: float | None  # None: the queue's


class HandlerDefaults:
    """Per-handler timeout and retry policy (``handler_defaults:``) over the global ones.

    Precedence: the job's own > the handler's > the queue's (timeout) > the global ``retry:``.
    A job row always holds a max_attempts (a job that set none got ``retry.max_attempts`` when
    inserted), so a stored value equal to that default counts as "not set" and the handler's
    max_attempts applies.
    """

    def __init__(
        self,
        retry: RetryConfig,
        per_handler: Mapping[str, HandlerDefaultsConfig] | None = None,
    ) -> None:
        self.default = RetryPolicy.from_config(retry)
        self.default_max_attempts = retry.max_attempts
        self._rules: dict[str, HandlerRules] = {}
        for name, cfg in (per_handler or {}).items():
            own = cfg.retry
            policy = RetryPolicy(
                base=retry.base if own.base is None else own.base,
                factor=retry.factor if own.factor is None else own.factor,
                maximum=retry.max if own.max is None else own.max,
                jitter=retry.jitter if own.jitter is None else own.jitter,
            )
            self._rules[name] = HandlerRules(policy, own.max_attempts, cfg.timeout)

    @classmethod
    def from_config(cls, config: Config) -> HandlerDefaults:
        """From ``retry:`` and ``handler_defaults:``."""
        return cls(config.retry, config.handler_defaults)

    def policy(self, handler: str) -> RetryPolicy:
        """The backoff of ``handler``'s jobs."""
        rules = self._rules.get(handler)
        return self.default if rules is None else rules.policy

    def max_attempts(self, handler: str, stored: int) -> int:
        """Attempts of a job of ``handler`` whose row says ``stored``."""
        rules = self._rules.get(handler)
        if rules is None or rules.max_attempts is None or stored != self.default_max_attempts:
            return stored
        return rules.max_attempts

    def timeout(self, handler: str) -> float | None:
        """``handler``'s own attempt timeout, if it has one."""
        rules = self._rules.get(handler)
        return None if rules is None else rules.timeout
