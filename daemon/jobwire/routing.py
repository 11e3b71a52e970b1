"""Routing: a decoded broker Message becomes a JobSpec, or a failed one saying why not."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from jobwire.config import Config, ConfigProblem, RouteConfig, SourceBase
from jobwire.models import JobSpec, Message
from jobwire.reply import ReplyRefused, reply_address, reply_output_name
from jobwire.selectors import Selector, parse_selector
from jobwire.storable import storable_headers, storable_key, storable_text

UNROUTABLE = "(unroutable)"
# The store's priority column is a 32-bit integer.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1
# Job ids are bigint.
JOB_ID_MAX = 2**63 - 1


class Poison:
    """Why a message could not become a runnable job, as a small fixed set (metric labels)."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NO_HANDLER = "no_handler"
    HANDLER_NOT_ALLOWED = "handler_not_allowed"
    BAD_PRIORITY = "bad_priority"
    BAD_NOTIFICATION = "bad_notification"
    BAD_REPLY = "bad_reply"
    STORE_REFUSED = "store_refused"
    UNREADABLE = "unreadable"
    INTERNAL = "internal_error"


@dataclass(slots=True)
class Routed:
    """A routing result: the spec to insert, and the reason when the message is invalid."""

    spec: JobSpec
    invalid: str | None = None
    kind: str | None = None  # a Poison value when invalid
    # Headers that had to be replaced or renamed to be storable (the job still runs).
    notes: list[str] | None = None


def _is_json_type(content_type: str | None) -> bool:
    return not content_type or "json" in content_type.lower()


