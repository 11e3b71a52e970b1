"""The OpenAPI 3.1 document of ``/api/v1``, generated from the route table (web.routes).

Request bodies come from the pydantic models that check them, the job and schedule shapes
from the dataclasses the store returns: the document cannot drift from what is checked
and answered without a test noticing (tests/integration/test_openapi.py runs schemathesis).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import TypeAdapter

import jobwire
from jobwire.api_models import MAX_BODY_BYTES, PARAMETER_SCHEMAS
from jobwire.config import HttpConfig
from jobwire.models import Job
from jobwire.store.base import ScheduleRow, SetAsideMessage
from jobwire.web.access import Access, needs_token
from jobwire.web.routes import ROUTES, Route

_REF = "#/components/schemas/{model}"
_INT = {"type": "integer"}
_SECURITY = "bearerAuth"
_ERRORS = {
    400: "A bad request; field names the parameter or body key at fault",
    401: "No bearer token, or a wrong one",
    403: "Refused: no token is configured for this access, or the read token tried to act",
    404: "No such job or schedule",
    409: "The job or schedule is not in a state this action applies to (or the name is taken)",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes",
    503: "The database is unavailable",
}
_PARAMETER_TEXT = {
    "id": "A job id",
    "status": "Only jobs with this status",
    "queue": "A queue's name (listing jobs: only jobs in this queue)",
    "limit": "At most this many jobs",
    "before_id": "Only jobs with a smaller id (the next page)",
    "name": "A schedule's name",
    "output": "An output's name (also one the config no longer lists: its messages stay)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _always_present(schema: dict[str, Any]) -> dict[str, Any]:
    """A dataclass's schema whose every property is required: the API writes them all."""
    schema["required"] = list(schema["properties"])
    return schema


def _schemas() -> dict[str, Any]:
    """The components: answers, errors and request bodies."""
    job = TypeAdapter(Job).json_schema(mode="serialization", ref_template=_REF)
    schemas: dict[str, Any] = job.pop("$defs", {})
    schemas["Job"] = _always_present(job)
    detail = copy.deepcopy(job)
    detail["title"] = "JobDetail"
    detail["properties"]["runs"] = {
        "type": "array",
        "items": {"type": "object"},
        "description": "Every attempt, oldest first.",
    }
    schemas["JobDetail"] = _always_present(detail)
    message = TypeAdapter(SetAsideMessage).json_schema(mode="serialization", ref_template=_REF)
    schemas["SetAsideMessage"] = _always_present(message)
    schedule = TypeAdapter(ScheduleRow).json_schema(mode="serialization", ref_template=_REF)
    schemas.update(schedule.pop("$defs", {}))
    schemas["Schedule"] = _always_present(schedule)
    for route in ROUTES:
        if route.body is not None:
            body = route.body.model_json_schema(ref_template=_REF)
            schemas.update(body.pop("$defs", {}))
            schemas[route.body.__name__] = body
    schemas.update(
        {
            "Error": _object(
                {"error": {"type": "string"}, "field": {"type": "string"}}, required=["error"]
            ),
            "JobPage": _object(
                {
                    "jobs": {"type": "array", "items": _ref("Job")},
                    "next_before_id": {"type": ["integer", "null"]},
                }
            ),
            "Enqueued": _object({"id": {"type": "integer"}, "duplicate": {"type": "boolean"}}),
            "JobState": _object({"id": {"type": "integer"}, "status": {"type": "string"}}),
            "ScheduleList": _object({"schedules": {"type": "array", "items": _ref("Schedule")}}),
            "QueueList": _object({"queues": {"type": "array", "items": _ref("QueueControl")}}),
            "QueueControl": _object(
                {
                    "queue": {"type": "string"},
                    "paused": {"type": "boolean"},
                    "changed": {"type": "boolean"},
                    "changed_at": {"type": ["string", "null"]},
                    "changed_by": {"type": ["string", "null"]},
                    "live": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
                required=["queue", "paused"],
            ),
            "OutputList": _object(
                {
                    "outputs": {
                        "type": "array",
                        "items": _object(
                            {
                                "output": {"type": "string"},
                                "pending": {"type": "integer"},
                                "oldest_seconds": {"type": "number"},
                                "set_aside": {"type": "integer"},
                            }
                        ),
                    }
                }
            ),
            "SetAsideList": _object(
                {
                    "messages": {"type": "array", "items": _ref("SetAsideMessage")},
                    "next_before_id": {"type": ["integer", "null"]},
                }
            ),
            "OutboxResent": _object(
                {"output": {"type": "string"}, "resent": {"type": "array", "items": _INT}}
            ),
            "OutboxDiscarded": _object(
                {"output": {"type": "string"}, "discarded": {"type": "array", "items": _INT}}
            ),
            "SourceList": _object(
                {"sources": {"type": "object", "additionalProperties": {"type": "object"}}}
            ),
            "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
        }
    )
    return schemas


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """A closed JSON object schema (every property required unless told)."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _parameter(name: str, where: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": _PARAMETER_TEXT[name],
        "schema": PARAMETER_SCHEMAS[name],
    }


def _answer(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _operation(route: Route, config: HttpConfig) -> dict[str, Any]:
    """One operation object: parameters, body, answers and security."""
    operation: dict[str, Any] = {
        "operationId": route.handler,
        "summary": route.summary,
        "tags": ["admin" if route.access is Access.ADMIN else "read"],
    }
    if route.description:
        operation["description"] = route.description
    parameters = [_parameter(name, "path") for name in route.path_params]
    parameters += [_parameter(name, "query") for name in route.query_params]
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body.__name__)}},
        }
    statuses = set(route.errors)
    if parameters or route.body is not None:
        statuses.add(400)
    if needs_token(route.access, config):
        statuses |= {401, 403}
        operation["security"] = [{_SECURITY: []}]
    else:
        operation["security"] = []
    if route.uses_store:
        statuses.add(503)
    responses = {str(status): _answer("OK", schema) for status, schema in route.ok.items()}
    if 200 in route.ok and 201 in route.ok:
        responses["200"]["description"] = "A duplicate: the existing job"
    responses.update({str(status): _answer(_ERRORS[status], "Error") for status in statuses})
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def openapi_document(config: HttpConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this server's ``/api/v1`` routes, under ``config``."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, config)
    reads = "open to anyone" if config.public_reads else "need http.read_token or admin_token"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobwire admin API",
            "version": jobwire.__version__,
            "description": f"Reads {reads}; enqueue, retry and cancel need http.admin_token. "
            'Every error is {"error": "...", "field": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                _SECURITY: {"type": "http", "scheme": "bearer", "description": "http tokens"}
            },
        },
    }
