"""The ``/api/v1/outputs`` routes: each output's backlog, its set-aside messages, and sending
them again or discarding them.

A mixin of HttpApi (its route table names these methods); the actions are outbox_admin's,
so the API refuses and audits exactly as the CLI and the dashboard do.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jobwire.api_models import (
    BIGINT_MAX,
    DEFAULT_LIST,
    MAX_BODY_BYTES,
    MAX_LIST,
    BadInput,
    parse_id,
    parse_json_object,
)
from jobwire.outbox_admin import MAX_IDS, OutboxRefused, check, discard, resend
from jobwire.store.base import OperatorStore
from jobwire.web.responses import ApiError, json_response

_PAGE_PARAMS = ("limit", "before_id")


class OutboxActionRequest(BaseModel):
    """The body of ``POST /api/v1/outputs/{output}/resend`` and ``/discard``: the set-aside
    messages to act on by id, or all of the output's, said so (``"all": true``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ids: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=BIGINT_MAX)]],
            Field(min_length=1, max_length=MAX_IDS),
        ]
        | None
    ) = None
    all: bool = False

    @model_validator(mode="after")
    def _one_or_the_other(self) -> OutboxActionRequest:
        if (self.ids is None) == (not self.all):
            raise ValueError('name the messages ("ids": [...]) or all of them ("all": true)')
        return self


def _action(raw: bytes) -> OutboxActionRequest:
    """The body, checked; the first problem as BadInput naming its field."""
    try:
        return OutboxActionRequest.model_validate(parse_json_object(raw))
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part)[:40] for part in first["loc"]) or "body"
        message = str(first["msg"]).removeprefix("Value error, ")[:200]
        raise BadInput(where.split(".")[0], f"{where}: {message}") from None


def _page(request: web.Request) -> tuple[int, int | None]:
    """``limit`` and ``before_id`` from the query string (empty: absent)."""
    seen: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in _PAGE_PARAMS or name in seen:
            raise BadInput(name[:40], f"use limit and before_id, each at most once, not {name!a}")
        seen[name] = value
    limit = DEFAULT_LIST
    if seen.get("limit"):
        text = seen["limit"]
        limit = int(text) if text.isdigit() and len(text) < 8 else 0
        if not 1 <= limit <= MAX_LIST:
            raise BadInput("limit", f"limit must be an integer from 1 to {MAX_LIST}")
    before = seen.get("before_id")
    return limit, parse_id(before, "before_id") if before else None


class OutboxEndpoints:
    """The output routes of HttpApi (which provides the store)."""

    store: OperatorStore

    async def list_outputs(self, request: web.Request) -> web.Response:
        """Per output with unsent messages: how many, the oldest's age, how many set aside."""
        backlog = await self.store.outbox_pending()
        outputs = [
            {"output": name, "pending": b[0], "oldest_seconds": b[1], "set_aside": b[2]}
            for name, b in sorted(backlog.items())
        ]
        return json_response({"outputs": outputs})

    async def list_set_aside(self, request: web.Request) -> web.Response:
        """One output's set-aside messages, newest first, a page at a time."""
        output = request.match_info["output"]
        limit, before_id = _page(request)
        _check(output, None)
        rows = await self.store.set_aside_messages(output, limit + 1, before_id)
        page = rows[:limit]
        more = len(rows) > limit
        return json_response(
            {
                "messages": [dataclasses.asdict(m) for m in page],
                "next_before_id": page[-1].id if more and page else None,
            }
        )

    async def resend_outbox(self, request: web.Request) -> web.Response:
        """Send set-aside messages again (by id, or all); audited."""
        output, ids = await self._target(request)
        done = await resend(self.store, output, ids, _actor(request))
        return json_response({"output": output, "resent": done})

    async def discard_outbox(self, request: web.Request) -> web.Response:
        """Delete set-aside messages (by id, or all): never sent; audited."""
        output, ids = await self._target(request)
        done = await discard(self.store, output, ids, _actor(request))
        return json_response({"output": output, "discarded": done})

    async def _target(self, request: web.Request) -> tuple[str, list[int] | None]:
        output = request.match_info["output"]
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "body") from None
        body = _action(raw)
        ids = None if body.ids is None else list(body.ids)
        _check(output, ids)
        return output, ids


def _check(output: str, ids: list[int] | None) -> None:
    try:
        check(output, ids)
    except OutboxRefused as exc:
        raise ApiError(400, str(exc), "output") from None


def _actor(request: web.Request) -> str:
    return f"api:{request.remote or '?'}"
