"""Handlers for the workers.processes tests: each says which process ran it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jobwire.handlers import JobContext


async def whoami(payload: Any, ctx: JobContext) -> dict[str, int]:
    """The pid of the daemon process that ran the job (after ``sleep`` seconds if given)."""
    await asyncio.sleep(payload.get("sleep", 0) if isinstance(payload, dict) else 0)
    return {"pid": os.getpid()}
