"""Producer API for applications that enqueue jobs directly, without a broker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from jobwire.durations import parse_duration
from jobwire.models import Job, JobSpec
from jobwire.store import AdminStore
from jobwire.store import connect as connect_store

T = TypeVar("T")


class Client:
    """Enqueue and inspect jobs in a jobwire database; inserts wake running daemons at once."""

    def __init__(self, url: str, schema: str = "jobwire", *, default_max_attempts: int = 5) -> None:
        self._url = url
        self._schema = schema
        self._default_max_attempts = default_max_attempts
        self._store: AdminStore | None = None

    async def connect(self) -> Client:
        """Open the connection pool (done on first use too)."""
        if self._store is None:
            self._store = await connect_store(
                self._url,
                self._schema,
                min_size=1,
                max_size=4,
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
    ) -> int:
        """Insert one job and return its id; with a dedup key already used, the existing id."""
        spec = JobSpec(
            handler=handler,
            payload=payload,
            queue=queue,
            priority=priority,
            delay=parse_duration(delay),
            dedup_key=dedup_key,
            max_attempts=max_attempts,
            source="api",
        )
        store = await self._ready()
        (job_id,) = await store.enqueue_many([spec])
        if job_id is None:
            assert dedup_key is not None
            job_id = (await store.ids_by_dedup_key([dedup_key]))[dedup_key]
        return job_id

    async def enqueue_many(self, specs: Iterable[JobSpec]) -> list[int | None]:
        """Insert many jobs in one round trip; None where a dedup key was already used."""
        return await (await self._ready()).enqueue_many(list(specs))

    async def get(self, job_id: int) -> Job | None:
        """A job's current row."""
        return await (await self._ready()).get(job_id)

    async def cancel(self, job_id: int) -> str | None:
        """Cancel a waiting job or stop a running one; returns its status."""
        return await (await self._ready()).cancel(job_id)


class SyncClient:
    """The Client for code without an event loop: runs one in a background thread."""

    def __init__(self, url: str, schema: str = "jobwire", **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="jobwire-client"
        )
        self._thread.start()
        self._client = Client(url, schema, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def enqueue(self, handler: str, payload: Any = None, **kwargs: Any) -> int:
        """See Client.enqueue."""
        return self._call(self._client.enqueue(handler, payload, **kwargs))

    def enqueue_many(self, specs: Iterable[JobSpec]) -> list[int | None]:
        """See Client.enqueue_many."""
        return self._call(self._client.enqueue_many(specs))

    def get(self, job_id: int) -> Job | None:
        """See Client.get."""
        return self._call(self._client.get(job_id))

    def cancel(self, job_id: int) -> str | None:
        """See Client.cancel."""
        return self._call(self._client.cancel(job_id))

    def close(self) -> None:
        """Close the pool and stop the background loop."""
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
