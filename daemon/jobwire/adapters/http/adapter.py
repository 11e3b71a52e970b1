"""HTTP webhook source: a POST to the source's path becomes a job, answered once committed.

A request goes through the same intake as a broker delivery, and its "ack" is the answer:
the intake acknowledges a message only after its row committed, so the 202 (with the job
id) is sent then, never before. A store outage requeues the message, which here means a
503 with Retry-After: the caller is the redelivery. While the intake holds the source
(store out, backlog high) new requests get a 503 at once rather than wait in memory.

Unlike a broker, the caller is there to be told what is wrong with its request: a bad
token or signature is a 401, a body over ``max_body_bytes`` a 413, and anything the route
refuses (not JSON, no handler, a handler outside the allow-list) a 400, all with nothing
stored. A broker message in the same state becomes a failed job (see routing).

The job id is read back by the dedup key after the commit (the adapter writes no SQL: the
wiring hands it a lookup). Every request has a key: the route's; else, from a caller
holding the source's token, its Idempotency-Key header; else, on a signed source, the
body's sha256 (only signed material: a replayed delivery cannot pick a new key); else a
fresh id. A key already taken answers 200 with the job that holds it, told apart from a
new job by the request id stored in its headers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from jobwire.adapters.base import Adapter, Message, OffsetReader, SourceState
from jobwire.adapters.http.auth import signature_problem, token_problem
from jobwire.adapters.http.config import HttpSource
from jobwire.adapters.http.incoming import REQUEST_HEADER, Incoming
from jobwire.config import SourceBase
from jobwire.models import Job, JobStatus
from jobwire.routing import Poison, Router

_READ_CHUNK = 65_536


class JobLookup(Protocol):
    """What the adapter reads back after a commit (the store's admin role fills it)."""

    async def ids_by_dedup_key(self, keys: Sequence[str]) -> dict[str, int]:
        """The job holding each taken key."""

    async def jobs_by_ids(self, job_ids: Sequence[int]) -> list[Job]:
        """Those jobs."""


@dataclass(slots=True)
class _Pending:
    """One request waiting for its message to be settled."""

    dedup_key: str
    request_id: str
    future: asyncio.Future[_Settled] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, outcome: _Settled) -> None:
        if not self.future.done():  # a request that timed out is answered already
            self.future.set_result(outcome)


@dataclass(frozen=True, slots=True)
class _Settled:
    """How the intake settled a request's message: stored (with the job read back) or not."""

    stored: bool
    job_id: int | None = None
    job: Job | None = None
    error: str | None = None


