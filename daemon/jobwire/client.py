"""Producer API for applications that enqueue jobs directly, without a broker."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import selectors
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import asyncpg
from opentelemetry import propagate, trace

from jobwire.api_models import check_enqueue, check_spec
from jobwire.models import Job, JobSpec
from jobwire.store import AdminStore
from jobwire.store import connect as connect_store
from jobwire.store.base import InvalidJobData
from jobwire.store.queries import queries
from jobwire.store.rows import ids_in_order, job_columns, option_columns

T = TypeVar("T")

# What PostgreSQL says when jobwire's schema, tables or functions are not there: undefined
# table, undefined function, invalid schema name.
UNMIGRATED_SQLSTATES = frozenset({"42P01", "42883", "3F000"})
_UNMIGRATED = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InvalidSchemaNameError,
)


class SchemaNotMigrated(RuntimeError):
    """The database lacks jobwire's schema (or part of it): ``jobwire migrate`` creates it."""

    def __init__(self, schema: str, cause: BaseException) -> None:
        self.schema = schema
        super().__init__(
            f"the database has no (or an older) jobwire schema {schema!r} ({cause}): "
            "run `jobwire migrate`"
        )


@contextlib.contextmanager
def unmigrated_as_clear_error(schema: str) -> Iterator[None]:
    """Re-raise "no such table/function/schema" as SchemaNotMigrated, saying what to run."""
    try:
        yield
    except _UNMIGRATED as exc:
        raise SchemaNotMigrated(schema, exc) from exc
    except InvalidJobData as exc:
        # The store reports statement errors as bad rows; a missing table is not the rows'.
        if isinstance(exc.__cause__, _UNMIGRATED):
            raise SchemaNotMigrated(schema, exc.__cause__) from exc
        raise


def quoted_schema(schema: str) -> str:
    """The schema as an SQL identifier, for statements on a connection that is not ours."""
    return '"' + schema.replace('"', '""') + '"'


