"""What the admin API accepts: ids, list filters and enqueue bodies, checked before the store.

Every check here exists because the value would otherwise reach PostgreSQL (or the JSON
parser) and fail there as a 500: ids beyond ``bigint``, ``int32`` columns, text with NUL
or a lone surrogate (neither ``text`` nor ``jsonb`` can hold them), non-finite numbers
(``jsonb`` has no NaN), nesting deep enough to exhaust a stack, and keys too long for a
btree index entry. Each refusal is a :class:`BadInput` naming the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)

from jobwire.durations import parse_duration
from jobwire.models import JobSpec, JobStatus
from jobwire.storable import json_problem, problem_of

BIGINT_MAX = 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_BODY_BYTES = 1024 * 1024  # aiohttp's client_max_size for the whole request body
MAX_DEPTH = 100  # containers inside containers, counting the body object itself
MAX_LIST = 1000
DEFAULT_LIST = 50
# queue and dedup_key are btree-indexed: an index entry must fit in about 2,700 bytes,
# and a character takes up to 4 bytes in UTF-8.
MAX_NAME_CHARS = 200
MAX_DEDUP_KEY_CHARS = 512
MAX_DELAY_SECONDS = 100 * 365 * 86400.0  # far beyond any real delay, far inside timestamptz
MIN_TIMEOUT_SECONDS = 1e-6  # an interval's resolution

_ID_TEXT = re.compile(r"[0-9]{1,19}")
# A quick test before storable.problem_of says why: NUL, or a lone surrogate (json.loads
# joins a valid pair into one code point).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_STATUSES = frozenset(s.value for s in JobStatus)
_LIST_PARAMS = ("status", "queue", "limit", "before_id")
_ID_SCHEMA: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}
# An empty query value means the parameter is absent (HTML forms send every field).
_EMPTY: dict[str, Any] = {"type": "string", "maxLength": 0}
# What parse_id and parse_list_query accept, as JSON schemas (for the OpenAPI document).
PARAMETER_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": _ID_SCHEMA,
    "status": {"type": "string", "enum": ["", *sorted(_STATUSES)]},
    "queue": {"type": "string", "maxLength": MAX_NAME_CHARS},
    "limit": {
        "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_LIST}, _EMPTY],
        "default": DEFAULT_LIST,
    },
    "before_id": {"anyOf": [_ID_SCHEMA, _EMPTY]},
    # An output's name, as jobwire.outbox_admin checks it (also one no config lists now).
    "output": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00]*\\S"},
    # A schedule's name, as jobwire.schedule_admin checks it.
    "name": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[A-Za-z0-9_.:-]+$"},
}
# ``delay`` as _delay_seconds takes it: a number of seconds, or a duration such as 5m.
_DELAY_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": MAX_DELAY_SECONDS},
        {"type": "string", "description": "a duration: 500ms, 30s, 5m, 1h, 2d, 1h30m"},
    ],
    "default": 0,
    "description": "Seconds before the job may run: a number, or a duration such as 5m.",
}


# ``timeout`` as _timeout_seconds takes it: more than 0 seconds, a number or a duration.
_TIMEOUT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": MIN_TIMEOUT_SECONDS, "maximum": MAX_DELAY_SECONDS},
        {"type": "string", "description": "a duration: 500ms, 30s, 5m, 1h"},
        {"type": "null"},
    ],
    "default": None,
    "description": "How long one attempt may run (wins over the queue's timeout); null: the "
    "queue's.",
}
UNIQUE_MODES = ("forever", "active")


class BadInput(ValueError):
    """A request value the API refuses; ``field`` names where it was (``body`` for all of it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _shown(text: str, limit: int = 40) -> str:
    """A value for an error message: short, and printable whatever it holds."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return ascii(cut)


def _unstorable(text: str) -> str | None:
    """Why PostgreSQL could not store this text, or None when it can."""
    return problem_of(text) if _UNSTORABLE.search(text) else None


def parse_id(text: str, field: str = "id") -> int:
    """A row id from a path or query: decimal digits, 1 to 2^63-1 (PostgreSQL bigint)."""
    value = int(text) if _ID_TEXT.fullmatch(text) else 0
    if not 1 <= value <= BIGINT_MAX:
        raise BadInput(
            field, f"{field} must be an integer from 1 to {BIGINT_MAX}, not {_shown(text)}"
        )
    return value


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters and page of ``GET /api/v1/jobs``."""

    status: str | None = None
    queue: str | None = None
    limit: int = DEFAULT_LIST
    before_id: int | None = None


def parse_list_query(pairs: Iterable[tuple[str, str]]) -> ListQuery:
    """Check ``?status=&queue=&limit=&before_id=``; an empty value means the parameter is absent.

    Unknown and repeated parameters are refused: a misspelt filter would otherwise list
    every job as if it had matched.
    """
    seen: dict[str, str] = {}
    for name, value in pairs:
        if name not in _LIST_PARAMS:
            raise BadInput(
                name, f"unknown query parameter {_shown(name)}; use {', '.join(_LIST_PARAMS)}"
            )
        if name in seen:
            raise BadInput(name, f"{name} is given more than once")
        seen[name] = value
    texts = {name: value for name, value in seen.items() if value != ""}
    for name, value in texts.items():
        problem = _unstorable(value)
        if problem:
            raise BadInput(name, f"{name} {problem}")
    status = texts.get("status")
    if status is not None and status not in _STATUSES:
        raise BadInput(
            "status", f"unknown status {_shown(status)}; use one of {', '.join(sorted(_STATUSES))}"
        )
    queue = texts.get("queue")
    if queue is not None and len(queue) > MAX_NAME_CHARS:
        raise BadInput("queue", f"queue is longer than {MAX_NAME_CHARS} characters")
    limit = DEFAULT_LIST
    if "limit" in texts:
        limit = int(texts["limit"]) if _ID_TEXT.fullmatch(texts["limit"]) else 0
        if not 1 <= limit <= MAX_LIST:
            raise BadInput(
                "limit",
                f"limit must be an integer from 1 to {MAX_LIST}, not {_shown(texts['limit'])}",
            )
    before = texts.get("before_id")
    before_id = parse_id(before, "before_id") if before is not None else None
    return ListQuery(status, queue, limit, before_id)


class _Unstorable:
    """A JSON number decoded to what no column holds; kept in place so the refusal can say
    which field it was in (json.loads itself would only fail for the whole body)."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _constant(name: str) -> _Unstorable:
    """json.loads hook for NaN, Infinity and -Infinity: not JSON, and jsonb has no such value."""
    return _Unstorable(f"is {name}, which is not a JSON number")


def _integer(text: str) -> int | _Unstorable:
    """json.loads hook: Python refuses to convert more than 4,300 digits (a CPU guard)."""
    try:
        return int(text)
    except ValueError:
        return _Unstorable(f"is an integer of {len(text)} digits, too long to use")


def _float(text: str) -> float | _Unstorable:
    """json.loads hook: 1e400 would decode to inf, which jsonb cannot hold."""
    value = float(text)
    return value if math.isfinite(value) else _Unstorable("is a number too large to store")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object whose every value PostgreSQL can store."""
    if not raw.strip():
        raise BadInput("body", "the body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("body", f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        body = json.loads(text, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except RecursionError:
        # The C decoder recurses once per level; far too deep for us either way.
        raise BadInput("body", f"the body is nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BadInput("body", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput("body", f"the body must be a JSON object, not {_json_type(body)}")
    _check_storable(body)
    return body


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, _Unstorable):
        return "a number"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_storable(body: dict[str, Any]) -> None:
    """Refuse what jsonb or text columns cannot hold, naming the top-level key it is under.

    Iterative, so that checking a deep value cannot itself run out of stack.
    """
    stack: list[tuple[Any, int, str, str]] = [(body, 1, "body", "")]
    while stack:
        value, depth, field, where = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BadInput(field, f"{field} is nested deeper than {MAX_DEPTH} levels")
            if isinstance(value, list):
                for i, item in enumerate(value):
                    stack.append((item, depth + 1, field, f"{where}[{i}]"))
                continue
            for key, item in value.items():
                top = key if depth == 1 else field
                path = f"{where}.{key}" if where else key
                problem = _unstorable(key)
                if problem:
                    name = "body" if depth == 1 else field
                    raise BadInput(name, f"a key in {name} {problem}")
                stack.append((item, depth + 1, top, path))
        elif isinstance(value, str):
            problem = _unstorable(value)
            if problem:
                raise BadInput(field, f"{where} {problem}")
        elif isinstance(value, _Unstorable):
            raise BadInput(field, f"{where} {value.why}")


def _delay_seconds(value: object) -> float:
    """``delay``: seconds as a number, or a duration as the CLI takes it (``30s``, ``5m``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("give seconds as a number or a duration such as 30s or 5m")
    # A huge integer would overflow float() inside parse_duration: compare it first.
    if isinstance(value, int) and value > MAX_DELAY_SECONDS:
        raise ValueError(f"at most {MAX_DELAY_SECONDS:.0f} seconds (100 years)")
    seconds = parse_duration(value)
    if not math.isfinite(seconds) or seconds > MAX_DELAY_SECONDS:
        raise ValueError(f"at most {MAX_DELAY_SECONDS:.0f} seconds (100 years)")
    return seconds


def _timeout_seconds(value: object) -> float | None:
    """``timeout``: None (the queue's), or at least a microsecond as ``delay`` takes them."""
    if value is None:
        return None
    seconds = _delay_seconds(value)
    # The SQL function takes an interval, whose resolution is a microsecond: less rounds to
    # zero there, which it refuses (and aborts the caller's transaction with).
    if not seconds >= MIN_TIMEOUT_SECONDS:
        raise ValueError(
            "give at least 0.000001 seconds (1 microsecond), or null for the queue's timeout"
        )
    return seconds


class EnqueueRequest(BaseModel):
    """The body of ``POST /api/v1/jobs``: JSON types only, nothing coerced, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    handler: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
    payload: Any = None
    queue: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] = "default"
    priority: Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)] = 0
    delay: Annotated[float, BeforeValidator(_delay_seconds), WithJsonSchema(_DELAY_SCHEMA)] = 0.0
    max_attempts: Annotated[int, Field(ge=1, le=INT32_MAX)] | None = None
    dedup_key: Annotated[str, Field(min_length=1, max_length=MAX_DEDUP_KEY_CHARS)] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: Annotated[
        float | None, BeforeValidator(_timeout_seconds), WithJsonSchema(_TIMEOUT_SCHEMA)
    ] = None
    concurrency_key: Annotated[str, Field(min_length=1, max_length=MAX_DEDUP_KEY_CHARS)] | None = (
        None
    )
    unique: Annotated[
        Literal["forever", "active"],
        Field(description="How long dedup_key stays taken: forever, or while the job is active"),
    ] = "forever"
    after: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=BIGINT_MAX)]],
            Field(max_length=1000, description="Ids of jobs that must succeed before this one"),
        ]
        | None
    ) = None

    @field_validator("handler", "queue", "dedup_key", "concurrency_key")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        # A text column refuses NUL, and on the caller's own connection the refusal would
        # abort the caller's transaction: refused here, before any SQL.
        problem = None if value is None else _unstorable(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("headers")
    @classmethod
    def _storable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            problem = _unstorable(name)
            if problem:
                raise ValueError(f"a header name {problem}")
            problem = _unstorable(text)
            if problem:
                raise ValueError(f"header {_shown(name)} {problem}")
        return value

    @field_validator("payload")
    @classmethod
    def _storable_payload(cls, value: Any) -> Any:
        problem = json_problem(value, "payload")
        if problem:
            raise ValueError(f"cannot be stored: {problem}")
        return value

    @field_validator("unique")
    @classmethod
    def _unique_needs_key(cls, value: str, info: ValidationInfo) -> str:
        # Fields are checked in order: dedup_key already is (absent from data if invalid).
        if value == "active" and info.data.get("dedup_key") is None:
            raise ValueError("active needs a dedup_key (the key it lets go)")
        return value

    def spec(self, source: str = "http") -> JobSpec:
        """The job to insert, marked as coming from ``source`` (http, cli, api)."""
        return JobSpec(
            handler=self.handler,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            delay=self.delay,
            max_attempts=self.max_attempts,
            dedup_key=self.dedup_key,
            headers=dict(self.headers),
            source=source,
            timeout=self.timeout,
            concurrency_key=self.concurrency_key,
            unique=self.unique,
            after=list(self.after) if self.after else None,
        )


def parse_enqueue(raw: bytes) -> EnqueueRequest:
    """Parse and check an enqueue body; the first problem found is raised as BadInput."""
    return check_enqueue(parse_json_object(raw))


def check_enqueue(fields: dict[str, Any]) -> EnqueueRequest:
    """Check an enqueue's fields, as the HTTP API, the CLI and the Client all take them; the
    first problem is raised as BadInput naming the field."""
    try:
        return EnqueueRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = [str(part)[:40] for part in first["loc"]] or ["body"]
        # Capped: a message may quote the value given (an invalid duration, say).
        message = str(first["msg"]).removeprefix("Value error, ")[:200]
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(EnqueueRequest.model_fields)
            message = f"unknown key; the keys are {allowed}"
        raise BadInput(loc[0], f"{'.'.join(loc)}: {message}") from None


def check_spec(spec: JobSpec, index: int = 0) -> None:
    """Check a producer's JobSpec (Client.enqueue_many) with the model every enqueue goes
    through; BadInput names the field, its message the spec's place in the batch."""
    try:
        check_enqueue(
            {
                "handler": spec.handler,
                "payload": spec.payload,
                "queue": spec.queue,
                "priority": spec.priority,
                # The store has always run a spec with a negative delay at once.
                "delay": 0.0 if spec.delay < 0 else spec.delay,
                "dedup_key": spec.dedup_key,
                "max_attempts": spec.max_attempts,
                "headers": spec.headers,
                "timeout": spec.timeout,
                "concurrency_key": spec.concurrency_key,
                "unique": spec.unique or "forever",
                "after": spec.after,
            }
        )
    except BadInput as exc:
        raise BadInput(exc.field, f"specs[{index}]: {exc.message}") from None