class HttpAdapter(Adapter):
    """Serves one webhook path; each request is a delivery, its answer the settlement."""

    kind = "http"
    default_dedup = None  # the adapter gives every message a key itself (see the module doc)
    requeue_redelivers = True  # a "requeued" request is answered 503: the caller retries
    may_wait = False  # the caller waits for the answer: never held for a free slot

    def __init__(self, cfg: HttpSource) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._router: Router | None = None
        self._lookup: JobLookup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._incoming = Incoming(cfg)
        self.answers: dict[str, int] = {}
        self._in_flight = 0

    @property
    def path(self) -> str:
        """Where the webhook is served."""
        return self.cfg.path

    def attach(self, router: Router, lookup: JobLookup) -> None:
        """Wiring: the intake's router (to refuse bad input up front) and the id lookup."""
        self._router = router
        self._lookup = lookup

    def describe(self) -> dict[str, Any]:
        """State for stats and readiness, with the answers given by status."""
        return {
            **super().describe(),
            "path": self.cfg.path,
            "answers": dict(self.answers),
            "in_flight": self._in_flight,
        }

    # -- the adapter's side of the intake ------------------------------------------------

    async def _session(self) -> None:
        """Nothing to connect: the daemon's HTTP server serves the path. Up until stopped."""
        self.set_state(SourceState.PAUSED if self.paused else SourceState.UP)
        await asyncio.Event().wait()

    async def _on_pause(self) -> None:
        """Nothing to stop: requests arriving while paused are answered 503."""

    async def _on_resume(self) -> bool:
        if self._sink is None:
            return False
        self.set_state(SourceState.UP)
        return True

    async def ack_many(self, messages: Sequence[Message]) -> None:
        """Committed: read the jobs back (in a task, so the intake goes on) and answer."""
        pending = [m.raw for m in messages if isinstance(m.raw, _Pending)]
        if not pending:
            return
        task = asyncio.create_task(self._read_back(pending), name=f"jobwire-http-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def requeue_many(self, messages: Sequence[Message]) -> None:
        """Not stored (the store is out): those requests are answered 503."""
        for message in messages:
            if isinstance(message.raw, _Pending):
                message.raw.settle(_Settled(stored=False))

    async def _read_back(self, pending: Sequence[_Pending]) -> None:
        assert self._lookup is not None
        try:
            ids = await self._lookup.ids_by_dedup_key([p.dedup_key for p in pending])
            jobs = {j.id: j for j in await self._lookup.jobs_by_ids(sorted(set(ids.values())))}
        except Exception as exc:  # noqa: BLE001 - committed all the same: say so, without id
            error = f"{type(exc).__name__}: {exc}"
            self._log.warning("http_job_lookup_failed", error=error, requests=len(pending))
            for p in pending:
                p.settle(_Settled(stored=True, error=error))
            return
        for p in pending:
            job_id = ids.get(p.dedup_key)
            p.settle(_Settled(stored=True, job_id=job_id, job=jobs.get(job_id or 0)))

    # -- serving ---------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        """The path's POST handler: the answer, counted by status."""
        if self._in_flight >= self.cfg.max_in_flight:
            # Bodies are read before a signature can be checked: a cap keeps a flood of
            # slow senders from holding unbounded memory and connections.
            response = self._unavailable(f"source {self.name} has too many requests in flight")
        else:
            self._in_flight += 1
            try:
                refused = self._refusal(request)
                response = refused if refused is not None else await self._answer(request)
            finally:
                self._in_flight -= 1
        return self._counted(response)

    async def expect(self, request: web.Request) -> web.Response | None:
        """``Expect: 100-continue``: an answer known from the headers alone (not taking
        requests, no or a wrong token, a declared length over the limit) is given before
        the body is sent; else the client is told to go on."""
        response = self._refusal(request)
        if response is not None:
            # The client may send the body anyway: it must not be read as a next request.
            response.force_close()
            return self._counted(response)
        if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
            return self._counted(_error(417, "the only expectation met is 100-continue"))
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    def _counted(self, response: web.Response) -> web.Response:
        key = str(response.status)
        self.answers[key] = self.answers.get(key, 0) + 1
        return response

    def _refusal(self, request: web.Request) -> web.Response | None:
        """The answer the request line and headers alone decide, if any."""
        if (
            self._sink is None
            or self._router is None
            or self.paused
            or self.state != SourceState.UP
        ):
            return self._unavailable(f"source {self.name} is not taking requests now")
        problem = token_problem(self.cfg, request.headers)
        if problem is not None:
            return _error(401, problem, {"WWW-Authenticate": 'Bearer realm="jobwire"'})
        length = request.content_length
        if length is not None and length > self.cfg.max_body_bytes:
            return _error(413, f"the body is larger than {self.cfg.max_body_bytes} bytes")
        return None

    async def _answer(self, request: web.Request) -> web.Response:
        sink, router = self._sink, self._router
        assert sink is not None and router is not None  # _refusal said so
        try:
            async with asyncio.timeout(self.cfg.read_timeout):
                body = await _read_body(request, self.cfg.max_body_bytes)
        except TimeoutError:
            response = _error(408, f"the body was not sent within {self.cfg.read_timeout:g}s")
            response.force_close()  # the rest of a slow body is not waited for either
            return response
        except (HttpProcessingError, web.RequestPayloadError) as exc:
            # A body aiohttp cannot decode (Content-Encoding gzip that is not gzip, a chunk
            # or length that does not add up): the client's mistake, not a crash.
            response = _error(400, f"the body could not be read: {_reason(exc)}")
            response.force_close()
            return response
        except ConnectionResetError:
            # The client went away mid-body: nothing was stored, and no one reads an answer.
            self._log.info("http_client_gone", path=request.path)
            response = _error(400, "the connection closed before the body was read")
            response.force_close()
            return response
        if body is None:
            return _error(413, f"the body is larger than {self.cfg.max_body_bytes} bytes")
        problem = signature_problem(self.cfg.signature, request.headers, body)
        if problem is not None:
            return _error(401, problem)
        request_id = uuid.uuid4().hex
        message = self._incoming.message(request, body, request_id)
        routed = router.route_message(message)
        if routed.invalid is not None:
            return _error(413 if routed.kind == Poison.TOO_LARGE else 400, routed.invalid)
        dedup_key = routed.spec.dedup_key
        if dedup_key is None:
            return _error(400, f"no dedup key: {self.cfg.route.dedup_key} is missing")
        pending = _Pending(dedup_key, request_id)
        message.raw = pending
        sink(message)
        try:
            settled = await asyncio.wait_for(pending.future, self.cfg.answer_timeout)
        except TimeoutError:
            self._log.warning("http_answer_timeout", dedup_key=dedup_key, request_id=request_id)
            return self._uncertain("the job was not committed in time", request_id)
        return self._settled_answer(settled, request_id)

    def _settled_answer(self, settled: _Settled, request_id: str) -> web.Response:
        if not settled.stored:
            return self._uncertain("the database is unavailable", request_id)
        if settled.error is not None or settled.job_id is None:
            # Committed, but its id could not be read back (or retention already took it).
            return web.json_response({"id": None, "duplicate": False, "stored": True}, status=202)
        job = settled.job
        ours = job is not None and job.headers.get(REQUEST_HEADER) == request_id
        if ours and job is not None and job.status == JobStatus.FAILED and job.attempts == 0:
            # The store refused a value the route let through: kept as a failed job.
            return web.json_response(
                {"error": job.last_error, "id": job.id, "stored": "failed"}, status=400
            )
        if not ours:
            return web.json_response({"id": settled.job_id, "duplicate": True}, status=200)
        return web.json_response({"id": settled.job_id, "duplicate": False}, status=202)

    def _unavailable(self, reason: str) -> web.Response:
        return _error(503, reason, {"Retry-After": str(self.cfg.retry_after)})

    def _uncertain(self, reason: str, request_id: str) -> web.Response:
        """A 503 after the message went to the intake: a connection lost during COMMIT
        may have stored it all the same, so the caller is told how to retry safely."""
        retry = "the same Idempotency-Key" if self.cfg.token is not None else "the same body"
        if self.cfg.signature is not None and self.cfg.token is not None:
            retry += " (or, without one, the same body)"
        return web.json_response(
            {
                "error": f"{reason}; the job may have been stored: retry with {retry}, "
                "and a stored job is answered with its id",
                "request_id": request_id,
            },
            status=503,
            headers={"Retry-After": str(self.cfg.retry_after)},
        )


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The raw body, or None when it is over ``limit`` (read no further than that; a
    Content-Length over it was refused before, by ``_refusal``)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    """What aiohttp says about a body it could not read (its cause's message, if any)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
    message = cause.message if isinstance(cause, HttpProcessingError) else str(cause)
    return " ".join(message.split()) or type(cause).__name__


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def build(source: SourceBase, offset_reader: OffsetReader | None = None) -> HttpAdapter:
    """The registry's factory: an ``HttpAdapter`` for an ``HttpSource``."""
    assert isinstance(source, HttpSource)
    return HttpAdapter(source)
