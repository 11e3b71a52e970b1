"""The ``publish`` built-in: a bridge with jobwire's guarantees. ``handlers: {billing:
"builtin:publish"}`` publishes each ``billing`` job's body to the output of the same name,
through the outbox, exactly when the job succeeds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobwire.handlers import JobContext

PUBLISH_KIND = "publish"


def publish_builtin(output: str) -> Callable[[Any, JobContext], Awaitable[dict[str, Any]]]:
    """The handler publishing to ``output``: the job's raw body when it has one (a broker
    message that was not JSON, or kept raw), else its payload as JSON; its headers go along."""

    async def publish(payload: Any, ctx: JobContext) -> dict[str, Any]:
        body = ctx.body if ctx.body is not None else payload
        headers = dict(ctx.headers)
        if ctx.content_type and ctx.body is not None:
            headers.setdefault("content-type", ctx.content_type)
        await ctx.publish(output, body, headers=headers)
        return {"output": output}

    return publish
