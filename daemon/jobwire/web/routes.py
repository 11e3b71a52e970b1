"""The one table of ``/api/v1`` routes: the server registers it, the OpenAPI document says it.

A route is served only through this table, so it cannot be served undocumented (a test
compares the application's routes with the document's paths), nor without its access check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from jobwire.api_models import EnqueueRequest
from jobwire.schedule_admin import ScheduleChanges, ScheduleRequest
from jobwire.web.access import Access
from jobwire.web.outbox_api import OutboxActionRequest

OPENAPI_PATH = "/api/v1/openapi.json"


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: how it is served, who may call it, what it takes and answers."""

    method: str
    path: str
    handler: str  # the HttpApi method serving it
    summary: str
    access: Access
    ok: dict[int, str]  # success statuses: the component schema of each answer
    path_params: tuple[str, ...] = ()
    query_params: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()  # beyond 400/401/403/503, which follow from the rest
    uses_store: bool = True
    description: str = field(default="")


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/api/v1/jobs",
        "list_jobs",
        "List jobs, newest first",
        Access.READ,
        {200: "JobPage"},
        query_params=("status", "queue", "limit", "before_id"),
        description="An empty parameter counts as absent; an unknown or repeated one is a 400. "
        "next_before_id, when not null, is the before_id of the next page.",
    ),
    Route(
        "POST",
        "/api/v1/jobs",
        "enqueue",
        "Enqueue a job",
        Access.ADMIN,
        {201: "Enqueued", 200: "Enqueued"},
        body=EnqueueRequest,
        errors=(409, 413),
        description="201 with the new job's id; 200 with duplicate: true and the id of the "
        "job that already holds the dedup_key.",
    ),
    Route(
        "GET",
        "/api/v1/jobs/{id}",
        "show_job",
        "One job with every attempt",
        Access.READ,
        {200: "JobDetail"},
        path_params=("id",),
        errors=(404,),
    ),
    Route(
        "POST",
        "/api/v1/jobs/{id}/retry",
        "retry_job",
        "Run a failed or cancelled job again",
        Access.ADMIN,
        {200: "JobState"},
        path_params=("id",),
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/api/v1/jobs/{id}/cancel",
        "cancel_job",
        "Cancel a waiting job, or ask the worker running it to stop",
        Access.ADMIN,
        {200: "JobState"},
        path_params=("id",),
        errors=(404,),
    ),
    Route(
        "GET",
        "/api/v1/schedules",
        "list_schedules",
        "Every schedule with its next run",
        Access.READ,
        {200: "ScheduleList"},
    ),
    Route(
        "POST",
        "/api/v1/schedules",
        "add_schedule",
        "Add a run-time schedule",
        Access.ADMIN,
        {201: "Schedule"},
        body=ScheduleRequest,
        errors=(409, 413),
        description="Kept across restarts (origin api). A name the config file defines, or "
        "one already taken, is a 409; an unknown handler, a bad cron field or time zone a 400.",
    ),
    Route(
        "GET",
        "/api/v1/schedules/{name}",
        "show_schedule",
        "One schedule",
        Access.READ,
        {200: "Schedule"},
        path_params=("name",),
        errors=(404,),
    ),
    Route(
        "PUT",
        "/api/v1/schedules/{name}",
        "update_schedule",
        "Change a run-time schedule",
        Access.ADMIN,
        {200: "Schedule"},
        path_params=("name",),
        body=ScheduleChanges,
        errors=(404, 409, 413),
        description="Only the fields given change; null clears one; cron replaces every and "
        "the reverse. A schedule defined in the config file is a 409.",
    ),
    Route(
        "DELETE",
        "/api/v1/schedules/{name}",
        "remove_schedule",
        "Remove a run-time schedule (its jobs stay)",
        Access.ADMIN,
        {200: "Schedule"},
        path_params=("name",),
        errors=(404, 409),
    ),
    Route(
        "POST",
        "/api/v1/schedules/{name}/pause",
        "pause_schedule",
        "Stop firing a schedule",
        Access.ADMIN,
        {200: "Schedule"},
        path_params=("name",),
        errors=(404,),
    ),
    Route(
        "POST",
        "/api/v1/schedules/{name}/resume",
        "resume_schedule",
        "Fire a paused schedule again",
        Access.ADMIN,
        {200: "Schedule"},
        path_params=("name",),
        errors=(404,),
    ),
    Route(
        "POST",
        "/api/v1/schedules/{name}/run",
        "run_schedule",
        "Enqueue one job of a schedule now",
        Access.ADMIN,
        {201: "JobState"},
        path_params=("name",),
        errors=(404,),
        description="The job carries the schedule's id; the schedule's next tick is not moved.",
    ),
    Route(
        "GET",
        "/api/v1/queues",
        "list_queues",
        "Queues with live jobs or a pause state: paused or not, and their live job counts",
        Access.READ,
        {200: "QueueList"},
    ),
    Route(
        "POST",
        "/api/v1/queues/{queue}/pause",
        "pause_queue",
        "Start no more jobs of a queue on any instance (new jobs are still stored)",
        Access.ADMIN,
        {200: "QueueControl"},
        path_params=("queue",),
        description="Obeyed by every instance within one poll interval; running jobs "
        "finish. changed is false when the queue was already paused. Written to the audit.",
    ),
    Route(
        "POST",
        "/api/v1/queues/{queue}/resume",
        "resume_queue",
        "Start jobs of a paused queue again",
        Access.ADMIN,
        {200: "QueueControl"},
        path_params=("queue",),
        description="changed is false when the queue was not paused. Written to the audit.",
    ),
    Route(
        "GET",
        "/api/v1/outputs",
        "list_outputs",
        "Each output with unsent messages: how many, the oldest's age, how many set aside",
        Access.READ,
        {200: "OutputList"},
    ),
    Route(
        "GET",
        "/api/v1/outputs/{output}/set-aside",
        "list_set_aside",
        "An output's messages set aside (its broker refused them for good), newest first",
        Access.READ,
        {200: "SetAsideList"},
        path_params=("output",),
        query_params=("limit", "before_id"),
    ),
    Route(
        "POST",
        "/api/v1/outputs/{output}/resend",
        "resend_outbox",
        "Send an output's set-aside messages again, attempts counted from zero",
        Access.ADMIN,
        {200: "OutboxResent"},
        path_params=("output",),
        body=OutboxActionRequest,
        errors=(413,),
        description='By id ("ids": [...]) or all of them ("all": true). Ids not set aside are '
        "left alone; resent lists the ids handed back to the relay. Written to the audit.",
    ),
    Route(
        "POST",
        "/api/v1/outputs/{output}/discard",
        "discard_outbox",
        "Delete an output's set-aside messages: they are never sent",
        Access.ADMIN,
        {200: "OutboxDiscarded"},
        path_params=("output",),
        body=OutboxActionRequest,
        errors=(413,),
        description='By id ("ids": [...]) or all of them ("all": true). Ids not set aside are '
        "left alone; discarded lists the ids deleted. Written to the audit.",
    ),
    Route(
        "GET",
        "/api/v1/sources",
        "list_sources",
        "Each source's state, last error, counters (and Kafka lag)",
        Access.READ,
        {200: "SourceList"},
        uses_store=False,
    ),
    Route(
        "GET",
        OPENAPI_PATH,
        "openapi",
        "This document (open: it describes the API, not the data)",
        Access.OPEN,
        {200: "OpenApiDocument"},
        uses_store=False,
    ),
)
