"""Handlers the benchmarks run inside the daemon (importable from the repository root)."""

from __future__ import annotations

import time
from typing import Any

from jobwire import JobContext


async def stamp(payload: Any, ctx: JobContext) -> dict[str, float]:
    """Return when the handler started (wall clock): latency is measured to this moment."""
    return {"started": time.time()}
