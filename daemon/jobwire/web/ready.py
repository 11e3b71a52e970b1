"""What ``/readyz`` answers: the database as a ping and as the pool sees it, and the
sources that must be up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from jobwire.redaction import redact
from jobwire.store.base import StoreUnavailable

REQUIRED_UP = frozenset({"up", "paused"})  # paused on purpose (backlog) is not an outage


class Pingable(Protocol):
    """A store that can be pinged."""

    async def ping(self) -> None:
        """Answer, or raise StoreUnavailable."""


async def readiness(
    store: Pingable,
    sources: dict[str, dict[str, Any]],
    required_sources: frozenset[str],
    store_trouble: Callable[[], str | None] | None,
) -> dict[str, Any]:
    """The body of /readyz; ``ready`` says whether it is a 200."""
    problems = []
    try:
        async with asyncio.timeout(2):
            await store.ping()
        store_state = "up"
    except (StoreUnavailable, TimeoutError) as exc:
        store_state = "down"
        problems.append(redact(f"database: {exc or 'no answer within 2s'}"))
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
