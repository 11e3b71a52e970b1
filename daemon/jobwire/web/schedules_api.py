"""The ``/api/v1/schedules`` actions: add, show, change, remove, pause, resume, run now.

A mixin of HttpApi (its route table names these methods); the work is schedule_admin's, so
the API refuses and audits exactly as the CLI and the dashboard do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

from aiohttp import web

from jobwire.api_models import MAX_BODY_BYTES, parse_json_object
from jobwire.schedule_admin import (
    ScheduleRefused,
    Who,
    add_schedule,
    parse_name,
    remove_schedule,
    run_now,
    set_enabled,
    update_schedule,
)
from jobwire.store.base import OperatorStore
from jobwire.web.responses import ApiError, json_response

T = TypeVar("T")
# The admin token is the only identity the API knows (a dashboard session names itself).
API_ADMIN = Who("api", "admin")


async def _refusing(action: Awaitable[T]) -> T:
    """The action's result; its refusal as the API's JSON error."""
    try:
        return await action
    except ScheduleRefused as exc:
        raise ApiError(exc.status, exc.message, exc.field) from None


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes", "body") from None
    return parse_json_object(raw)


class ScheduleEndpoints:
    """The schedule routes of HttpApi (which provides the store, the allow-list and wake)."""

    store: OperatorStore
    allowed_handlers: Collection[str]
    wake: Callable[[], None]

    async def add_schedule(self, request: web.Request) -> web.Response:
        """Add a run-time schedule (201); a name taken, by the config file or not, is 409."""
        fields = await _body(request)
        row = await _refusing(add_schedule(self.store, fields, self.allowed_handlers, API_ADMIN))
        return json_response(dataclasses.asdict(row), 201)

    async def show_schedule(self, request: web.Request) -> web.Response:
        """One schedule."""
        name = parse_name(request.match_info["name"])
        row = await self.store.get_schedule(name)
        if row is None:
            raise ApiError(404, f"no schedule named {name!r}", "name")
        return json_response(dataclasses.asdict(row))

    async def update_schedule(self, request: web.Request) -> web.Response:
        """Change the fields given of a run-time schedule (null clears one)."""
        name = parse_name(request.match_info["name"])
        changes = await _body(request)
        row = await _refusing(
            update_schedule(self.store, name, changes, self.allowed_handlers, API_ADMIN)
        )
        return json_response(dataclasses.asdict(row))

    async def remove_schedule(self, request: web.Request) -> web.Response:
        """Delete a run-time schedule; answers the row as it was. Its jobs stay."""
        name = parse_name(request.match_info["name"])
        row = await _refusing(remove_schedule(self.store, name, API_ADMIN))
        return json_response(dataclasses.asdict(row))

    async def pause_schedule(self, request: web.Request) -> web.Response:
        """Stop firing a schedule (a config one until the next start)."""
        name = parse_name(request.match_info["name"])
        row = await _refusing(set_enabled(self.store, name, False, API_ADMIN))
        return json_response(dataclasses.asdict(row))

    async def resume_schedule(self, request: web.Request) -> web.Response:
        """Fire a paused schedule again."""
        name = parse_name(request.match_info["name"])
        row = await _refusing(set_enabled(self.store, name, True, API_ADMIN))
        return json_response(dataclasses.asdict(row))

    async def run_schedule(self, request: web.Request) -> web.Response:
        """Enqueue one job of the schedule now (201 with its id); ticks are not moved."""
        name = parse_name(request.match_info["name"])
        job_id = await _refusing(run_now(self.store, name, API_ADMIN))
        self.wake()
        return json_response({"id": job_id, "status": "pending"}, 201)
