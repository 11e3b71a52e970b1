"""Reply-to: a source with ``reply: true`` sends each finished job's result (or its error)
back to the address its request named (AMQP ``reply_to`` with the ``correlation_id``, the
MQTT 5 response topic with its correlation data), through the outbox.

The intake stores the address in the job row (``jobs.reply``); when the job reaches a final
state, one outbox row is written in the same transaction as that status change (PostgreSQL:
the triggers of migrations 0013 and 0015; the memory store: ``reply_message`` here). The row
goes to the implicit output ``reply:<source>``, relayed like any other, built from the
source's own connection settings (jobwire.adapters.registry.reply_outputs).

The row has no key: its address travels in the header ``jobwire-reply-to``. Replies have no
order among themselves (each carries its correlation), so replies to one address, the usual
case (one reply queue per requester), go out side by side rather than one batch at a time,
and a failed one makes no later one be sent again.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from jobwire.effects import OutboxRow, Published
from jobwire.storable import escape, problem_of

if TYPE_CHECKING:
    from jobwire.models import Job

log = structlog.get_logger("jobwire.reply")

REPLY_PREFIX = "reply:"
# The outbox header that carries the correlation to the publisher (which moves it into the
# protocol's own property and sends no such header).
CORRELATION_HEADER = "jobwire-correlation"
# The outbox header that carries the reply address to the publisher (which sends to it and
# sends no such header). Rows written before migration 0015 have it in their key instead.
REPLY_TO_HEADER = "jobwire-reply-to"
STATUS_HEADER = "jobwire-status"
# How deep an MQTT response topic may be: MQTT sets no bound, but Mosquitto disconnects a
# client that publishes to a topic of more than 201 levels (and forwards a request naming
# such a response topic all the same); a real response topic has a handful.
MAX_TOPIC_LEVELS = 128
# MQTT's length-prefixed strings; AMQP's reply_to is a short string.
MAX_TOPIC_BYTES = 65_535
MAX_QUEUE_BYTES = 255


class ReplyRefused(ValueError):
    """A request whose reply address or correlation cannot be used: its job is failed with
    this reason (the requester would wait for a reply that can never be sent)."""


def _text_problem(text: str) -> str | None:
    """Why PostgreSQL could not hold ``text``, or MQTT carry it: NUL, C0/C1 control
    characters (Mosquitto refuses them), lone surrogates."""
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in text):
        return "contains a control character"
    return problem_of(text)


def topic_problem(topic: str | None) -> str | None:
    """Why no message can be published to this MQTT topic (None: one can)."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "contains a wildcard (+ or #)"
    problem = _text_problem(topic)
    if problem is not None:
        return problem
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"is longer than {MAX_TOPIC_BYTES} bytes"
    if topic.count("/") >= MAX_TOPIC_LEVELS:
        return f"is deeper than {MAX_TOPIC_LEVELS} levels"
    return None


def queue_problem(queue: str) -> str | None:
    """Why an AMQP reply_to cannot name a queue (None: it can)."""
    problem = problem_of(queue)
    if problem is None and len(queue.encode("utf-8")) > MAX_QUEUE_BYTES:
        problem = f"is longer than {MAX_QUEUE_BYTES} bytes"
    return problem


# (address, correlation, the address's check, whether an empty address means none) as the
# adapters name them in Message.properties: AMQP's text correlation id is kept as it is,
# MQTT 5's binary correlation data as base64. An empty AMQP reply_to is taken for none (a
# client may set the property blank); the MQTT adapter passes a response topic only when
# the request carried one, and an empty one is a client's mistake.
_ADDRESSES = (
    ("reply_to", "correlation_id", queue_problem, True),
    ("response_topic", "correlation_data", topic_problem, False),
)


def reply_output_name(source: str) -> str:
    """The implicit output a source's replies go through."""
    return f"{REPLY_PREFIX}{source}"


def is_reply_output(name: str) -> bool:
    """Whether an output name is a source's implicit reply output."""
    return name.startswith(REPLY_PREFIX)


def reply_address(output: str, properties: Mapping[str, Any]) -> dict[str, str] | None:
    """The ``jobs.reply`` value for a message with these properties, None when it names no
    reply address; raises ReplyRefused when it names one no reply can be sent to (or a
    correlation the store cannot hold)."""
    for address_key, correlation_key, check, empty_is_none in _ADDRESSES:
        to = properties.get(address_key)
        if to is None or (empty_is_none and to == ""):
            continue
        problem = check(to) if isinstance(to, str) else "is not text"
        if problem is not None:
            raise ReplyRefused(f"reply address refused: {address_key} {_preview(to)} {problem}")
        reply = {"output": output, "to": to}
        correlation = properties.get(correlation_key)
        if isinstance(correlation, bytes | bytearray):
            reply["correlation"] = base64.b64encode(correlation).decode("ascii")
        elif isinstance(correlation, str):
            problem = problem_of(correlation)
            if problem is not None:
                raise ReplyRefused(
                    f"reply refused: {correlation_key} {_preview(correlation)} {problem}"
                )
            reply["correlation"] = correlation
        return reply
    return None


def _preview(value: object) -> str:
    """A short, storable spelling of an address for a reason text."""
    text = escape(value) if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= 100 else text[:100] + "...")


def set_aside(result: Published, refused: Mapping[int, str], output: str) -> Published:
    """A reply publisher's ``result`` with the rows ``refused`` (row id -> why no message
    can ever carry it) added to those set aside at once (``Published.permanent``)."""
    if not refused:
        return result
    for row_id, why in refused.items():
        log.error("reply_dropped", output=output, row_id=row_id, reason=why)
    return Published(
        result.confirmed,
        result.error or next(iter(refused.values())),
        result.permanent | frozenset(refused),
        result.blameless,
    )


def reply_to(row: OutboxRow) -> str | None:
    """The address a reply row goes to: its ``jobwire-reply-to`` header, else its key (a row
    written before migration 0015); None when it names none."""
    return row.headers.get(REPLY_TO_HEADER, row.key)


def protocol_headers(row: OutboxRow) -> tuple[dict[str, str], str | None]:
    """A reply row's headers without those the publisher turns into the protocol's own
    (the address and the correlation), and its correlation."""
    headers = dict(row.headers)
    headers.pop(REPLY_TO_HEADER, None)
    return headers, headers.pop(CORRELATION_HEADER, None)


def reply_message(job: Job) -> tuple[dict[str, str], bytes]:
    """The headers and body of a finished job's reply: its result as JSON when it succeeded,
    else ``{"error": ..., "status": ...}`` (what migration 0015's trigger writes). The row
    carrying them has no key (the address is the header)."""
    assert job.reply is not None
    status = str(job.status)
    headers = {
        STATUS_HEADER: status,
        "content-type": "application/json",
        REPLY_TO_HEADER: str(job.reply["to"]),
    }
    correlation = job.reply.get("correlation")
    if correlation is not None:
        headers[CORRELATION_HEADER] = str(correlation)
    value = job.result if status == "succeeded" else _error(job.last_error, status)
    return headers, json.dumps(value).encode("utf-8")


def _error(error: str | None, status: str) -> dict[str, str]:
    return {"error": error or status, "status": status}