def _as_key(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


class Router:
    """Applies one source's ``route:`` to its messages."""

    def __init__(
        self,
        source: SourceBase,
        allowed_handlers: Collection[str],
        default_dedup: str | None,
    ) -> None:
        route: RouteConfig = source.route
        self.source = source.name
        self.route = route
        self.allowed = frozenset(allowed_handlers)
        self.max_body_bytes = source.max_body_bytes
        self.handler_from = parse_selector(route.handler_from) if route.handler_from else None
        self.priority: int | Selector = (
            route.priority if isinstance(route.priority, int) else parse_selector(route.priority)
        )
        dedup = route.dedup_key if route.dedup_key is not None else default_dedup
        self.dedup = parse_selector(dedup) if dedup and dedup != "none" else None
        self.no_dedup = dedup == "none"  # not even the adapter's own key (Kafka's offset)
        key = route.concurrency_key
        self.concurrency_key = parse_selector(key) if key and key != "none" else None
        selectors = [
            s
            for s in (self.handler_from, self.priority, self.dedup, self.concurrency_key)
            if isinstance(s, Selector)
        ]
        self.needs_json = [str(s) for s in selectors if s.kind == "json"]
        # reply: true: the output a job's reply goes through (its address is the message's).
        self.reply_output = (
            reply_output_name(source.name) if getattr(source, "reply", False) else None
        )

    def _reply(self, msg: Message) -> tuple[dict[str, str] | None, str | None]:
        """Where the job's result goes once it finished (None: nowhere), and why the
        request's reply address cannot be used (None: it can, or there is none)."""
        if self.reply_output is None:
            return None, None
        try:
            return reply_address(self.reply_output, msg.properties), None
        except ReplyRefused as exc:
            return None, str(exc)

    def _dedup_key(self, msg: Message, decoded: Any) -> str | None:
        if self.no_dedup:
            return None
        key = msg.dedup_key
        if self.dedup is not None:
            value = self.dedup.select(msg.headers, msg.properties, decoded)
            key = None if value in (None, "") else _as_key(value)
        return None if key is None else storable_key(f"{self.source}:{key}")

    def _concurrency_key(self, msg: Message, decoded: Any) -> str | None:
        """The selected concurrency key; none when absent (the job is then not limited by
        key), or when it cannot be serialised."""
        if self.concurrency_key is None:
            return None
        value = self.concurrency_key.select(msg.headers, msg.properties, decoded)
        if value in (None, ""):
            return None
        try:
            return storable_key(_as_key(value))
        except Exception:  # noqa: BLE001 - e.g. a selected value too deep to serialise
            return None

    def _safe_dedup_key(self, msg: Message, decoded: Any) -> str | None:
        """The dedup key, or (if selecting it fails) the adapter's own, or none."""
        try:
            return self._dedup_key(msg, decoded)
        except Exception:  # noqa: BLE001 - e.g. a selected value too deep to serialise
            if self.no_dedup or msg.dedup_key is None:
                return None
            return storable_key(f"{self.source}:{msg.dedup_key}")

    def failed(
        self,
        msg: Message,
        reason: str,
        handler: str | None = None,
        dedup_key: str | None = None,
        kind: str = Poison.INTERNAL,
    ) -> Routed:
        """A message that cannot become a runnable job: a failed one, raw body kept.

        Never raises: this is where every other failure of a message ends.
        """
        if dedup_key is None:
            dedup_key = self._safe_dedup_key(msg, self._body_for_key(msg))
        headers, notes = storable_headers(msg.headers)
        spec = JobSpec(
            handler=storable_text(handler, 200) or UNROUTABLE,
            body=msg.body,
            failed_reason=storable_text(reason, 2000),
            headers=headers,
            source=self.source,
            dedup_key=dedup_key,
            content_type=storable_text(msg.content_type),
            queue=self.route.queue,
            # A requester waits for an answer even when its request could not become a job.
            reply=self._reply(msg)[0],
        )
        return Routed(spec, reason, kind, notes or None)

    def _body_for_key(self, msg: Message) -> Any:
        """The decoded body, when the dedup key is read from it (so a message kept as failed
        by a later path still gets the key its redelivery will have); else None."""
        if self.dedup is None or self.dedup.kind != "json" or len(msg.body) > self.max_body_bytes:
            return None
        try:
            return json.loads(msg.body)
        except (ValueError, RecursionError):
            return None

    def notified_job_id(self, msg: Message) -> int | str:
        """Notify mode: the job id a message names, or why it names none (never raises)."""
        try:
            data = json.loads(msg.body)
        except (ValueError, RecursionError) as exc:
            return f"notification body is not valid JSON: {_short(exc)}"
        job_id = data.get("job_id") if isinstance(data, dict) else None
        # ASCII digits only: str.isdigit() accepts "²", which int() refuses.
        if isinstance(job_id, str) and job_id.isascii() and job_id.isdigit() and len(job_id) < 20:
            job_id = int(job_id)
        if not isinstance(job_id, int) or isinstance(job_id, bool) or not 0 < job_id <= JOB_ID_MAX:
            return f'notification names no job: expected {{"job_id": N}}, got {msg.body[:100]!r}'
        return job_id

    def route_message(self, msg: Message) -> Routed:
        """Turn one message into a spec; invalid input becomes a failed spec, never an error."""
        if msg.unreadable is not None:
            return self.failed(msg, msg.unreadable, kind=Poison.UNREADABLE)
        try:
            routed = self._route(msg)
        except Exception as exc:  # noqa: BLE001 - one message's problem stays with it
            return self.failed(msg, f"routing failed: {_short(exc)}", kind=Poison.INTERNAL)
        if routed.invalid is None:
            headers, notes = storable_headers(routed.spec.headers)
            routed.spec.headers = headers
            routed.spec.content_type = storable_text(routed.spec.content_type)
            routed.notes = notes or None
        return routed

    def _route(self, msg: Message) -> Routed:
        payload: Any = None
        text: str | None = None
        body: bytes | None = None
        problem: str | None = None
        kind = Poison.INTERNAL
        if len(msg.body) > self.max_body_bytes:
            problem = f"body of {len(msg.body)} bytes exceeds max_body_bytes {self.max_body_bytes}"
            kind = Poison.TOO_LARGE
        elif _is_json_type(msg.content_type):
            try:
                payload, text = _parse_json(msg.body) if msg.body.strip() else (None, None)
            except (ValueError, RecursionError) as exc:
                if msg.content_type or self.needs_json:
                    problem = f"body is not valid JSON: {_short(exc)}"
                    kind = Poison.NOT_JSON
                body = msg.body
        else:
            body = msg.body
            if self.needs_json:
                problem = (
                    f"route reads {', '.join(self.needs_json)} but the body is "
                    f"{msg.content_type}, not JSON"
                )
                kind = Poison.NOT_JSON
        decoded = payload if body is None else None
        # Store the JSON text as it came (it parsed): no second serialisation.
        payload_json = text if body is None and payload is not None else None

        # The dedup key comes first: a redelivered poison message must not fail twice.
        dedup_key = self._safe_dedup_key(msg, decoded)

        handler = self.route.handler
        if problem is None and self.handler_from is not None:
            value = self.handler_from.select(msg.headers, msg.properties, decoded)
            if value in (None, ""):
                problem = f"no handler: {self.handler_from} is missing"
                kind = Poison.NO_HANDLER
            elif not isinstance(value, str) or value not in self.allowed:
                problem = (
                    f"handler {_preview(value)} (from {self.handler_from}) is not in the allow-list"
                )
                kind = Poison.HANDLER_NOT_ALLOWED
            else:
                handler = value
        elif handler is not None and handler not in self.allowed:
            problem = f"handler {handler!r} is not in the allow-list"
            kind = Poison.HANDLER_NOT_ALLOWED

        priority = 0
        if isinstance(self.priority, int):
            priority = self.priority
        elif problem is None:
            value = self.priority.select(msg.headers, msg.properties, decoded)
            if value is not None:
                priority_or_problem = _priority(value, self.priority)
                if isinstance(priority_or_problem, str):
                    problem, kind = priority_or_problem, Poison.BAD_PRIORITY
                else:
                    priority = priority_or_problem

        # Last: a request that is poison anyway is failed for that (and replied to, when
        # its address can be used).
        reply, reply_problem = self._reply(msg)
        if problem is None and reply_problem is not None:
            problem, kind = reply_problem, Poison.BAD_REPLY

        if problem is not None:
            return self.failed(msg, problem, handler, dedup_key, kind)
        assert handler is not None
        return Routed(
            JobSpec(
                handler=handler,
                payload=payload,
                payload_json=payload_json,
                body=body,
                priority=priority,
                max_attempts=self.route.max_attempts,
                delay=self.route.delay,
                timeout=self.route.timeout,
                headers=msg.headers,
                source=self.source,
                dedup_key=dedup_key,
                content_type=msg.content_type,
                queue=self.route.queue,
                concurrency_key=self._concurrency_key(msg, decoded),
                reply=reply,
            )
        )


def _parse_json(body: bytes) -> tuple[Any, str | None]:
    """A JSON body's value, and its text to store as it came (None unless UTF-8).

    Decoded once: json.loads of bytes detects the encoding and decodes them itself, and the
    text was then decoded again to be stored. A leading byte-order mark is dropped, as
    json.loads does (jsonb refuses one). A body in UTF-16 or UTF-32, which json.loads also
    reads, is parsed from its bytes as before.
    """
    try:
        # Not the utf-8-sig codec: its decoder is Python code, a few calls per body.
        text = body.decode()
    except UnicodeDecodeError:
        return json.loads(body), None
    if text.startswith("\ufeff"):
        text = text[1:]
    return json.loads(text), text


def _priority(value: Any, selector: Selector) -> int | str:
    """A selected priority as an int the store holds, or why it is not one."""
    try:
        priority = int(value)
    except (TypeError, ValueError, OverflowError):
        return f"priority from {selector} is not an integer: {_preview(value)}"
    if isinstance(value, bool) or not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        return (
            f"priority from {selector} is out of range "
            f"({PRIORITY_MIN}..{PRIORITY_MAX}): {_preview(value)}"
        )
    return priority


def _preview(value: Any) -> str:
    """A short repr of a value from a message, for a reason text."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - e.g. too deep to repr
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:100] + "..."


def _short(exc: BaseException) -> str:
    """``Type: message``, cut short (a RecursionError's message is fine; its traceback not)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


def route_problems(config: Config, allowed: Collection[str], file: str) -> list[ConfigProblem]:
    """Static route handlers that are not in the allow-list: caught at start-up, not per message."""
    problems = []
    for index, source in enumerate(config.sources):
        handler = source.route.handler
        if handler is not None and handler not in allowed:
            problems.append(
                ConfigProblem(
                    file,
                    f"sources[{index}].route.handler",
                    f"{handler!r} is not in handlers (allowed: {', '.join(sorted(allowed))})",
                )
            )
    allowed_text = ", ".join(sorted(allowed))
    for index, schedule in enumerate(config.schedules):
        if schedule.handler not in allowed:
            problems.append(
                ConfigProblem(
                    file,
                    f"schedules[{index}].handler",
                    f"{schedule.handler!r} is not in handlers (allowed: {allowed_text})",
                )
            )
    return problems
