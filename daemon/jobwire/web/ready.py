"""What ``/readyz`` answers: the database as a ping and as the pool sees it, and the
sources that must be up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from jobwire.redaction import redact
from jobwire.store.base import StoreUnavailable

REQUIRED_UP = frozenset({"up", "paused"})  # paused on purpose (backlog) is not an outage
PING_DEADLINE = 2.0  # seconds: a database slower than this to answer a ping is not ready


class Pingable(Protocol):
    """A store that can be pinged."""

    async def ping(self) -> None:
        """Answer, or raise StoreUnavailable."""


class Pinger:
    """Pings the store for /readyz: an answer within PING_DEADLINE, one ping at a time.

    A ping cut short at its deadline can take long to end: asyncpg gives its connection
    back only once the server acknowledges the cancel, or after command_timeout, and a
    frozen server (SIGSTOP, a blackholed network) never does. So a probe answers at the
    deadline and leaves that ping to end on its own; the next probe waits on it rather than
    starting another (a probe every few seconds would otherwise hold every connection).
    """

    def __init__(self, store: Pingable) -> None:
        self._store = store
        self._ping: asyncio.Task[None] | None = None

    def close(self) -> None:
        """Give up a ping still waiting (the server stops)."""
        if self._ping is not None:
            self._ping.cancel()

    async def problem(self) -> str | None:
        """None if the store answered; else what went wrong."""
        if self._ping is None or self._ping.done():
            self._ping = asyncio.ensure_future(self._store.ping())
        ping = self._ping
        done, _ = await asyncio.wait({ping}, timeout=PING_DEADLINE)
        if not done:
            return f"no answer within {PING_DEADLINE:g}s"
        if ping.cancelled():
            return "the ping was cancelled"
        exc = ping.exception()
        if exc is None:
            return None
        if isinstance(exc, StoreUnavailable | TimeoutError):
            return str(exc) or f"no answer within {PING_DEADLINE:g}s"
        return f"{type(exc).__name__}: {exc}"


async def readiness(
    pinger: Pinger,
    sources: dict[str, dict[str, Any]],
    required_sources: frozenset[str],
    store_trouble: Callable[[], str | None] | None,
) -> dict[str, Any]:
    """The body of /readyz; ``ready`` says whether it is a 200."""
    problems = []
    store_state = "up"
    problem = await pinger.problem()
    if problem is not None:
        store_state = "down"
        problems.append(redact(f"database: {problem}"))
    # A ping may pass while every write fails (read-only, a full disk): the pool knows.
    trouble = store_trouble() if store_trouble is not None else None
    if store_state == "up" and trouble:
        store_state = "down"
        problems.append(redact(f"database: the pool's statements fail: {trouble}"))
    described = {}
    for name, info in sources.items():
        state = str(info.get("state"))
        required = name in required_sources
        described[name] = {
            "state": state,
            "required": required,
            "last_error": info.get("last_error"),
            # "store": paused by a database outage; "backlog": by flow control.
            "held": info.get("held") or [],
        }
        if required and state not in REQUIRED_UP:
            problems.append(f"source {name}: {state}")
    return {
        "ready": not problems,
        "store": store_state,
        "sources": described,
        "problems": problems,
    }
