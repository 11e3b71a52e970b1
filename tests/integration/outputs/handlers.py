"""Handlers of the output tests (named in their configs' handlers: allow-lists)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from jobwire import JobContext
from tests.support.waiting import wait_for


async def publish_n(payload: dict[str, Any], ctx: JobContext) -> dict[str, int]:
    """Publish ``count`` messages to ``output`` (the first padded to ``pad_first`` bytes
    when asked); fail as the payload asks (after publishing:
    a failed attempt must publish nothing); enqueue ``children`` child jobs."""
    count = int(payload.get("count", 1))
    for i in range(count):
        body: dict[str, Any] = {"job": ctx.job_id, "i": i, "tag": payload.get("tag")}
        if i == 0 and payload.get("pad_first"):  # a message too large for the broker
            body["pad"] = "x" * int(payload["pad_first"])
        await ctx.publish(payload.get("output", "out"), body, key=payload.get("key"))
    for i in range(int(payload.get("children", 0))):
        await ctx.enqueue("echo", {"parent": ctx.job_id, "i": i})
    if payload.get("fail"):
        raise RuntimeError("failing after publishing, on purpose")
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails after publishing, on purpose")
    return {"published": count}


def publish_threaded(payload: dict[str, Any], ctx: JobContext) -> str:
    """A plain (threaded) handler: records a message with publish_nowait."""
    ctx.publish_nowait(payload.get("output", "out"), "from a thread", key="t")
    return "ok"


async def rpc(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The reply-to tests' handler: doubles ``n``; waits first until the file ``wait_for``
    exists (a drill kills the daemon meanwhile); fails when ``fail`` is set."""
    release = payload.get("wait_for")
    if release:
        await wait_for(
            lambda: asyncio.to_thread(Path(release).exists), timeout=120, what="the release file"
        )
    if payload.get("fail"):
        raise RuntimeError(f"request {payload.get('n')} refused, on purpose")
    return {"answer": int(payload["n"]) * 2, "attempt": ctx.attempt}