def trace_headers() -> dict[str, str]:
    """The caller's W3C trace context (``traceparent``, ``tracestate``), if a span is active."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    # Only the trace itself: baggage is the caller's business, not the job's.
    return {k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")}


def with_trace(headers: Mapping[str, str] | None) -> dict[str, str]:
    """``headers`` plus the caller's trace context; the caller's own values win."""
    return {**trace_headers(), **(headers or {})}


def _traced(specs: Iterable[JobSpec], source: str) -> list[JobSpec]:
    context = trace_headers()
    return [
        dataclasses.replace(
            s, headers={**context, **s.headers}, source=s.source if s.source else source
        )
        for s in specs
    ]


class Client:
    """Enqueue and inspect jobs in a jobwire database; inserts wake running daemons at once.

    ``conn=`` on enqueue and enqueue_many runs the insert on the caller's asyncpg connection,
    inside its transaction: the job exists exactly when the caller's writes commit. A Client
    used only that way needs no ``url``.
    """

    def __init__(
        self,
        url: str | None = None,
        schema: str = "jobwire",
        *,
        default_max_attempts: int | None = None,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        self._url = url
        self._schema = schema
        # None: what the daemon published from its retry.max_attempts (read at connect).
        self._default_max_attempts = default_max_attempts
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._store: AdminStore | None = None
        q = quoted_schema(schema)
        statements = queries()
        self._enqueue_sql = statements["enqueue_on_connection"].format(schema=q)
        self._insert_sql = statements["insert_jobs_on_connection"].format(schema=q)

    async def connect(self) -> Client:
        """Open the connection pool (done on first use too)."""
        if self._store is None:
            if self._url is None:
                raise ValueError("this Client has no url: pass conn= or give Client a url")
            with unmigrated_as_clear_error(self._schema):
                self._store = await connect_store(
                    self._url,
                    self._schema,
                    min_size=1,
                    max_size=4,
                    connect_timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    default_max_attempts=self._default_max_attempts,
                )
        return self

    async def close(self) -> None:
        """Close the connection pool."""
        if self._store is not None:
            store, self._store = self._store, None
            await store.close()

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _ready(self) -> AdminStore:
        await self.connect()
        assert self._store is not None
        return self._store

    async def enqueue(
        self,
        handler: str,
        payload: Any = None,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: str | float = 0,
        dedup_key: str | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: str | float | None = None,
        concurrency_key: str | None = None,
        unique: str = "forever",
        after: Iterable[int] | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> int:
        """Insert one job and return its id; with a dedup key already used, the existing id.

        ``timeout``: how long one attempt may run (seconds or a duration such as ``30s``;
        None: the queue's). ``unique="active"``: the dedup key is let go when the job
        finishes, so it can be enqueued again. ``after``: ids of jobs that must all succeed
        first (if one fails or is cancelled, this job fails without running). With ``conn``,
        on that connection and in its transaction (nothing is committed here).
        """
        # The same checks as the HTTP API and the CLI: BadInput (a ValueError) names the field.
        spec = check_enqueue(
            {
                "handler": handler,
                "payload": payload,
                "queue": queue,
                "priority": priority,
                "delay": delay,
                "dedup_key": dedup_key,
                "max_attempts": max_attempts,
                "headers": dict(headers or {}),
                "timeout": timeout,
                "concurrency_key": concurrency_key,
                "unique": unique,
                "after": None if after is None else list(after),
            }
        ).spec(source="api")
        spec.headers = with_trace(spec.headers)
        if conn is not None:
            with unmigrated_as_clear_error(self._schema):
                job_id: int = await conn.fetchval(
                    self._enqueue_sql,
                    spec.handler,
                    None if spec.payload is None else json.dumps(spec.payload),
                    spec.queue,
                    spec.priority,
                    max(spec.delay, 0.0),
                    spec.dedup_key,
                    spec.max_attempts,
                    json.dumps(spec.headers),
                    spec.timeout,
                    spec.concurrency_key,
                    spec.unique,
                    spec.after,
                    timeout=self._command_timeout,
                )
            return job_id
        store = await self._ready()
        with unmigrated_as_clear_error(self._schema):
            # Twice at most: an "active" job holding the key may finish (and let it go)
            # between the insert that met it and the look-up; the key is then free.
            for _ in range(2):
                (new_id,) = await store.enqueue_many([spec])
                if new_id is not None:
                    return new_id
                assert spec.dedup_key is not None
                held = await store.ids_by_dedup_key([spec.dedup_key])
                if spec.dedup_key in held:
                    return held[spec.dedup_key]
        raise RuntimeError(f"dedup key {spec.dedup_key!r} is being taken and released")

    async def enqueue_many(
        self, specs: Iterable[JobSpec], *, conn: asyncpg.Connection | None = None
    ) -> list[int | None]:
        """Insert many jobs in one round trip; None where a dedup key was already used.

        Each spec is checked as ``enqueue`` checks its arguments (BadInput names the field and
        the spec). With ``conn``, on that connection and in its transaction (nothing is
        committed here).
        """
        batch = _traced(specs, "api")
        # Before any SQL: a value the database refuses would abort the caller's transaction
        # (conn=) or reach the caller as a driver's error.
        for index, spec in enumerate(batch):
            check_spec(spec, index)
        if conn is None:
            store = await self._ready()
            with unmigrated_as_clear_error(self._schema):
                return await store.enqueue_many(batch)
        if not batch:
            return []
        with unmigrated_as_clear_error(self._schema):
            rows = await conn.fetch(
                self._insert_sql,
                *job_columns(batch, None),
                *option_columns(batch),
                timeout=self._command_timeout,
            )
        return ids_in_order(batch, rows)

    async def get(self, job_id: int) -> Job | None:
        """A job's current row."""
        store = await self._ready()
        with unmigrated_as_clear_error(self._schema):
            return await store.get(job_id)

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job or stop a running one; returns its status."""
        store = await self._ready()
        with unmigrated_as_clear_error(self._schema):
            return await store.cancel(job_id)


class _Runtime:
    """One process's event loop thread and Client."""

    def __init__(self, client: Client) -> None:
        self.pid = os.getpid()
        self.client = client
        # poll() keeps its interest list in the process; epoll's lives in the kernel and is
        # shared with a forked child, where touching the parent's loop would unregister the
        # parent's sockets.
        selector_class = getattr(selectors, "PollSelector", selectors.SelectSelector)
        self.loop = asyncio.SelectorEventLoop(selector_class())
        self.thread = threading.Thread(
            target=self.loop.run_forever, daemon=True, name="jobwire-client"
        )
        self.thread.start()


_runtime_lock = threading.Lock()


def _fresh_lock_in_child() -> None:
    # Another thread may have held it at the fork; in the child that thread is gone.
    global _runtime_lock
    _runtime_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_lock_in_child)


class SyncClient:
    """The Client for code without an event loop: runs one in a background thread.

    Fork-safe: a SyncClient made before a fork (a pre-forking web server) opens its own loop
    and connections in the child on first use and never touches the parent's. An unmigrated
    database raises SchemaNotMigrated; each call gives up after the connect and command
    timeouts.
    """

    def __init__(
        self,
        url: str,
        schema: str = "jobwire",
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self._client_args: tuple[str, str] = (url, schema)
        self._client_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout,
            "command_timeout": command_timeout,
            **kwargs,
        }
        # A backstop above the Client's own timeouts, should its loop thread be stuck.
        self._wait = connect_timeout + command_timeout + 5.0
        self._runtime: _Runtime | None = None
        self._closed = False
        # The parent's runtime, kept (never closed) in a forked child: closing it would end
        # the parent's database sessions, and dropping it would let finalizers try.
        self._inherited: list[_Runtime] = []

    def _current(self) -> _Runtime:
        if self._closed:
            raise RuntimeError("this SyncClient is closed")
        runtime = self._runtime
        if runtime is not None and runtime.pid == os.getpid():
            return runtime
        with _runtime_lock:
            runtime = self._runtime
            if runtime is None or runtime.pid != os.getpid():
                if runtime is not None:
                    self._inherited.append(runtime)
                runtime = self._runtime = _Runtime(
                    Client(*self._client_args, **self._client_kwargs)
                )
            return runtime

    def _call(self, call: Callable[[Client], Coroutine[Any, Any, T]]) -> T:
        runtime = self._current()
        future = asyncio.run_coroutine_threadsafe(call(runtime.client), runtime.loop)
        try:
            return future.result(timeout=self._wait)
        except TimeoutError:
            future.cancel()
            raise

    def enqueue(
        self,
        handler: str,
        payload: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> int:
        """See Client.enqueue."""
        # The trace context lives in this thread, not in the loop's: take it here.
        traced = with_trace(headers)
        return self._call(lambda c: c.enqueue(handler, payload, headers=traced, **kwargs))

    def enqueue_many(self, specs: Iterable[JobSpec]) -> list[int | None]:
        """See Client.enqueue_many."""
        batch = _traced(specs, "api")
        return self._call(lambda c: c.enqueue_many(batch))

    def get(self, job_id: int) -> Job | None:
        """See Client.get."""
        return self._call(lambda c: c.get(job_id))

    def cancel(self, job_id: int) -> str | None:
        """See Client.cancel."""
        return self._call(lambda c: c.cancel(job_id))

    def close(self) -> None:
        """Close the pool and stop the background loop (this process's only)."""
        if self._closed:
            return
        runtime = self._runtime
        if runtime is not None and runtime.pid == os.getpid():
            self._call(lambda c: c.close())
            runtime.loop.call_soon_threadsafe(runtime.loop.stop)
            runtime.thread.join(timeout=5)
            if not runtime.thread.is_alive():
                runtime.loop.close()
        self._closed = True

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
